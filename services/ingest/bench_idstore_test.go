package ingest

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/chapper/chapper/services/devstack/devtest"
	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"
)

// BenchmarkIDStore measures the shared id store alone on a private
// redis-server: a Submit's claim and ack of benchBatch new ids, as ingest
// does them (a pipeline of one SET NX GET per id, then one mark for the
// Submit) next to one Lua
// script call per step carrying the whole batch (the alternative, not
// kept: it costs redis-server more), alternating rounds on the same
// server. The figures are redis-server's CPU time per record (from /proc)
// and this process's (the go-redis client), which depend far less on other
// work sharing the machine than rates do.
func BenchmarkIDStore(b *testing.B) {
	const (
		rounds  = 3
		batches = 1000 // per round and variant
	)
	for range b.N {
		rd := devtest.NewRedis(b)
		pid, err := redisPid(rd.DataDir())
		if err != nil {
			b.Fatal(err)
		}
		client := redis.NewClient(&redis.Options{Addr: rd.Addr()})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		stamps := make([]string, benchBatch)
		for k := range stamps {
			stamps[k] = "v" + string(make([]byte, 90)) + strconv.Itoa(k) // a visit's stamp is 91 bytes and more
		}
		s := newIDStore(client, "bench:", time.Hour, time.Minute)
		type step func(ids []uuid.UUID) error
		piped := func(ids []uuid.UUID) error {
			owner := newOwner()
			if _, err := s.claim(ctx, owner, ids, stamps); err != nil {
				return err
			}
			return s.markDone(ctx, owner)
		}
		scripted := func(ids []uuid.UUID) error {
			keys := make([]string, len(ids))
			for k, id := range ids {
				keys[k] = s.key(id)
			}
			if err := claimBatchScript.Run(ctx, client, keys, batchArgs(s.claimTTL.Milliseconds(), "powner|", stamps)...).Err(); err != nil {
				return err
			}
			return ackBatchScript.Run(ctx, client, keys, batchArgs(s.ttl.Milliseconds(), "a", stamps)...).Err()
		}
		run := func(do step) (server, client time.Duration) {
			srv0, err := procCPU(pid)
			if err != nil {
				b.Fatal(err)
			}
			cpu0 := cpuTime()
			ids := make([]uuid.UUID, benchBatch)
			for range batches {
				for k := range ids {
					ids[k] = uuid.New()
				}
				if err := do(ids); err != nil {
					b.Fatal(err)
				}
			}
			cpu1 := cpuTime()
			srv1, err := procCPU(pid)
			if err != nil {
				b.Fatal(err)
			}
			return srv1 - srv0, cpu1 - cpu0
		}
		var pipeSrv, pipeCli, scriptSrv, scriptCli time.Duration
		for range rounds {
			srv, cli := run(piped)
			pipeSrv, pipeCli = pipeSrv+srv, pipeCli+cli
			srv, cli = run(scripted)
			scriptSrv, scriptCli = scriptSrv+srv, scriptCli+cli
		}
		cancel()
		_ = client.Close()
		perRec := func(d time.Duration) float64 { return float64(d) / 1e3 / (rounds * batches * benchBatch) }
		fmt.Printf("id store, claim + ack of batches of %d new ids, %d rounds of %d batches per variant\n", benchBatch, rounds, batches)
		const alt = "one Lua script call per step (not kept)"
		devtest.ReportFigure(b, devtest.Figure{Name: "BenchmarkIDStore/redis-cpu-us-per-record", Value: perRec(pipeSrv), Unit: "us",
			BaselineName: alt, Baseline: perRec(scriptSrv)})
		devtest.ReportFigure(b, devtest.Figure{Name: "BenchmarkIDStore/client-cpu-us-per-record", Value: perRec(pipeCli), Unit: "us",
			BaselineName: alt, Baseline: perRec(scriptCli)})
	}
}

// The batch scripts BenchmarkIDStore measures: KEYS are the batch's keys,
// ARGV[1] the TTL in milliseconds and ARGV[1+i] the value for KEYS[i].
var (
	claimBatchScript = redis.NewScript(`
local out = {}
for i, k in ipairs(KEYS) do
  out[i] = redis.call('SET', k, ARGV[i+1], 'NX', 'GET', 'PX', ARGV[1]) or ''
end
return out`)
	ackBatchScript = redis.NewScript(`
for i, k in ipairs(KEYS) do redis.call('SET', k, ARGV[i+1], 'PX', ARGV[1]) end
return #KEYS`)
)

// batchArgs returns first followed by prefix+vals[k] for each k.
func batchArgs(first any, prefix string, vals []string) []any {
	args := make([]any, 1, 1+len(vals))
	args[0] = first
	for _, v := range vals {
		args = append(args, prefix+v)
	}
	return args
}
