package auth

import (
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Verified tokens are remembered by their exact bytes, so that a client
// sending the same token with every call (every client does) pays for the
// signature check once: an ES256 verification costs about 100 µs of CPU,
// as much as producing a hundred records. A token differing in any byte
// (another signature, a forged payload) is another key and is verified in
// full. A remembered token is answered only inside the window the parser
// itself allows (nbf and iat minus the clock skew up to exp plus the clock
// skew), so an expired token is refused as soon as it expires, cached or
// not. The key set is read-only after loading, so nothing else can make a
// verified token invalid while the process runs.
const (
	// tokenCacheSize bounds the tokens remembered (two generations of half
	// as many each, as ingest's recent-id set).
	tokenCacheSize = 8192
	// maxCachedToken is the longest token remembered, in bytes.
	maxCachedToken = 4096
)

var tokenCacheTotal = promauto.NewCounterVec(prometheus.CounterOpts{
	Name: "chapper_auth_token_cache_total",
	Help: "Token verifications answered from the cache of verified tokens (hit) or by checking the signature (miss).",
}, []string{"result"})

var (
	tokenCacheHits   = tokenCacheTotal.WithLabelValues("hit")
	tokenCacheMisses = tokenCacheTotal.WithLabelValues("miss")
)

// verified is a remembered token's claims and the window it is valid in.
type verified struct {
	claims      *Claims
	from, until time.Time // valid when from <= now < until
}

// tokenCache is a bounded set of verified tokens in two generations: once
// the current one holds half the size it becomes the previous and the
// older one is dropped whole. It is safe for concurrent use; lookups of
// the current generation share a read lock.
type tokenCache struct {
	mu        sync.RWMutex
	cur, prev map[string]verified
	half      int
}

func newTokenCache(size int) *tokenCache {
	half := max(1, size/2)
	return &tokenCache{cur: make(map[string]verified, half), prev: map[string]verified{}, half: half}
}

// get returns token's claims when it was verified and now is inside its
// window.
func (c *tokenCache) get(token string, now time.Time) (*Claims, bool) {
	c.mu.RLock()
	e, ok := c.cur[token]
	c.mu.RUnlock()
	if !ok {
		c.mu.Lock()
		if e, ok = c.prev[token]; ok {
			c.putLocked(token, e)
		}
		c.mu.Unlock()
	}
	if !ok || now.Before(e.from) || !now.Before(e.until) {
		return nil, false
	}
	return e.claims, true
}

// put remembers a token that verified at now with claims, valid until exp
// plus skew.
func (c *tokenCache) put(token string, claims *Claims, skew time.Duration) {
	if len(token) > maxCachedToken || claims.ExpiresAt == nil {
		return
	}
	e := verified{claims: claims, until: claims.ExpiresAt.Add(skew)}
	for _, t := range []time.Time{timeOf(claims.NotBefore), timeOf(claims.IssuedAt)} {
		if t = t.Add(-skew); t.After(e.from) {
			e.from = t
		}
	}
	c.mu.Lock()
	c.putLocked(token, e)
	c.mu.Unlock()
}

func (c *tokenCache) putLocked(token string, e verified) {
	if len(c.cur) >= c.half {
		c.prev, c.cur = c.cur, make(map[string]verified, c.half)
	}
	c.cur[token] = e
}

// timeOf is d's time, the zero time when d is nil.
func timeOf(d *jwt.NumericDate) time.Time {
	if d == nil {
		return time.Time{}
	}
	return d.Time
}
