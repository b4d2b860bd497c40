package timeline_test

import (
	"context"
	"errors"
	"maps"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/chapper/chapper/pipelines/runtime"
	"github.com/chapper/chapper/pipelines/timeline"
	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"github.com/chapper/chapper/proto/locality"
)

// A key of the wrong type, or a counter field that is not an integer, makes
// the write fatal before the script changed anything; once an operator
// repairs the key, the retried record is counted exactly once (issue 9,
// failure mode 2: the script used to mark the id seen first, and the retry
// then found it seen and never counted it).
func TestBrokenKeyIsFatalAndCountedOnceAfterRepair(t *testing.T) {
	tests := []struct {
		name   string
		key    func(prefix string) string
		break_ func(e *env, t *testing.T, key string)
		repair func(e *env, t *testing.T, key string)
		want   string // in the error
	}{
		{
			name: "counters key is a string",
			key:  func(p string) string { return timeline.CountersKey(p, edLocality) },
			break_: func(e *env, t *testing.T, key string) {
				must(t, e.client.Set(ctxT(t), key, "oops", 0).Err())
			},
			repair: func(e *env, t *testing.T, key string) { must(t, e.client.Del(ctxT(t), key).Err()) },
			want:   "is a string",
		},
		{
			name: "counter field is not an integer",
			key:  func(p string) string { return timeline.CountersKey(p, edLocality) },
			break_: func(e *env, t *testing.T, key string) {
				must(t, e.client.HSet(ctxT(t), key, "intentions:Green", "abc").Err())
			},
			repair: func(e *env, t *testing.T, key string) {
				must(t, e.client.HSet(ctxT(t), key, "intentions:Green", "0").Err())
			},
			want: "intentions:Green",
		},
		{
			name: "seen key is a list",
			key:  func(p string) string { return timeline.SeenKey(p, edLocality) },
			break_: func(e *env, t *testing.T, key string) {
				must(t, e.client.RPush(ctxT(t), key, "x").Err())
			},
			repair: func(e *env, t *testing.T, key string) { must(t, e.client.Del(ctxT(t), key).Err()) },
			want:   "is a list",
		},
		{
			name: "timeline key is a hash",
			key:  func(p string) string { return timeline.TimelineKey(p, edLocality) },
			break_: func(e *env, t *testing.T, key string) {
				must(t, e.client.HSet(ctxT(t), key, "a", "b").Err())
			},
			repair: func(e *env, t *testing.T, key string) { must(t, e.client.Del(ctxT(t), key).Err()) },
			want:   "is a hash",
		},
		{
			name: "records key is a set",
			key:  func(p string) string { return timeline.RecordsKey(p, edLocality) },
			break_: func(e *env, t *testing.T, key string) {
				must(t, e.client.SAdd(ctxT(t), key, "a").Err())
			},
			repair: func(e *env, t *testing.T, key string) { must(t, e.client.Del(ctxT(t), key).Err()) },
			want:   "is a set",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, timeline.Config{})
			key := tt.key(e.prefix)
			tt.break_(e, t, key)
			batch := recs(t, intention("Green", t0))
			err := e.sink.Write(ctxT(t), batch)
			var fatal *runtime.FatalError
			if !errors.As(err, &fatal) {
				t.Fatalf("Write on a broken key = %v, want a *runtime.FatalError", err)
			}
			if !strings.Contains(err.Error(), key) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not name the key %s and %q", err, key, tt.want)
			}
			// The runtime retries nothing after a fatal error, but an
			// operator's restart re-delivers the batch: before the repair it
			// is still fatal, after it the record counts once.
			if err := e.sink.Write(ctxT(t), batch); !errors.As(err, &fatal) {
				t.Fatalf("second Write on the broken key = %v, want fatal again", err)
			}
			tt.repair(e, t, key)
			e.write(t, batch)
			e.write(t, batch)
			st := e.state(t, edLocality)
			if st.counters["intentions"] != 1 || st.counters["intentions:Green"] != 1 {
				t.Errorf("counters after repair = %v, want intentions and intentions:Green 1", st.counters)
			}
			if len(st.timeline) != 1 || len(st.records) != 1 || len(st.seen) != 1 {
				t.Errorf("after repair: timeline %d, records %d, seen %d entries; want 1 each",
					len(st.timeline), len(st.records), len(st.seen))
			}
		})
	}
}

