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
// redis-server: a Submit's claim and ack of benchBatch new ids, as one
// script call per step (what ingest does on a standalone Redis) next to a
// pipeline of one command per id (what it does on Redis Cluster, and did
// everywhere before), alternating rounds on the same server. The figures
// are redis-server's CPU time per record (from /proc) and this process's
// (the go-redis client), which depend far less on other work sharing the
// machine than rates do.
func BenchmarkIDStore(b *testing.B) {
	const (
		rounds  = 3
		batches = 1000 // per round and kind
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
		run := func(s *idStore) (server, client time.Duration) {
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
				if _, err := s.claim(ctx, "owner", ids, stamps); err != nil {
					b.Fatal(err)
				}
				if err := s.ack(ctx, ids, stamps); err != nil {
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
		one := newIDStore(client, "one:", time.Hour, time.Minute)
		piped := newIDStore(client, "piped:", time.Hour, time.Minute)
		piped.oneCall = false
		var oneSrv, oneCli, pipeSrv, pipeCli time.Duration
		for range rounds {
			s, c := run(one)
			oneSrv, oneCli = oneSrv+s, oneCli+c
			s, c = run(piped)
			pipeSrv, pipeCli = pipeSrv+s, pipeCli+c
		}
		cancel()
		_ = client.Close()
		perRec := func(d time.Duration) float64 { return float64(d) / 1e3 / (rounds * batches * benchBatch) }
		fmt.Printf("id store, claim + ack of batches of %d new ids, %d rounds of %d batches each way\n", benchBatch, rounds, batches)
		devtest.ReportFigure(b, devtest.Figure{Name: "BenchmarkIDStore/redis-cpu-us-per-record", Value: perRec(oneSrv), Unit: "us",
			BaselineName: "one command per id, pipelined", Baseline: perRec(pipeSrv)})
		devtest.ReportFigure(b, devtest.Figure{Name: "BenchmarkIDStore/client-cpu-us-per-record", Value: perRec(oneCli), Unit: "us",
			BaselineName: "one command per id, pipelined", Baseline: perRec(pipeCli)})
	}
}
