package timeline

import (
	"errors"
	"flag"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Errors returned by Config.Validate.
var (
	ErrNoRedis = errors.New("timeline redis address not set")
	ErrKeep    = errors.New("timeline keep must not be negative")
	ErrTTL     = errors.New("timeline ttl must not be negative")
	// ErrPrefix: a brace in the prefix would become the Redis Cluster hash
	// tag and split a locality's keys over slots.
	ErrPrefix = errors.New("timeline key prefix must not contain { or }")
)

// Defaults of Keep and TTL, used by the flags and for zero values.
const (
	DefaultKeep = 1000
	DefaultTTL  = 14 * 24 * time.Hour
)

// Config configures the timeline sink and its Redis client. New treats a zero
// Keep or TTL as its default.
type Config struct {
	// Prefix is the base key prefix: put before every key and channel name,
	// so a rebuild can fill a fresh namespace, and before the prefix control
	// keys (ActivePrefixKey).
	Prefix string
	// Fixed makes the sink write under Prefix itself, without reading the
	// prefix control keys and without publishing news: what a rebuild's
	// replay uses to fill a fresh prefix. The live sink leaves it false and
	// writes under the prefixes in force under Prefix (see ReadPrefixes).
	Fixed bool
	// Keep is how many of a locality's newest records its timeline holds.
	Keep int
	// TTL is how long a locality's keys live after its last new record.
	TTL time.Duration
	// Redis says where the timelines live.
	Redis RedisConfig
}

// RedisConfig says how to reach Redis. The query service reads with the
// same settings under its own flag prefix.
type RedisConfig struct {
	// Addrs are the Redis addresses; more than one means Redis Cluster.
	Addrs []string
	// Password authenticates to Redis; empty means none.
	Password string
}

// RegisterFlags registers -<prefix>.redis-addrs and -<prefix>.redis-password.
func (c *RedisConfig) RegisterFlags(prefix string, fs *flag.FlagSet) {
	c.Addrs = []string{"127.0.0.1:16379"}
	fs.Var((*listValue)(&c.Addrs), prefix+".redis-addrs", "Comma-separated Redis addresses; more than one means Redis Cluster.")
	fs.StringVar(&c.Password, prefix+".redis-password", "", "Redis password; empty for none.")
}

// NewClient returns a Redis client for c.Addrs: a cluster client when there
// is more than one address, a plain client otherwise. The caller closes it.
func (c *RedisConfig) NewClient() redis.UniversalClient {
	return redis.NewUniversalClient(&redis.UniversalOptions{
		Addrs:    c.Addrs,
		Password: c.Password,
	})
}

// RegisterFlags registers the timeline flags under prefix (e.g. "timeline"
// gives -timeline.keep).
func (c *Config) RegisterFlags(prefix string, fs *flag.FlagSet) {
	fs.StringVar(&c.Prefix, prefix+".key-prefix", "", "Base prefix of every timeline Redis key and channel; the prefix in force under it is read from <prefix>chapper:timeline:active (a rebuild fills a fresh one).")
	fs.IntVar(&c.Keep, prefix+".keep", DefaultKeep, "Newest records kept on each locality's timeline.")
	fs.DurationVar(&c.TTL, prefix+".ttl", DefaultTTL, "Lifetime of a locality's timeline keys after its last new record.")
	c.Redis.RegisterFlags(prefix, fs)
}

// Validate reports the first invalid setting.
func (c *Config) Validate() error {
	switch {
	case len(c.Redis.Addrs) == 0:
		return ErrNoRedis
	case c.Keep < 0:
		return ErrKeep
	case c.TTL < 0:
		return ErrTTL
	case strings.ContainsAny(c.Prefix, "{}"):
		return ErrPrefix
	}
	return nil
}

// listValue is a comma-separated flag value.
type listValue []string

func (l *listValue) String() string { return strings.Join(*l, ",") }

func (l *listValue) Set(s string) error {
	*l = nil
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			*l = append(*l, v)
		}
	}
	return nil
}
