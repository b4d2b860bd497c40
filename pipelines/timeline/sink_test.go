package timeline_test

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/chapper/chapper/pipelines/runtime"
	"github.com/chapper/chapper/pipelines/timeline"
	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"github.com/chapper/chapper/proto/locality"
	"github.com/chapper/chapper/proto/topic"
	"github.com/chapper/chapper/services/devstack/devtest"
)

// TestMain runs the tests on devtest's shared servers. Leaks are checked
// per test (checkLeaks, in every env) since devtest.Main exits the binary
// itself; where devtest.Main checks with goleak at the end of the binary,
// that check applies too.
func TestMain(m *testing.M) { devtest.Main(m) }

// kafkaTest names the tests that run the consumer runtime on the shared
// broker: its Kafka connections (kafka-go's, and the in-process broker's
// side of them) outlive one test by design, so they are checked by the
// end-of-binary check only. Conformance subtests are matched by prefix.
var kafkaTest = map[string]bool{"TestPipelinePublishesPromptly": true}

// checkLeaks fails t if a goroutine started after this call is still
// running once t's later cleanups ran. Goroutines that existed before
// (devtest's shared servers) are not counted. Benchmarks, which run the
// consumer runtime, are not checked here.
func checkLeaks(tb testing.TB) {
	t, ok := tb.(*testing.T)
	if !ok || strings.HasPrefix(t.Name(), "TestConformance/") {
		return
	}
	before := goleak.IgnoreCurrent()
	t.Cleanup(func() {
		if t.Failed() {
			return
		}
		if err := goleak.Find(before); err != nil {
			t.Errorf("goroutines leaked by the test: %v", err)
		}
	})
}

// Edinburgh, DESIGN.md's test vector.
const (
	edLat, edLon       = 55.9533, -3.1883
	edLocality   int64 = 52543256811
	edChunk      int64 = 2101715362
)

var t0 = time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)

// env is one test's sink over the shared redis-server, under its own prefix
// (or over a private cluster: clusterEnv).
type env struct {
	client redis.UniversalClient
	prefix string
	sink   *timeline.Sink
}

func newEnv(t testing.TB, cfg timeline.Config) *env {
	t.Helper()
	r := devtest.Redis(t)
	cfg.Prefix = devtest.KeyPrefix(t)
	if !kafkaTest[t.Name()] {
		checkLeaks(t)
	}
	client := redis.NewClient(&redis.Options{Addr: r.Addr()})
	t.Cleanup(func() { _ = client.Close() })
	s, err := timeline.New(client, cfg)
	if err != nil {
		t.Fatalf("timeline.New: %v", err)
	}
	return &env{client: client, prefix: cfg.Prefix, sink: s}
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func at(lat, lon float64) *canvassv1.Location {
	return &canvassv1.Location{Latitude: lat, Longitude: lon}
}

func id() string { return uuid.Must(uuid.NewV7()).String() }

func visit(outcome canvassv1.Outcome, when time.Time) *canvassv1.Visit {
	return &canvassv1.Visit{Id: id(), DwellingId: "d-" + id(), Address: "1 High Street", Location: at(edLat, edLon),
		CanvasserId: "c1", VisitedAt: timestamppb.New(when), Outcome: outcome}
}

func intention(option string, when time.Time) *canvassv1.Intention {
	return &canvassv1.Intention{Id: id(), VisitId: id(), ElectorId: "e-" + id(), Option: option,
		Location: at(edLat, edLon), RecordedAt: timestamppb.New(when), CanvasserId: "c1"}
}

func followup(method canvassv1.Method, when time.Time) *canvassv1.FollowupRequest {
	return &canvassv1.FollowupRequest{Id: id(), VisitId: id(), ElectorId: "e-" + id(), Issue: "bins",
		Method: method, Location: at(edLat, edLon), RecordedAt: timestamppb.New(when), CanvasserId: "c1"}
}

// rec wraps a message as the runtime hands it to a sink.
func rec(t testing.TB, m proto.Message) runtime.Record {
	t.Helper()
	value, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	r := runtime.Record{Value: value, Message: m, Time: time.Now()}
	if k, ok := topic.KindOf(m); ok {
		r.Topic = k.Topic()
	}
	return r
}

func recs(t testing.TB, ms ...proto.Message) []runtime.Record {
	out := make([]runtime.Record, len(ms))
	for i, m := range ms {
		out[i] = rec(t, m)
	}
	return out
}

func (e *env) write(t testing.TB, batch []runtime.Record) {
	t.Helper()
	if err := e.sink.Write(ctxT(t), batch); err != nil {
		t.Fatalf("Write: %v", err)
	}
}

func (e *env) counters(t testing.TB, loc int64) map[string]int64 {
	t.Helper()
	m, err := e.client.HGetAll(ctxT(t), timeline.CountersKey(e.prefix, loc)).Result()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for k, v := range m {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			t.Fatalf("counter %s = %q", k, v)
		}
		out[k] = n
	}
	return out
}