// The replaced hash is touched only by corrections: a plain record is
// counted beside a broken one, and a correction there is fatal before it
// changed anything; once the key is repaired, it replaces its original
// exactly once.
func TestBrokenReplacedKey(t *testing.T) {
	e := newEnv(t, timeline.Config{})
	key := timeline.ReplacedKey(e.prefix, edLocality)
	must(t, e.client.SAdd(ctxT(t), key, "a").Err())
	orig := intention("Green", t0)
	e.write(t, recs(t, orig))
	corr := corrects(orig, "No")
	batch := recs(t, corr)
	for range 2 {
		err := e.sink.Write(ctxT(t), batch)
		var fatal *runtime.FatalError
		if !errors.As(err, &fatal) {
			t.Fatalf("correction on a broken replaced key: Write = %v, want a *runtime.FatalError", err)
		}
		if !strings.Contains(err.Error(), key) || !strings.Contains(err.Error(), "is a set") {
			t.Errorf("error %q does not name the key %s and its type", err, key)
		}
		if st := e.state(t, edLocality); st.counters["intentions:Green"] != 1 || st.counters["intentions:No"] != 0 || len(st.seen) != 1 {
			t.Errorf("after the refused correction: counters %v, seen %v; want the original alone", st.counters, st.seen)
		}
	}
	must(t, e.client.Del(ctxT(t), key).Err())
	e.write(t, batch)
	e.write(t, batch)
	st := e.state(t, edLocality)
	if st.counters["intentions"] != 1 || st.counters["intentions:No"] != 1 || st.counters["intentions:Green"] != 0 {
		t.Errorf("counters after repair = %v, want intentions 1, intentions:No 1 and no intentions:Green", st.counters)
	}
	if len(st.timeline) != 1 || st.timeline[0].Member != corr.Id || len(st.seen) != 2 {
		t.Errorf("after repair: timeline %v, seen %v; want the correction alone on the timeline and both ids seen", st.timeline, st.seen)
	}
}

