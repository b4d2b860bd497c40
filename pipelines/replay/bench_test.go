package replay_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chapper/chapper/pipelines/replay"
	"github.com/chapper/chapper/pipelines/runtime"
	"github.com/chapper/chapper/pipelines/runtime/sinktest"
	"github.com/chapper/chapper/pipelines/search/searchtest"
	"github.com/chapper/chapper/services/devstack/devtest"
)

// benchRecords is the records each run of BenchmarkReplay writes: enough
// that a run of the fastest sink (persist) lasts about a second, so the
// replay's fixed costs (planning, dialling the partitions, the last
// checkpoint) weigh little.
const benchRecords = 10_000

// benchSink makes a fresh sink on one store server per call: a new key
// prefix in the shared redis-server, new router and shard databases on the
// shared Postgres, a new index prefix on one search server.
type benchSink struct {
	name string
	// rounds of live, replay, replay, live: more for the sinks whose runs
	// are short, so that a burst of load elsewhere weighs less
	rounds int
	store  func(b *testing.B) func() runtime.Sink
}

var benchSinks = []benchSink{
	{"timeline", 3, sharedStore(newTimeline)},
	{"persist", 3, sharedStore(newPersist)},
	{"search", 2, func(b *testing.B) func() runtime.Sink {
		srv := searchtest.Start(b)
		return func() runtime.Sink { return searchtest.NewSink(b, srv.Config(b)) }
	}},
}

// sharedStore adapts a test sink constructor whose stores already share
// one server.
func sharedStore(newSink func(testing.TB) (runtime.Sink, store)) func(b *testing.B) func() runtime.Sink {
	return func(b *testing.B) func() runtime.Sink {
		return func() runtime.Sink {
			s, _ := newSink(b)
			return s
		}
	}
}

// rates are the records/s of several runs.
type rates []float64

func (r *rates) add(n int64, d time.Duration) { *r = append(*r, float64(n)/d.Seconds()) }

// median is the middle run's rate (the mean of the middle two).
func (r rates) median() float64 {
	s := slices.Sorted(slices.Values(r))
	if len(s) == 0 {
		return 0
	}
	return (s[(len(s)-1)/2] + s[len(s)/2]) / 2
}

// BenchmarkReplay measures, per sink, chapper replay's throughput next to
// the live pipeline's (the runtime consumer in a group) in the same run:
// the same records (benchRecords, all three kinds, 12 partitions), the same
// batch size and linger (the runtime defaults), the same store server,
// each run into a fresh store on it. The runs go live, replay, replay,
// live (three rounds of these for timeline and persist, whose runs take a
// second or two, two for search), so that a store slowing down (or speeding up) as the run
// goes on, or a burst of load elsewhere, weighs on both alike; each side's
// figure is the median of its runs. Both are timed over the same window,
// from the start of the first Write to the end of the Write that completed
// the
// records (<sink>-records-per-s, target >= 90% of live); the live
// pipeline's group join and replay's planning and dialling fall outside
// it. <sink>-whole-replay-records-per-s is replay's own Summary.Elapsed
// (what its summary prints: from reading the first records to the last
// checkpoint), next to the same live figure.
func BenchmarkReplay(b *testing.B) {
	k := devtest.Kafka(b)
	sinktest.CreateTopics(b, k.Addr())
	sinktest.ProduceRecords(b, k.Addr(), sinktest.Records(41, benchRecords)...)
	for _, se := range benchSinks {
		b.Run(se.name, func(b *testing.B) {
			newSink := se.store(b)
			var rep, whole, live rates
			runs := 0
			liveRun := func() {
				runs++
				cfg := sinktest.ConsumerConfig(k.Addr(), fmt.Sprintf("bench-live-%s-%d", se.name, runs))
				cfg.BatchSize, cfg.Linger = runtime.DefaultBatchSize, runtime.DefaultLinger
				perSecond, _ := sinktest.MeasurePipeline(b, cfg, newSink(), benchRecords)
				live = append(live, perSecond)
			}
			replayRun := func() {
				runs++
				sum, window := benchReplay(b, replay.Config{Brokers: []string{k.Addr()}, Sink: newSink(),
					Group: fmt.Sprintf("bench-replay-%s-%d", se.name, runs)}, benchRecords, 5*time.Minute)
				rep.add(sum.Written, window)
				whole.add(sum.Written, sum.Elapsed)
			}
			for b.Loop() {
				for range se.rounds {
					liveRun()
					replayRun()
					replayRun()
					liveRun()
				}
			}
			b.Logf("records/s per run, in order: live %.0f; replay %.0f", live, rep)
			base := fmt.Sprintf("live %s pipeline (consumer group), first to last Write; same %d records, batch size, linger and store server; same run; load %s",
				se.name, benchRecords, loadAverage())
			devtest.ReportFigure(b, devtest.Figure{
				Name: "BenchmarkReplay/" + se.name + "-records-per-s", Value: rep.median(), Unit: "records/s",
				BaselineName: base, Baseline: live.median(), Target: "ratio>=0.9",
			})
			devtest.ReportFigure(b, devtest.Figure{
				Name: "BenchmarkReplay/" + se.name + "-whole-replay-records-per-s", Value: whole.median(), Unit: "records/s",
				BaselineName: base, Baseline: live.median(),
			})
			b.ReportMetric(rep.median(), "records/s")
			b.ReportMetric(live.median(), "live-records/s")
			b.ReportMetric(whole.median(), "whole-replay-records/s")
			b.ReportMetric(100*rep.median()/live.median(), "%-of-live")
		})
	}
}