// state is everything the sink keeps for one locality.
type state struct {
	timeline []redis.Z
	seen     []string
	counters map[string]int64
	records  map[string]string
}

func (e *env) state(t testing.TB, loc int64) state {
	t.Helper()
	ctx := ctxT(t)
	tl, err := e.client.ZRangeWithScores(ctx, timeline.TimelineKey(e.prefix, loc), 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	seen, err := e.client.SMembers(ctx, timeline.SeenKey(e.prefix, loc)).Result()
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(seen)
	records, err := e.client.HGetAll(ctx, timeline.RecordsKey(e.prefix, loc)).Result()
	if err != nil {
		t.Fatal(err)
	}
	return state{timeline: tl, seen: seen, counters: e.counters(t, loc), records: records}
}

func equalState(a, b state) bool {
	return slices.Equal(a.timeline, b.timeline) && slices.Equal(a.seen, b.seen) &&
		maps.Equal(a.counters, b.counters) && maps.Equal(a.records, b.records)
}

func TestKeys(t *testing.T) {
	tests := []struct {
		name, got, want string
	}{
		{name: "timeline", got: timeline.TimelineKey("", edLocality), want: "tl:{52543256811}"},
		{name: "seen", got: timeline.SeenKey("p:", edLocality), want: "p:seen:{52543256811}"},
		{name: "counters", got: timeline.CountersKey("p:", edLocality), want: "p:ct:{52543256811}"},
		{name: "records", got: timeline.RecordsKey("", edLocality), want: "rec:{52543256811}"},
		{name: "news", got: timeline.NewsChannel("p:", edChunk), want: "p:news:{2101715362}"},
		{name: "replaced", got: timeline.ReplacedKey("p:", edLocality), want: "p:rp:{52543256811}"},
		{name: "id record", got: timeline.IDKey("p:", "visits", "0190"), want: "p:id:visits:{0190}"},
		{name: "active prefix", got: timeline.ActivePrefixKey("p:"), want: "p:chapper:timeline:active"},
		{name: "rebuild prefix", got: timeline.RebuildPrefixKey(""), want: "chapper:timeline:rebuild"},
		{name: "switch channel", got: timeline.SwitchChannel(""), want: "chapper:timeline:switch"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got != tt.want {
				t.Errorf("got %q, want %q", tt.got, tt.want)
			}
		})
	}
}