// A broken key of one locality does not stop a good record of the batch
// from being written; the batch as a whole is fatal.
func TestBrokenKeyLeavesOtherLocalitiesWritten(t *testing.T) {
	e := newEnv(t, timeline.Config{})
	must(t, e.client.Set(ctxT(t), timeline.CountersKey(e.prefix, edLocality), "oops", 0).Err())
	other := visit(canvassv1.Outcome_OUTCOME_ANSWERED, t0)
	other.Location = at(edLat+0.01, edLon)
	err := e.sink.Write(ctxT(t), recs(t, visit(canvassv1.Outcome_OUTCOME_ANSWERED, t0), other))
	var fatal *runtime.FatalError
	if !errors.As(err, &fatal) {
		t.Fatalf("Write = %v, want fatal", err)
	}
	loc, err := locality.Of(edLat+0.01, edLon)
	must(t, err)
	if st := e.state(t, int64(loc)); st.counters["visits"] != 1 || len(st.timeline) != 1 {
		t.Errorf("the good locality holds counters %v and %d timeline entries, want its visit counted", st.counters, len(st.timeline))
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// An id record of another type, or a string that is not an id record,
// stops the write before anything is written (the claim's SET NX GET
// refuses the one and leaves the other as it was), on a standalone Redis,
// where batch.lua claims, and on a cluster, where id.lua does; after the
// repair the record counts once.
func TestBrokenIDRecordIsFatal(t *testing.T) {
	for _, tt := range []struct {
		name string
		env  func(t *testing.T) *env
	}{
		{name: "standalone", env: func(t *testing.T) *env { return newEnv(t, timeline.Config{}) }},
		{name: "cluster", env: func(t *testing.T) *env { return clusterEnv(t, timeline.Config{Fixed: true}) }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			for _, b := range []struct {
				typ   string
				write func(e *env, key string) error
			}{
				// id records are strings now, but not this one
				{typ: "string", write: func(e *env, key string) error { return e.client.Set(ctxT(t), key, "oops", 0).Err() }},
				{typ: "list", write: func(e *env, key string) error { return e.client.RPush(ctxT(t), key, "oops").Err() }},
			} {
				t.Run(b.typ, func(t *testing.T) {
					e := tt.env(t)
					in := intention("Green", t0)
					key := timeline.IDKey(e.prefix, "intentions", in.GetId())
					must(t, b.write(e, key))
					t.Cleanup(func() { _ = e.client.Del(context.Background(), key).Err() })
					batch := recs(t, in)
					err := e.sink.Write(ctxT(t), batch)
					var fatal *runtime.FatalError
					if !errors.As(err, &fatal) || !strings.Contains(err.Error(), key) || !strings.Contains(err.Error(), "is a "+b.typ) {
						t.Fatalf("Write on a %s id record = %v, want a fatal error naming %s", b.typ, err, key)
					}
					if b.typ == "string" {
						if v := e.client.Get(ctxT(t), key).Val(); v != "oops" {
							t.Errorf("the broken id record was overwritten with %q", v)
						}
					}
					must(t, e.client.Del(ctxT(t), key).Err())
					e.write(t, batch)
					e.write(t, batch)
					if st := e.state(t, edLocality); st.counters["intentions:Green"] != 1 || len(st.timeline) != 1 {
						t.Errorf("after repair: counters %v, %d timeline entries; want counted once", st.counters, len(st.timeline))
					}
				})
			}
		})
	}
}

// The records of a locality waiting for their common write all fail with
// a broken records hash, also when a correction behind them in the batch
// has them written first: nothing of theirs is written (no seen id, no
// count, no news), the other locality's records are, and after the repair
// every record counts once.
func TestBrokenRecordsKeySkipsTheWaitingRecords(t *testing.T) {
	e := newEnv(t, timeline.Config{})
	key := timeline.RecordsKey(e.prefix, edLocality)
	must(t, e.client.SAdd(ctxT(t), key, "a").Err())
	news := collectNews(t, e.client, e.prefix)
	orig := intention("Yes", t0)
	var msgs []proto.Message
	for i := range 3 {
		msgs = append(msgs, visit(canvassv1.Outcome_OUTCOME_ANSWERED, t0.Add(time.Duration(i)*time.Second)))
	}
	other := visit(canvassv1.Outcome_OUTCOME_ANSWERED, t0)
	other.Location = at(edLat+0.01, edLon)
	msgs = append(msgs, other, orig, corrects(orig, "No"))
	batch := recs(t, msgs...)

	err := e.sink.Write(ctxT(t), batch)
	var fatal *runtime.FatalError
	if !errors.As(err, &fatal) || !strings.Contains(err.Error(), key) {
		t.Fatalf("Write = %v, want fatal naming %s", err, key)
	}
	// (the records hash is still a set: state cannot read it)
	ctx := ctxT(t)
	seen, err := e.client.SCard(ctx, timeline.SeenKey(e.prefix, edLocality)).Result()
	must(t, err)
	tl, err := e.client.ZCard(ctx, timeline.TimelineKey(e.prefix, edLocality)).Result()
	must(t, err)
	ct, err := e.client.HLen(ctx, timeline.CountersKey(e.prefix, edLocality)).Result()
	must(t, err)
	if seen != 0 || tl != 0 || ct != 0 {
		t.Errorf("the broken locality holds %d seen ids, %d timeline entries, %d counters; want none", seen, tl, ct)
	}
	loc, err := locality.Of(edLat+0.01, edLon)
	must(t, err)
	if st := e.state(t, int64(loc)); st.counters["visits"] != 1 || len(st.timeline) != 1 {
		t.Errorf("the good locality holds counters %v and %d timeline entries, want its visit counted", st.counters, len(st.timeline))
	}
	if got, n := news.settle(t); n != 1 {
		t.Errorf("news %v (%d messages), want only the good locality's visit", got, n)
	}

	must(t, e.client.Del(ctxT(t), key).Err())
	e.write(t, batch)
	e.write(t, batch)
	st := e.state(t, edLocality)
	want := map[string]int64{"visits": 3, "visits:answered": 3, "intentions": 1, "intentions:No": 1}
	if !maps.Equal(st.counters, want) {
		t.Errorf("counters after repair = %v, want %v", st.counters, want)
	}
	if len(st.timeline) != 4 || len(st.records) != 4 {
		t.Errorf("after repair: timeline %d, records %d entries; want 4 each", len(st.timeline), len(st.records))
	}
}
