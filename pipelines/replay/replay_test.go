package replay_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"

	"github.com/chapper/chapper/pipelines/persist"
	"github.com/chapper/chapper/pipelines/persist/persisttest"
	"github.com/chapper/chapper/pipelines/replay"
	"github.com/chapper/chapper/pipelines/runtime"
	"github.com/chapper/chapper/pipelines/runtime/sinktest"
	"github.com/chapper/chapper/pipelines/search"
	"github.com/chapper/chapper/pipelines/search/searchtest"
	"github.com/chapper/chapper/pipelines/timeline"
	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"github.com/chapper/chapper/proto/topic"
	"github.com/chapper/chapper/services/devstack/devtest"
)

func TestMain(m *testing.M) { devtest.Main(m) }

func timeoutCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// store reads back what a sink wrote.
type store interface {
	Has(t testing.TB, m proto.Message) bool
	Total(t testing.TB) int
	// Snapshot renders everything the sink wrote, to compare before and
	// after a second replay.
	Snapshot(t testing.TB) string
}

type sinkEnv struct {
	name string
	new  func(t testing.TB) (runtime.Sink, store)
}

var sinks = []sinkEnv{
	{"timeline", newTimeline},
	{"persist", newPersist},
	{"search", newSearch},
}

// --- timeline: a fresh key prefix in the shared redis-server

type timelineStore struct {
	client *redis.Client
	prefix string
}

func newTimeline(t testing.TB) (runtime.Sink, store) {
	r := devtest.Redis(t)
	cfg := timeline.Config{Prefix: devtest.KeyPrefix(t)}
	client := redis.NewClient(&redis.Options{Addr: r.Addr()})
	t.Cleanup(func() { _ = client.Close() })
	s, err := timeline.New(client, cfg)
	if err != nil {
		t.Fatalf("timeline.New: %v", err)
	}
	return s, timelineStore{client, cfg.Prefix}
}

func (s timelineStore) Has(t testing.TB, m proto.Message) bool {
	meta, _ := topic.MetaOf(m)
	ctx := timeoutCtx(t)
	iter := s.client.Scan(ctx, 0, s.prefix+"seen:*", 1000).Iterator()
	for iter.Next(ctx) {
		if ok, _ := s.client.SIsMember(ctx, iter.Val(), meta.ID).Result(); ok {
			return true
		}
	}
	return false
}

func (s timelineStore) Total(t testing.TB) int {
	ctx := timeoutCtx(t)
	n := 0
	iter := s.client.Scan(ctx, 0, s.prefix+"seen:*", 1000).Iterator()
	for iter.Next(ctx) {
		c, err := s.client.SCard(ctx, iter.Val()).Result()
		if err != nil {
			t.Fatal(err)
		}
		n += int(c)
	}
	return n
}

func (s timelineStore) Snapshot(t testing.TB) string {
	ctx := timeoutCtx(t)
	var keys []string
	iter := s.client.Scan(ctx, 0, s.prefix+"*", 1000).Iterator()
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	slices.Sort(keys)
	var b strings.Builder
	for _, k := range keys {
		typ, _ := s.client.Type(ctx, k).Result()
		var v any
		switch typ {
		case "zset":
			v, _ = s.client.ZRangeWithScores(ctx, k, 0, -1).Result()
		case "set":
			m, _ := s.client.SMembers(ctx, k).Result()
			slices.Sort(m)
			v = m
		case "hash":
			h, _ := s.client.HGetAll(ctx, k).Result()
			var f []string
			for name, val := range h {
				f = append(f, name+"="+val)
			}
			slices.Sort(f)
			v = f
		default:
			v, _ = s.client.Get(ctx, k).Result()
		}
		fmt.Fprintf(&b, "%s %s %v\n", k, typ, v)
	}
	return b.String()
}

// --- persist: fresh router and shard databases on the shared Postgres

type persistStore struct{ env *persisttest.Env }

