package timeline_test

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"

	"github.com/chapper/chapper/pipelines/timeline"
	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
)

// mixedWorkload returns n messages over locs, in an order that exercises
// everything a batch call must do as the per-record calls did: several
// records of one locality, trimming (with a small Keep), redelivered
// records, corrections in the same and in another locality, corrections
// that arrive before their original, and corrections of corrections.
func mixedWorkload(t testing.TB, seed uint64, n int, locs []int64) []proto.Message {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 1))
	var out []proto.Message
	var intentions []*canvassv1.Intention
	place := func(m proto.Message) proto.Message {
		locate(m, locs[rng.IntN(len(locs))])
		return m
	}
	when := func() time.Time { return t0.Add(time.Duration(rng.IntN(3600)) * time.Second) }
	for len(out) < n {
		switch p := rng.IntN(20); {
		case p < 6:
			out = append(out, place(visit(canvassv1.Outcome(1+rng.IntN(3)), when())))
		case p < 8:
			out = append(out, place(followup(canvassv1.Method_METHOD_EMAIL, when())))
		case p < 13:
			in := place(intention([]string{"Yes", "No", "Maybe"}[rng.IntN(3)], when())).(*canvassv1.Intention)
			intentions = append(intentions, in)
			out = append(out, in)
		case p < 16 && len(intentions) > 0:
			// a correction, sometimes moved to another locality
			orig := intentions[rng.IntN(len(intentions))]
			c := corrects(orig, []string{"Yes", "No", "Maybe"}[rng.IntN(3)])
			if rng.IntN(2) == 0 {
				place(c)
			}
			intentions = append(intentions, c)
			out = append(out, c)
		case p < 18 && len(out) > 0:
			out = append(out, out[rng.IntN(len(out))]) // a redelivery
		default:
			// a correction ahead of its original
			orig := place(intention("Yes", when())).(*canvassv1.Intention)
			c := corrects(orig, "No")
			if rng.IntN(2) == 0 {
				place(c)
			}
			intentions = append(intentions, orig, c)
			out = append(out, c, orig)
		}
	}
	return out[:n]
}

// newsLog collects every news message published under a prefix, by
// channel name without the prefix.
type newsLog struct {
	mu  sync.Mutex
	got map[string][]string
	n   atomic.Int64
}

func collectNews(t testing.TB, client redis.UniversalClient, prefix string) *newsLog {
	t.Helper()
	l := &newsLog{got: map[string][]string{}}
	ctx, cancel := context.WithCancel(context.Background())
	sub := client.PSubscribe(ctx, prefix+"news:*")
	if _, err := sub.Receive(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m := range sub.Channel() {
			l.mu.Lock()
			ch := m.Channel[len(prefix):]
			l.got[ch] = append(l.got[ch], m.Payload)
			l.mu.Unlock()
			l.n.Add(1)
		}
	}()
	t.Cleanup(func() {
		cancel()
		_ = sub.Close()
		<-done
	})
	return l
}

// settle waits until no message arrived for a moment and returns what l
// holds.
func (l *newsLog) settle(t testing.TB) (map[string][]string, int64) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for last := int64(-1); time.Now().Before(deadline); {
		n := l.n.Load()
		if n == last {
			break
		}
		last = n
		time.Sleep(200 * time.Millisecond)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return maps.Clone(l.got), l.n.Load()
}