func TestCounters(t *testing.T) {
	tests := []struct {
		name  string
		batch []proto.Message
		want  map[string]int64
	}{
		{
			name: "visits by outcome",
			batch: []proto.Message{
				visit(canvassv1.Outcome_OUTCOME_ANSWERED, t0), visit(canvassv1.Outcome_OUTCOME_ANSWERED, t0),
				visit(canvassv1.Outcome_OUTCOME_NO_ANSWER, t0), visit(canvassv1.Outcome_OUTCOME_UNSPECIFIED, t0),
				visit(canvassv1.Outcome_OUTCOME_REFUSED, t0), visit(canvassv1.Outcome_OUTCOME_MOVED, t0),
			},
			want: map[string]int64{"visits": 6, "visits:answered": 2, "visits:no_answer": 1,
				"visits:unspecified": 1, "visits:refused": 1, "visits:moved": 1},
		},
		{
			name:  "intentions by option as submitted",
			batch: []proto.Message{intention("Green", t0), intention("Green", t0), intention("undecided", t0)},
			want:  map[string]int64{"intentions": 3, "intentions:Green": 2, "intentions:undecided": 1},
		},
		{
			name: "followups by method",
			batch: []proto.Message{followup(canvassv1.Method_METHOD_TELEPHONE, t0), followup(canvassv1.Method_METHOD_EMAIL, t0),
				followup(canvassv1.Method_METHOD_POST, t0), followup(canvassv1.Method_METHOD_UNSPECIFIED, t0)},
			want: map[string]int64{"followups": 4, "followups:telephone": 1, "followups:email": 1,
				"followups:post": 1, "followups:unspecified": 1},
		},
		{
			name:  "kinds mixed in one batch",
			batch: []proto.Message{visit(canvassv1.Outcome_OUTCOME_ANSWERED, t0), intention("Green", t0), followup(canvassv1.Method_METHOD_POST, t0)},
			want: map[string]int64{"visits": 1, "visits:answered": 1, "intentions": 1, "intentions:Green": 1,
				"followups": 1, "followups:post": 1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, timeline.Config{})
			e.write(t, recs(t, tt.batch...))
			st := e.state(t, edLocality)
			if !maps.Equal(st.counters, tt.want) {
				t.Errorf("counters = %v, want %v", st.counters, tt.want)
			}
			if len(st.timeline) != len(tt.batch) || len(st.seen) != len(tt.batch) || len(st.records) != len(tt.batch) {
				t.Errorf("timeline %d, seen %d, records %d entries; want %d each",
					len(st.timeline), len(st.seen), len(st.records), len(tt.batch))
			}
			for _, m := range tt.batch {
				meta, _ := topic.MetaOf(m)
				body, ok := st.records[meta.ID]
				if !ok {
					t.Errorf("record %s has no body", meta.ID)
					continue
				}
				var got canvassv1.Record
				if err := proto.Unmarshal([]byte(body), &got); err != nil {
					t.Fatalf("decoding body: %v", err)
				}
				if !proto.Equal(recordMessage(&got), m) {
					t.Errorf("body of %s = %v, want %v", meta.ID, &got, m)
				}
			}
		})
	}
}

func recordMessage(r *canvassv1.Record) proto.Message {
	switch k := r.GetKind().(type) {
	case *canvassv1.Record_Visit:
		return k.Visit
	case *canvassv1.Record_Intention:
		return k.Intention
	case *canvassv1.Record_Followup:
		return k.Followup
	}
	return nil
}

func TestTrimKeepsNewestByRecordTime(t *testing.T) {
	const keep = 3
	e := newEnv(t, timeline.Config{Keep: keep})
	// Arrival order is not time order: minutes 4, 0, 5, 1, 3, 2.
	var all []*canvassv1.Visit
	for _, min := range []int{4, 0, 5, 1, 3, 2} {
		v := visit(canvassv1.Outcome_OUTCOME_ANSWERED, t0.Add(time.Duration(min)*time.Minute))
		all = append(all, v)
		e.write(t, recs(t, v)) // one record per batch: the trim runs between arrivals
	}
	byTime := slices.Clone(all)
	slices.SortFunc(byTime, func(a, b *canvassv1.Visit) int { return a.VisitedAt.AsTime().Compare(b.VisitedAt.AsTime()) })
	newest := byTime[len(byTime)-keep:]

	st := e.state(t, edLocality)
	var members []string
	for i, z := range st.timeline {
		members = append(members, z.Member.(string))
		if want := float64(newest[i].VisitedAt.AsTime().UnixMilli()); z.Score != want {
			t.Errorf("score of %v = %v, want %v", z.Member, z.Score, want)
		}
	}
	var want []string
	for _, v := range newest {
		want = append(want, v.Id)
	}
	if !slices.Equal(members, want) {
		t.Errorf("timeline = %v, want the newest by record time %v", members, want)
	}
	if got := slices.Sorted(maps.Keys(st.records)); !slices.Equal(got, slices.Sorted(slices.Values(want))) {
		t.Errorf("record bodies kept for %v, want only %v", got, want)
	}
	if len(st.seen) != len(all) {
		t.Errorf("seen holds %d ids, want all %d", len(st.seen), len(all))
	}
	if st.counters["visits"] != int64(len(all)) {
		t.Errorf("visits = %d, want %d", st.counters["visits"], len(all))
	}

	// A late record older than everything kept is counted but not kept.
	old := visit(canvassv1.Outcome_OUTCOME_MOVED, t0.Add(-time.Hour))
	e.write(t, recs(t, old))
	st2 := e.state(t, edLocality)
	if !slices.Equal(st2.timeline, st.timeline) || !maps.Equal(st2.records, st.records) {
		t.Errorf("a record older than the kept ones changed the timeline")
	}
	if st2.counters["visits:moved"] != 1 || len(st2.seen) != len(all)+1 {
		t.Errorf("late record not counted: counters %v, seen %d", st2.counters, len(st2.seen))
	}
}

