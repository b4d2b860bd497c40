package query_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/chapper/chapper/pipelines/timeline"
	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"github.com/chapper/chapper/proto/locality"
	"github.com/chapper/chapper/services/devstack/devtest"
	"github.com/chapper/chapper/services/query"
)

// watch is an open WatchChunk stream whose events a goroutine reads into a
// channel.
type watch struct {
	events chan *canvassv1.ChunkEvent
	err    chan error // the stream's end
	cancel context.CancelFunc
}

// openWatch opens a watch on chunk over cc and reads it in the background.
func openWatch(t testing.TB, cc *grpc.ClientConn, chunk int64) *watch {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	stream, err := canvassv1.NewQueryServiceClient(cc).WatchChunk(ctx, &canvassv1.WatchChunkRequest{Chunk: chunk})
	if err != nil {
		cancel()
		t.Fatalf("WatchChunk: %v", err)
	}
	w := &watch{events: make(chan *canvassv1.ChunkEvent, 100000), err: make(chan error, 1), cancel: cancel}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			ev, err := stream.Recv()
			if err != nil {
				w.err <- err
				return
			}
			w.events <- ev
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return w
}

// next returns the next event, failing after timeout.
func (w *watch) next(t testing.TB, timeout time.Duration) *canvassv1.ChunkEvent {
	t.Helper()
	select {
	case ev := <-w.events:
		return ev
	case err := <-w.err:
		t.Fatalf("watch ended: %v", err)
	case <-time.After(timeout):
		t.Fatalf("no watch event within %v", timeout)
	}
	return nil
}

// snapshot returns the next event, which must be a snapshot.
func (w *watch) snapshot(t testing.TB) *canvassv1.GetChunkResponse {
	t.Helper()
	ev := w.next(t, 10*time.Second)
	if ev.GetSnapshot() == nil {
		t.Fatalf("event %v, want a snapshot", ev)
	}
	return ev.GetSnapshot()
}

// record returns the next event, which must be a record.
func (w *watch) record(t testing.TB) *canvassv1.TimelineEntry {
	t.Helper()
	ev := w.next(t, 10*time.Second)
	if ev.GetRecord() == nil {
		t.Fatalf("event %v, want a record", ev)
	}
	return ev.GetRecord()
}

