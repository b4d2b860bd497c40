package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// crashRounds is how many times the crash tests kill a process mid-load.
const crashRounds = 3

// devPorts are the addresses of one `chapper dev`, fixed across its
// restarts.
type devPorts struct {
	grpc, admin, kafka, pg, redis, idsRedis, search string
}

// newDevPorts picks seven distinct free ports. Every listener stays open
// until all seven are picked: a port closed at once may be handed out again
// by the next pick (two servers on one port).
func newDevPorts(t testing.TB) devPorts {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	a := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		return l.Addr().String()
	}
	return devPorts{a(), a(), a(), a(), a(), a(), a()}
}

// args are `chapper dev`'s flags for p and dir.
func (p devPorts) args(dir string, extra ...string) []string {
	return append([]string{"dev", "-log.level=warn", "-dev.dir=" + dir,
		"-grpc.addr=" + p.grpc, "-admin.addr=" + p.admin, "-dev.kafka-addr=" + p.kafka,
		"-dev.postgres-addr=" + p.pg, "-dev.redis-addr=" + p.redis,
		"-dev.ids-redis-addr=" + p.idsRedis, "-dev.search-addr=" + p.search}, extra...)
}

// stores are the dev stack's stores, for verify.
func (p devPorts) stores() stores {
	return stores{
		pgURL:     func(db string) string { return "postgres://postgres@" + p.pg + "/" + db + "?sslmode=disable" },
		shardDBs:  []string{"chapper_shard_0", "chapper_shard_1"},
		redisAddr: p.redis,
		searchURL: "http://" + p.search,
	}
}

// startCrashTest begins a crash test: a context ending after timeout, the
// seed of its random moments (logged) and a generator on stream, a data
// directory with no orphans left in it, and free ports.
func startCrashTest(t *testing.T, timeout time.Duration, stream uint64) (context.Context, uint64, *rand.Rand, string, devPorts) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	dir := filepath.Join(t.TempDir(), "var")
	killOrphans(t, dir)
	return ctx, seed, rand.New(rand.NewPCG(seed, stream)), dir, newDevPorts(t)
}

// randomMoment returns a wait between min and max: when to kill.
func randomMoment(rng *rand.Rand, min, max time.Duration) time.Duration {
	return min + time.Duration(rng.Int64N(int64(max-min)))
}

// loadFor runs l.load against grpcAddr in the background; the returned
// function stops it and waits.
func loadFor(ctx context.Context, t *testing.T, l *ledger, grpcAddr string) func() {
	lctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.load(lctx, t, grpcAddr, 4, 50)
	}()
	return func() { cancel(); <-done }
}

// TestCrashDev SIGKILLs `chapper dev` (every part and the embedded stack
// in one process) at a random moment under load, crashRounds times, and
// starts it again on the same data directory each time. The phones resubmit
// what was not acknowledged. In the end every acknowledged record is once
// in Postgres, counted once in Redis and once in search.
func TestCrashDev(t *testing.T) {
	chapperBin(t)
	t.Parallel() // mostly waiting for processes: overlaps with the other crash and fault tests
	ctx, seed, rng, dir, ports := startCrashTest(t, 6*time.Minute, 1)
	dev := newProc(t, "chapper-dev", ports.args(dir)...)
	l := newLedger(seed)
	for round := range crashRounds {
		dev.Start(t)
		waitReady(t, ctx, dev, ports.admin, 3*time.Minute)
		before := l.acked()
		stop := loadFor(ctx, t, l, ports.grpc)
		// at least one acknowledged Submit, then a random moment
		waitFor(t, ctx, time.Minute, "an acknowledged Submit", func() bool { return l.acked() > before })
		time.Sleep(randomMoment(rng, 200*time.Millisecond, 2*time.Second))
		dev.Kill()
		stop()
		t.Logf("round %d: %d Submits acknowledged before the SIGKILL, %d records in all", round, l.acked()-before, l.records())
	}
	dev.Start(t)
	waitReady(t, ctx, dev, ports.admin, 3*time.Minute)
	l.settle(ctx, t, ports.grpc, time.Minute)
	verify(t, ctx, ports.stores(), l.want(t), 3*time.Minute)
	if err := dev.Stop(); err != nil {
		t.Errorf("chapper dev did not stop cleanly: %v", err)
	}
}

