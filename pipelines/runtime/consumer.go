package runtime

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"
)

// Errors returned by Ready and Run.
var (
	ErrNotJoined = errors.New("consumer has not joined its group yet")
	ErrStarted   = errors.New("consumer already started")
)

// Consumer is the one consumer loop every pipeline shares. It reads its
// topics in a Kafka consumer group, hands batches (bounded by count and
// time) to its Sink one after another, so each partition's order is kept,
// dead-letters the records that can never be written, and commits a batch's
// offsets only after the sink returned and the dead letters were
// acknowledged by all in-sync replicas. Each batch is committed with the
// group generation that fetched it, so a member that lost a partition in a
// rebalance cannot move the new owner's offset back. Delivery is at least
// once: after a crash or a rebalance a batch may be delivered again, so
// sinks are idempotent.
//
// A *FatalError from the sink, or a partition past a dead-letter limit,
// stops the consumer for good: it commits nothing more, leaves its group,
// and Ready reports the cause until the process restarts.
type Consumer struct {
	cfg   Config
	sink  Sink
	log   *slog.Logger
	h     *batchHandler
	parts *partitionHealth
	now   func() time.Time

	started atomic.Bool
	joined  atomic.Bool
	fatal   atomic.Pointer[error]
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
	return &Consumer{
		cfg:   cfg,
		sink:  sink,
		log:   log,
		h:     newBatchHandler(cfg, sink, log),
		parts: newPartitionHealth(sink.Name()),
		now:   time.Now,
	}, nil
}

// Ready returns nil while the consumer is a member of its group (it
// received an assignment, possibly empty, and stays ready through ordinary
// rebalances), its writes succeed and no partition is stuck. Otherwise it
// returns why: the fatal error that stopped it, ErrNotJoined (not joined
// yet, or joining fails), the transient sink or dead-letter failure being
// retried, or ErrStuck naming the partitions with lag and no commit for
// StuckAfter. Lag alone never makes it unready.
func (c *Consumer) Ready() error {
	if err := c.fatal.Load(); err != nil {
		return *err
	}
	if !c.joined.Load() {
		return ErrNotJoined
	}
	if err := c.h.failing(); err != nil {
		return err
	}
	return c.parts.stuck(c.now(), c.cfg.StuckAfter)
}

// Run consumes until ctx is done, then finishes the batch in hand (writing
// and committing it within the drain timeout), leaves the group and returns
// nil. A batch whose write is failing when ctx is done is left uncommitted,
// to be re-delivered later. After a fatal error Run logs it once, leaves
// the group and waits for ctx, then returns nil: the process's other parts
// keep running. Run returns an error only when it cannot start. Run may be
// called once.
func (c *Consumer) Run(ctx context.Context) error {
	if !c.started.CompareAndSwap(false, true) {
		return ErrStarted
	}
	defer c.h.close()
	fatalGauge.WithLabelValues(c.sink.Name()).Set(0)
	// a group that joins before its topics exist is assigned no partitions
	// and stays idle, so wait for them (ingest creates them at start-up)
	if err := c.waitForTopics(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	group, err := kafka.NewConsumerGroup(c.groupConfig())
	if err != nil {
		return fmt.Errorf("joining consumer group %s: %w", c.cfg.GroupID, err)
	}
	commitAge.add(c)
	leave := sync.OnceFunc(func() {
		c.joined.Store(false)
		if err := group.Close(); err != nil {
			c.log.Warn("leaving consumer group", "err", err)
		}
		commitAge.remove(c)
		c.parts.releaseAll()
	})
	defer leave()

	c.log.Info("consumer starting", "topics", c.cfg.Topics, "batch_size", c.cfg.BatchSize, "linger", c.cfg.Linger)
	for ctx.Err() == nil {
		gen, err := group.Next(ctx)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			if !errors.Is(err, kafka.RebalanceInProgress) {
				// the group retries by itself after JoinGroupBackoff
				c.joined.Store(false)
				c.log.Warn("joining consumer group", "err", err)
			}
			continue
		}
		c.joined.Store(true)
		done := make(chan error, 1)
		gen.Start(func(gctx context.Context) { done <- c.consume(ctx, gctx, gen) })
		if err := <-done; err != nil {
			c.fatal.Store(&err)
			fatalGauge.WithLabelValues(c.sink.Name()).Set(1)
			c.log.Error("consumer stopped for good: nothing more is fetched or committed until the process restarts", "err", err)
			leave()
			<-ctx.Done()
			return nil
		}
	}
	c.log.Info("consumer stopped")
	return nil
}

