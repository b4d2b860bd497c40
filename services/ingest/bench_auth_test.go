package ingest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chapper/chapper/services/auth"
	"github.com/chapper/chapper/services/devstack/devtest"
	"github.com/chapper/chapper/services/loadgen"
	"google.golang.org/grpc"
)

// Workload of BenchmarkIngestAuth: the ingest benchmark's clients and
// batches, fewer records per round (two configurations alternate). A
// Submit with the id store on waits one more round trip (its claim, a few
// ms when redis-server shares the two cores), so at 16 clients it is
// bound by that wait more than by CPU; the same pair with 64 clients, where
// both configurations keep the cores busy, is printed beside it.
const (
	benchAuthRecords = 60_000
	benchAuthRounds  = 3
	benchAuthClients = 64
)

// BenchmarkIngestAuth measures, in one run against one in-process kfake
// broker, Submit with authentication (ES256 token checked per call), the
// limits (per-canvasser token bucket, in-flight count) and the shared id
// store (a private redis-server) on, next to Submit with all of them off
// (the baseline), alternating rounds (median of three each, since this
// machine is shared). The token is an operator's (its records name many
// canvassers) and the rate limit is set far above the offered load, so the
// limits are paid for but never refuse. The id store's own cost is printed
// separately: redis-server's CPU time (from /proc/<pid>/stat, its
// append-only-file rewrites included) per record.
func BenchmarkIngestAuth(b *testing.B) {
	for range b.N {
		k := devtest.Kafka(b)
		off := startIngest(b, k.Addr(), func(c *Config) { c.RatePerCanvasser, c.MaxInFlight = 0, 0 })
		on := startAuthIngest(b, k.Addr())
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		rng := rand.New(rand.NewPCG(5, 6))
		run := func(addr, tok string, clients int) (float64, time.Duration) {
			reqs, err := loadgen.Encode(rng, "visits", benchAuthRecords, benchBatch)
			if err != nil {
				b.Fatal(err)
			}
			cpu0 := cpuTime()
			res, err := loadgen.Run(ctx, loadgen.Config{
				Addr: addr, Records: benchAuthRecords, Clients: clients, BatchSize: benchBatch,
				Kind: "visits", Timeout: 10 * time.Second, Requests: reqs, Token: tok,
			})
			if err != nil || res.Failed > 0 || res.Accepted != benchAuthRecords {
				b.Fatalf("run against %s: %v; %v", addr, err, res)
			}
			return res.PerSecond(), cpuTime() - cpu0
		}
		var offRates, onRates, off64, on64 []float64
		var offCPU, onCPU, redisCPU time.Duration
		for range benchAuthRounds {
			r, c := run(off.addr, "", benchClients)
			offRates, offCPU = append(offRates, r), offCPU+c
			rc0 := on.redisCPU(b)
			r, c = run(on.addr, on.token, benchClients)
			onRates, onCPU, redisCPU = append(onRates, r), onCPU+c, redisCPU+on.redisCPU(b)-rc0
			r, _ = run(off.addr, "", benchAuthClients)
			off64 = append(off64, r)
			r, _ = run(on.addr, on.token, benchAuthClients)
			on64 = append(on64, r)
		}
		cancel()
		perRec := func(d time.Duration) float64 { return float64(d) / 1e3 / (benchAuthRounds * benchAuthRecords) }
		offRate, onRate := median(offRates), median(onRates)
		fmt.Printf("ingest with auth + limits + shared id store vs with them off: %d clients, batches of %d, median of %d rounds: on %s, off %s; with %d clients: on %s, off %s; CPU per record of this process (clients + ingest + broker), %d clients\n",
			benchClients, benchBatch, benchAuthRounds, rates(onRates), rates(offRates), benchAuthClients, rates(on64), rates(off64), benchClients)
		devtest.ReportFigure(b, devtest.Figure{Name: "BenchmarkIngestAuth/on-records-per-s", Value: onRate, Unit: "records/s",
			BaselineName: "ingest with auth, limits and id store off, same broker", Baseline: offRate, Target: "ratio>=0.8"})
		devtest.ReportFigure(b, devtest.Figure{Name: "BenchmarkIngestAuth/on-records-per-s-64-clients", Value: median(on64), Unit: "records/s",
			BaselineName: "with them off, 64 clients", Baseline: median(off64)})
		devtest.ReportFigure(b, devtest.Figure{Name: "BenchmarkIngestAuth/on-cpu-us-per-record", Value: perRec(onCPU), Unit: "us",
			BaselineName: "ingest with them off", Baseline: perRec(offCPU)})
		devtest.ReportFigure(b, devtest.Figure{Name: "BenchmarkIngestAuth/idstore-redis-cpu-us-per-record", Value: perRec(redisCPU), Unit: "us",
			BaselineName: "ingest process CPU per record, on", Baseline: perRec(onCPU)})
	}
}