func TestWatchChunk(t *testing.T) {
	e := newEnv(t, nil)
	chunk := chunkOf(t, edinburghLat, edinburghLon)
	locs := locality.ChunkLocalities(chunk)
	old := visit(locs[5], time.Now().Add(-time.Hour), canvassv1.Outcome_OUTCOME_ANSWERED)
	e.write(t, old)

	w := openWatch(t, e.client, chunk)
	snap := w.snapshot(t)
	if snap.GetChunk() != chunk || len(snap.GetLocalities()) != 25 {
		t.Fatalf("snapshot of chunk %d with %d localities", snap.GetChunk(), len(snap.GetLocalities()))
	}
	if ids := entryIDs(snap)[int64(locs[5])]; !slices.Equal(ids, []string{old.Id}) {
		t.Errorf("snapshot locality 5 = %v, want [%s]", ids, old.Id)
	}

	// Live records arrive in the order they were materialised, each with
	// its locality, time and body; other chunks' records do not.
	a := visit(locs[0], time.Now(), canvassv1.Outcome_OUTCOME_REFUSED)
	elsewhere := visit(locs[0]-5, time.Now(), canvassv1.Outcome_OUTCOME_ANSWERED)
	b := visit(locs[24], time.Now(), canvassv1.Outcome_OUTCOME_MOVED)
	e.write(t, a, elsewhere)
	e.write(t, b)
	for _, want := range []*canvassv1.Visit{a, b} {
		got := w.record(t)
		if got.GetId() != want.Id || got.GetRecord().GetVisit().GetOutcome() != want.Outcome {
			t.Errorf("record event %s (%v), want %s", got.GetId(), got.GetRecord().GetVisit().GetOutcome(), want.Id)
		}
		if wantLoc, _ := locality.Of(want.Location.Latitude, want.Location.Longitude); got.GetLocality() != int64(wantLoc) {
			t.Errorf("record locality %d, want %d", got.GetLocality(), wantLoc)
		}
		if !got.GetTime().AsTime().Equal(want.VisitedAt.AsTime().Truncate(time.Millisecond)) {
			t.Errorf("record time %v, want %v", got.GetTime().AsTime(), want.VisitedAt.AsTime())
		}
	}

	// A replay materialises nothing new, so it sends nothing.
	e.write(t, a)
	c := visit(locs[1], time.Now(), canvassv1.Outcome_OUTCOME_ANSWERED)
	e.write(t, c)
	if got := w.record(t); got.GetId() != c.Id {
		t.Errorf("after a replay: record %s, want %s", got.GetId(), c.Id)
	}

	t.Run("by location", func(t *testing.T) {
		ctx := ctxT(t, 10*time.Second)
		stream, err := e.qc.WatchChunk(ctx, &canvassv1.WatchChunkRequest{Location: pointIn(locs[12])})
		if err != nil {
			t.Fatal(err)
		}
		ev, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if got := ev.GetSnapshot().GetChunk(); got != chunk {
			t.Errorf("snapshot of chunk %d, want %d", got, chunk)
		}
	})
	t.Run("invalid", func(t *testing.T) {
		stream, err := e.qc.WatchChunk(ctxT(t, 10*time.Second), &canvassv1.WatchChunkRequest{Chunk: -3})
		if err != nil {
			t.Fatal(err)
		}
		_, err = stream.Recv()
		if st := status.Convert(err); st.Code() != codes.InvalidArgument || !strings.HasPrefix(st.Message(), "chunk:") {
			t.Errorf("Recv = %v, want InvalidArgument naming chunk", err)
		}
	})
}

