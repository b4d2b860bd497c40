package timeline_test

import (
	"fmt"
	"maps"
	"slices"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/chapper/chapper/pipelines/timeline"
	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"github.com/chapper/chapper/proto/locality"
)

// corrects returns a correction of in: a new id, replaces_id = in's id,
// another option.
func corrects(in *canvassv1.Intention, option string) *canvassv1.Intention {
	c := proto.Clone(in).(*canvassv1.Intention)
	c.Id = id()
	c.ReplacesId = in.Id
	c.Option = option
	return c
}

// permutations returns every order of 0..n-1.
func permutations(n int) [][]int {
	if n == 1 {
		return [][]int{{0}}
	}
	var out [][]int
	for _, p := range permutations(n - 1) {
		for i := 0; i <= len(p); i++ {
			q := slices.Insert(slices.Clone(p), i, n-1)
			out = append(out, q)
		}
	}
	return out
}

// fullState is state plus the replaced marks.
type fullState struct {
	state
	replaced map[string]string
}

func (e *env) fullState(t testing.TB, loc int64) fullState {
	t.Helper()
	rp, err := e.client.HGetAll(ctxT(t), timeline.ReplacedKey(e.prefix, loc)).Result()
	if err != nil {
		t.Fatal(err)
	}
	return fullState{state: e.state(t, loc), replaced: rp}
}

func equalFull(a, b fullState) bool {
	return equalState(a.state, b.state) && maps.Equal(a.replaced, b.replaced)
}

func timelineIDs(st state) []string {
	var ids []string
	for _, z := range st.timeline {
		ids = append(ids, z.Member.(string))
	}
	slices.Sort(ids)
	return ids
}

// A correction in the same locality: whatever the arrival order (one
// record per batch, or both in one batch), and after every record is
// delivered again, the counters moved from the old option to the new one,
// only the correction is on the timeline, and the end state is the same.
func TestCorrectionSameLocality(t *testing.T) {
	orig := intention("Yes", t0)
	corr := corrects(orig, "No")
	third := corrects(corr, "Maybe") // a correction of the correction
	msgs := []proto.Message{orig, corr, third}

	var first *fullState
	for _, order := range permutations(len(msgs)) {
		for _, oneBatch := range []bool{false, true} {
			name := fmt.Sprintf("order %v one batch %v", order, oneBatch)
			t.Run(name, func(t *testing.T) {
				e := newEnv(t, timeline.Config{})
				var batch []proto.Message
				for _, i := range order {
					batch = append(batch, msgs[i])
				}
				if oneBatch {
					e.write(t, recs(t, batch...))
				} else {
					for _, m := range batch {
						e.write(t, recs(t, m))
					}
				}
				st := e.fullState(t, edLocality)
				want := map[string]int64{"intentions": 1, "intentions:Maybe": 1}
				if !maps.Equal(st.counters, want) {
					t.Errorf("counters = %v, want %v", st.counters, want)
				}
				if got := timelineIDs(st.state); !slices.Equal(got, []string{third.Id}) {
					t.Errorf("timeline = %v, want only the newest version %s", got, third.Id)
				}
				if got := slices.Sorted(maps.Keys(st.records)); !slices.Equal(got, []string{third.Id}) {
					t.Errorf("bodies kept for %v, want only %s", got, third.Id)
				}
				// Redelivery of every record, in reverse, changes nothing.
				slices.Reverse(batch)
				e.write(t, recs(t, batch...))
				if again := e.fullState(t, edLocality); !equalFull(st, again) {
					t.Errorf("redelivery changed the locality:\nbefore %+v\nafter  %+v", st, again)
				}
				if first == nil {
					first = &st
				} else if !equalFull(*first, st) {
					t.Errorf("end state differs from the first order's:\nfirst %+v\nthis  %+v", *first, st)
				}
			})
		}
	}
}

