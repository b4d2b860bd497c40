package replay_test

import (
	"context"
	"testing"
	"time"

	"github.com/chapper/chapper/pipelines/replay"
	"github.com/chapper/chapper/pipelines/runtime"
	"github.com/chapper/chapper/pipelines/runtime/sinktest"
	"github.com/chapper/chapper/services/devstack/devtest"
)

// benchRecords is the records each pipeline run writes.
const benchRecords = 5000

// BenchmarkReplay measures, per sink, replay's throughput next to the live
// pipeline's (the runtime consumer in a group) over the same records, in
// the same run, each into a fresh store: records/s is replay's,
// live-records/s the baseline, %-of-live their ratio (target >= 90).
func BenchmarkReplay(b *testing.B) {
	for _, se := range sinks {
		b.Run(se.name, func(b *testing.B) {
			k := devtest.Kafka(b)
			sinktest.CreateTopics(b, k.Addr())
			sinktest.ProduceRecords(b, k.Addr(), sinktest.Records(41, benchRecords)...)
			var rep, live float64
			for b.Loop() {
				sink, _ := se.new(b)
				cfg := sinktest.ConsumerConfig(k.Addr(), "bench-live-"+se.name)
				cfg.BatchSize, cfg.Linger = runtime.DefaultBatchSize, runtime.DefaultLinger
				live, _ = sinktest.MeasurePipeline(b, cfg, sink, benchRecords)

				sink, _ = se.new(b)
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				sum, err := replay.Run(ctx, replay.Config{Brokers: []string{k.Addr()}, Sink: sink, Group: "bench-replay-" + se.name})
				cancel()
				if err != nil || sum.Written != benchRecords {
					b.Fatalf("replay = %+v, %v", sum, err)
				}
				rep = float64(sum.Written) / sum.Elapsed.Seconds()
			}
			b.ReportMetric(rep, "records/s")
			b.ReportMetric(live, "live-records/s")
			b.ReportMetric(100*rep/live, "%-of-live")
		})
	}
}