// The batch script leaves every key, id record, TTL and news message as
// the per-record calls of before did, on a standalone Redis (one call for a
// whole batch) and on Redis Cluster (one call per locality), for batches of
// every size, and a redelivery of everything changes nothing.
func TestBatchMatchesPerRecord(t *testing.T) {
	for _, cluster := range []bool{false, true} {
		t.Run(fmt.Sprintf("cluster %v", cluster), func(t *testing.T) {
			const keep = 6
			cfg := timeline.Config{Keep: keep}
			var e *env
			if cluster {
				e = clusterEnv(t, cfg)
			} else {
				e = newEnv(t, cfg)
			}
			cfg.Prefix = e.prefix + "old:"
			old, err := timeline.New(e.client, cfg)
			if err != nil {
				t.Fatal(err)
			}
			if err := timeline.PerRecord(old); err != nil {
				t.Fatal(err)
			}
			locs := clusterLocalities(t, 12)
			msgs := mixedWorkload(t, 7, 400, locs)
			newNews := collectNews(t, e.client, e.prefix)
			oldNews := collectNews(t, e.client, cfg.Prefix)

			ctx := ctxT(t)
			var gotNews, wantNews map[string][]string
			var gotN, wantN int64
			for pass, sizes := range [][]int{{1, 2, 3, 7, 50, 137}, {400}} {
				rest := msgs
				for i := 0; len(rest) > 0; i++ {
					n := min(sizes[i%len(sizes)], len(rest))
					batch := recs(t, rest[:n]...)
					rest = rest[n:]
					if err := e.sink.Write(ctx, batch); err != nil {
						t.Fatalf("batch path: %v", err)
					}
					if err := old.Write(ctx, batch); err != nil {
						t.Fatalf("per-record path: %v", err)
					}
				}
				g, gn := newNews.settle(t)
				w, wn := oldNews.settle(t)
				if pass == 0 {
					gotNews, wantNews, gotN, wantN = g, w, gn, wn
					continue
				}
				// the second pass was all redeliveries
				if gn != gotN || wn != wantN {
					t.Errorf("redelivery published news: batch path %d, per-record path %d messages", gn-gotN, wn-wantN)
				}
			}
			if wantN == 0 {
				t.Fatal("the workload published no news")
			}
			checkNews(t, gotNews, wantNews, !cluster)

			for _, loc := range locs {
				got, want := e.fullState(t, loc), (&env{client: e.client, prefix: cfg.Prefix}).fullState(t, loc)
				if !equalFull(got, want) {
					t.Errorf("locality %d:\nbatch      %+v\nper-record %+v", loc, got, want)
				}
				if len(got.timeline) > keep {
					t.Errorf("locality %d keeps %d records, want at most %d", loc, len(got.timeline), keep)
				}
				for _, key := range []func(string, int64) string{timeline.SeenKey, timeline.TimelineKey, timeline.CountersKey, timeline.RecordsKey, timeline.ReplacedKey} {
					ttl, err := e.client.PTTL(ctx, key(e.prefix, loc)).Result()
					if err != nil {
						t.Fatal(err)
					}
					if ttl == -1 {
						t.Errorf("%s has no TTL", key(e.prefix, loc))
					}
				}
			}
			for _, m := range msgs {
				kind, mid := kindID(m)
				got := idRecord(t, e.client, timeline.IDKey(e.prefix, kind, mid))
				want := idRecord(t, e.client, timeline.IDKey(cfg.Prefix, kind, mid))
				if !maps.Equal(got, want) {
					t.Errorf("id record of %s %s: batch %v, per-record %v", kind, mid, got, want)
				}
			}
		})
	}
}

// checkNews compares the news of the batch path with the per-record
// path's: on every channel the same messages, in any order (on a cluster
// the per-record calls of different slots ran in parallel, and the batch
// path publishes per locality); or, on a standalone Redis (subset), some of
// them. There a correction marks the id it replaces before the batch call,
// so a record replaced by a correction of its own batch is never counted,
// as if the correction had come first: neither its news nor the news of its
// removal is published.
func checkNews(t testing.TB, got, want map[string][]string, subset bool) {
	t.Helper()
	for _, ch := range slices.Sorted(maps.Keys(want)) {
		left := map[string]int{}
		for _, m := range want[ch] {
			left[m]++
		}
		for _, m := range got[ch] {
			if left[m] == 0 {
				t.Errorf("channel %s: the batch path published a message the per-record path did not, or more often", ch)
				continue
			}
			left[m]--
		}
		if !subset && len(got[ch]) != len(want[ch]) {
			t.Errorf("channel %s: the batch path published %d messages, the per-record path %d", ch, len(got[ch]), len(want[ch]))
		}
	}
	for ch := range got {
		if _, ok := want[ch]; !ok {
			t.Errorf("channel %s: news only on the batch path", ch)
		}
	}
}

// kindID returns the counter kind and id of a record.
func kindID(m proto.Message) (string, string) {
	switch r := m.(type) {
	case *canvassv1.Visit:
		return "visits", r.Id
	case *canvassv1.Intention:
		return "intentions", r.Id
	case *canvassv1.FollowupRequest:
		return "followups", r.Id
	}
	return "", ""
}

// scriptCalls counts the EVALSHA commands a client sends, and its SETs.
type scriptCalls struct{ n, sets atomic.Int64 }