func newPersist(t testing.TB) (runtime.Sink, store) {
	env := persisttest.New(t)
	s, err := persist.New(timeoutCtx(t), persist.Config{RouterURL: env.RouterURL, PoolSize: 4, ShardBits: 6})
	if err != nil {
		t.Fatalf("persist.New: %v", err)
	}
	t.Cleanup(s.Close)
	return s, persistStore{env}
}

func (s persistStore) Has(t testing.TB, m proto.Message) bool {
	meta, _ := topic.MetaOf(m)
	for i := range s.env.Shards {
		var n int
		q := fmt.Sprintf("SELECT count(*) FROM %s WHERE id = $1", meta.Kind)
		if err := s.env.ShardPool(t, i).QueryRow(timeoutCtx(t), q, meta.ID).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			return true
		}
	}
	return false
}

func (s persistStore) Total(t testing.TB) int { return s.env.Total(t) }

func (s persistStore) Snapshot(t testing.TB) string {
	var b strings.Builder
	for i := range s.env.Shards {
		for _, table := range persisttest.Tables {
			rows, err := s.env.ShardPool(t, i).Query(timeoutCtx(t), fmt.Sprintf("SELECT to_jsonb(t)::text FROM %s t ORDER BY shard, id", table))
			if err != nil {
				t.Fatal(err)
			}
			for rows.Next() {
				var row string
				if err := rows.Scan(&row); err != nil {
					t.Fatal(err)
				}
				fmt.Fprintf(&b, "%d %s %s\n", i, table, row)
			}
			rows.Close()
		}
	}
	return b.String()
}

// --- search: a private embedded search server

type searchStore struct{ cfg search.Config }

func newSearch(t testing.TB) (runtime.Sink, store) {
	srv := searchtest.Start(t)
	cfg := srv.Config(t)
	return searchtest.NewSink(t, cfg), searchStore{cfg}
}

func (s searchStore) Has(t testing.TB, m proto.Message) bool {
	k, _ := topic.KindOf(m)
	return searchtest.Get(t, s.cfg, k, searchtest.IDOf(m)) != nil
}

func (s searchStore) Total(t testing.TB) int { return searchtest.Total(t, s.cfg) }

func (s searchStore) Snapshot(t testing.TB) string {
	var b strings.Builder
	for _, k := range topic.Kinds {
		fmt.Fprintf(&b, "%s %d\n", k, searchtest.Count(t, s.cfg, k))
	}
	return b.String()
}

// produced puts records on the topics in two parts with a time between
// them, and returns that time.
func produced(t testing.TB, addr string, a, b []proto.Message) time.Time {
	sinktest.ProduceRecords(t, addr, a...)
	// broker timestamps are milliseconds: keep both parts out of the
	// millisecond of the mark
	time.Sleep(5 * time.Millisecond)
	mark := time.Now()
	time.Sleep(5 * time.Millisecond)
	sinktest.ProduceRecords(t, addr, b...)
	return mark
}

func checkHolds(t testing.TB, st store, want, not []proto.Message) {
	t.Helper()
	if got := st.Total(t); got != len(want) {
		t.Errorf("store holds %d records, want %d", got, len(want))
	}
	for i, m := range want {
		if i%7 == 0 && !st.Has(t, m) {
			t.Errorf("record %s missing", searchtest.IDOf(m))
		}
	}
	for i, m := range not {
		if i%7 == 0 && st.Has(t, m) {
			t.Errorf("record %s should not have been replayed", searchtest.IDOf(m))
		}
	}
}

