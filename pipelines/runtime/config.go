package runtime

import (
	"errors"
	"flag"
	"log/slog"
	"math"
	"strings"
	"time"

	"github.com/chapper/chapper/proto/topic"
)

// Errors returned by Config.Validate.
var (
	ErrNoBrokers        = errors.New("kafka brokers not set")
	ErrNoGroup          = errors.New("consumer group id not set")
	ErrNoTopics         = errors.New("topics to consume not set")
	ErrBadBatchSize     = errors.New("batch size must not be negative")
	ErrBadBackoff       = errors.New("min backoff must not exceed max backoff")
	ErrNegativeDuration = errors.New("durations must not be negative")
	ErrBadWindow        = errors.New("dead-letter window must not be negative")
	ErrBadRatio         = errors.New("dead-letter max ratio must be a number")
)

// Defaults, used by the flags and for zero values of a Config built in code.
const (
	DefaultBatchSize    = 500
	DefaultLinger       = 50 * time.Millisecond
	DefaultMinBackoff   = 100 * time.Millisecond
	DefaultMaxBackoff   = 30 * time.Second
	DefaultDrainTimeout = 10 * time.Second
	// DefaultDeadLetterWindow is how many of a partition's latest records
	// the dead-letter ratio is counted over.
	DefaultDeadLetterWindow = 1000
	// DefaultDeadLetterMaxRatio is the share of dead letters in a full
	// window past which the consumer turns fatal.
	DefaultDeadLetterMaxRatio = 0.5
	// DefaultDeadLetterMaxConsecutive is how many dead letters in a row a
	// partition may produce before the consumer turns fatal.
	DefaultDeadLetterMaxConsecutive = 100
	// DefaultStuckAfter is how long a partition with lag may go without a
	// commit before Ready reports it stuck.
	DefaultStuckAfter = 2 * time.Minute
)

// Config configures a Consumer. A zero BatchSize, Linger, DeadLetterTopic,
// MinBackoff, MaxBackoff, DrainTimeout, DeadLetterWindow,
// DeadLetterMaxRatio, DeadLetterMaxConsecutive or StuckAfter means its
// default; zero group timings mean kafka-go's defaults.
type Config struct {
	// Brokers are the Kafka bootstrap addresses.
	Brokers []string
	// GroupID is the consumer group (chapper-timeline, chapper-persist, ...).
	GroupID string
	// Topics are the record topics to consume.
	Topics []string
	// BatchSize is the most records handed to one Sink.Write.
	BatchSize int
	// Linger is the longest wait to fill a batch once its first record came.
	// The live consumer waits only while records keep arriving: a batch
	// that holds every partition in it read up to its fetch's high-water
	// mark is written at once.
	Linger time.Duration
	// DeadLetterTopic takes the records that can never be written.
	DeadLetterTopic string
	// MinBackoff and MaxBackoff bound the exponential backoff (with jitter)
	// between retries of a batch whose write failed transiently.
	MinBackoff, MaxBackoff time.Duration
	// DrainTimeout is how long the batch in hand at shutdown may still take
	// to be written and committed; after it the write is cancelled and the
	// batch left uncommitted (it is re-delivered later).
	DrainTimeout time.Duration

	// DeadLetterWindow, DeadLetterMaxRatio and DeadLetterMaxConsecutive
	// are the dead-letter limits (as Sentry Arroyo's DlqLimit), counted per
	// partition: once a partition's last DeadLetterWindow records are more
	// than DeadLetterMaxRatio dead letters, or more than
	// DeadLetterMaxConsecutive records in a row were dead letters, the
	// batch is not dead-lettered and the consumer turns fatal, naming the
	// partition and the limit. The ratio is checked only over a full
	// window. A negative ratio or count, or a ratio of 1 or more, turns
	// that limit off.
	DeadLetterWindow         int
	DeadLetterMaxRatio       float64
	DeadLetterMaxConsecutive int

	// StuckAfter is how long a partition with lag (records after its
	// committed offset) may go without a commit before Ready reports it
	// stuck; lag alone never makes the consumer unready. Negative turns the
	// check off.
	StuckAfter time.Duration

	// SessionTimeout, HeartbeatInterval, RebalanceTimeout and
	// JoinGroupBackoff are the consumer group timings (kafka-go
	// ReaderConfig). Tests shorten them; zero keeps kafka-go's defaults.
	SessionTimeout    time.Duration
	HeartbeatInterval time.Duration
	RebalanceTimeout  time.Duration
	JoinGroupBackoff  time.Duration

	// Logger receives the consumer's logs; nil means slog.Default().
	Logger *slog.Logger
}

