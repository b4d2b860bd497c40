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
// does them (the claim step, then one mark for the Submit), with
// time-ordered ids (v7, as clients make them: one hash for the batch)
// next to random ids (v4: a key per id, SET NX GET each, the layout every
// id had before), alternating rounds on the same server. The figures are
// redis-server's CPU time per record (from /proc) and this process's (the
// go-redis client), which depend far less on other work sharing the
// machine than rates do.
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
		claimAck := func(ids []uuid.UUID) error {
			owner := newOwner()
			if _, err := s.claim(ctx, owner, ids, stamps); err != nil {
				return err
			}
			return s.markDone(ctx, owner)
		}
		run := func(newID func() uuid.UUID) (server, client time.Duration) {
			srv0, err := procCPU(pid)
			if err != nil {
				b.Fatal(err)
			}
			cpu0 := cpuTime()
			ids := make([]uuid.UUID, benchBatch)
			for range batches {
				for k := range ids {
					ids[k] = newID()
				}
				if err := claimAck(ids); err != nil {
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
		var timeSrv, timeCli, randSrv, randCli time.Duration
		for range rounds {
			srv, cli := run(func() uuid.UUID { return uuid.Must(uuid.NewV7()) })
			timeSrv, timeCli = timeSrv+srv, timeCli+cli
			srv, cli = run(uuid.New)
			randSrv, randCli = randSrv+srv, randCli+cli
		}
		cancel()
		_ = client.Close()
		perRec := func(d time.Duration) float64 { return float64(d) / 1e3 / (rounds * batches * benchBatch) }
		fmt.Printf("id store, claim + ack of batches of %d new ids, %d rounds of %d batches per variant\n", benchBatch, rounds, batches)
		const alt = "random (v4) ids, a key per id"
		devtest.ReportFigure(b, devtest.Figure{Name: "BenchmarkIDStore/redis-cpu-us-per-record", Value: perRec(timeSrv), Unit: "us",
			BaselineName: alt, Baseline: perRec(randSrv)})
		devtest.ReportFigure(b, devtest.Figure{Name: "BenchmarkIDStore/client-cpu-us-per-record", Value: perRec(timeCli), Unit: "us",
			BaselineName: alt, Baseline: perRec(randCli)})
	}
}
