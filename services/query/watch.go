package query

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
)

// watchReadyTimeout bounds the wait for a chunk's subscription before a
// watch's first snapshot.
const watchReadyTimeout = 5 * time.Second

// snapshotAttempts is how often a watch tries to read a snapshot.
const snapshotAttempts = 3

// watcher is one open WatchChunk stream as the Pub/Sub loop sees it.
type watcher struct {
	events  chan *canvassv1.TimelineEntry
	resync  chan struct{} // take a (fresh) snapshot
	dropped chan struct{} // closed when the buffer overflowed
}

func newWatcher(buffer int) *watcher {
	return &watcher{
		events:  make(chan *canvassv1.TimelineEntry, buffer),
		resync:  make(chan struct{}, 1),
		dropped: make(chan struct{}),
	}
}

func (w *watcher) signalResync() {
	select {
	case w.resync <- struct{}{}:
	default:
	}
}

// WatchChunk streams the state of a chunk (a snapshot: the first GetChunk
// page), then every record the timeline sink materialises in it, each once.
// After a Redis reconnect it sends a fresh snapshot, since records published
// meanwhile were not seen; a client replaces its state with every snapshot.
// A client that falls WatchBuffer events behind is dropped with
// RESOURCE_EXHAUSTED and should reconnect; it never holds up other clients.
// The stream ends with UNAVAILABLE when the service stops or the chunk's
// subscription cannot be set up, and when the client cancels.
func (s *Service) WatchChunk(req *canvassv1.WatchChunkRequest, stream grpc.ServerStreamingServer[canvassv1.ChunkEvent]) (err error) {
	defer func() { observeRequest("WatchChunk", err) }()
	chunk, err := chunkOf(req.GetLocation(), req.GetChunk())
	if err != nil {
		return err
	}
	ctx := stream.Context()
	w := newWatcher(s.cfg.WatchBuffer)
	if err := s.addWatcher(chunk, w); err != nil {
		return err
	}
	defer s.removeWatcher(chunk, w)
	watchersActive.Inc()
	defer watchersActive.Dec()

	// The subscription is live before the snapshot is read, so every record
	// the snapshot misses arrives as an event; events the snapshot already
	// holds are skipped by id.
	wait := time.NewTimer(watchReadyTimeout)
	defer wait.Stop()
	select {
	case <-w.resync:
	case <-ctx.Done():
		return status.FromContextError(ctx.Err()).Err()
	case <-s.done:
		return status.Error(codes.Unavailable, "query service stopping")
	case <-wait.C:
		return status.Errorf(codes.Unavailable, "subscribing to the news of chunk %d: redis pub/sub not ready", chunk)
	}
	seen, err := s.sendSnapshot(ctx, stream, chunk)
	if err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-s.done:
			return status.Error(codes.Unavailable, "query service stopping")
		case <-w.dropped:
			watchersDroppedTotal.Inc()
			return status.Errorf(codes.ResourceExhausted,
				"watch of chunk %d dropped: the client fell more than %d events behind; watch again for a fresh snapshot",
				chunk, s.cfg.WatchBuffer)
		case <-w.resync:
			if seen, err = s.sendSnapshot(ctx, stream, chunk); err != nil {
				return err
			}
		case e := <-w.events:
			if _, dup := seen[e.GetId()]; dup {
				continue
			}
			if err := stream.Send(&canvassv1.ChunkEvent{Event: &canvassv1.ChunkEvent_Record{Record: e}}); err != nil {
				return err
			}
		}
	}
}

// sendSnapshot reads the chunk's first page and sends it; it returns the
// ids it holds.
func (s *Service) sendSnapshot(ctx context.Context, stream grpc.ServerStreamingServer[canvassv1.ChunkEvent], chunk int64) (map[string]struct{}, error) {
	var resp *canvassv1.GetChunkResponse
	var err error
	for attempt := range snapshotAttempts {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return nil, status.FromContextError(ctx.Err()).Err()
			case <-time.After(time.Duration(attempt) * 200 * time.Millisecond):
			}
		}
		if resp, err = s.page(ctx, chunk, s.cfg.PageSize, "", nil); err == nil {
			break
		}
	}
	if err != nil {
		return nil, s.unavailable(ctx, fmt.Sprintf("reading the snapshot of chunk %d", chunk), err)
	}
	seen := make(map[string]struct{})
	for _, lt := range resp.GetLocalities() {
		for _, e := range lt.GetEntries() {
			seen[e.GetId()] = struct{}{}
		}
	}
	if err := stream.Send(&canvassv1.ChunkEvent{Event: &canvassv1.ChunkEvent_Snapshot{Snapshot: resp}}); err != nil {
		return nil, err
	}
	return seen, nil
}

// addWatcher registers w for the news of chunk. It answers UNAVAILABLE
// once the service stopped or while the Pub/Sub connection is down (rather
// than queueing a SUBSCRIBE behind it), RESOURCE_EXHAUSTED when the chunk
// would pass MaxSubscriptions. If the chunk's subscription is already
// confirmed, w may take its snapshot at once.
func (s *Service) addWatcher(chunk int64, w *watcher) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return status.Error(codes.Unavailable, "query service stopping")
	}
	st, err := s.stateLocked(chunk)
	switch {
	case errors.Is(err, errSubscribeLimit):
		return status.Errorf(codes.ResourceExhausted,
			"watching chunk %d: this instance already watches %d chunks (-query.max-subscriptions); try again later or another instance",
			chunk, s.cfg.MaxSubscriptions)
	case err != nil:
		return status.Errorf(codes.Unavailable, "watching chunk %d: redis unavailable: %v", chunk, err)
	}
	st.watchers[w] = struct{}{}
	if st.confirmed {
		w.signalResync()
	}
	return nil
}

func (s *Service) removeWatcher(chunk int64, w *watcher) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st := s.chunks[chunk]; st != nil {
		delete(st.watchers, w)
		st.lastUsed = time.Now()
	}
}