func (h *scriptCalls) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *scriptCalls) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.count(cmd)
		return next(ctx, cmd)
	}
}

func (h *scriptCalls) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, cmd := range cmds {
			h.count(cmd)
		}
		return next(ctx, cmds)
	}
}

func (h *scriptCalls) count(cmd redis.Cmder) {
	switch cmd.Name() {
	case "evalsha", "eval":
		h.n.Add(1)
	case "set":
		h.sets.Add(1)
	}
}

// A batch costs one script call on a standalone Redis (plus one per
// correction, marking what it replaces). On Redis Cluster it costs one per
// locality, and its new ids are claimed with one plain SET each; the ids
// SET finds taken (a redelivery), and every id of a batch with
// corrections, take an id script call each (plus one per correction). The
// per-record path made two per record.
func TestBatchScriptCalls(t *testing.T) {
	locs := clusterLocalities(t, 5)
	var plain, corrected []proto.Message
	for i := range 200 {
		v := visit(canvassv1.Outcome_OUTCOME_ANSWERED, t0.Add(time.Duration(i)*time.Second))
		locate(v, locs[i%len(locs)])
		plain = append(plain, v)
	}
	for i := range 3 {
		in := intention("Yes", t0)
		locate(in, locs[i])
		c := corrects(in, "No")
		locate(c, locs[i+1])
		corrected = append(corrected, in, c)
	}
	tests := []struct {
		name      string
		cluster   bool
		perRecord bool
		batch     []proto.Message
		again     bool  // written twice, counted once
		want      int64 // script calls (of the last write)
		sets      int64 // plain SETs (of the last write)
		counted   int64
	}{
		{name: "standalone", batch: plain, want: 1, counted: 200},
		{name: "standalone with corrections", batch: corrected, want: 1 + 3, counted: 3},
		{name: "cluster", cluster: true, batch: plain, want: 5, sets: 200, counted: 200},
		{name: "cluster redelivered", cluster: true, batch: plain, again: true, want: 200 + 5, sets: 200, counted: 200},
		{name: "cluster with corrections", cluster: true, batch: corrected, want: 6 + 3 + 4, counted: 3},
		{name: "per-record path", perRecord: true, batch: plain, want: 2 * 200, counted: 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var e *env
			if tt.cluster {
				e = clusterEnv(t, timeline.Config{})
			} else {
				e = newEnv(t, timeline.Config{})
			}
			if tt.perRecord {
				if err := timeline.PerRecord(e.sink); err != nil {
					t.Fatal(err)
				}
			}
			if tt.again {
				e.write(t, recs(t, tt.batch...))
			}
			var h scriptCalls
			e.client.AddHook(&h)
			e.write(t, recs(t, tt.batch...))
			if got := h.n.Load(); got != tt.want {
				t.Errorf("script calls for %d records = %d, want %d", len(tt.batch), got, tt.want)
			}
			if got := h.sets.Load(); got != tt.sets {
				t.Errorf("plain SETs for %d records = %d, want %d", len(tt.batch), got, tt.sets)
			}
			var total int64
			for _, loc := range locs {
				c := e.counters(t, loc)
				total += c["visits"] + c["intentions"]
			}
			if total != tt.counted {
				t.Errorf("counted %d records, want %d", total, tt.counted)
			}
		})
	}
}

// idRecord reads an id record in either of its forms as the fields of the
// hash form (l, f, and r = "1" once replaced): the batch path writes
// strings, the per-record path and older sinks hashes.
func idRecord(t testing.TB, client redis.UniversalClient, key string) map[string]string {
	t.Helper()
	ctx := ctxT(t)
	typ, err := client.Type(ctx, key).Result()
	if err != nil {
		t.Fatal(err)
	}
	switch typ {
	case "none":
		return nil
	case "hash":
		h, err := client.HGetAll(ctx, key).Result()
		if err != nil {
			t.Fatal(err)
		}
		return h
	case "string":
		v, err := client.Get(ctx, key).Result()
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]string{}
		flag, rest, _ := strings.Cut(v, " ")
		if flag == "1" {
			m["r"] = "1"
		}
		if rest != "" {
			l, f, _ := strings.Cut(rest, " ")
			m["l"], m["f"] = l, f
		}
		return m
	}
	t.Fatalf("id record %s is a %s", key, typ)
	return nil
}
