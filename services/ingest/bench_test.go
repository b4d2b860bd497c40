package ingest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime/pprof"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chapper/chapper/services/devstack"
	"github.com/chapper/chapper/services/devstack/devtest"
	"github.com/chapper/chapper/services/loadgen"
	"github.com/segmentio/kafka-go"
)

// Benchmark workload (issue 3): 16 concurrent producers or clients,
// batches of 100, and an offered rate of 7,000 records/s for latency.
const (
	benchClients   = 16
	benchBatch     = 100
	benchRecords   = 160_000 // per throughput round
	benchRounds    = 3       // raw and ingest alternate; the median counts
	benchRate      = 7000
	benchPacedRecs = 70_000 // 10 s at benchRate
)

// BenchmarkIngest measures, in one run against one in-process kfake broker
// (in memory; CHAPPER_BENCH_SYNC=1 gives it a data directory with SyncWrites,
// as chapper dev runs it), the raw kafka-go
// produce rate and ingest's throughput with the same writer settings (the
// median of three alternating rounds each, since this machine is shared),
// then the ack latency of both at 7,000 records/s offered. Ingest runs as
// production does: authentication (an ES256 token), the limits and the
// shared id store (a private redis-server) on; the id store's own cost,
// redis-server's CPU time per record, is reported separately. A third
// side in the same rounds, ingest with authentication and the limits on
// but ids in process only (the auth-limits- figures), shows what ingest
// costs next to raw without the shared store, whose cost those figures
// leave out entirely.
//
// Both sides start from encoded records: the raw producers write
// pre-built Kafka messages, the ingest clients send pre-encoded
// SubmitRequests, so the difference is ingest's own work (gRPC, token,
// limits, decoding, validation, dedup and id store, encoding) and the
// clients' gRPC framing.
func BenchmarkIngest(b *testing.B) {
	fsync := os.Getenv("CHAPPER_BENCH_SYNC") == "1"
	label := "kfake in-process, in memory"
	if fsync {
		label = "kfake in-process, data directory with SyncWrites"
	}
	for range b.N {
		kcfg := devstack.KafkaConfig{Addr: "127.0.0.1:0", Partitions: 12}
		if fsync {
			kcfg.DataDir, kcfg.SyncWrites = b.TempDir(), true
		}
		k, err := devstack.StartKafka(kcfg)
		if err != nil {
			b.Fatal(err)
		}
		r := startAuthIngest(b, k.Addr())
		local, localToken := startAuthOnly(b, k.Addr())
		cfg := testConfig(k.Addr())
		cfg.ProduceTimeout = 10 * time.Second
		rawTransport := &kafka.Transport{ClientID: "bench-raw"}
		// the transport's pooled connections each hold a goroutine
		defer rawTransport.CloseIdleConnections()
		raw := newWriter(cfg, rawTransport, quietLog)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		write := func(msgs []kafka.Message) error { return raw.WriteMessages(ctx, msgs...) }
		rng := rand.New(rand.NewPCG(3, 4))
		encode := func(records int) [][]byte {
			reqs, err := loadgen.Encode(rng, "visits", records, benchBatch)
			if err != nil {
				b.Fatal(err)
			}
			return reqs
		}
		submitTo := func(addr, token string, reqs [][]byte, records int, rate float64) loadgen.Result {
			res, err := loadgen.Run(ctx, loadgen.Config{
				Addr: addr, Records: records, Rate: rate, Clients: benchClients, BatchSize: benchBatch,
				Kind: "visits", Timeout: 10 * time.Second, Requests: reqs, Token: token,
			})
			if err != nil || res.Failed > 0 || res.Accepted != records {
				b.Fatalf("ingest run: %v; %v", err, res)
			}
			return res
		}
		submit := func(reqs [][]byte, records int, rate float64) loadgen.Result {
			return submitTo(r.addr, r.token, reqs, records, rate)
		}

		var rawRates, ingestRates, localRates []float64
		var rawCPU, ingestCPU, redisCPU, localCPU time.Duration
		for range benchRounds {
			batches := rawBatches(b, benchRecords/benchBatch)
			reqs, localReqs := encode(benchRecords), encode(benchRecords)
			cpu0, start := cpuTime(), time.Now()
			phase("raw", func() { paced(ctx, b, batches, 0, write) })
			rawRates = append(rawRates, float64(benchRecords)/time.Since(start).Seconds())
			cpu1, rc0 := cpuTime(), r.redisCPU(b)
			phase("ingest", func() { ingestRates = append(ingestRates, submit(reqs, benchRecords, 0).PerSecond()) })
			rawCPU += cpu1 - cpu0
			cpu2 := cpuTime()
			ingestCPU += cpu2 - cpu1
			redisCPU += r.redisCPU(b) - rc0
			phase("auth-limits", func() {
				localRates = append(localRates, submitTo(local.addr, localToken, localReqs, benchRecords, 0).PerSecond())
			})
			localCPU += cpuTime() - cpu2
		}
		// CPU time per record of this whole process (producers or clients,
		// ingest, broker): unlike the rates, it hardly moves when other
		// work shares the machine.
		perRec := func(d time.Duration) float64 { return float64(d) / 1e3 / (benchRounds * benchRecords) }
		rawRate, ingestRate := median(rawRates), median(ingestRates)

		interval := time.Second * benchBatch / benchRate
		rawLat := paced(ctx, b, rawBatches(b, benchPacedRecs/benchBatch), interval, write)
		lat := submit(encode(benchPacedRecs), benchPacedRecs, benchRate)
		cancel()
		_ = raw.Close()
		_ = k.Close()

		fmt.Printf("ingest with auth + limits + shared id store (%s): %d clients vs %d producers, batches of %d, acks=all, %s; median of %d rounds: ingest %s, raw %s, ingest with ids in process only %s; CPU per record of this process (clients or producers + ingest + broker)\n",
			label, benchClients, benchClients, benchBatch, cfg.Compression, benchRounds, rates(ingestRates), rates(rawRates), rates(localRates))
		const rawName = "raw kafka-go producers, same writer settings and broker"
		devtest.ReportFigure(b, devtest.Figure{Name: "BenchmarkIngest/ingest-records-per-s", Value: ingestRate, Unit: "records/s",
			BaselineName: rawName, Baseline: rawRate, Target: "ratio>=0.8"})
		devtest.ReportFigure(b, devtest.Figure{Name: "BenchmarkIngest/ingest-cpu-us-per-record", Value: perRec(ingestCPU), Unit: "us",
			BaselineName: rawName, Baseline: perRec(rawCPU), Target: "ratio<=1.5"})
		devtest.ReportFigure(b, devtest.Figure{Name: "BenchmarkIngest/idstore-redis-cpu-us-per-record", Value: perRec(redisCPU), Unit: "us",
			BaselineName: "ingest process CPU per record", Baseline: perRec(ingestCPU)})
		devtest.ReportFigure(b, devtest.Figure{Name: "BenchmarkIngest/auth-limits-records-per-s", Value: median(localRates), Unit: "records/s",
			BaselineName: rawName, Baseline: rawRate, Target: "ratio>=0.8"})
		devtest.ReportFigure(b, devtest.Figure{Name: "BenchmarkIngest/auth-limits-cpu-us-per-record", Value: perRec(localCPU), Unit: "us",
			BaselineName: rawName, Baseline: perRec(rawCPU), Target: "ratio<=1.5"})
		devtest.ReportFigure(b, devtest.Figure{Name: "BenchmarkIngest/ingest-p50-ms-at-7000", Value: ms(lat.Percentile(50)), Unit: "ms",
			BaselineName: rawName + ", same rate", Baseline: ms(pct(rawLat, 50))})
		devtest.ReportFigure(b, devtest.Figure{Name: "BenchmarkIngest/ingest-p99-ms-at-7000", Value: ms(lat.Percentile(99)), Unit: "ms",
			BaselineName: rawName + ", same rate", Baseline: ms(pct(rawLat, 99))})
	}
}