// TestWatchDedupe publishes, after the snapshot, news of a record the
// snapshot already holds (as when a record is materialised between the
// subscription and the snapshot read): it is not sent again.
func TestWatchDedupe(t *testing.T) {
	e := newEnv(t, nil)
	chunk := chunkOf(t, edinburghLat, edinburghLon)
	locs := locality.ChunkLocalities(chunk)
	old := visit(locs[2], time.Now(), canvassv1.Outcome_OUTCOME_ANSWERED)
	e.write(t, old)

	w := openWatch(t, e.client, chunk)
	if ids := entryIDs(w.snapshot(t))[int64(locs[2])]; !slices.Contains(ids, old.Id) {
		t.Fatalf("snapshot lacks %s", old.Id)
	}
	late, err := proto.Marshal(&canvassv1.TimelineEntry{
		Id: old.Id, Locality: int64(locs[2]), Time: timestamppb.New(old.VisitedAt.AsTime()),
		Record: &canvassv1.Record{Kind: &canvassv1.Record_Visit{Visit: old}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.rdb.Publish(ctxT(t, 5*time.Second), timeline.NewsChannel(e.prefix, chunk), late).Err(); err != nil {
		t.Fatal(err)
	}
	fresh := visit(locs[2], time.Now(), canvassv1.Outcome_OUTCOME_ANSWERED)
	e.write(t, fresh)
	if got := w.record(t); got.GetId() != fresh.Id {
		t.Errorf("record %s, want %s (the snapshot's %s must not come again)", got.GetId(), fresh.Id, old.Id)
	}
}

// TestWatchSlowClient has a client that stops reading: it is dropped with
// RESOURCE_EXHAUSTED while another client of the same chunk receives every
// record.
func TestWatchSlowClient(t *testing.T) {
	const buffer = 32
	e := newEnv(t, func(c *query.Config) { c.WatchBuffer = buffer })
	chunk := chunkOf(t, edinburghLat, edinburghLon)
	locs := locality.ChunkLocalities(chunk)

	fast := openWatch(t, e.client, chunk)
	fast.snapshot(t)

	// The slow client reads its snapshot, then nothing: small HTTP/2
	// windows make the server's sends block after ~64 KiB.
	slowCC := e.dial(t, grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	ctx := ctxT(t, time.Minute)
	slow, err := canvassv1.NewQueryServiceClient(slowCC).WatchChunk(ctx, &canvassv1.WatchChunkRequest{Chunk: chunk})
	if err != nil {
		t.Fatal(err)
	}
	if ev, err := slow.Recv(); err != nil || ev.GetSnapshot() == nil {
		t.Fatalf("slow client's first event: %v, %v", ev, err)
	}

	// Records of ~2 KiB each, in batches the fast client keeps up with.
	const batches, per = 40, 25
	address := strings.Repeat("Flat 2F1, 12 Marchmont Crescent, Edinburgh. ", 45)
	var want []string
	for range batches {
		var msgs []proto.Message
		for i := range per {
			v := visit(locs[i%25], time.Now(), canvassv1.Outcome_OUTCOME_ANSWERED)
			v.Address = address
			msgs = append(msgs, v)
			want = append(want, v.Id)
		}
		e.write(t, msgs...)
		for range per {
			fast.record(t)
		}
	}

	// The slow client now reads what was buffered for it, then the end.
	got := 0
	for {
		ev, err := slow.Recv()
		if err != nil {
			st := status.Convert(err)
			if st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), "fell more than 32 events behind") {
				t.Errorf("slow client ended with %v, want ResourceExhausted saying it fell behind", err)
			}
			break
		}
		if ev.GetRecord() == nil {
			t.Fatalf("slow client got %v, want records", ev)
		}
		got++
	}
	if got >= len(want) {
		t.Errorf("slow client received all %d records; it was never dropped", got)
	}
	t.Logf("slow client received %d of %d records before it was dropped", got, len(want))

	// The fast client is still being served.
	last := visit(locs[0], time.Now(), canvassv1.Outcome_OUTCOME_ANSWERED)
	e.write(t, last)
	if r := fast.record(t); r.GetId() != last.Id {
		t.Errorf("fast client: record %s, want %s", r.GetId(), last.Id)
	}
}

// TestWatchRedisRestart stops and starts a private redis-server under an
// open watch: after the reconnect the watch sends a fresh snapshot (with the
// records it could not see) and then later records again.
func TestWatchRedisRestart(t *testing.T) {
	r := devtest.NewRedis(t)
	e := newEnvOn(t, r.Addr(), "", nil)
	chunk := chunkOf(t, edinburghLat, edinburghLon)
	locs := locality.ChunkLocalities(chunk)

	w := openWatch(t, e.client, chunk)
	w.snapshot(t)
	before := visit(locs[0], time.Now(), canvassv1.Outcome_OUTCOME_ANSWERED)
	e.write(t, before)
	if got := w.record(t); got.GetId() != before.Id {
		t.Fatalf("record %s, want %s", got.GetId(), before.Id)
	}

	if err := r.Stop(); err != nil {
		t.Fatalf("stopping redis: %v", err)
	}
	eventually(t, 10*time.Second, "service notices", func() error {
		if e.svc.Ready() == nil {
			return errors.New("still ready")
		}
		return nil
	})
	if err := r.Start(ctxT(t, time.Minute)); err != nil {
		t.Fatalf("starting redis: %v", err)
	}
	// Written before the watch's subscription is back, most likely: it is
	// in the fresh snapshot, if not an event.
	gap := visit(locs[1], time.Now(), canvassv1.Outcome_OUTCOME_ANSWERED)
	e.write(t, gap)

	var snap *canvassv1.GetChunkResponse
	sawGap := false
	for snap == nil {
		ev := w.next(t, 15*time.Second)
		if ev.GetRecord().GetId() == gap.Id {
			sawGap = true
		}
		snap = ev.GetSnapshot()
	}
	ids := entryIDs(snap)
	if !slices.Contains(ids[int64(locs[0])], before.Id) {
		t.Errorf("fresh snapshot lacks %s, written before the restart", before.Id)
	}
	if !sawGap && !slices.Contains(ids[int64(locs[1])], gap.Id) {
		t.Errorf("record %s written after the restart is neither an event nor in the fresh snapshot", gap.Id)
	}
	if err := e.svc.Ready(); err != nil {
		t.Errorf("Ready after the reconnect: %v", err)
	}

	after := visit(locs[2], time.Now(), canvassv1.Outcome_OUTCOME_ANSWERED)
	e.write(t, after)
	for {
		ev := w.next(t, 10*time.Second)
		if ev.GetRecord().GetId() == after.Id {
			break
		}
		if ev.GetRecord().GetId() != gap.Id {
			t.Fatalf("event %v, want record %s", ev, after.Id)
		}
	}
}

// TestWatchCancel checks that a cancelled watch lets go of the chunk: its
// subscription ends once idle.
func TestWatchCancel(t *testing.T) {
	e := newEnv(t, func(c *query.Config) { c.SubscriptionIdle = 200 * time.Millisecond })
	chunk := chunkOf(t, edinburghLat, edinburghLon)
	channel := timeline.NewsChannel(e.prefix, chunk)
	subscribers := func() int64 {
		n, err := e.rdb.PubSubNumSub(context.Background(), channel).Result()
		if err != nil {
			t.Fatal(err)
		}
		return n[channel]
	}

	w := openWatch(t, e.client, chunk)
	w.snapshot(t)
	if n := subscribers(); n != 1 {
		t.Fatalf("%d subscribers to %s while watched, want 1", n, channel)
	}
	// Held while watched, well past the idle time.
	time.Sleep(1500 * time.Millisecond)
	if n := subscribers(); n != 1 {
		t.Fatalf("%d subscribers to %s while watched, want 1", n, channel)
	}
	w.cancel()
	select {
	case err := <-w.err:
		if status.Code(err) != codes.Canceled {
			t.Errorf("stream ended with %v, want Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("stream did not end after cancel")
	}
	eventually(t, 5*time.Second, "unsubscribed", func() error {
		if n := subscribers(); n != 0 {
			return fmt.Errorf("%d subscribers", n)
		}
		return nil
	})
}

// TestWatchRecordDuringSubscribe writes a record into a chunk while its
// first watch is still being set up (the subscription not yet confirmed,
// the snapshot not yet read), as when a lone record is written at once
// after a client opened its watch: every such record reaches the watch,
// in its snapshot or as an event. A snapshot read before the subscription
// is live would miss some of them.
func TestWatchRecordDuringSubscribe(t *testing.T) {
	e := newEnv(t, nil)
	base := chunkOf(t, edinburghLat, edinburghLon)
	for i := range 30 {
		chunk := base + int64(3*i)
		locs := locality.ChunkLocalities(chunk)
		before := visit(locs[i%25], time.Now(), canvassv1.Outcome_OUTCOME_ANSWERED)
		e.write(t, before)
		w := openWatch(t, e.client, chunk)
		during := visit(locs[(i+7)%25], time.Now(), canvassv1.Outcome_OUTCOME_ANSWERED)
		e.write(t, during)

		got := map[string]bool{}
		snap := w.snapshot(t)
		for _, ids := range entryIDs(snap) {
			for _, id := range ids {
				got[id] = true
			}
		}
		if !got[before.Id] {
			t.Fatalf("chunk %d: snapshot lacks the record written before the watch", chunk)
		}
		for !got[during.Id] {
			select {
			case ev := <-w.events:
				if r := ev.GetRecord(); r != nil {
					got[r.GetId()] = true
				}
			case err := <-w.err:
				t.Fatalf("chunk %d: watch ended: %v", chunk, err)
			case <-time.After(10 * time.Second):
				t.Fatalf("chunk %d: the record written while the watch was set up never reached it (iteration %d)", chunk, i)
			}
		}
		w.cancel()
	}
}