// TestReplay replays into each sink from the beginning (twice: the second
// changes nothing), from a time and from explicit offsets.
func TestReplay(t *testing.T) {
	for _, se := range sinks {
		t.Run(se.name, func(t *testing.T) {
			ctx := timeoutCtx(t)
			k := devtest.Kafka(t)
			sinktest.CreateTopics(t, k.Addr())
			recs := sinktest.Records(uint64(len(se.name)), 300)
			a, b := recs[:200], recs[200:]
			mark := produced(t, k.Addr(), a, b)
			base := replay.Config{Brokers: []string{k.Addr()}, BatchSize: 50, Linger: 10 * time.Millisecond}

			t.Run("from the beginning, twice", func(t *testing.T) {
				sink, st := se.new(t)
				cfg := base
				cfg.Sink = sink
				sum, err := replay.Run(ctx, cfg)
				if err != nil || sum.Written != 300 || sum.Read != 300 {
					t.Fatalf("replay = %+v, %v; want 300 written", sum, err)
				}
				checkHolds(t, st, recs, nil)
				before := st.Snapshot(t)
				if sum, err := replay.Run(ctx, cfg); err != nil || sum.Written != 300 {
					t.Fatalf("second replay = %+v, %v", sum, err)
				}
				if after := st.Snapshot(t); after != before {
					t.Errorf("a second replay changed the store:\nbefore %.2000s\nafter  %.2000s", before, after)
				}
				checkHolds(t, st, recs, nil)
			})
			t.Run("from a time", func(t *testing.T) {
				sink, st := se.new(t)
				cfg := base
				cfg.Sink, cfg.From = sink, replay.At(mark)
				sum, err := replay.Run(ctx, cfg)
				if err != nil || sum.Written != int64(len(b)) {
					t.Fatalf("replay -from=%s = %+v, %v; want %d written", mark.Format(time.RFC3339Nano), sum, err, len(b))
				}
				checkHolds(t, st, b, a)
			})
			t.Run("from offsets", func(t *testing.T) {
				sink, st := se.new(t)
				end := sinktest.EndOffsets(t, k.Addr())
				from, to := map[replay.Partition]int64{}, map[replay.Partition]int64{}
				for tp, e := range end {
					if tp.Topic == topic.Visits {
						p := replay.Partition{Topic: tp.Topic, Partition: tp.Partition}
						from[p], to[p] = 1, e/2
					}
				}
				fromPos, err := replay.ParsePosition(replay.FormatOffsets(from))
				if err != nil {
					t.Fatal(err)
				}
				toPos, _ := replay.ParsePosition(replay.FormatOffsets(to))
				var want, not []proto.Message
				for _, m := range sinktest.ReadTopic(t, k.Addr(), topic.Visits) {
					v := &canvassv1.Visit{}
					if err := proto.Unmarshal(m.Value, v); err != nil {
						t.Fatal(err)
					}
					p := replay.Partition{Topic: m.Topic, Partition: m.Partition}
					if m.Offset >= from[p] && m.Offset < to[p] {
						want = append(want, v)
					} else {
						not = append(not, v)
					}
				}
				cfg := base
				cfg.Sink, cfg.From, cfg.To = sink, fromPos, &toPos
				sum, err := replay.Run(ctx, cfg)
				if err != nil || sum.Written != int64(len(want)) || len(want) == 0 {
					t.Fatalf("replay -from=%s -to=%s = %+v, %v; want %d written", fromPos, toPos, sum, err, len(want))
				}
				checkHolds(t, st, want, not)
			})
		})
	}
}

