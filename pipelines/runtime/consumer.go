package runtime

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"
)

// Errors returned by Ready and Run.
var (
	ErrNotJoined = errors.New("consumer has not joined its group yet")
	ErrStarted   = errors.New("consumer already started")
)

// idlePoll bounds the wait for the first record of a batch, so an idle
// consumer still notices that it joined its group.
const idlePoll = 250 * time.Millisecond

// Consumer is the one consumer loop every pipeline shares. It reads its
// topics in a Kafka consumer group, hands batches (bounded by count and
// time) to its Sink one after another, so each partition's order is kept,
// dead-letters the records that can never be written, and commits a batch's
// offsets only after the sink returned and the dead letters were
// acknowledged by all in-sync replicas. Delivery is at least once: after a
// crash or a rebalance a batch may be delivered again, so sinks are
// idempotent.
type Consumer struct {
	cfg  Config
	sink Sink
	log  *slog.Logger

	started atomic.Bool
	joined  atomic.Bool
	h       *batchHandler
}

// New returns a consumer feeding sink. It validates cfg and starts nothing;
// Run does the work.
func New(cfg Config, sink Sink) (*Consumer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if sink == nil {
		return nil, errors.New("consumer needs a sink")
	}
	cfg = cfg.withDefaults()
	log := cfg.Logger.With("sink", sink.Name(), "group", cfg.GroupID)
	return &Consumer{cfg: cfg, sink: sink, log: log, h: newBatchHandler(cfg, sink, log)}, nil
}

// Ready returns nil once the consumer joined its group and while its writes
// succeed; an error saying why otherwise (not joined yet, or the sink or
// the dead-letter topic failing transiently and being retried).
func (c *Consumer) Ready() error {
	if !c.joined.Load() {
		return ErrNotJoined
	}
	return c.h.failing()
}

// Run consumes until ctx is done, then finishes the batch in hand (writing
// and committing it within the drain timeout), leaves the group and returns
// nil. A batch whose write is failing when ctx is done is left uncommitted,
// to be re-delivered later. Run may be called once.
func (c *Consumer) Run(ctx context.Context) error {
	if !c.started.CompareAndSwap(false, true) {
		return ErrStarted
	}
	// a group that joins before its topics exist is assigned no partitions
	// and stays idle, so wait for them (ingest creates them at start-up)
	if err := c.waitForTopics(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	reader := kafka.NewReader(c.readerConfig())
	defer func() {
		c.joined.Store(false)
		if err := reader.Close(); err != nil {
			c.log.Warn("closing kafka reader", "err", err)
		}
		c.h.close()
	}()
	c.log.Info("consumer starting", "topics", c.cfg.Topics, "batch_size", c.cfg.BatchSize, "linger", c.cfg.Linger)
	for ctx.Err() == nil {
		if msgs := c.fetch(ctx, reader); len(msgs) > 0 {
			c.handle(ctx, reader, msgs)
		}
	}
	c.log.Info("consumer stopped")
	return nil
}

// waitForTopics blocks until every topic to consume exists with at least
// one partition, or ctx is done. It logs once while it waits.
func (c *Consumer) waitForTopics(ctx context.Context) error {
	client := &kafka.Client{Addr: kafka.TCP(c.cfg.Brokers...), Timeout: 5 * time.Second}
	wait, logged := 50*time.Millisecond, false
	for {
		missing, err := c.missingTopics(ctx, client)
		if err == nil && len(missing) == 0 {
			return nil
		}
		if !logged {
			c.log.Info("waiting for topics to exist before joining the group", "missing", missing, "err", err)
			logged = true
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, 2*time.Second)
	}
}

// missingTopics returns the topics to consume that the brokers do not know.
func (c *Consumer) missingTopics(ctx context.Context, client *kafka.Client) ([]string, error) {
	resp, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: c.cfg.Topics})
	if err != nil {
		return nil, fmt.Errorf("reading topic metadata: %w", err)
	}
	var missing []string
	for _, name := range c.cfg.Topics {
		i := slices.IndexFunc(resp.Topics, func(t kafka.Topic) bool { return t.Name == name })
		if i < 0 || resp.Topics[i].Error != nil || len(resp.Topics[i].Partitions) == 0 {
			missing = append(missing, name)
		}
	}
	return missing, nil
}