func TestTTL(t *testing.T) {
	const ttl = time.Hour
	e := newEnv(t, timeline.Config{TTL: ttl})
	e.write(t, recs(t, visit(canvassv1.Outcome_OUTCOME_ANSWERED, t0)))
	for _, key := range []string{
		timeline.TimelineKey(e.prefix, edLocality), timeline.SeenKey(e.prefix, edLocality),
		timeline.CountersKey(e.prefix, edLocality), timeline.RecordsKey(e.prefix, edLocality),
	} {
		got, err := e.client.PTTL(ctxT(t), key).Result()
		if err != nil {
			t.Fatal(err)
		}
		if got <= ttl-time.Minute || got > ttl {
			t.Errorf("TTL of %s = %v, want about %v", key, got, ttl)
		}
	}
}

func TestReplayChangesNothing(t *testing.T) {
	e := newEnv(t, timeline.Config{Keep: 4})
	var batch []proto.Message
	for i := range 10 { // more than Keep, so the replay goes past the trim
		batch = append(batch, visit(canvassv1.Outcome_OUTCOME_NO_ANSWER, t0.Add(time.Duration(i)*time.Second)),
			intention("Yes", t0.Add(time.Duration(i)*time.Second)))
	}
	e.write(t, recs(t, batch...))
	before := e.state(t, edLocality)

	sub := e.client.Subscribe(ctxT(t), timeline.NewsChannel(e.prefix, edChunk))
	defer sub.Close()
	if _, err := sub.Receive(ctxT(t)); err != nil { // the subscription confirmation
		t.Fatal(err)
	}

	e.write(t, recs(t, batch...))
	slices.Reverse(batch)
	e.write(t, recs(t, batch...))
	after := e.state(t, edLocality)
	if !equalState(before, after) {
		t.Errorf("replay changed the locality:\nbefore %+v\nafter  %+v", before, after)
	}
	if after.counters["visits"] != 10 || after.counters["intentions"] != 10 {
		t.Errorf("counters = %v, want 10 visits and 10 intentions", after.counters)
	}

	// A record written after the replays is the first news on the channel:
	// the replays published nothing.
	marker := visit(canvassv1.Outcome_OUTCOME_ANSWERED, t0.Add(time.Hour))
	e.write(t, recs(t, marker))
	msg, err := sub.ReceiveMessage(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	var got canvassv1.TimelineEntry
	if err := proto.Unmarshal([]byte(msg.Payload), &got); err != nil {
		t.Fatal(err)
	}
	if got.GetId() != marker.Id {
		t.Errorf("first news after the replays is %s, want the new record %s", got.GetId(), marker.Id)
	}
}

func TestPublish(t *testing.T) {
	tests := []struct {
		name string
		msg  proto.Message
		want *canvassv1.Record
	}{
		{name: "visit", msg: visit(canvassv1.Outcome_OUTCOME_ANSWERED, t0)},
		{name: "intention", msg: intention("Green", t0)},
		{name: "followup", msg: followup(canvassv1.Method_METHOD_EMAIL, t0)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, timeline.Config{})
			sub := e.client.Subscribe(ctxT(t), timeline.NewsChannel(e.prefix, edChunk))
			defer sub.Close()
			if _, err := sub.Receive(ctxT(t)); err != nil {
				t.Fatal(err)
			}
			e.write(t, recs(t, tt.msg))
			msg, err := sub.ReceiveMessage(ctxT(t))
			if err != nil {
				t.Fatal(err)
			}
			var got canvassv1.TimelineEntry
			if err := proto.Unmarshal([]byte(msg.Payload), &got); err != nil {
				t.Fatalf("decoding published entry: %v", err)
			}
			meta, _ := topic.MetaOf(tt.msg)
			if got.GetId() != meta.ID || got.GetLocality() != edLocality || !got.GetTime().AsTime().Equal(t0) {
				t.Errorf("entry = id %s locality %d time %v; want %s %d %v",
					got.GetId(), got.GetLocality(), got.GetTime().AsTime(), meta.ID, edLocality, t0)
			}
			if !proto.Equal(recordMessage(got.GetRecord()), tt.msg) {
				t.Errorf("entry record = %v, want %v", got.GetRecord(), tt.msg)
			}
			// The published record is the stored body.
			body, err := e.client.HGet(ctxT(t), timeline.RecordsKey(e.prefix, edLocality), meta.ID).Result()
			if err != nil {
				t.Fatal(err)
			}
			stored, _ := proto.Marshal(got.GetRecord())
			if body != string(stored) {
				t.Errorf("stored body differs from the published record")
			}
		})
	}
}