// TestCrashPipelines runs ingest in `chapper dev -target=ingest` and each
// pipeline as its own `chapper serve -target=<p>` process, and SIGKILLs
// the pipelines in turn at random moments while ingest keeps taking
// records; each is started again. In the end every acknowledged record is
// once in every store.
func TestCrashPipelines(t *testing.T) {
	bin := chapperBin(t)
	t.Parallel()
	ctx, seed, rng, dir, ports := startCrashTest(t, 6*time.Minute, 2)
	dev := newProc(t, "chapper-dev", ports.args(dir, "-target=ingest")...)
	dev.Start(t)
	waitReady(t, ctx, dev, ports.admin, 3*time.Minute)
	s := ports.stores()
	router := s.pgURL("chapper_router")
	if out, err := exec.CommandContext(ctx, bin, "migrate", "-log.level=warn", "-migrate.router-url="+router).CombinedOutput(); err != nil {
		t.Fatalf("chapper migrate: %v\n%s", err, out)
	}
	pipes := map[string]*proc{}
	admins := map[string]string{}
	names := []string{"timeline", "persist", "search"}
	for _, n := range names {
		admins[n] = freeAddr(t)
		pipes[n] = newProc(t, "chapper-serve-"+n, servePipelineArgs(n, admins[n], ports)...)
		pipes[n].Start(t)
	}
	for _, n := range names {
		waitReady(t, ctx, pipes[n], admins[n], 2*time.Minute)
	}
	l := newLedger(seed)
	stop := loadFor(ctx, t, l, ports.grpc)
	for round := range crashRounds {
		n := names[round%len(names)]
		before := l.acked()
		waitFor(t, ctx, time.Minute, "an acknowledged Submit", func() bool { return l.acked() > before })
		time.Sleep(randomMoment(rng, 200*time.Millisecond, 2*time.Second))
		pipes[n].Kill()
		t.Logf("round %d: killed %s; %d records so far", round, n, l.records())
		time.Sleep(randomMoment(rng, 0, time.Second))
		pipes[n].Start(t)
		waitReady(t, ctx, pipes[n], admins[n], 2*time.Minute)
	}
	stop()
	l.settle(ctx, t, ports.grpc, time.Minute)
	verify(t, ctx, s, l.want(t), 3*time.Minute)
	for _, n := range names {
		if err := pipes[n].Stop(); err != nil {
			t.Errorf("%s did not stop cleanly: %v", n, err)
		}
	}
	if err := dev.Stop(); err != nil {
		t.Errorf("chapper dev did not stop cleanly: %v", err)
	}
}

// servePipelineArgs are the flags of `chapper serve -target=name` against
// the dev stack at ports, with a short group session so that the group
// gives a killed member's partitions away in seconds.
func servePipelineArgs(name, admin string, ports devPorts) []string {
	s := ports.stores()
	return []string{"serve", "-target=" + name, "-log.level=warn", "-admin.addr=" + admin,
		"-kafka.brokers=" + ports.kafka,
		"-timeline.redis-addrs=" + ports.redis,
		"-persist.router-url=" + s.pgURL("chapper_router"),
		"-search.addresses=" + s.searchURL,
		fmt.Sprintf("-%s.session-timeout=6s", name), fmt.Sprintf("-%s.heartbeat-interval=1s", name),
		fmt.Sprintf("-%s.rebalance-timeout=6s", name)}
}

// waitFor polls cond until it holds, failing t after timeout.
func waitFor(t testing.TB, ctx context.Context, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("no %s within %v", what, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
