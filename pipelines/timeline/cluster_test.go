package timeline_test

import (
	"context"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"

	"github.com/chapper/chapper/pipelines/timeline"
	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"github.com/chapper/chapper/proto/locality"
	"github.com/chapper/chapper/proto/topic"
	"github.com/chapper/chapper/services/devstack/devtest"
)

// clusterEnv is one test's sink over a private Redis Cluster, through the
// client the timeline target builds from its flags.
func clusterEnv(t testing.TB, cfg timeline.Config) *env {
	t.Helper()
	cfg.Prefix = "t:"
	cfg.Redis = timeline.RedisConfig{Addrs: devtest.RedisCluster(t)}
	client := cfg.Redis.NewClient()
	t.Cleanup(func() { _ = client.Close() })
	if _, ok := client.(*redis.ClusterClient); !ok {
		t.Fatalf("NewClient with %d addresses = %T, want a cluster client", len(cfg.Redis.Addrs), client)
	}
	s, err := timeline.New(client, cfg)
	if err != nil {
		t.Fatalf("timeline.New: %v", err)
	}
	return &env{client: client, prefix: cfg.Prefix, sink: s}
}

// clusterLocalities returns n localities near Edinburgh, five to a row of
// cells, rows in different chunks.
func clusterLocalities(t testing.TB, n int) []int64 {
	t.Helper()
	out := make([]int64, n)
	for i := range out {
		loc, err := locality.Of(edLat+float64(i/5)*0.01, edLon+float64(i%5)*0.001)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = int64(loc)
	}
	if len(slices.Compact(slices.Sorted(slices.Values(out)))) != n {
		t.Fatalf("localities %v are not distinct", out)
	}
	return out
}

// locate moves a record to the centre of a locality.
func locate(m proto.Message, loc int64) {
	c := locality.Index(loc).Cell()
	l := at((float64(c.Row)+0.5)/1000-90, (float64(c.Col)+0.5)/1000-180)
	switch r := m.(type) {
	case *canvassv1.Visit:
		r.Location = l
	case *canvassv1.Intention:
		r.Location = l
	case *canvassv1.FollowupRequest:
		r.Location = l
	}
}

func TestCluster(t *testing.T) {
	e := clusterEnv(t, timeline.Config{})
	cluster := e.client.(*redis.ClusterClient)
	ctx := ctxT(t)

	// A visit, an intention and a followup in each of 30 localities, whose
	// keys land on every master.
	locs := clusterLocalities(t, 30)
	var batch []proto.Message
	byLoc := map[int64][]proto.Message{}
	chunks := map[int64]bool{}
	masters := map[string]bool{}
	for i, loc := range locs {
		when := t0.Add(time.Duration(i) * time.Second)
		for _, m := range []proto.Message{
			visit(canvassv1.Outcome_OUTCOME_ANSWERED, when),
			intention("Green", when.Add(time.Millisecond)),
			followup(canvassv1.Method_METHOD_EMAIL, when.Add(2*time.Millisecond)),
		} {
			locate(m, loc)
			batch = append(batch, m)
			byLoc[loc] = append(byLoc[loc], m)
		}
		chunks[locality.Index(loc).Chunk()] = true
		node, err := cluster.MasterForKey(ctx, timeline.TimelineKey(e.prefix, loc))
		if err != nil {
			t.Fatal(err)
		}
		masters[node.Options().Addr] = true
	}
	if len(masters) != devtest.ClusterMasters {
		t.Fatalf("the localities' keys live on %d masters, want all %d", len(masters), devtest.ClusterMasters)
	}

	// One subscription, on one node, to the news of every chunk: records
	// published by scripts on the other masters must reach it too.
	var channels []string
	for chunk := range chunks {
		channels = append(channels, timeline.NewsChannel(e.prefix, chunk))
	}
	sub := e.client.Subscribe(ctx, channels...)
	defer sub.Close()
	for range channels {
		if _, err := sub.Receive(ctx); err != nil { // the confirmations
			t.Fatal(err)
		}
	}

	e.write(t, recs(t, batch...))
	before := map[int64]state{}
	for _, loc := range locs {
		st := e.state(t, loc)
		before[loc] = st
		want := map[string]int64{"visits": 1, "visits:answered": 1, "intentions": 1, "intentions:Green": 1,
			"followups": 1, "followups:email": 1}
		if !maps.Equal(st.counters, want) {
			t.Errorf("locality %d: counters = %v, want %v", loc, st.counters, want)
		}
		var ids []string
		for _, m := range byLoc[loc] {
			meta, _ := topic.MetaOf(m)
			ids = append(ids, meta.ID)
			var got canvassv1.Record
			if err := proto.Unmarshal([]byte(st.records[meta.ID]), &got); err != nil || !proto.Equal(recordMessage(&got), m) {
				t.Errorf("locality %d: body of %s = %v (%v), want %v", loc, meta.ID, &got, err, m)
			}
		}
		var members []string
		for _, z := range st.timeline { // by score: the write order above
			members = append(members, z.Member.(string))
		}
		if !slices.Equal(members, ids) {
			t.Errorf("locality %d: timeline = %v, want %v", loc, members, ids)
		}
		if !slices.Equal(st.seen, slices.Sorted(slices.Values(ids))) || len(st.records) != len(ids) {
			t.Errorf("locality %d: seen %v, %d bodies; want %v", loc, st.seen, len(st.records), ids)
		}
	}

	news := map[string]int64{}
	for range batch {
		entry := receiveEntry(ctx, t, sub)
		news[entry.GetId()] = entry.GetLocality()
	}
	for loc, ms := range byLoc {
		for _, m := range ms {
			if meta, _ := topic.MetaOf(m); news[meta.ID] != loc {
				t.Errorf("news of %s: locality %d, want %d", meta.ID, news[meta.ID], loc)
			}
		}
	}

	// Replays, in order and reversed, change nothing and publish nothing.
	e.write(t, recs(t, batch...))
	slices.Reverse(batch)
	e.write(t, recs(t, batch...))
	for _, loc := range locs {
		if after := e.state(t, loc); !equalState(before[loc], after) {
			t.Errorf("replay changed locality %d:\nbefore %+v\nafter  %+v", loc, before[loc], after)
		}
	}
	marker := visit(canvassv1.Outcome_OUTCOME_MOVED, t0.Add(time.Hour))
	locate(marker, locs[len(locs)-1])
	e.write(t, recs(t, marker))
	if got := receiveEntry(ctx, t, sub); got.GetId() != marker.Id {
		t.Errorf("first news after the replays is %s, want the new record %s", got.GetId(), marker.Id)
	}
}

