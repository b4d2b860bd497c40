package ingest

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/chapper/chapper/services/auth"
	"golang.org/x/time/rate"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// maxBuckets bounds the per-canvasser buckets kept; past it, buckets idle
// long enough to be full again (which hold no state worth keeping) are
// dropped.
const maxBuckets = 100_000

// inFlightRetry is the retry advice when the in-flight limit is reached.
const inFlightRetry = 250 * time.Millisecond

// limits holds the per-canvasser token buckets (records per second) and
// the global in-flight count. Over either, Submit is refused at once with
// RESOURCE_EXHAUSTED and RetryInfo: nothing waits in a queue. It is safe
// for concurrent use.
type limits struct {
	rate        rate.Limit // 0: no rate limit
	burst       int
	maxInFlight int64 // 0: no limit
	inFlight    atomic.Int64

	mu      sync.Mutex
	buckets map[string]*bucket
}

type bucket struct {
	lim  *rate.Limiter
	last time.Time
}

func newLimits(cfg Config) *limits {
	return &limits{rate: rate.Limit(cfg.RatePerCanvasser), burst: cfg.RateBurst, maxInFlight: int64(cfg.MaxInFlight), buckets: map[string]*bucket{}}
}

// exhausted is RESOURCE_EXHAUSTED with google.rpc.RetryInfo.
func exhausted(retry time.Duration, format string, args ...any) error {
	st := status.Newf(codes.ResourceExhausted, format, args...)
	if d, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(retry)}); err == nil {
		st = d
	}
	return st.Err()
}

// enter takes an in-flight slot; release gives it back.
func (l *limits) enter() (release func(), err error) {
	if l.maxInFlight <= 0 {
		return func() {}, nil
	}
	if n := l.inFlight.Add(1); n > l.maxInFlight {
		l.inFlight.Add(-1)
		limitedTotal.WithLabelValues("in_flight").Inc()
		return nil, exhausted(inFlightRetry, "ingest is at its limit of %d Submits in progress; retry after %s", l.maxInFlight, inFlightRetry)
	}
	return func() { l.inFlight.Add(-1) }, nil
}

// allow takes n records from the caller's bucket, or refuses them all
// with the time after which they would pass.
func (l *limits) allow(ctx context.Context, n int, now time.Time) error {
	key := callerKey(ctx)
	if l.rate <= 0 || n == 0 || key == "" {
		return nil
	}
	l.mu.Lock()
	b, ok := l.buckets[key]
	if !ok {
		if len(l.buckets) >= maxBuckets {
			l.sweep(now)
		}
		b = &bucket{lim: rate.NewLimiter(l.rate, l.burst)}
		l.buckets[key] = b
	}
	b.last = now
	r := b.lim.ReserveN(now, n)
	l.mu.Unlock()
	if !r.OK() {
		// n > burst: Config.Validate keeps the burst above the batch limit.
		limitedTotal.WithLabelValues("rate").Inc()
		return status.Errorf(codes.ResourceExhausted, "batch of %d records exceeds the rate limit's burst of %d", n, l.burst)
	}
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		limitedTotal.WithLabelValues("rate").Inc()
		return exhausted(d, "canvasser %s is over its rate limit of %g records/s (burst %d); retry after %s", key, float64(l.rate), l.burst, d.Round(time.Millisecond))
	}
	return nil
}

// sweep drops the buckets idle long enough to be full again. l.mu is held.
func (l *limits) sweep(now time.Time) {
	refill := time.Duration(float64(l.burst) / float64(l.rate) * float64(time.Second))
	for k, b := range l.buckets {
		if now.Sub(b.last) > refill {
			delete(l.buckets, k)
		}
	}
}

// callerKey names the caller for its bucket: the token's canvasser; ""
// with authentication off, where no rate limit applies (every caller may
// claim any canvasser then, and load tests share one address).
func callerKey(ctx context.Context) string {
	if c, ok := auth.FromContext(ctx); ok {
		return c.CanvasserID()
	}
	return ""
}