// TestResume interrupts a replay after its first batch, then resumes it:
// the resumed run writes exactly the rest, and the store holds everything
// once. A dry run counts per kind and writes nothing.
func TestResume(t *testing.T) {
	ctx := timeoutCtx(t)
	k := devtest.Kafka(t)
	sinktest.CreateTopics(t, k.Addr())
	recs := sinktest.Records(21, 400)
	sinktest.ProduceRecords(t, k.Addr(), recs...)
	sink, st := newTimeline(t)

	dry, err := replay.Run(ctx, replay.Config{Brokers: []string{k.Addr()}, DryRun: true, Group: "chapper-replay-test"})
	if err != nil || dry.Written != 400 {
		t.Fatalf("dry run = %+v, %v", dry, err)
	}
	for _, kind := range topic.Kinds {
		want := 0
		for _, m := range recs {
			if kk, _ := topic.KindOf(m); kk == kind {
				want++
			}
		}
		if dry.PerKind[kind] != int64(want) {
			t.Errorf("dry run counts %d %s, want %d", dry.PerKind[kind], kind, want)
		}
	}
	if n := st.Total(t); n != 0 {
		t.Fatalf("dry run wrote %d records", n)
	}

	ictx, interrupt := context.WithCancel(ctx)
	defer interrupt()
	cfg := replay.Config{Brokers: []string{k.Addr()}, Sink: sink, BatchSize: 50, Linger: 10 * time.Millisecond,
		Progress: func(p replay.Progress) {
			if p.Done > 0 {
				interrupt() // Ctrl-C after the first batch
			}
		}}
	first, err := replay.Run(ictx, cfg)
	if !errors.Is(err, replay.ErrInterrupted) || first.Written == 0 || first.Written >= 400 {
		t.Fatalf("interrupted replay = %+v, %v; want ErrInterrupted after part of the range", first, err)
	}
	parts := slices.Collect(func(yield func(replay.Partition) bool) {
		for p := range first.Ranges {
			if !yield(p) {
				return
			}
		}
	})
	cp, err := replay.Checkpoint(ctx, []string{k.Addr()}, replay.GroupPrefix+"timeline", parts)
	if err != nil {
		t.Fatal(err)
	}
	for p, next := range first.Next {
		if next > first.Ranges[p].From && cp[p] != next {
			t.Errorf("checkpoint of %s = %d, want %d", p, cp[p], next)
		}
	}
	if n := st.Total(t); n != int(first.Written) {
		t.Fatalf("store holds %d after the interrupted replay, which wrote %d", n, first.Written)
	}

	to := map[replay.Partition]int64{}
	for p, r := range first.Ranges {
		to[p] = r.To
	}
	toPos := replay.Offsets(to)
	cfg.Progress, cfg.Resume, cfg.To = nil, true, &toPos
	rest, err := replay.Run(ctx, cfg)
	if err != nil || rest.Written != 400-first.Written {
		t.Fatalf("resumed replay = %+v, %v; want the other %d written", rest, err, 400-first.Written)
	}
	// the checkpoints are committed in the background; Run returns only
	// once the last one is
	cp, err = replay.Checkpoint(ctx, []string{k.Addr()}, replay.GroupPrefix+"timeline", parts)
	if err != nil {
		t.Fatal(err)
	}
	for p, r := range first.Ranges {
		if r.To > r.From && cp[p] != r.To {
			t.Errorf("checkpoint of %s after the resumed replay = %d, want the range's end %d", p, cp[p], r.To)
		}
	}
	checkHolds(t, st, recs, nil)
}

// TestDeadLetter: a record the sink can never write goes to the
// dead-letter topic with its origin and the sink's name, the rest is
// written, and Run reports ErrDeadLettered.
func TestDeadLetter(t *testing.T) {
	ctx := timeoutCtx(t)
	k := devtest.Kafka(t)
	sinktest.CreateTopics(t, k.Addr())
	recs := sinktest.Records(31, 50)
	poison := &canvassv1.Visit{Id: "0190a0a0-0000-7000-8000-00000000bad1", DwellingId: "d", Address: "nowhere"}
	sinktest.ProduceRecords(t, k.Addr(), append(recs, poison)...)
	sink, st := newTimeline(t)
	sum, err := replay.Run(ctx, replay.Config{Brokers: []string{k.Addr()}, Sink: sink})
	if !errors.Is(err, replay.ErrDeadLettered) || sum.DeadLettered != 1 || sum.Written != 50 {
		t.Fatalf("replay = %+v, %v; want 1 dead-lettered, 50 written", sum, err)
	}
	dl := sinktest.ReadTopic(t, k.Addr(), topic.DeadLetter)
	if len(dl) != 1 {
		t.Fatalf("%d dead letters, want 1", len(dl))
	}
	var sinkName, origin string
	for _, h := range dl[0].Headers {
		switch h.Key {
		case topic.HeaderSink:
			sinkName = string(h.Value)
		case topic.HeaderOriginTopic:
			origin = string(h.Value)
		}
	}
	if sinkName != "timeline" || origin != topic.Visits {
		t.Errorf("dead letter sink=%q origin-topic=%q", sinkName, origin)
	}
	checkHolds(t, st, recs, nil)
}
