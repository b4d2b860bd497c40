package query

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/chapper/chapper/pipelines/timeline"
	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
)

// News subscriptions
//
// The service subscribes to the news channel of each chunk it has an
// interest in (a watcher, or a GetChunk in the last SubscriptionIdle), on
// one Pub/Sub connection, rather than PSUBSCRIBE to every chunk: an instance
// then receives only the news of the chunks its clients look at, so the
// Pub/Sub traffic of Redis grows with the watchers, not with the write rate
// times the number of query instances.
//
// A chunk is "confirmed" once Redis answered its SUBSCRIBE; only then may a
// watcher take its snapshot, and only answers read while it stays confirmed
// are cached. Every confirmation (the first, and every one after a
// reconnect, when go-redis subscribes again) invalidates the chunk's cache
// and makes its watchers take a fresh snapshot, so whatever was published
// while the subscription was down reaches them. SUBSCRIBE and UNSUBSCRIBE
// are sent by one goroutine in the order they were decided, so the last
// command for a channel always matches the wanted state.

// Timings of the Pub/Sub loop.
const (
	healthInterval    = 5 * time.Second
	minBackoff        = 50 * time.Millisecond
	maxBackoff        = 2 * time.Second
	janitorInterval   = time.Second
	maxCachedPerChunk = 64
)

// chunkState is what the service keeps about one chunk. Guarded by s.mu.
type chunkState struct {
	chunk   int64
	channel string
	// oldChannel is the chunk's channel under the prefix in force before a
	// switch, still listened to until oldUntil: a batch that read the
	// control keys before the switch publishes there (docs/query.md).
	oldChannel string
	oldUntil   time.Time
	watchers   map[*watcher]struct{}
	lastUsed   time.Time
	confirmed  bool
	// gen changes on every news message, confirmation and disconnect; an
	// answer is cached only if gen did not change while it was read.
	gen   uint64
	cache map[pageKey]cacheEntry
}

// pageKey names one cached page of a chunk.
type pageKey struct {
	size  int
	token string
}

type cacheEntry struct {
	resp    *canvassv1.GetChunkResponse
	expires time.Time
}

// subOp is a queued SUBSCRIBE or UNSUBSCRIBE.
type subOp struct {
	subscribe bool
	channel   string
}

// Run opens the news subscription, keeps it up (reconnecting with backoff,
// each reconnect re-sending snapshots to the watchers) and expires idle
// subscriptions and cache entries, until ctx is done. Then it ends every
// open WatchChunk stream with UNAVAILABLE and returns nil. Run may be
// called once.
func (s *Service) Run(ctx context.Context) error {
	if !s.running.CompareAndSwap(false, true) {
		return errors.New("query service run twice")
	}
	defer s.running.Store(false)
	defer s.stop()

	if err := s.script.Load(ctx, s.client).Err(); err != nil && ctx.Err() == nil {
		// Not fatal: a read loads the script when Redis says NOSCRIPT.
		s.log.Warn("loading page script into redis", "err", err)
	}
	s.pollPrefix(ctx)
	ps := s.client.Subscribe(ctx, timeline.SwitchChannel(s.cfg.Prefix))
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { s.runOps(ctx, ps) })
	wg.Go(func() { s.runJanitor(ctx) })
	wg.Go(func() { s.runPrefix(ctx) })
	wg.Go(func() {
		// Closing the connection ends a blocked receive at once.
		<-ctx.Done()
		_ = ps.Close()
	})
	s.receive(ctx, ps)
	cancel()
	wg.Wait()
	return nil
}

// stop ends the watchers and refuses new ones.
func (s *Service) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.stopped {
		s.stopped = true
		close(s.done)
	}
	s.connected.Store(false)
}