// receiveEntry returns the next news message as a TimelineEntry.
func receiveEntry(ctx context.Context, t testing.TB, sub *redis.PubSub) *canvassv1.TimelineEntry {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	msg, err := sub.ReceiveMessage(ctx)
	if err != nil {
		t.Fatalf("waiting for news: %v", err)
	}
	var entry canvassv1.TimelineEntry
	if err := proto.Unmarshal([]byte(msg.Payload), &entry); err != nil {
		t.Fatalf("decoding news: %v", err)
	}
	return &entry
}

// On a cluster, a correction in another locality (another slot, likely
// another master) still takes the original off, in either order, and a
// rebuild's dual write and switch work with the control keys in slots of
// their own.
func TestClusterCorrectionAndSwitch(t *testing.T) {
	e := clusterEnv(t, timeline.Config{})
	ctx := ctxT(t)
	locs := clusterLocalities(t, 6)
	for i, order := range []string{"original first", "correction first"} {
		orig := intention("Yes", t0)
		locate(orig, locs[2*i])
		corr := corrects(orig, "No")
		locate(corr, locs[2*i+1])
		if order == "original first" {
			e.write(t, recs(t, orig))
			e.write(t, recs(t, corr))
		} else {
			e.write(t, recs(t, corr))
			e.write(t, recs(t, orig))
		}
		if c := e.counters(t, locs[2*i]); len(c) != 0 {
			t.Errorf("%s: the original's locality still counts %v", order, c)
		}
		if c := e.counters(t, locs[2*i+1]); c["intentions:No"] != 1 || c["intentions"] != 1 {
			t.Errorf("%s: the correction's locality counts %v", order, c)
		}
	}

	next := e.prefix + "r1:"
	must(t, timeline.StartRebuild(ctx, e.client, e.prefix, next))
	v := visit(canvassv1.Outcome_OUTCOME_ANSWERED, t0)
	locate(v, locs[4])
	e.write(t, recs(t, v))
	must(t, timeline.SwitchPrefix(ctx, e.client, e.prefix, next))
	w := visit(canvassv1.Outcome_OUTCOME_REFUSED, t0)
	locate(w, locs[4])
	e.write(t, recs(t, w))
	got := (&env{client: e.client, prefix: next}).counters(t, locs[4])
	old := e.counters(t, locs[4])
	if got["visits"] != 2 || old["visits"] != 1 {
		t.Errorf("visits: new prefix %d (want 2: dual write, then the switch), old prefix %d (want 1)", got["visits"], old["visits"])
	}
	n, err := timeline.DropPrefix(ctx, e.client, e.prefix, e.prefix)
	if err != nil || n == 0 {
		t.Errorf("DropPrefix of the old prefix on the cluster = %d, %v", n, err)
	}
	if c := e.counters(t, locs[4]); len(c) != 0 {
		t.Errorf("old prefix's counters after DropPrefix: %v", c)
	}
	if c := (&env{client: e.client, prefix: next}).counters(t, locs[4]); c["visits"] != 2 {
		t.Errorf("new prefix's counters after dropping the old one: %v", c)
	}
}