// authIngest is ingest with authentication, the limits and the shared id
// store on, as the benchmarks run it.
type authIngest struct {
	*running
	token string // an operator's: the generated records name many canvassers
	pid   int    // of the id store's redis-server
}

// startAuthIngest starts ingest with authentication (ES256), the limits
// (the rate limit far above any offered load: paid for, never refusing)
// and the shared id store on a private redis-server.
func startAuthIngest(b *testing.B, brokers string) *authIngest {
	b.Helper()
	rd := devtest.NewRedis(b)
	r, token := startAuthOnly(b, brokers, withStore(rd.Addr(), "bench:"))
	pid, err := redisPid(rd.DataDir())
	if err != nil {
		b.Fatal(err)
	}
	return &authIngest{running: r, token: token, pid: pid}
}

// startAuthOnly starts ingest with authentication and the limits on, as
// startAuthIngest does, and ids in this process only unless edit says
// otherwise; it returns an operator's token.
func startAuthOnly(b *testing.B, brokers string, edit ...func(*Config)) (*running, string) {
	b.Helper()
	opts, is := testAuth(b)
	opts = append(opts, benchServerOptions()...)
	edit = append(edit, func(c *Config) { c.RatePerCanvasser, c.RateBurst = 1e9, 1e6 })
	r := startIngestWith(b, brokers, opts, edit...)
	token, err := is.Issue("bench-operator", auth.RoleOperator, time.Hour, nil)
	if err != nil {
		b.Fatal(err)
	}
	return r, token
}

// benchServerOptions returns, with CHAPPER_BENCH_GRPC_TUNED=1, gRPC
// server options that services/server does not set today, to measure
// what they would give ingest: stream workers (a Submit runs on a
// goroutine whose stack already grew, instead of a fresh one per call), a
// shared write buffer and larger flow-control windows. Without the knob
// the benchmark's server is production's.
func benchServerOptions() []grpc.ServerOption {
	if os.Getenv("CHAPPER_BENCH_GRPC_TUNED") != "1" {
		return nil
	}
	return []grpc.ServerOption{
		grpc.NumStreamWorkers(uint32(runtime.GOMAXPROCS(0))),
		grpc.SharedWriteBuffer(true),
		grpc.InitialWindowSize(1 << 20),
		grpc.InitialConnWindowSize(1 << 20),
	}
}

// redisCPU returns the CPU time the id store's redis-server used so far.
func (a *authIngest) redisCPU(b *testing.B) time.Duration {
	b.Helper()
	d, err := procCPU(a.pid)
	if err != nil {
		b.Fatal(err)
	}
	return d
}

// redisPid reads the pid of the redis-server keeping its data in dir.
func redisPid(dir string) (int, error) {
	raw, err := os.ReadFile(filepath.Join(dir, "redis.pid"))
	if err != nil {
		return 0, fmt.Errorf("reading redis-server pid: %w", err)
	}
	return strconv.Atoi(strings.TrimSpace(string(raw)))
}

// procCPU returns the CPU time (user + system) process pid and its
// children it waited for used so far, from /proc/<pid>/stat (fields 14 to
// 17, in clock ticks of 1/100 s): for redis-server the children are its
// append-only-file rewrites, part of what the id store costs.
func procCPU(pid int) (time.Duration, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("reading redis-server CPU time: %w", err)
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	rest := string(raw[strings.LastIndexByte(string(raw), ')')+2:])
	f := strings.Fields(rest) // f[0] is field 3
	var ticks int64
	for _, s := range f[11:15] { // utime, stime, cutime, cstime
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("parsing /proc/%d/stat: %w", pid, err)
		}
		ticks += n
	}
	const tick = 10 * time.Millisecond // CLK_TCK = 100 on Linux
	return time.Duration(ticks) * tick, nil
}