// receive reads the Pub/Sub connection until ctx is done.
func (s *Service) receive(ctx context.Context, ps *redis.PubSub) {
	backoff := minBackoff
	if err := ps.Ping(ctx); err != nil && ctx.Err() == nil {
		s.lost(err)
	}
	for {
		msg, err := ps.ReceiveTimeout(ctx, healthInterval)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() && s.connected.Load() {
				// Quiet connection: a ping proves it is alive (its pong is
				// the next message) or breaks it, and go-redis reconnects.
				if err := ps.Ping(ctx); err != nil && ctx.Err() == nil {
					s.lost(err)
				}
				continue
			}
			s.lost(err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, maxBackoff)
			// Reconnects (and re-subscribes every channel) if needed.
			_ = ps.Ping(ctx)
			continue
		}
		backoff = minBackoff
		if !s.connected.Swap(true) {
			s.log.Info("redis pub/sub connected")
		}
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind == "subscribe" {
				s.confirm(m.Channel)
			}
		case *redis.Message:
			if m.Channel == timeline.SwitchChannel(s.cfg.Prefix) {
				select {
				case s.pollNow <- struct{}{}:
				default:
				}
				continue
			}
			newsTotal.Inc()
			s.news(m.Channel, m.Payload)
		}
	}
}

// lost records that the Pub/Sub connection failed: nothing is confirmed
// and nothing cached any more until Redis answers the re-subscription.
func (s *Service) lost(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, st := range s.chunks {
		st.confirmed = false
		s.invalidateLocked(st)
	}
	if s.connected.Swap(false) {
		pubsubReconnectsTotal.Inc()
		s.log.Warn("redis pub/sub connection lost; reconnecting", "err", err)
	}
}

// confirm handles Redis's answer to a SUBSCRIBE: the chunk's news flows
// from here on, and its watchers take a fresh snapshot.
func (s *Service) confirm(channel string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.byChannel[channel]
	if st == nil || channel != st.channel {
		return
	}
	st.confirmed = true
	s.invalidateLocked(st)
	for w := range st.watchers {
		w.signalResync()
	}
}