// waitForTopics blocks until every topic to consume exists with at least
// one partition, or ctx is done. It logs once while it waits.
func (c *Consumer) waitForTopics(ctx context.Context) error {
	client := &kafka.Client{Addr: kafka.TCP(c.cfg.Brokers...), Timeout: 5 * time.Second, Transport: c.h.transport}
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

func (c *Consumer) groupConfig() kafka.ConsumerGroupConfig {
	return kafka.ConsumerGroupConfig{
		ID:                    c.cfg.GroupID,
		Brokers:               c.cfg.Brokers,
		Topics:                c.cfg.Topics,
		StartOffset:           kafka.FirstOffset,
		WatchPartitionChanges: true,
		SessionTimeout:        c.cfg.SessionTimeout,
		HeartbeatInterval:     c.cfg.HeartbeatInterval,
		RebalanceTimeout:      c.cfg.RebalanceTimeout,
		JoinGroupBackoff:      c.cfg.JoinGroupBackoff,
		ErrorLogger:           kafka.LoggerFunc(c.h.kafkaError),
	}
}

// consume reads the partitions gen assigned until ctx or the generation
// (gctx) is done, a commit fails, or a fatal error, which it returns. When
// ctx or the generation ends, the batch being written is still finished
// and committed with gen (the coordinator accepts it until the rebalance
// completes, and refuses it after, when the partition may have a new
// owner).
//
// Three stages overlap, so the sink is rarely idle: the partition readers
// fetch, gather assembles and decodes the next batch while the sink
// writes the one before (one batch ahead: gather waits to hand it over,
// so memory stays bounded), and the committer commits a batch's offsets
// after its write returned, while the sink writes the next. Batches are
// written one after another, in fetch order, so each partition's order is
// kept.
func (c *Consumer) consume(ctx, gctx context.Context, gen *kafka.Generation) error {
	stop, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(gctx, cancel)()

	owned := map[topicPartition]int64{}
	for name, parts := range gen.Assignments {
		for _, p := range parts {
			owned[topicPartition{name, p.ID}] = p.Offset
		}
	}
	c.parts.assign(owned, c.now())
	c.log.Info("consumer group generation", "generation", gen.ID, "member", gen.MemberID, "partitions", len(owned))

	in := make(chan kafka.Message, max(2*c.cfg.BatchSize, 100))
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel() // before the Wait: the readers and gather stop
	for tp, offset := range owned {
		wg.Go(func() { c.readPartition(stop, tp, offset, in) })
	}
	batches := make(chan decoded)
	writing := make(chan struct{}) // closed when the write loop is done
	wg.Go(func() { c.gather(stop, in, batches, writing) })
	commits := c.startCommitter(gen, cancel)
	err := c.writeLoop(stop, batches, commits)
	close(writing)
	// the commits of every batch written, before the generation is left
	commits.close()
	return err
}

// gather hands the live consumer's batches to out, decoded, until ctx is
// done or the write loop ended (writing closed); it closes out. While the
// write loop is still busy with the batch before, the batch waiting to be
// handed over keeps taking the messages that arrive, up to the batch
// size: a record that arrives meanwhile goes out with the next write, not
// the one after it. The batch in hand when ctx is done is still handed
// over, so a write loop waiting for it writes it.
func (c *Consumer) gather(ctx context.Context, in <-chan kafka.Message, out chan<- decoded, writing <-chan struct{}) {
	defer close(out)
	for {
		msgs := nextLiveBatch(ctx, in, c.cfg.BatchSize, c.cfg.Linger)
		if len(msgs) == 0 {
			return
		}
		d := c.h.decode(msgs, nil)
		more, done := in, ctx.Done()
		for handed := false; !handed; {
			if len(d.msgs) >= c.cfg.BatchSize {
				more = nil
			}
			select {
			case out <- d:
				handed = true
			case m, ok := <-more:
				if !ok {
					more = nil
					continue
				}
				d.add(m, nil)
			case <-done:
				more, done = nil, nil
			case <-writing:
				return
			}
		}
		if ctx.Err() != nil {
			return
		}
	}
}

// writeLoop writes the batches from batches one after another and queues
// each one's commit after its write returned, until batches is closed, ctx
// is done (after the batch being written), a commit failed or a batch
// could not be written; it returns a fatal error, else nil.
func (c *Consumer) writeLoop(ctx context.Context, batches <-chan decoded, commits *committer) error {
	for d := range batches {
		start := time.Now()
		res, err := c.h.write(ctx, d)
		if err != nil {
			var fatal *FatalError
			if errors.As(err, &fatal) {
				return err
			}
			// unwritten at shutdown: end this generation; what was not
			// committed is read again
			return nil
		}
		// Commit after the write: a crash before the commit re-delivers
		// the batch, and the sink is idempotent. The generation's commit
		// is refused once the group moved on without us, so a partition's
		// new owner never sees its offset moved back.
		if !commits.add(d.msgs, res, start) {
			return nil // an earlier commit failed: the generation ends
		}
		if ctx.Err() != nil {
			return nil
		}
	}
	return nil
}

// readPartition sends the records of one assigned partition, from offset
// on, to out until ctx is done.
func (c *Consumer) readPartition(ctx context.Context, tp topicPartition, offset int64, out chan<- kafka.Message) {
	r := kafka.NewReader(kafka.ReaderConfig{
		Brokers:       c.cfg.Brokers,
		Topic:         tp.topic,
		Partition:     tp.partition,
		QueueCapacity: max(c.cfg.BatchSize, 100),
		MinBytes:      1,
		MaxBytes:      16 << 20,
		MaxWait:       time.Second,
		ErrorLogger:   kafka.LoggerFunc(c.h.kafkaError),
	})
	defer func() {
		if err := r.Close(); err != nil {
			c.log.Warn("closing partition reader", "partition", tp, "err", err)
		}
	}()
	if err := r.SetOffset(offset); err != nil {
		c.log.Error("seeking partition", "partition", tp, "offset", offset, "err", err)
		return
	}
	for {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			c.log.Warn("fetching from kafka", "partition", tp, "err", err)
			if !sleep(ctx, c.cfg.MinBackoff) {
				return
			}
			continue
		}
		c.parts.fetched(tp, m.Offset, m.HighWaterMark)
		select {
		case out <- m:
		case <-ctx.Done():
			return
		}
	}
}
