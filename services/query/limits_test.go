package query_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/chapper/chapper/pipelines/timeline"
	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"github.com/chapper/chapper/proto/locality"
	"github.com/chapper/chapper/services/devstack/devtest"
	"github.com/chapper/chapper/services/query"
)

// chunksNear returns n distinct chunks north of Edinburgh.
func chunksNear(t testing.TB, n int) []int64 {
	t.Helper()
	out := make([]int64, n)
	for i := range out {
		out[i] = chunkOf(t, edinburghLat+float64(i)*0.005, edinburghLon)
	}
	return out
}

// watchErr opens a watch and returns how it ended, or nil if it delivered
// its snapshot.
func watchErr(t testing.TB, e *env, chunk int64) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	stream, err := e.qc.WatchChunk(ctx, &canvassv1.WatchChunkRequest{Chunk: chunk})
	if err != nil {
		return err
	}
	ev, err := stream.Recv()
	if err != nil {
		return err
	}
	if ev.GetSnapshot() == nil {
		return fmt.Errorf("first event %v is not a snapshot", ev)
	}
	return nil
}

// Past -query.max-subscriptions a watch of another chunk is refused with
// RESOURCE_EXHAUSTED, a GetChunk is still answered (uncached, subscribing to
// nothing), and once a chunk goes idle its place is free again.
func TestMaxSubscriptions(t *testing.T) {
	const limit = 2
	e := newEnv(t, func(c *query.Config) {
		c.MaxSubscriptions = limit
		c.SubscriptionIdle = 300 * time.Millisecond
	})
	chunks := chunksNear(t, limit+1)
	var watches []*watch
	for _, c := range chunks[:limit] {
		w := openWatch(t, e.client, c)
		w.snapshot(t)
		watches = append(watches, w)
	}
	err := watchErr(t, e, chunks[limit])
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("watch past the limit = %v, want RESOURCE_EXHAUSTED", err)
	}
	if _, err := e.qc.GetChunk(ctxT(t, 10*time.Second), &canvassv1.GetChunkRequest{Chunk: chunks[limit]}); err != nil {
		t.Fatalf("GetChunk past the limit: %v", err)
	}
	if n, _ := e.svc.Subscriptions(); n != limit {
		t.Errorf("%d chunks subscribed, want the limit %d", n, limit)
	}
	channel := timeline.NewsChannel(e.prefix, chunks[limit])
	if n, err := e.rdb.PubSubNumSub(context.Background(), channel).Result(); err != nil || n[channel] != 0 {
		t.Errorf("subscribers of the chunk past the limit = %v, %v; want 0", n, err)
	}

	watches[0].cancel()
	eventually(t, 10*time.Second, "a freed place", func() error {
		return watchErr(t, e, chunks[limit])
	})
}

// While Redis is down, WatchChunk and GetChunk answer UNAVAILABLE at once,
// and requests for many chunks queue no SUBSCRIBE; after Redis is back
// watches work again.
func TestRedisDownUnavailable(t *testing.T) {
	r := devtest.NewRedis(t)
	e := newEnvOn(t, r.Addr(), "", func(c *query.Config) { c.SubscriptionIdle = time.Minute })
	chunks := chunksNear(t, 50)
	w := openWatch(t, e.client, chunks[0])
	w.snapshot(t)

	if err := r.Stop(); err != nil {
		t.Fatalf("stopping redis: %v", err)
	}
	eventually(t, 15*time.Second, "service notices", func() error {
		if e.svc.Ready() == nil {
			return errors.New("still ready")
		}
		return nil
	})
	before, _ := e.svc.Subscriptions()
	for _, c := range chunks[1:] {
		start := time.Now()
		err := watchErr(t, e, c)
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("watch of chunk %d with redis down = %v, want UNAVAILABLE", c, err)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("watch took %v to answer; want an answer at once, not a wait for the subscription", d)
		}
		_, err = e.qc.GetChunk(ctxT(t, 20*time.Second), &canvassv1.GetChunkRequest{Chunk: c})
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("GetChunk with redis down = %v, want UNAVAILABLE", err)
		}
	}
	if chunks, queued := e.svc.Subscriptions(); chunks != before || queued > before {
		t.Errorf("with redis down: %d chunks (was %d), %d commands queued; want nothing new", chunks, before, queued)
	}

	if err := r.Start(ctxT(t, time.Minute)); err != nil {
		t.Fatalf("starting redis: %v", err)
	}
	eventually(t, 20*time.Second, "service ready again", func() error { return e.svc.Ready() })
	if err := watchErr(t, e, chunks[1]); err != nil {
		t.Errorf("watch after the restart: %v", err)
	}
	// The watch that was open all along gets a fresh snapshot and news.
	locs := locality.ChunkLocalities(chunks[0])
	v := visit(locs[0], time.Now(), canvassv1.Outcome_OUTCOME_ANSWERED)
	e.write(t, v)
	for {
		ev := w.next(t, 15*time.Second)
		if ev.GetRecord().GetId() == v.Id {
			break
		}
		if _, ok := entryIDs(ev.GetSnapshot())[int64(locs[0])]; ok && ev.GetSnapshot() != nil {
			found := false
			for _, id := range entryIDs(ev.GetSnapshot())[int64(locs[0])] {
				found = found || id == v.Id
			}
			if found {
				break
			}
		}
	}
}