// news handles one news message: the chunk's cache is dropped and the
// entry is handed to each watcher without blocking; a watcher whose buffer
// is full is dropped.
func (s *Service) news(channel, payload string) {
	s.mu.Lock()
	st := s.byChannel[channel]
	if st == nil {
		s.mu.Unlock()
		return
	}
	s.invalidateLocked(st)
	watched := len(st.watchers) > 0
	s.mu.Unlock()
	if !watched {
		return
	}
	e := &canvassv1.TimelineEntry{}
	if err := proto.Unmarshal([]byte(payload), e); err != nil {
		s.log.Warn("undecodable news message", "channel", channel, "err", err)
		return
	}
	if replacesID(e.GetRecord()) != "" {
		// A correction took a record off the chunk's timeline (here, or in
		// the chunk of the record it replaced): the watchers take a fresh
		// snapshot, which shows only the newest version.
		s.mu.Lock()
		defer s.mu.Unlock()
		for w := range st.watchers {
			w.signalResync()
		}
		return
	}
	// The entry's time is its timeline score, whole milliseconds, as in a
	// GetChunk answer.
	if t := e.GetTime(); t != nil {
		e.Time = timestamppb.New(time.UnixMilli(t.AsTime().UnixMilli()))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for w := range st.watchers {
		select {
		case w.events <- e:
		default:
			// A slow client never holds up the others: it is cut off and
			// must reconnect for a fresh snapshot.
			delete(st.watchers, w)
			close(w.dropped)
		}
	}
}

// invalidateLocked drops a chunk's cached answers and moves its generation
// on, so that no read that started before now is cached. s.mu is held.
func (s *Service) invalidateLocked(st *chunkState) {
	s.gen++
	st.gen = s.gen
	clear(st.cache)
}

// stateLocked returns the state of a chunk, creating it and queueing its
// SUBSCRIBE when it is new. It returns nil, and queues nothing, for a new
// chunk while the Pub/Sub connection is down (nothing queues up behind a
// dead connection) or when MaxSubscriptions chunks are subscribed already;
// why is in the error. s.mu is held.
func (s *Service) stateLocked(chunk int64) (*chunkState, error) {
	st := s.chunks[chunk]
	if st != nil {
		return st, nil
	}
	if !s.connected.Load() {
		subscriptionsRefusedTotal.WithLabelValues("redis_down").Inc()
		return nil, errSubscribeDown
	}
	if len(s.chunks) >= s.cfg.MaxSubscriptions {
		subscriptionsRefusedTotal.WithLabelValues("limit").Inc()
		return nil, errSubscribeLimit
	}
	st = &chunkState{
		chunk:    chunk,
		channel:  timeline.NewsChannel(s.prefix, chunk),
		watchers: make(map[*watcher]struct{}),
		cache:    make(map[pageKey]cacheEntry),
	}
	s.invalidateLocked(st)
	s.chunks[chunk] = st
	s.byChannel[st.channel] = st
	s.queueLocked(subOp{subscribe: true, channel: st.channel})
	subscribedChunks.Set(float64(len(s.chunks)))
	return st, nil
}

// Why stateLocked refused a new chunk.
var (
	errSubscribeDown  = errors.New("redis pub/sub connection down")
	errSubscribeLimit = errors.New("subscription limit reached")
)

func (s *Service) queueLocked(op subOp) {
	s.ops = append(s.ops, op)
	select {
	case s.opsReady <- struct{}{}:
	default:
	}
}

// cached returns a cached page of a chunk if there is a fresh one, the
// chunk's generation and the key prefix to read under, and notes the
// interest in the chunk (which keeps its subscription). With the cache off,
// a request subscribes to nothing; past the subscription limit or while
// Pub/Sub is down, a request is answered uncached.
func (s *Service) cached(chunk int64, key pageKey) (*canvassv1.GetChunkResponse, uint64, string) {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cfg.CacheTTL <= 0 {
		if st := s.chunks[chunk]; st != nil {
			return nil, st.gen, s.prefix
		}
		return nil, 0, s.prefix
	}
	st, err := s.stateLocked(chunk)
	if err != nil {
		return nil, 0, s.prefix
	}
	st.lastUsed = now
	if e, ok := st.cache[key]; ok && now.Before(e.expires) {
		return e.resp, st.gen, s.prefix
	}
	return nil, st.gen, s.prefix
}

// store caches a page read while the chunk's generation was gen, if the
// subscription was confirmed all along and no news came since.
func (s *Service) store(chunk int64, key pageKey, gen uint64, resp *canvassv1.GetChunkResponse) {
	if s.cfg.CacheTTL <= 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.chunks[chunk]
	if st == nil || !st.confirmed || st.gen != gen || len(st.cache) >= maxCachedPerChunk {
		return
	}
	st.cache[key] = cacheEntry{resp: resp, expires: time.Now().Add(s.cfg.CacheTTL)}
}

// runOps sends the queued SUBSCRIBE and UNSUBSCRIBE commands in order,
// consecutive ones of a kind in one command. A command that fails is sent
// again after a backoff: go-redis may have reconnected without it.
func (s *Service) runOps(ctx context.Context, ps *redis.PubSub) {
	backoff := minBackoff
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.opsReady:
		}
		for {
			s.mu.Lock()
			ops := s.ops
			s.ops = nil
			s.mu.Unlock()
			if len(ops) == 0 {
				break
			}
			done := 0
			for done < len(ops) {
				end := done + 1
				for end < len(ops) && ops[end].subscribe == ops[done].subscribe {
					end++
				}
				channels := make([]string, 0, end-done)
				for _, op := range ops[done:end] {
					channels = append(channels, op.channel)
				}
				var err error
				if ops[done].subscribe {
					err = ps.Subscribe(ctx, channels...)
				} else {
					err = ps.Unsubscribe(ctx, channels...)
				}
				if err != nil {
					break
				}
				done = end
				backoff = minBackoff
			}
			if done < len(ops) {
				// Put the rest back in front of anything queued since.
				s.mu.Lock()
				s.ops = append(ops[done:len(ops):len(ops)], s.ops...)
				s.mu.Unlock()
				select {
				case <-ctx.Done():
					return
				case <-time.After(backoff):
				}
				backoff = min(2*backoff, maxBackoff)
			}
		}
	}
}