// benchReplay runs one replay that must write want records and returns
// its summary and the time from the start of its first Write to the end
// of its last (the window MeasurePipeline times the live pipeline over).
func benchReplay(b *testing.B, cfg replay.Config, want int64, budget time.Duration) (*replay.Summary, time.Duration) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()
	var first, last atomic.Int64
	sink := cfg.Sink
	cfg.Sink = runtime.SinkFunc(sink.Name(), func(ctx context.Context, batch []runtime.Record) error {
		first.CompareAndSwap(0, time.Now().UnixNano())
		err := sink.Write(ctx, batch)
		last.Store(time.Now().UnixNano())
		return err
	})
	sum, err := replay.Run(ctx, cfg)
	if err != nil || sum.Written != want {
		b.Fatalf("replay wrote %d of %d records (%.0f records/s, budget %v): %v", sum.Written, want, float64(sum.Written)/sum.Elapsed.Seconds(), budget, err)
	}
	return sum, time.Duration(last.Load() - first.Load())
}

// rebuildRecordsEnv overrides the records of BenchmarkSearchRebuild (for a
// quicker try; the figure's name says the count).
const rebuildRecordsEnv = "CHAPPER_BENCH_REBUILD_RECORDS"

// rebuildBudget bounds the rebuild in BenchmarkSearchRebuild, so that on
// a machine too busy for it the benchmark fails saying how far it got
// (within scripts/bench.sh's 30-minute test timeout, which would lose that).
const rebuildBudget = 20 * time.Minute

// rebuildSample is the records the live search pipeline writes in
// BenchmarkSearchRebuild for the baseline (a fifth of a smaller rebuild).
const rebuildSample = 20_000

// BenchmarkSearchRebuild measures the time to rebuild the search indices
// from the topics: 1,000,000 records (all three kinds, 12 partitions,
// produced with raw kafka-go batches) rebuilt by replay.RebuildSearch, the
// path of `chapper replay -sink=search -rebuild`: a new index generation
// and its templates, the replay from the beginning into it, the one POST
// /_aliases switch, until a _refresh made every record searchable through
// the aliases (checked with _count). The baseline is the time the live
// search pipeline would take for the same records at the rate it keeps
// over the first 20,000 of them, on the same server, in the same run.
// $CHAPPER_BENCH_REBUILD_RECORDS sets another count (the figure's name
// carries it).
func BenchmarkSearchRebuild(b *testing.B) {
	n := int64(1_000_000)
	if s := os.Getenv(rebuildRecordsEnv); s != "" {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil || v < 1000 {
			b.Fatalf("%s=%q: want a number of records >= 1000", rebuildRecordsEnv, s)
		}
		n = v
	}
	sample := min(rebuildSample, n/5)
	k := devtest.Kafka(b)
	sinktest.CreateTopics(b, k.Addr())
	start := time.Now()
	for i := int64(0); i < n; i += 50_000 {
		sinktest.ProduceRecords(b, k.Addr(), sinktest.Records(uint64(i), int(min(50_000, n-i)))...)
	}
	b.Logf("produced %d records in %v", n, time.Since(start))
	srv := searchtest.Start(b)

	var took, projected time.Duration
	for b.Loop() {
		cfg := sinktest.ConsumerConfig(k.Addr(), "bench-rebuild-live")
		cfg.BatchSize, cfg.Linger = runtime.DefaultBatchSize, runtime.DefaultLinger
		liveRate, _ := sinktest.MeasurePipeline(b, cfg, searchtest.NewSink(b, srv.Config(b)), sample)
		projected = time.Duration(float64(n) / liveRate * float64(time.Second))

		// chapper replay -sink=search -rebuild: a new generation, the
		// replay into it, the one POST /_aliases switch
		scfg := srv.Config(b)
		ctx, cancel := context.WithTimeout(context.Background(), rebuildBudget)
		start := time.Now()
		gen, sum, err := replay.RebuildSearch(ctx, scfg, replay.Config{Brokers: []string{k.Addr()}})
		cancel()
		if err != nil || sum.Written != n {
			b.Fatalf("the rebuild into generation %q wrote %d of %d records (budget %v): %v", gen, sum.Written, n, rebuildBudget, err)
		}
		searchtest.Refresh(b, scfg)
		took = time.Since(start)
		if got := searchtest.Total(b, scfg); int64(got) != n {
			b.Fatalf("the rebuilt indices hold %d documents, want %d", got, n)
		}
	}
	devtest.ReportFigure(b, devtest.Figure{
		Name: fmt.Sprintf("BenchmarkSearchRebuild/rebuild-%d-records-s", n), Value: took.Seconds(), Unit: "s",
		BaselineName: fmt.Sprintf("live search pipeline over the first %d of the same records, same server, same run, projected to %d; load %s", sample, n, loadAverage()),
		Baseline:     projected.Seconds(),
	})
	b.ReportMetric(took.Seconds(), "rebuild-s")
	b.ReportMetric(float64(n)/took.Seconds(), "records/s")
	b.ReportMetric(projected.Seconds(), "live-projected-s")
}

// loadAverage returns the 1-minute load average, for the figures' baseline
// names (figures from a busy machine are only comparable to their own
// baseline).
func loadAverage() string {
	raw, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	for i, c := range raw {
		if c == ' ' {
			return string(raw[:i])
		}
	}
	return "unknown"
}
