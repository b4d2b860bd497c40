package timeline_test

import (
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/chapper/chapper/pipelines/timeline"
	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
)

// checkTTLs fails for every key of loc that exists without a TTL, or with
// one above max.
func checkTTLs(t testing.TB, e *env, loc int64, max time.Duration) {
	t.Helper()
	for _, key := range []func(string, int64) string{timeline.SeenKey, timeline.TimelineKey, timeline.CountersKey, timeline.RecordsKey, timeline.ReplacedKey} {
		ttl, err := e.client.PTTL(ctxT(t), key(e.prefix, loc)).Result()
		must(t, err)
		switch {
		case ttl == -1:
			t.Errorf("%s has no TTL", key(e.prefix, loc))
		case ttl > max:
			t.Errorf("%s has a TTL of %v, want at most %v", key(e.prefix, loc), ttl, max)
		}
	}
}

// The sink refreshes a locality's TTLs only once per TTL/100, but a call
// that may create a key gives it its TTL at once: a locality whose keys
// expired, a counters hash deleted by hand (its fields are new), a
// locality's first correction (the replaced hash is new).
func TestTTLOnCreatedKeys(t *testing.T) {
	const ttl = time.Hour
	tests := []struct {
		name   string
		before func(t *testing.T, e *env)
		then   func() []*canvassv1.Intention
	}{
		{
			name: "keys expired",
			before: func(t *testing.T, e *env) {
				for _, key := range []func(string, int64) string{timeline.SeenKey, timeline.TimelineKey, timeline.CountersKey, timeline.RecordsKey, timeline.ReplacedKey} {
					must(t, e.client.Del(ctxT(t), key(e.prefix, edLocality)).Err())
				}
			},
			then: func() []*canvassv1.Intention { return []*canvassv1.Intention{intention("Yes", t0)} },
		},
		{
			name: "counters deleted",
			before: func(t *testing.T, e *env) {
				must(t, e.client.Del(ctxT(t), timeline.CountersKey(e.prefix, edLocality)).Err())
			},
			then: func() []*canvassv1.Intention { return []*canvassv1.Intention{intention("Yes", t0)} },
		},
		{
			name: "first correction",
			then: func() []*canvassv1.Intention {
				in := intention("Yes", t0)
				return []*canvassv1.Intention{in, corrects(in, "Yes")}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, timeline.Config{TTL: ttl})
			e.write(t, recs(t, intention("Yes", t0)))
			if tt.before != nil {
				tt.before(t, e)
			}
			for _, m := range tt.then() {
				e.write(t, recs(t, m))
			}
			checkTTLs(t, e, edLocality, ttl)
		})
	}
}

// A locality's TTLs are refreshed by its first write, then not again
// before TTL/100 has passed, or the sink restarted.
func TestTTLRefreshOncePerInterval(t *testing.T) {
	const ttl, short = time.Hour, 10 * time.Minute
	e := newEnv(t, timeline.Config{TTL: ttl})
	now := t0
	timeline.SetClock(e.sink, func() time.Time { return now })
	shorten := func() {
		for _, key := range []func(string, int64) string{timeline.SeenKey, timeline.TimelineKey, timeline.CountersKey, timeline.RecordsKey} {
			must(t, e.client.PExpire(ctxT(t), key(e.prefix, edLocality), short).Err())
		}
	}
	refreshed := func() bool {
		t.Helper()
		got, err := e.client.PTTL(ctxT(t), timeline.TimelineKey(e.prefix, edLocality)).Result()
		must(t, err)
		return got > short
	}
	e.write(t, recs(t, visit(canvassv1.Outcome_OUTCOME_ANSWERED, t0)))
	if !refreshed() {
		t.Fatal("the first write set no TTL")
	}
	shorten()
	now = now.Add(timeline.TTLRefreshEvery(e.sink) - time.Second)
	e.write(t, recs(t, visit(canvassv1.Outcome_OUTCOME_ANSWERED, t0)))
	if refreshed() {
		t.Error("a write within TTL/100 of the last refresh refreshed the TTLs")
	}
	checkTTLs(t, e, edLocality, short)
	now = now.Add(time.Second)
	e.write(t, recs(t, visit(canvassv1.Outcome_OUTCOME_ANSWERED, t0)))
	if !refreshed() {
		t.Error("a write TTL/100 after the last refresh did not refresh the TTLs")
	}

	shorten()
	restarted, err := timeline.New(e.client, timeline.Config{TTL: ttl, Prefix: e.prefix})
	must(t, err)
	e.sink = restarted
	e.write(t, recs(t, visit(canvassv1.Outcome_OUTCOME_ANSWERED, t0)))
	if !refreshed() {
		t.Error("a restarted sink's first write did not refresh the TTLs")
	}
}

