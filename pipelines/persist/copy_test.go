package persist_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/chapper/chapper/pipelines/persist"
	"github.com/chapper/chapper/pipelines/persist/persisttest"
	"github.com/chapper/chapper/pipelines/runtime"
)

// pathsSince returns how many database batches took each path since
// before (persist.Paths()).
func pathsSince(before map[string]float64) map[string]float64 {
	out := persist.Paths()
	for p, n := range before {
		out[p] -= n
	}
	maps.DeleteFunc(out, func(_ string, n float64) bool { return n == 0 })
	return out
}

// TestOptimisticCopy follows one database through the sink's write paths:
// fresh rows are COPYed; a batch holding a row stored already falls back
// to INSERT ... ON CONFLICT DO NOTHING in the same transaction, storing
// its new rows once and counting the others as duplicates; the next
// CopyBackoff batches go to the INSERT straight away, then COPY again.
func TestOptimisticCopy(t *testing.T) {
	env := persisttest.New(t)
	sink := newSink(t, env)
	ctx := testContext(t)
	var all []proto.Message
	step := func(name string, batch []runtime.Record, wantPaths map[string]float64, wantInserted, wantDuplicate float64) {
		t.Helper()
		before := persist.Paths()
		ins0, dup0 := persist.Rows()
		if err := sink.Write(ctx, batch); err != nil {
			t.Fatalf("%s: Write: %v", name, err)
		}
		if got := pathsSince(before); !maps.Equal(got, wantPaths) {
			t.Errorf("%s: paths %v, want %v", name, got, wantPaths)
		}
		ins, dup := persist.Rows()
		if ins-ins0 != wantInserted || dup-dup0 != wantDuplicate {
			t.Errorf("%s: counted %v inserted, %v duplicate; want %v, %v", name, ins-ins0, dup-dup0, wantInserted, wantDuplicate)
		}
	}
	// every record in Edinburgh: one database
	first := edinburgh(20)
	all = append(all, first...)
	step("fresh", records(0, first...), map[string]float64{"copy": 1}, 60, 0)

	second := edinburgh(10)
	all = append(all, second...)
	mixed := append(append([]proto.Message{}, second...), first[:5]...)
	step("fresh and redelivered", records(1000, mixed...), map[string]float64{"copy_then_insert": 1}, 30, 5)

	twice := edinburgh(2)
	all = append(all, twice...)
	step("in the backoff, with a record twice in the batch",
		append(records(2000, twice...), records(3000, twice[0])...), map[string]float64{"insert": 1}, 6, 1)
	for i := range persist.CopyBackoff - 1 {
		more := edinburgh(1)
		all = append(all, more...)
		step(fmt.Sprintf("backoff batch %d", i+2), records(int64(4000+10*i), more...), map[string]float64{"insert": 1}, 3, 0)
	}
	last := edinburgh(3)
	all = append(all, last...)
	step("after the backoff", records(9000, last...), map[string]float64{"copy": 1}, 9, 0)
	step("the first batch again", records(0, first...), map[string]float64{"copy_then_insert": 1}, 0, 60)

	if got := env.Total(t); got != len(all) {
		t.Errorf("rows = %d, want %d", got, len(all))
	}
	checkOnce(t, env, all)
}

// TestOverlappingWriters runs two persisters writing the same batches
// (spread over both databases) at the same time, as a replay beside the
// pipeline may: both finish (neither waits for the other across databases,
// a deadlock Postgres cannot see) and every record is stored once.
func TestOverlappingWriters(t *testing.T) {
	env := persisttest.New(t)
	a, b := newSink(t, env), newSink(t, env)
	ctx, cancel := context.WithTimeout(testContext(t), 45*time.Second)
	defer cancel()
	var all []proto.Message
	for round := range 4 {
		msgs := spread(uint64(23+round), 2000)
		all = append(all, msgs...)
		var batches [][]runtime.Record
		for i := 0; i < len(msgs); i += 100 {
			batches = append(batches, records(int64(i), msgs[i:i+100]...))
		}
		write := func(s *persist.Sink) error {
			for _, batch := range batches {
				var err error
				for range 5 { // a deadlock Postgres detected is transient
					if err = s.Write(ctx, batch); err == nil || ctx.Err() != nil {
						break
					}
				}
				if err != nil {
					return err
				}
			}
			return nil
		}
		var wg sync.WaitGroup
		errs := make([]error, 2)
		wg.Go(func() { errs[0] = write(a) })
		wg.Go(func() { errs[1] = write(b) })
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
	}
	if got := env.Total(t); got != len(all) {
		t.Errorf("rows = %d, want %d", got, len(all))
	}
	checkOnce(t, env, all)
}
