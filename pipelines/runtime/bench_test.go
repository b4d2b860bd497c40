package runtime_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/chapper/chapper/pipelines/runtime"
	"github.com/chapper/chapper/pipelines/runtime/sinktest"
	"github.com/chapper/chapper/services/devstack/devtest"
)

// benchConsumerRecords is the workload of BenchmarkConsumer.
const benchConsumerRecords = 100_000

// BenchmarkConsumer measures the runtime alone (a sink that only counts),
// from a filled topic set (12 partitions per topic, 100k records of all
// kinds): (a) the live consumer in a group, (b) ReadRanges over the same
// offsets, both decoding every record and at production batch settings,
// next to (c) the raw baseline, kafka-go partition readers reading every
// partition concurrently with no decoding and no batching. Each figure is
// the best of three runs.
func BenchmarkConsumer(b *testing.B) {
	k := devtest.Kafka(b)
	sinktest.CreateTopicsN(b, k.Addr(), 12)
	recs := sinktest.Records(43, benchConsumerRecords)
	msgs := make([]kafka.Message, len(recs))
	for i, r := range recs {
		msgs[i] = sinktest.Message(b, r)
	}
	sinktest.Produce(b, k.Addr(), msgs...)
	end := sinktest.EndOffsets(b, k.Addr())

	var live, ranges, raw float64
	b.ResetTimer()
	for i := range b.N {
		for round := range 3 {
			cfg := sinktest.ConsumerConfig(k.Addr(), fmt.Sprintf("bench-%d-%d", i, round))
			cfg.BatchSize = runtime.DefaultBatchSize
			cfg.Linger = runtime.DefaultLinger
			rate, _ := sinktest.MeasurePipeline(b, cfg, runtime.SinkFunc("bench", func(context.Context, []runtime.Record) error { return nil }), benchConsumerRecords)
			live = max(live, rate)
			ranges = max(ranges, benchReadRanges(b, cfg, end))
			raw = max(raw, benchRawReaders(b, k.Addr(), end))
		}
	}
	b.StopTimer()
	b.ReportMetric(live, "records/s")
	b.ReportMetric(ranges, "ranges-records/s")
	b.ReportMetric(raw, "raw-records/s")
	fmt.Printf("runtime: live consumer %.0f rec/s = %.0f%% of raw partition readers %.0f rec/s; ReadRanges %.0f rec/s = %.0f%% of raw, %.0f%% of live (%d records)\n",
		live, 100*live/raw, raw, ranges, 100*ranges/raw, 100*ranges/live, benchConsumerRecords)
}

// benchReadRanges reads every record with ReadRanges into a counting sink,
// timing from the first write to the return.
func benchReadRanges(b *testing.B, cfg runtime.Config, end map[sinktest.TopicPartition]int64) float64 {
	var first atomic.Int64
	sink := runtime.SinkFunc("bench", func(context.Context, []runtime.Record) error {
		first.CompareAndSwap(0, time.Now().UnixNano())
		return nil
	})
	stats, err := runtime.ReadRanges(context.Background(), runtime.RangeConfig{Config: cfg}, rangesOf(end, nil), sink)
	last := time.Now()
	if err != nil || stats.Written != benchConsumerRecords {
		b.Fatalf("ReadRanges = %+v, %v; want %d written", stats, err, benchConsumerRecords)
	}
	return float64(stats.Written) / last.Sub(time.Unix(0, first.Load())).Seconds()
}

// benchRawReaders reads every partition to its end with one kafka-go
// reader each, timing from the first record to the last.
func benchRawReaders(b *testing.B, addr string, end map[sinktest.TopicPartition]int64) float64 {
	var (
		first atomic.Int64
		total atomic.Int64
		wg    sync.WaitGroup
		mu    sync.Mutex
		last  time.Time
	)
	for tp, e := range end {
		if e == 0 {
			continue
		}
		wg.Go(func() {
			r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{addr}, Topic: tp.Topic, Partition: tp.Partition,
				MinBytes: 1, MaxBytes: 16 << 20, MaxWait: 500 * time.Millisecond})
			defer r.Close()
			for {
				m, err := r.FetchMessage(context.Background())
				if err != nil {
					b.Errorf("reading %s/%d: %v", tp.Topic, tp.Partition, err)
					return
				}
				first.CompareAndSwap(0, time.Now().UnixNano())
				total.Add(1)
				if m.Offset == e-1 {
					now := time.Now()
					mu.Lock()
					if now.After(last) {
						last = now
					}
					mu.Unlock()
					return
				}
			}
		})
	}
	wg.Wait()
	if total.Load() != benchConsumerRecords {
		b.Fatalf("raw readers read %d records, want %d", total.Load(), benchConsumerRecords)
	}
	return float64(total.Load()) / last.Sub(time.Unix(0, first.Load())).Seconds()
}