// Counters are set from the values read before the call; one too large
// for a Lua number to hold exactly is changed with HINCRBY.
func TestCountersExactNear1e18(t *testing.T) {
	e := newEnv(t, timeline.Config{})
	ct := timeline.CountersKey(e.prefix, edLocality)
	must(t, e.client.HSet(ctxT(t), ct, "visits", "99999999999999990", "visits:answered", "999999999999990").Err())
	e.write(t, recs(t, visit(canvassv1.Outcome_OUTCOME_ANSWERED, t0), visit(canvassv1.Outcome_OUTCOME_ANSWERED, t0)))
	got, err := e.client.HGetAll(ctxT(t), ct).Result()
	must(t, err)
	want := map[string]string{"visits": "99999999999999992", "visits:answered": "999999999999992"}
	if !maps.Equal(got, want) {
		t.Errorf("counters = %v, want %v", got, want)
	}
}

// Id records written by an older sink (hashes) are read and kept as they
// are until they expire: a correction of a record the older sink counted
// takes it off, and a record the older sink saw replaced is not counted,
// on both Redis kinds.
func TestOldHashIDRecords(t *testing.T) {
	for _, tt := range []struct {
		name string
		env  func(t *testing.T) *env
	}{
		{name: "standalone", env: func(t *testing.T) *env { return newEnv(t, timeline.Config{Fixed: true}) }},
		{name: "cluster", env: func(t *testing.T) *env { return clusterEnv(t, timeline.Config{Fixed: true}) }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			orig := intention("Yes", t0)
			corr := corrects(orig, "No")
			corr.Location = at(edLat+0.01, edLon)
			other := mustLocality(t, corr.Location)
			for _, c := range []struct {
				name     string
				old, new []*canvassv1.Intention
			}{
				{name: "original by the older sink", old: []*canvassv1.Intention{orig}, new: []*canvassv1.Intention{corr, orig}},
				{name: "correction by the older sink", old: []*canvassv1.Intention{corr}, new: []*canvassv1.Intention{orig, corr}},
			} {
				t.Run(c.name, func(t *testing.T) {
					e := tt.env(t)
					prefix := e.prefix + c.name + ":"
					olds, err := timeline.New(e.client, timeline.Config{Prefix: prefix, Fixed: true})
					must(t, err)
					must(t, timeline.PerRecord(olds))
					news, err := timeline.New(e.client, timeline.Config{Prefix: prefix, Fixed: true})
					must(t, err)
					for _, m := range c.old {
						must(t, olds.Write(ctxT(t), recs(t, m)))
					}
					key := timeline.IDKey(prefix, "intentions", orig.GetId())
					if typ := e.client.Type(ctxT(t), key).Val(); typ != "hash" {
						t.Fatalf("the older sink's id record is a %s", typ)
					}
					for _, m := range c.new {
						must(t, news.Write(ctxT(t), recs(t, m)))
					}
					st := &env{client: e.client, prefix: prefix}
					a, b := st.state(t, edLocality), st.state(t, other)
					if len(a.counters) != 0 || len(a.timeline) != 0 {
						t.Errorf("the replaced record's locality still shows it: counters %v, timeline %v", a.counters, timelineIDs(a))
					}
					want := map[string]int64{"intentions": 1, "intentions:No": 1}
					if !maps.Equal(b.counters, want) || !slices.Equal(timelineIDs(b), []string{corr.Id}) {
						t.Errorf("correction's locality: counters %v timeline %v, want %v and [%s]", b.counters, timelineIDs(b), want, corr.Id)
					}
					if typ := e.client.Type(ctxT(t), key).Val(); typ != "hash" {
						t.Errorf("the older sink's id record became a %s", typ)
					}
				})
			}
		})
	}
}