func TestPermanentFailures(t *testing.T) {
	good := visit(canvassv1.Outcome_OUTCOME_ANSWERED, t0)
	noLocation := visit(canvassv1.Outcome_OUTCOME_ANSWERED, t0)
	noLocation.Location = nil
	offGrid := intention("Green", t0)
	offGrid.Location = at(91, 0)
	noID := followup(canvassv1.Method_METHOD_POST, t0)
	noID.Id = ""
	notRecord := &canvassv1.SubmitRequest{}

	tests := []struct {
		name string
		msg  proto.Message
		want error
	}{
		{name: "no location", msg: noLocation, want: timeline.ErrNoLocation},
		{name: "latitude off the grid", msg: offGrid, want: timeline.ErrNoLocation},
		{name: "no id", msg: noID, want: timeline.ErrNoID},
		{name: "not a record", msg: notRecord, want: timeline.ErrNotRecord},
	}
	e := newEnv(t, timeline.Config{})
	batch := []runtime.Record{rec(t, good)}
	for _, tt := range tests {
		batch = append(batch, rec(t, tt.msg))
	}
	for i := range batch {
		batch[i].Offset = int64(i)
	}
	err := e.sink.Write(ctxT(t), batch)
	var perm *runtime.PermanentError
	if !errors.As(err, &perm) {
		t.Fatalf("Write = %v, want a *runtime.PermanentError", err)
	}
	if len(perm.Failures) != len(tests) {
		t.Fatalf("%d failures, want %d: %v", len(perm.Failures), len(tests), perm)
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := perm.Failures[i]
			if f.Record.Offset != int64(i+1) || !errors.Is(f.Reason, tt.want) {
				t.Errorf("failure = offset %d %v, want offset %d %v", f.Record.Offset, f.Reason, i+1, tt.want)
			}
		})
	}
	if got := e.counters(t, edLocality); got["visits"] != 1 || len(got) != 2 {
		t.Errorf("counters = %v, want the good visit only", got)
	}
}

func TestReloadsLostScript(t *testing.T) {
	r := devtest.NewRedis(t) // SCRIPT FLUSH must not disturb other tests
	client := redis.NewClient(&redis.Options{Addr: r.Addr()})
	defer client.Close()
	s, err := timeline.New(client, timeline.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := client.ScriptFlush(ctxT(t)).Err(); err != nil {
		t.Fatal(err)
	}
	batch := recs(t, visit(canvassv1.Outcome_OUTCOME_ANSWERED, t0), intention("Green", t0))
	if err := s.Write(ctxT(t), batch); err != nil {
		t.Fatalf("Write after SCRIPT FLUSH: %v", err)
	}
	got, err := client.HGet(ctxT(t), timeline.CountersKey("", edLocality), "visits").Int()
	if err != nil || got != 1 {
		t.Errorf("visits = %d, %v; want 1", got, err)
	}
}

func TestRedisDownIsTransient(t *testing.T) {
	r := devtest.NewRedis(t)
	client := redis.NewClient(&redis.Options{Addr: r.Addr(), MaxRetries: -1})
	defer client.Close()
	s, err := timeline.New(client, timeline.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Stop(); err != nil {
		t.Fatal(err)
	}
	batch := recs(t, visit(canvassv1.Outcome_OUTCOME_ANSWERED, t0))
	err = s.Write(ctxT(t), batch)
	var perm *runtime.PermanentError
	if err == nil || errors.As(err, &perm) {
		t.Fatalf("Write with redis down = %v, want a transient error", err)
	}
	if err := r.Start(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if err := s.Write(ctxT(t), batch); err != nil {
		t.Fatalf("Write after restart: %v", err)
	}
}

// The locality of every test record is the Edinburgh vector.
func TestEdinburghVector(t *testing.T) {
	loc, err := locality.Of(edLat, edLon)
	if err != nil || int64(loc) != edLocality || loc.Chunk() != edChunk {
		t.Fatalf("locality %d chunk %d (%v); test constants are wrong", loc, loc.Chunk(), err)
	}
}