func (c *Consumer) readerConfig() kafka.ReaderConfig {
	return kafka.ReaderConfig{
		Brokers:               c.cfg.Brokers,
		GroupID:               c.cfg.GroupID,
		GroupTopics:           c.cfg.Topics,
		QueueCapacity:         max(2*c.cfg.BatchSize, 100),
		MinBytes:              1,
		MaxBytes:              16 << 20,
		MaxWait:               time.Second,
		CommitInterval:        0, // commit explicitly, after the sink took the batch
		StartOffset:           kafka.FirstOffset,
		WatchPartitionChanges: true,
		SessionTimeout:        c.cfg.SessionTimeout,
		HeartbeatInterval:     c.cfg.HeartbeatInterval,
		RebalanceTimeout:      c.cfg.RebalanceTimeout,
		JoinGroupBackoff:      c.cfg.JoinGroupBackoff,
		ErrorLogger:           kafka.LoggerFunc(c.kafkaError),
	}
}

func (c *Consumer) kafkaError(msg string, args ...any) {
	c.log.Debug("kafka-go: " + fmt.Sprintf(msg, args...))
}

// fetch returns the next batch: it waits for a first record (nil when ctx
// is done first), then takes more until the batch is full or Linger passed.
func (c *Consumer) fetch(ctx context.Context, r *kafka.Reader) []kafka.Message {
	var msgs []kafka.Message
	for len(msgs) == 0 {
		if ctx.Err() != nil {
			return nil
		}
		pctx, cancel := context.WithTimeout(ctx, idlePoll)
		m, err := r.FetchMessage(pctx)
		cancel()
		switch {
		case err == nil:
			c.joined.Store(true)
			msgs = append(msgs, m)
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, context.DeadlineExceeded):
			if !c.joined.Load() && r.Stats().Rebalances > 0 {
				c.joined.Store(true)
			}
		default:
			// The reader gave up joining the group for now (it keeps
			// trying by itself): not ready until it joins again.
			c.joined.Store(false)
			c.log.Warn("fetching from kafka", "err", err)
			sleep(ctx, c.cfg.MinBackoff)
		}
	}
	lctx, cancel := context.WithTimeout(ctx, c.cfg.Linger)
	defer cancel()
	for len(msgs) < c.cfg.BatchSize {
		m, err := r.FetchMessage(lctx)
		if err != nil {
			// Linger over or ctx done: the batch in hand is still
			// written. A reader error shows again on the next fetch.
			break
		}
		msgs = append(msgs, m)
	}
	return msgs
}

// handle writes, dead-letters and commits one batch. It returns without
// committing when ctx is done while the batch cannot be written (it is then
// re-delivered to whoever reads the partition next).
func (c *Consumer) handle(ctx context.Context, r *kafka.Reader, msgs []kafka.Message) {
	start := time.Now()
	res, err := c.h.process(ctx, msgs, nil)
	if err != nil {
		return
	}
	wctx, cancel := drainContext(ctx, c.cfg.DrainTimeout)
	defer cancel()
	// Commit after the write: a crash before this line re-delivers the
	// batch, and the sink is idempotent.
	last := lastPerPartition(msgs)
	if err := r.CommitMessages(wctx, last...); err != nil {
		c.log.Warn("committing offsets; the batch will be delivered again", "records", len(msgs), "err", err)
		return
	}
	c.h.account(res, start)
	name := c.sink.Name()
	for _, m := range last {
		lagRecords.WithLabelValues(name, m.Topic, strconv.Itoa(m.Partition)).Set(float64(max(m.HighWaterMark-m.Offset-1, 0)))
	}
}
