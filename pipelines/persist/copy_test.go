package persist_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/chapper/chapper/pipelines/persist"
	"github.com/chapper/chapper/pipelines/persist/persisttest"
	"github.com/chapper/chapper/pipelines/runtime"
	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"github.com/chapper/chapper/proto/locality"
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

// TestCopyStoresEveryColumn writes one record of each kind through the
// sink's binary COPY, with every optional column set, times off the
// microsecond and one before 2000 (PostgreSQL's epoch), and reads every
// column back as text: the COPY's own encoding must give the values the
// records hold.
func TestCopyStoresEveryColumn(t *testing.T) {
	env := persisttest.New(t)
	sink := newSink(t, env)
	ctx := testContext(t)
	loc := &canvassv1.Location{Latitude: 55.953251, Longitude: -3.188267}
	idx, err := locality.Of(loc.Latitude, loc.Longitude)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 5, 2, 9, 0, 0, 123_456_789, time.UTC)
	before2000 := time.Date(1999, 12, 31, 23, 59, 58, 500_000_999, time.UTC)
	visit := &canvassv1.Visit{Id: newID(), ReplacesId: newID(), DwellingId: "d-ü", Address: "1 High Street", Location: loc,
		CanvasserId: "c-1", VisitedAt: timestamppb.New(at), Outcome: canvassv1.Outcome_OUTCOME_NO_ANSWER}
	intention := &canvassv1.Intention{Id: newID(), ReplacesId: newID(), VisitId: newID(), ElectorId: "e-1", Option: "Green",
		Location: loc, RecordedAt: timestamppb.New(before2000), CanvasserId: "c-2"}
	followup := &canvassv1.FollowupRequest{Id: newID(), VisitId: newID(), ElectorId: "e-2", Issue: "bins",
		Method: canvassv1.Method_METHOD_TELEPHONE, Location: loc, RecordedAt: timestamppb.New(at), CanvasserId: "c-3"}
	before := persist.Paths()
	if err := sink.Write(ctx, records(41, visit, intention, followup)); err != nil {
		t.Fatalf("Write: %v", err)
	}
	// the corrections reach every database: one COPY each
	if got := pathsSince(before); len(got) != 1 || got["copy"] == 0 {
		t.Fatalf("paths %v, want COPY only", got)
	}
	received := t0.Add(time.Hour).Format("2006-01-02 15:04:05.999999")
	common := func(id string, offset int, replaces string) []string {
		return []string{fmt.Sprint(idx.Shard(6)), id, fmt.Sprint(int64(idx)), fmt.Sprint(idx.Chunk()), fmt.Sprint(idx.Region()),
			"55.953251", "-3.188267", "", received, "3", fmt.Sprint(offset), replaces}
	}
	const cols = "shard, id, locality, chunk, region, latitude, longitude, canvasser_id, received_at, kafka_partition, kafka_offset, replaces_id"
	tests := []struct {
		table, id, extra string
		want             []string
	}{
		{"visits", visit.Id, "visited_at, dwelling_id, address, outcome",
			append(common(visit.Id, 41, visit.ReplacesId), "2026-05-02 09:00:00.123456", "d-ü", "1 High Street", "no_answer")},
		{"intentions", intention.Id, "recorded_at, visit_id, elector_id, option",
			append(common(intention.Id, 42, intention.ReplacesId), "1999-12-31 23:59:58.5", intention.VisitId, "e-1", "Green")},
		{"followups", followup.Id, "recorded_at, visit_id, elector_id, issue, method",
			append(common(followup.Id, 43, ""), "2026-05-02 09:00:00.123456", followup.VisitId, "e-2", "bins", "telephone")},
	}
	canvassers := map[string]string{"visits": "c-1", "intentions": "c-2", "followups": "c-3"}
	pool := env.ShardPool(t, dbOf(t, env, visit))
	for _, tt := range tests {
		tt.want[7] = canvassers[tt.table]
		all := cols + ", " + tt.extra
		var texts []string
		for _, c := range strings.Split(all, ", ") {
			if strings.HasSuffix(c, "_at") {
				c = "(" + c + " AT TIME ZONE 'UTC')"
			}
			texts = append(texts, fmt.Sprintf("coalesce(%s::text, '')", c))
		}
		got := make([]string, len(texts))
		dest := make([]any, len(got))
		for i := range got {
			dest[i] = &got[i]
		}
		err := pool.QueryRow(ctx, fmt.Sprintf("SELECT %s FROM %s WHERE id = $1", strings.Join(texts, ", "), tt.table), tt.id).Scan(dest...)
		if err != nil {
			t.Fatalf("%s: reading the row: %v", tt.table, err)
		}
		for i, c := range strings.Split(all, ", ") {
			if got[i] != tt.want[i] {
				t.Errorf("%s.%s = %q, want %q", tt.table, c, got[i], tt.want[i])
			}
		}
	}
}