// A correction that also corrects the location sits in another locality
// (another chunk, and on a cluster another slot): the original stops
// counting in its own locality, in either order.
func TestCorrectionOtherLocality(t *testing.T) {
	orig := intention("Yes", t0)
	corr := corrects(orig, "No")
	corr.Location = at(edLat+0.01, edLon) // a row of chunks to the north
	other := mustLocality(t, corr.Location)
	if locality.Index(other).Chunk() == edChunk {
		t.Fatal("test locations share a chunk")
	}
	tests := []struct {
		name    string
		batches [][]proto.Message
	}{
		{name: "original first", batches: [][]proto.Message{{orig}, {corr}}},
		{name: "correction first", batches: [][]proto.Message{{corr}, {orig}}},
		{name: "one batch, original first", batches: [][]proto.Message{{orig, corr}}},
		{name: "one batch, correction first", batches: [][]proto.Message{{corr, orig}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, timeline.Config{})
			for _, b := range tt.batches {
				e.write(t, recs(t, b...))
			}
			check := func(when string) {
				a, b := e.state(t, edLocality), e.state(t, other)
				if len(a.counters) != 0 || len(a.timeline) != 0 || len(a.records) != 0 {
					t.Errorf("%s: the replaced record's locality still shows it: counters %v, timeline %v",
						when, a.counters, timelineIDs(a))
				}
				want := map[string]int64{"intentions": 1, "intentions:No": 1}
				if !maps.Equal(b.counters, want) || !slices.Equal(timelineIDs(b), []string{corr.Id}) {
					t.Errorf("%s: correction's locality: counters %v timeline %v, want %v and [%s]",
						when, b.counters, timelineIDs(b), want, corr.Id)
				}
			}
			check("after delivery")
			e.write(t, recs(t, corr, orig))
			e.write(t, recs(t, orig))
			check("after redelivery")
		})
	}
}

// replaces_id naming a record of another kind replaces nothing: ids are
// per kind in the id records.
func TestCorrectionOfAnotherKindReplacesNothing(t *testing.T) {
	e := newEnv(t, timeline.Config{})
	in := intention("Yes", t0)
	v := visit(canvassv1.Outcome_OUTCOME_ANSWERED, t0)
	v.ReplacesId = in.Id
	e.write(t, recs(t, in))
	e.write(t, recs(t, v))
	want := map[string]int64{"intentions": 1, "intentions:Yes": 1, "visits": 1, "visits:answered": 1}
	if got := e.counters(t, edLocality); !maps.Equal(got, want) {
		t.Errorf("counters = %v, want %v", got, want)
	}
}

// News: a correction is published once, on its own chunk; taking the
// original off another chunk's timeline publishes the correction there too
// (so that the readers of that chunk take a fresh snapshot); redelivery
// publishes nothing.
func TestCorrectionNews(t *testing.T) {
	e := newEnv(t, timeline.Config{})
	orig := intention("Yes", t0)
	corr := corrects(orig, "No")
	corr.Location = at(edLat+0.01, edLon)
	otherChunk := locality.Index(mustLocality(t, corr.Location)).Chunk()
	e.write(t, recs(t, orig))

	sub := e.client.Subscribe(ctxT(t), timeline.NewsChannel(e.prefix, edChunk), timeline.NewsChannel(e.prefix, otherChunk))
	defer sub.Close()
	for range 2 {
		if _, err := sub.Receive(ctxT(t)); err != nil {
			t.Fatal(err)
		}
	}
	e.write(t, recs(t, corr))
	e.write(t, recs(t, corr, orig)) // redelivery
	marker := intention("Green", t0)
	e.write(t, recs(t, marker))

	got := map[string][]string{}
	for {
		msg, err := sub.ReceiveMessage(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		var entry canvassv1.TimelineEntry
		if err := proto.Unmarshal([]byte(msg.Payload), &entry); err != nil {
			t.Fatal(err)
		}
		if entry.GetId() == marker.Id {
			break
		}
		got[msg.Channel] = append(got[msg.Channel], entry.GetId())
	}
	want := map[string][]string{
		timeline.NewsChannel(e.prefix, edChunk):    {corr.Id},
		timeline.NewsChannel(e.prefix, otherChunk): {corr.Id},
	}
	if !maps.EqualFunc(got, want, slices.Equal) {
		t.Errorf("news = %v, want %v", got, want)
	}
}

func mustLocality(t testing.TB, l *canvassv1.Location) int64 {
	t.Helper()
	loc, err := locality.Of(l.GetLatitude(), l.GetLongitude())
	if err != nil {
		t.Fatal(err)
	}
	return int64(loc)
}
