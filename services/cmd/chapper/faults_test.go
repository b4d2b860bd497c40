package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"github.com/chapper/chapper/services/devstack"
)

// TestFaults runs every part in one `chapper serve` process against an
// embedded stack that the test controls, under load, and stops each store
// in turn mid-load: the broker (restarted with its data directory), one
// Postgres shard database, Redis and the search server. Meanwhile
// /readyz is red; afterwards the parts recover by themselves. Then the
// offline phones: the same batches resubmitted many times, out of order,
// over two connections, many responses lost. In the end every record is
// once in every store.
func TestFaults(t *testing.T) {
	bin := chapperBin(t)
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 3))

	stack, err := devstack.StartStack(ctx, devstack.StackConfig{
		Dir: filepath.Join(t.TempDir(), "var"), KafkaAddr: freeAddr(t), PostgresAddr: freeAddr(t),
		RedisAddr: freeAddr(t), SearchAddr: freeAddr(t), Partitions: 12,
	})
	if err != nil {
		t.Fatalf("starting the stack: %v", err)
	}
	t.Cleanup(func() {
		if err := stack.Close(); err != nil {
			t.Errorf("closing the stack: %v", err)
		}
	})
	s := stores{
		pgURL:     stack.Postgres.URL,
		shardDBs:  []string{"chapper_shard_0", "chapper_shard_1"},
		redisAddr: stack.Redis.Addr(),
		searchURL: stack.SearchURL(),
	}
	if out, err := exec.CommandContext(ctx, bin, "migrate", "-log.level=warn", "-migrate.router-url="+s.pgURL("chapper_router")).CombinedOutput(); err != nil {
		t.Fatalf("chapper migrate: %v\n%s", err, out)
	}
	grpcAddr, adminAddr := freeAddr(t), freeAddr(t)
	args := []string{"serve", "-target=ingest,timeline,persist,search", "-log.level=warn",
		"-grpc.addr=" + grpcAddr, "-admin.addr=" + adminAddr, "-kafka.brokers=" + stack.Kafka.Addr(),
		"-ingest.topic-replication-factor=1", "-timeline.redis-addrs=" + s.redisAddr,
		"-persist.router-url=" + s.pgURL("chapper_router"), "-search.addresses=" + s.searchURL}
	for _, p := range []string{"timeline", "persist", "search"} {
		args = append(args, "-"+p+".max-backoff=1s")
	}
	serve := newProc(t, "chapper-serve", args...)
	serve.Start(t)
	waitReady(t, ctx, serve, adminAddr, 3*time.Minute)

	l := newLedger(seed)
	stop := loadFor(ctx, t, l, grpcAddr)
	faults := []struct {
		name  string
		stop  func() error
		start func() error
	}{
		{"kafka", stack.Kafka.Stop, func() error { return stack.Kafka.Start(ctx) }},
		{"postgres shard database chapper_shard_1", func() error { return shardConnections(ctx, stack, "chapper_shard_1", false) },
			func() error { return shardConnections(ctx, stack, "chapper_shard_1", true) }},
		{"redis", stack.Redis.Stop, func() error { return stack.Redis.Start(ctx) }},
		{"search server", stack.StopSearch, stack.StartSearch},
	}
	for _, f := range faults {
		before := l.acked()
		waitFor(t, ctx, time.Minute, "an acknowledged Submit before stopping "+f.name, func() bool { return l.acked() > before })
		time.Sleep(randomMoment(rng, 100*time.Millisecond, time.Second))
		if err := f.stop(); err != nil {
			t.Fatalf("stopping %s: %v", f.name, err)
		}
		waitFor(t, ctx, time.Minute, "red /readyz with "+f.name+" down", func() bool {
			code, _ := readyz(ctx, adminAddr)
			return code == http.StatusServiceUnavailable
		})
		_, body := readyz(ctx, adminAddr)
		t.Logf("%s down: /readyz says\n%s", f.name, body)
		time.Sleep(randomMoment(rng, 500*time.Millisecond, 2*time.Second))
		if err := f.start(); err != nil {
			t.Fatalf("starting %s again: %v", f.name, err)
		}
		waitReady(t, ctx, serve, adminAddr, 2*time.Minute)
	}
	stop()
	l.settle(ctx, t, grpcAddr, time.Minute)
	offlinePhones(ctx, t, l, rng, grpcAddr)
	verify(t, ctx, s, l.want(t), 3*time.Minute)
	if err := serve.Stop(); err != nil {
		t.Errorf("chapper serve did not stop cleanly: %v", err)
	}
}

// shardConnections takes database db out of service (no new connections,
// every session ended), as when its server goes away, or puts it back.
func shardConnections(ctx context.Context, stack *devstack.Stack, db string, allow bool) error {
	conn, err := pgx.Connect(ctx, stack.Postgres.URL("postgres"))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, fmt.Sprintf("ALTER DATABASE %s WITH ALLOW_CONNECTIONS %t", db, allow)); err != nil {
		return err
	}
	if !allow {
		_, err = conn.Exec(ctx, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", db)
	}
	return err
}

// offlinePhones adds phoneBatches new batches to l and has phones on two
// connections submit them out of order, each many times, a third of the
// calls with a deadline too short to see the answer (a lost response),
// until each batch was acknowledged at least once and submitted at least
// phoneRepeats times.
func offlinePhones(ctx context.Context, t *testing.T, l *ledger, rng *rand.Rand, grpcAddr string) {
	const phoneBatches, phoneRepeats, phones = 20, 4, 4
	batches := make([]*ledgerBatch, phoneBatches)
	for i := range batches {
		batches[i] = l.next(25)
	}
	var conns []canvassv1.IngestServiceClient
	for range 2 {
		conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conns = append(conns, canvassv1.NewIngestServiceClient(conn))
	}
	var mu sync.Mutex
	sent := make([]int, phoneBatches)
	order := rng.Perm(phoneBatches * phoneRepeats)
	var wg sync.WaitGroup
	for p := range phones {
		wg.Go(func() {
			for i := p; i < len(order); i += phones {
				j := order[i] % phoneBatches
				b := &ledgerBatch{req: clone(batches[j].req)}
				c := conns[i%2]
				if i%3 == 0 {
					// the phone gives up before the answer comes: the
					// record may or may not have been accepted
					cctx, cancel := context.WithTimeout(ctx, time.Millisecond)
					_, _ = c.Submit(cctx, b.req)
					cancel()
					mu.Lock()
					sent[j]++
					mu.Unlock()
					continue
				}
				ok := l.submit(ctx, t, c, b)
				mu.Lock()
				sent[j]++
				batches[j].acked = batches[j].acked || ok
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	// whatever was never acknowledged is sent until it is
	for _, b := range batches {
		for !b.acked {
			l.submit(ctx, t, conns[0], b)
			if ctx.Err() != nil {
				t.Fatal(ctx.Err())
			}
		}
	}
	l.mu.Lock()
	l.retry = nil // the batches are all acknowledged
	l.mu.Unlock()
	t.Logf("offline phones: %d batches of 25 records, each submitted %v times", phoneBatches, sent)
}
