package ingest

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"time"

	"github.com/segmentio/kafka-go"
)

// Errors returned by Config.Validate.
var (
	ErrNoBrokers   = errors.New("no kafka brokers configured")
	ErrBatchLimit  = errors.New("batch limit must be at least 1")
	ErrDedupSize   = errors.New("dedup size must be at least 1")
	ErrCompression = errors.New("unknown compression codec")
	ErrTopicLayout = errors.New("topic partitions and replication factor must be at least 1")
	ErrTimeout     = errors.New("timeouts must be positive")
	ErrIDTTL       = errors.New("id store TTL must be positive")
	ErrLimits      = errors.New("rate limit, burst and in-flight limit must not be negative")
)

// Config configures the ingest service.
type Config struct {
	// Brokers are the Kafka bootstrap addresses. The chapper command sets
	// them from its shared -kafka.brokers flag, so ingest registers no flag
	// of its own for them.
	Brokers []string
	// Logger receives the service's logs; nil means slog.Default().
	Logger *slog.Logger

	BatchLimit        int
	DedupSize         int
	MaxFuture         time.Duration
	ProduceTimeout    time.Duration
	BatchTimeout      time.Duration
	MaxAttempts       int
	Compression       string
	KafkaClientID     string
	CreateTopics      bool
	TopicPartitions   int
	ReplicationFactor int

	// RedisAddrs are the shared id store's Redis addresses, comma-separated
	// (more than one: a Redis Cluster); empty keeps ids in this process
	// only. chapper dev sets the dev Redis.
	RedisAddrs  string
	RedisPrefix string
	IDTTL       time.Duration

	// RatePerCanvasser is each canvasser's sustained rate in records per
	// second (0: no limit), RateBurst its bucket size; MaxInFlight bounds
	// the Submits in progress in this instance (0: no limit).
	RatePerCanvasser float64
	RateBurst        int
	MaxInFlight      int
}

// RegisterFlags registers the service's flags on fs under prefix (e.g.
// "ingest" gives -ingest.batch-limit).
func (c *Config) RegisterFlags(prefix string, fs *flag.FlagSet) {
	fs.IntVar(&c.BatchLimit, prefix+".batch-limit", 500, "Most records (all kinds together) one Submit may carry; a larger batch fails whole with INVALID_ARGUMENT.")
	fs.IntVar(&c.DedupSize, prefix+".dedup-size", 100000, "Record ids remembered after the broker acknowledged them; a resubmitted id among them is answered DUPLICATE and not produced again.")
	fs.DurationVar(&c.MaxFuture, prefix+".max-future", 24*time.Hour, "How far ahead of the server clock a record's own time may be.")
	fs.DurationVar(&c.ProduceTimeout, prefix+".produce-timeout", 5*time.Second, "Longest wait for the broker to acknowledge a batch; past it Submit answers UNAVAILABLE.")
	fs.DurationVar(&c.BatchTimeout, prefix+".kafka-batch-timeout", time.Millisecond, "Longest time the producer lingers to fill a partition's batch before sending it (Submit waits for the ack, so keep it small).")
	fs.IntVar(&c.MaxAttempts, prefix+".kafka-max-attempts", 3, "Produce attempts per batch before the producer gives up on it.")
	fs.StringVar(&c.Compression, prefix+".kafka-compression", "lz4", "Produce compression codec: none, gzip, snappy, lz4 or zstd.")
	fs.StringVar(&c.KafkaClientID, prefix+".kafka-client-id", "chapper-ingest", "Kafka client id of the producer.")
	fs.BoolVar(&c.CreateTopics, prefix+".create-topics", true, "Create every Chapper topic at start-up when it is missing.")
	fs.IntVar(&c.TopicPartitions, prefix+".topic-partitions", 12, "Partitions of a topic created at start-up.")
	fs.IntVar(&c.ReplicationFactor, prefix+".topic-replication-factor", 3, "Replication factor of a topic created at start-up (chapper dev uses 1).")
	fs.StringVar(&c.RedisAddrs, prefix+".redis-addrs", "", "Comma-separated Redis addresses of the shared id store (several: a Redis Cluster), so DUPLICATE and CONFLICT hold across ingest instances and restarts; empty keeps ids in this process only (chapper dev: the dev Redis).")
	fs.StringVar(&c.RedisPrefix, prefix+".redis-prefix", "ingest:", "Key prefix of the shared id store.")
	fs.DurationVar(&c.IDTTL, prefix+".id-ttl", 30*24*time.Hour, "How long the shared id store remembers an acknowledged id; longer than a phone stays offline.")
	fs.Float64Var(&c.RatePerCanvasser, prefix+".rate-limit", 100, "Records per second one canvasser (the token's subject) may submit, sustained; 0 turns the limit off. With authentication off there is no canvasser to limit.")
	fs.IntVar(&c.RateBurst, prefix+".rate-burst", 2000, "Records one canvasser may submit at once (token bucket size): a phone back online flushes its queue.")
	fs.IntVar(&c.MaxInFlight, prefix+".max-in-flight", 1024, "Submits in progress at once in this instance; more are refused with RESOURCE_EXHAUSTED (never queued). 0 turns the limit off.")
}

// Validate reports the first problem with the configuration.
func (c *Config) Validate() error {
	switch {
	case len(c.Brokers) == 0:
		return ErrNoBrokers
	case c.BatchLimit < 1:
		return ErrBatchLimit
	case c.DedupSize < 1:
		return ErrDedupSize
	case c.MaxFuture < 0 || c.ProduceTimeout <= 0 || c.BatchTimeout <= 0 || c.MaxAttempts < 1:
		return ErrTimeout
	case c.CreateTopics && (c.TopicPartitions < 1 || c.ReplicationFactor < 1):
		return ErrTopicLayout
	case c.RedisAddrs != "" && c.IDTTL <= 0:
		return ErrIDTTL
	case c.RatePerCanvasser < 0 || c.RateBurst < 0 || c.MaxInFlight < 0:
		return ErrLimits
	case c.RatePerCanvasser > 0 && c.RateBurst < c.BatchLimit:
		return fmt.Errorf("rate burst %d is below the batch limit %d: a full batch could never pass", c.RateBurst, c.BatchLimit)
	}
	if _, err := c.codec(); err != nil {
		return err
	}
	return nil
}

// codec returns the kafka-go compression of c.Compression.
func (c *Config) codec() (kafka.Compression, error) {
	switch c.Compression {
	case "", "none":
		return 0, nil
	case "gzip":
		return kafka.Gzip, nil
	case "snappy":
		return kafka.Snappy, nil
	case "lz4":
		return kafka.Lz4, nil
	case "zstd":
		return kafka.Zstd, nil
	}
	return 0, fmt.Errorf("%w %q (want none, gzip, snappy, lz4 or zstd)", ErrCompression, c.Compression)
}