// RegisterFlags registers the consumer flags under prefix: -<prefix>.brokers,
// -<prefix>.group-id (default chapper-<prefix>), -<prefix>.batch-size, ...
func (c *Config) RegisterFlags(prefix string, fs *flag.FlagSet) {
	c.Brokers = []string{"127.0.0.1:19092"}
	fs.Var((*listValue)(&c.Brokers), prefix+".brokers", "Comma-separated Kafka bootstrap addresses.")
	fs.StringVar(&c.GroupID, prefix+".group-id", "chapper-"+prefix, "Kafka consumer group id.")
	c.Topics = []string{topic.Visits, topic.Intentions, topic.Followups}
	fs.Var((*listValue)(&c.Topics), prefix+".topics", "Comma-separated record topics to consume.")
	fs.IntVar(&c.BatchSize, prefix+".batch-size", DefaultBatchSize, "Most records per sink write.")
	fs.DurationVar(&c.Linger, prefix+".linger", DefaultLinger, "Longest wait to fill a batch once its first record arrived; a batch that caught up with every partition it holds is written at once.")
	fs.StringVar(&c.DeadLetterTopic, prefix+".dead-letter-topic", topic.DeadLetter, "Topic for records that can never be written.")
	fs.DurationVar(&c.MinBackoff, prefix+".min-backoff", DefaultMinBackoff, "First wait before retrying a batch after a transient sink error.")
	fs.DurationVar(&c.MaxBackoff, prefix+".max-backoff", DefaultMaxBackoff, "Longest wait between retries of a failing batch.")
	fs.DurationVar(&c.DrainTimeout, prefix+".drain-timeout", DefaultDrainTimeout, "At shutdown, how long the batch in hand may take to be written and committed.")
	fs.IntVar(&c.DeadLetterWindow, prefix+".deadletter-window", DefaultDeadLetterWindow, "Latest records per partition over which the dead-letter ratio is counted.")
	fs.Float64Var(&c.DeadLetterMaxRatio, prefix+".deadletter-max-ratio", DefaultDeadLetterMaxRatio, "Share of dead letters in a partition's full window past which the consumer turns fatal (negative or >= 1: no limit).")
	fs.IntVar(&c.DeadLetterMaxConsecutive, prefix+".deadletter-max-consecutive", DefaultDeadLetterMaxConsecutive, "Dead letters in a row on one partition past which the consumer turns fatal (negative: no limit).")
	fs.DurationVar(&c.StuckAfter, prefix+".stuck-after", DefaultStuckAfter, "How long a partition with lag may go without a commit before /readyz reports it stuck (negative: never).")
	fs.DurationVar(&c.SessionTimeout, prefix+".session-timeout", 30*time.Second, "Consumer group session timeout.")
	fs.DurationVar(&c.HeartbeatInterval, prefix+".heartbeat-interval", 3*time.Second, "Consumer group heartbeat interval.")
	fs.DurationVar(&c.RebalanceTimeout, prefix+".rebalance-timeout", 30*time.Second, "How long the group coordinator waits for members to rejoin in a rebalance.")
	fs.DurationVar(&c.JoinGroupBackoff, prefix+".join-group-backoff", 5*time.Second, "Wait between attempts to rejoin the consumer group.")
}

// Validate reports the first invalid setting.
func (c *Config) Validate() error {
	switch {
	case len(c.Brokers) == 0:
		return ErrNoBrokers
	case c.GroupID == "":
		return ErrNoGroup
	case len(c.Topics) == 0:
		return ErrNoTopics
	case c.BatchSize < 0:
		return ErrBadBatchSize
	case c.Linger < 0 || c.MinBackoff < 0 || c.MaxBackoff < 0 || c.DrainTimeout < 0 ||
		c.SessionTimeout < 0 || c.HeartbeatInterval < 0 || c.RebalanceTimeout < 0 || c.JoinGroupBackoff < 0:
		return ErrNegativeDuration
	case c.MinBackoff > 0 && c.MaxBackoff > 0 && c.MinBackoff > c.MaxBackoff:
		return ErrBadBackoff
	case c.DeadLetterWindow < 0:
		return ErrBadWindow
	case math.IsNaN(c.DeadLetterMaxRatio):
		return ErrBadRatio
	}
	return nil
}

// withDefaults returns c with every zero setting that has a default set to it.
func (c Config) withDefaults() Config {
	if c.BatchSize == 0 {
		c.BatchSize = DefaultBatchSize
	}
	if c.Linger == 0 {
		c.Linger = DefaultLinger
	}
	if c.DeadLetterTopic == "" {
		c.DeadLetterTopic = topic.DeadLetter
	}
	if c.MinBackoff == 0 {
		c.MinBackoff = DefaultMinBackoff
	}
	if c.MaxBackoff == 0 {
		c.MaxBackoff = max(DefaultMaxBackoff, c.MinBackoff)
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = DefaultDrainTimeout
	}
	if c.DeadLetterWindow == 0 {
		c.DeadLetterWindow = DefaultDeadLetterWindow
	}
	if c.DeadLetterMaxRatio == 0 {
		c.DeadLetterMaxRatio = DefaultDeadLetterMaxRatio
	}
	if c.DeadLetterMaxConsecutive == 0 {
		c.DeadLetterMaxConsecutive = DefaultDeadLetterMaxConsecutive
	}
	if c.StuckAfter == 0 {
		c.StuckAfter = DefaultStuckAfter
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
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