// phase runs fn with the pprof label phase=name, so that a -cpuprofile of
// the benchmark splits by side: the raw producers' goroutines and the
// ingest clients' carry it (goroutines inherit labels from the one that
// starts them); the gRPC server's, the broker's and ingest's own writer's
// do not (they start outside fn), so they show up unlabelled, whatever
// the phase. go tool pprof -tagfocus phase=raw shows the raw side.
func phase(name string, fn func()) {
	pprof.Do(context.Background(), pprof.Labels("phase", name), func(context.Context) { fn() })
}

// cpuTime returns the CPU time this process used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func pct(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[int(float64(len(sorted)-1)*p/100)]
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

func rates(xs []float64) string {
	out := make([]string, len(xs))
	for i, x := range xs {
		out[i] = strconv.FormatFloat(x/1000, 'f', 0, 64) + "k"
	}
	return fmt.Sprint(out)
}

// rawBatches builds n batches of benchBatch visits as ingest would produce
// them: protobuf value, locality key, the four headers.
func rawBatches(tb testing.TB, n int) [][]kafka.Message {
	tb.Helper()
	out, err := loadgen.KafkaBatches(rand.New(rand.NewPCG(1, 2)), n, benchBatch)
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

// paced writes the batches from benchClients goroutines, one batch every
// interval (0: as fast as they go), and returns each write's latency from
// its scheduled start, sorted.
func paced(ctx context.Context, tb testing.TB, batches [][]kafka.Message, interval time.Duration, write func([]kafka.Message) error) []time.Duration {
	tb.Helper()
	type slot struct {
		msgs  []kafka.Message
		start time.Time
	}
	slots := make(chan slot)
	go func() {
		defer close(slots)
		start := time.Now()
		for i, m := range batches {
			at := time.Now()
			if interval > 0 {
				at = start.Add(time.Duration(i) * interval)
				time.Sleep(time.Until(at))
			}
			select {
			case slots <- slot{m, at}:
			case <-ctx.Done():
				return
			}
		}
	}()
	var (
		mu   sync.Mutex
		lats []time.Duration
		wg   sync.WaitGroup
		errs []error
	)
	for range benchClients {
		wg.Go(func() {
			for s := range slots {
				err := write(s.msgs)
				took := time.Since(s.start)
				mu.Lock()
				lats = append(lats, took)
				if err != nil {
					errs = append(errs, err)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		tb.Fatalf("%d raw writes failed, first: %v", len(errs), errs[0])
	}
	slices.Sort(lats)
	return lats
}
