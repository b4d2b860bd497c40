package persist

import (
	"errors"
	"flag"
	"log/slog"

	"github.com/chapper/chapper/pipelines/shardmap"
)

// Errors returned by Config.Validate.
var (
	ErrNoRouter     = errors.New("router database URL not set")
	ErrBadPoolSize  = errors.New("pool size must be at least 1")
	ErrBadShardBits = errors.New("shard bits out of range")
)

// Config configures a Sink.
type Config struct {
	// RouterURL is the router database (URL or key=value string); the shard
	// map, and with it every shard database's connection string, is read
	// from there.
	RouterURL string
	// PoolSize is the most connections the sink opens to each shard
	// database (one batch writes to a database on one connection).
	PoolSize int
	// ShardBits is the shard bit count the deployment was set up with
	// (2^ShardBits logical shards); the sink refuses a map with another.
	ShardBits uint
	// Logger receives the sink's logs; nil means slog.Default().
	Logger *slog.Logger
}

// RegisterFlags registers the sink's flags under prefix: -<prefix>.router-url,
// -<prefix>.pool-size and -<prefix>.shard-bits.
func (c *Config) RegisterFlags(prefix string, fs *flag.FlagSet) {
	fs.StringVar(&c.RouterURL, prefix+".router-url", "postgres://postgres@127.0.0.1:15432/chapper_router?sslmode=disable",
		"Router database URL: the shard map and the connection strings of the shard databases are read from it.")
	fs.IntVar(&c.PoolSize, prefix+".pool-size", 4, "Most connections to each shard database.")
	fs.UintVar(&c.ShardBits, prefix+".shard-bits", shardmap.DefaultBits,
		"Shard bit count (2^N logical shards); must match the shard map in the router.")
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	if c.RouterURL == "" {
		return ErrNoRouter
	}
	if c.PoolSize < 1 {
		return ErrBadPoolSize
	}
	if c.ShardBits > shardmap.MaxBits {
		return ErrBadShardBits
	}
	return nil
}
