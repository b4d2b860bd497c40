package sinktest

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chapper/chapper/pipelines/runtime"
)

// MeasurePipeline runs the runtime with cfg and sink until the sink has
// written n records, for benchmarks of a whole pipeline. It times from the
// first Write to the Write that completed the n-th record (the records
// that Write took past n count too), stops the
// consumer, and returns records/s and the batches the sink got, in order,
// so a benchmark can issue the same batches to the store bare.
func MeasurePipeline(tb testing.TB, cfg runtime.Config, sink runtime.Sink, n int64) (float64, [][]runtime.Record) {
	tb.Helper()
	var (
		written atomic.Int64
		start   atomic.Int64
		end     = make(chan time.Time, 1)
		counted atomic.Int64 // records written when the run ended
		mu      sync.Mutex
		batches [][]runtime.Record
	)
	timed := runtime.SinkFunc(sink.Name(), func(ctx context.Context, batch []runtime.Record) error {
		start.CompareAndSwap(0, time.Now().UnixNano())
		if err := sink.Write(ctx, batch); err != nil {
			return err
		}
		mu.Lock()
		batches = append(batches, batch)
		mu.Unlock()
		// the Write that takes the count to n or past it ends the run
		if w := written.Add(int64(len(batch))); w >= n && w-int64(len(batch)) < n {
			counted.Store(w)
			end <- time.Now()
		}
		return nil
	})
	r := Start(tb, cfg, timed)
	var last time.Time
	select {
	case last = <-end:
	case <-time.After(2 * time.Minute):
		tb.Fatalf("pipeline wrote %d of %d records in 2 minutes", written.Load(), n)
	}
	r.Stop(tb)
	return float64(counted.Load()) / last.Sub(time.Unix(0, start.Load())).Seconds(), batches
}
