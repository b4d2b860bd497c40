package query

import (
	"errors"
	"flag"
	"log/slog"
	"strings"
	"time"
)

// MaxPageSize is the largest number of entries per locality one GetChunk
// page returns; a larger page_size is lowered to it.
const MaxPageSize = 1000

// MaxCacheTTL is the longest an answer may be cached: a team must see a
// knock within a second even when a news message is lost.
const MaxCacheTTL = 500 * time.Millisecond

// Errors returned by Config.Validate.
var (
	ErrPageSize    = errors.New("query page size must be in [1, 1000]")
	ErrCacheTTL    = errors.New("query cache ttl must be in [0, 500ms]")
	ErrWatchBuffer = errors.New("query watch buffer must be at least 1")
	ErrIdle        = errors.New("query subscription idle time must be positive")
	ErrMaxSubs     = errors.New("query max subscriptions must be at least 1")
	ErrPrefix      = errors.New("query key prefix must not contain { or }")
)

// Config configures the query service. Build one with RegisterFlags (which
// sets the defaults) and check it with Validate.
type Config struct {
	// Prefix is the base timeline key and channel prefix (the timeline
	// sink's -timeline.key-prefix); empty means none. The service reads
	// under the prefix in force under it (timeline.ActivePrefixKey), and
	// follows a switch without a restart.
	Prefix string
	// PageSize is the number of entries per locality a GetChunk page returns
	// when the request does not say, and the size of a WatchChunk snapshot.
	PageSize int
	// CacheTTL is how long a GetChunk answer is served from memory (at most
	// MaxCacheTTL). It is dropped sooner when the chunk publishes news.
	// Zero turns the cache off; concurrent identical requests still share
	// one Redis round trip.
	CacheTTL time.Duration
	// WatchBuffer is the number of events a WatchChunk client may fall
	// behind before it is dropped with codes.ResourceExhausted.
	WatchBuffer int
	// SubscriptionIdle is how long the news subscription of a chunk is kept
	// after its last GetChunk request and last watcher.
	SubscriptionIdle time.Duration
	// MaxSubscriptions caps the chunks whose news this instance subscribes
	// to at once. A WatchChunk of another chunk past it is refused with
	// RESOURCE_EXHAUSTED; a GetChunk past it is answered, uncached.
	MaxSubscriptions int
	// Logger receives the service's log; nil means slog.Default().
	Logger *slog.Logger
}

// RegisterFlags registers the query flags under prefix (e.g. "query" gives
// -query.page-size) and sets every field to its default.
func (c *Config) RegisterFlags(prefix string, fs *flag.FlagSet) {
	fs.StringVar(&c.Prefix, prefix+".key-prefix", "", "Base prefix of the timeline Redis keys and channels to read (the timeline sink's key prefix); follows <prefix>chapper:timeline:active.")
	fs.IntVar(&c.PageSize, prefix+".page-size", 100, "Entries per locality in a GetChunk page when the request names none, and in a WatchChunk snapshot (at most 1000).")
	fs.DurationVar(&c.CacheTTL, prefix+".cache-ttl", 250*time.Millisecond, "How long a GetChunk answer is served from memory, unless the chunk publishes news first (at most 500ms; 0 turns the cache off).")
	fs.IntVar(&c.WatchBuffer, prefix+".watch-buffer", 256, "Events a WatchChunk client may fall behind before it is dropped with RESOURCE_EXHAUSTED.")
	fs.IntVar(&c.MaxSubscriptions, prefix+".max-subscriptions", 10000, "Most chunks whose news one instance subscribes to at once; a WatchChunk past it gets RESOURCE_EXHAUSTED, a GetChunk past it is not cached.")
	fs.DurationVar(&c.SubscriptionIdle, prefix+".subscription-idle", 30*time.Second, "How long a chunk's news subscription is kept after its last request and watcher.")
}

// Validate reports the first invalid setting.
func (c *Config) Validate() error {
	switch {
	case c.PageSize < 1 || c.PageSize > MaxPageSize:
		return ErrPageSize
	case c.CacheTTL < 0 || c.CacheTTL > MaxCacheTTL:
		return ErrCacheTTL
	case c.WatchBuffer < 1:
		return ErrWatchBuffer
	case c.SubscriptionIdle <= 0:
		return ErrIdle
	case c.MaxSubscriptions < 1:
		return ErrMaxSubs
	case strings.ContainsAny(c.Prefix, "{}"):
		return ErrPrefix
	}
	return nil
}