// runJanitor expires cached answers and unsubscribes chunks nobody asked
// about for SubscriptionIdle.
func (s *Service) runJanitor(ctx context.Context) {
	t := time.NewTicker(min(janitorInterval, s.cfg.SubscriptionIdle/2))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			s.sweep(now)
		}
	}
}

func (s *Service) sweep(now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for chunk, st := range s.chunks {
		for k, e := range st.cache {
			if !now.Before(e.expires) {
				delete(st.cache, k)
			}
		}
		if st.oldChannel != "" && !now.Before(st.oldUntil) {
			s.dropOldLocked(st)
		}
		if len(st.watchers) == 0 && now.Sub(st.lastUsed) >= s.cfg.SubscriptionIdle {
			if st.oldChannel != "" {
				s.dropOldLocked(st)
			}
			delete(s.chunks, chunk)
			delete(s.byChannel, st.channel)
			s.queueLocked(subOp{subscribe: false, channel: st.channel})
		}
	}
	subscribedChunks.Set(float64(len(s.chunks)))
}

// prefixPoll is how often the service reads the prefix control keys when
// no switch is announced.
const prefixPoll = time.Second

// runPrefix follows the active key prefix: every prefixPoll, and at once
// when a switch is announced on timeline.SwitchChannel.
func (s *Service) runPrefix(ctx context.Context) {
	t := time.NewTicker(prefixPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.pollNow:
		}
		s.pollPrefix(ctx)
	}
}

// pollPrefix reads the active prefix and switches to it if it changed.
func (s *Service) pollPrefix(ctx context.Context) {
	rctx, cancel := context.WithTimeout(ctx, fetchTimeout)
	defer cancel()
	p, err := timeline.ReadPrefixes(rctx, s.client, s.cfg.Prefix)
	if err != nil {
		if ctx.Err() == nil {
			// Reads go on under the prefix in force; the next poll retries.
			s.log.Debug("reading the timeline prefix", "err", err)
		}
		return
	}
	s.switchTo(p.Active)
}

// switchTo makes prefix the one reads and subscriptions use: every
// subscribed chunk moves to its channel under prefix, its cache is dropped,
// and its watchers take a fresh snapshot once the new channel is confirmed.
func (s *Service) switchTo(prefix string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if prefix == s.prefix {
		return
	}
	s.log.Info("timeline key prefix switched", "from", s.prefix, "to", prefix)
	prefixSwitchesTotal.Inc()
	s.prefix = prefix
	for _, st := range s.chunks {
		if st.oldChannel != "" {
			s.dropOldLocked(st)
		}
		// The old channel stays for switchGrace: records of batches that
		// read the control keys just before the switch are published there,
		// and the watchers need them once.
		st.oldChannel, st.oldUntil = st.channel, time.Now().Add(switchGrace)
		st.channel = timeline.NewsChannel(prefix, st.chunk)
		s.byChannel[st.channel] = st
		st.confirmed = false
		s.invalidateLocked(st)
		s.queueLocked(subOp{subscribe: true, channel: st.channel})
	}
}

// switchGrace is how long a chunk's channel under the previous prefix is
// still listened to after a switch: longer than one batch write of the
// timeline sink.
const switchGrace = 10 * time.Second

// dropOldLocked unsubscribes a chunk's channel of the previous prefix.
// s.mu is held.
func (s *Service) dropOldLocked(st *chunkState) {
	if s.byChannel[st.oldChannel] == st {
		delete(s.byChannel, st.oldChannel)
	}
	s.queueLocked(subOp{subscribe: false, channel: st.oldChannel})
	st.oldChannel = ""
}

// Prefix returns the key prefix the service reads under.
func (s *Service) Prefix() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.prefix
}

// replacesID returns the replaces_id of a record, or "".
func replacesID(r *canvassv1.Record) string {
	switch k := r.GetKind().(type) {
	case *canvassv1.Record_Visit:
		return k.Visit.GetReplacesId()
	case *canvassv1.Record_Intention:
		return k.Intention.GetReplacesId()
	case *canvassv1.Record_Followup:
		return k.Followup.GetReplacesId()
	}
	return ""
}
