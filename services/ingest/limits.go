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

	// buckets maps a canvasser to its *bucket. A sync.Map rather than a
	// map under one mutex: every Submit looks its bucket up, almost always
	// an existing one, and those lookups take no lock shared by all
	// canvassers (each rate.Limiter has its own).
	buckets  sync.Map
	nBuckets atomic.Int64
	sweeping sync.Mutex // one sweep at a time
}

type bucket struct {
	lim  *rate.Limiter
	last atomic.Int64 // unix nanoseconds of the last Submit
}

func newLimits(cfg Config) *limits {
	return &limits{rate: rate.Limit(cfg.RatePerCanvasser), burst: cfg.RateBurst, maxInFlight: int64(cfg.MaxInFlight)}
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
	b := l.bucket(key, now)
	b.last.Store(now.UnixNano())
	r := b.lim.ReserveN(now, n)
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

// bucket returns key's bucket, making it when there is none.
func (l *limits) bucket(key string, now time.Time) *bucket {
	if b, ok := l.buckets.Load(key); ok {
		return b.(*bucket)
	}
	if l.nBuckets.Load() >= maxBuckets {
		l.sweep(now)
	}
	b, loaded := l.buckets.LoadOrStore(key, &bucket{lim: rate.NewLimiter(l.rate, l.burst)})
	if !loaded {
		l.nBuckets.Add(1)
	}
	return b.(*bucket)
}

// sweep drops the buckets idle long enough to be full again. A bucket
// dropped while a Submit still holds it only forgets what that Submit
// took: a full bucket holds nothing worth keeping.
func (l *limits) sweep(now time.Time) {
	if !l.sweeping.TryLock() {
		return // another Submit is sweeping
	}
	defer l.sweeping.Unlock()
	refill := time.Duration(float64(l.burst) / float64(l.rate) * float64(time.Second))
	l.buckets.Range(func(k, v any) bool {
		if now.Sub(time.Unix(0, v.(*bucket).last.Load())) > refill {
			if l.buckets.CompareAndDelete(k, v) {
				l.nBuckets.Add(-1)
			}
		}
		return true
	})
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
