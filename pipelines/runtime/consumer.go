package runtime

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/chapper/chapper/proto/topic"
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
	failure atomic.Pointer[error] // set while writes keep failing

	records, batches, deadLetters, sinkErrors interface{ Add(float64) }
	batchSeconds                              interface{ Observe(float64) }
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
	name := sink.Name()
	return &Consumer{
		cfg:          cfg,
		sink:         sink,
		log:          cfg.Logger.With("sink", name, "group", cfg.GroupID),
		records:      recordsTotal.WithLabelValues(name),
		batches:      batchesTotal.WithLabelValues(name),
		deadLetters:  deadLetterTotal.WithLabelValues(name),
		sinkErrors:   sinkErrorsTotal.WithLabelValues(name),
		batchSeconds: batchSeconds.WithLabelValues(name),
	}, nil
}

// Ready returns nil once the consumer joined its group and while its writes
// succeed; an error saying why otherwise (not joined yet, or the sink or
// the dead-letter topic failing transiently and being retried).
func (c *Consumer) Ready() error {
	if !c.joined.Load() {
		return ErrNotJoined
	}
	if err := c.failure.Load(); err != nil {
		return *err
	}
	return nil
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
	writer := &kafka.Writer{
		Addr:         kafka.TCP(c.cfg.Brokers...),
		Topic:        c.cfg.DeadLetterTopic,
		Balancer:     &kafka.Murmur2Balancer{},
		RequiredAcks: kafka.RequireAll,
		BatchSize:    c.cfg.BatchSize,
		BatchTimeout: 5 * time.Millisecond,
		ErrorLogger:  kafka.LoggerFunc(c.kafkaError),
	}
	defer func() {
		c.joined.Store(false)
		if err := reader.Close(); err != nil {
			c.log.Warn("closing kafka reader", "err", err)
		}
		if err := writer.Close(); err != nil {
			c.log.Warn("closing dead-letter writer", "err", err)
		}
	}()
	c.log.Info("consumer starting", "topics", c.cfg.Topics, "batch_size", c.cfg.BatchSize, "linger", c.cfg.Linger)
	for ctx.Err() == nil {
		if msgs := c.fetch(ctx, reader); len(msgs) > 0 {
			c.handle(ctx, reader, writer, msgs)
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

// handle decodes, writes, dead-letters and commits one batch. It returns
// without committing only when ctx is done while the batch cannot be
// written; the batch is then re-delivered to whoever reads the partition
// next.
func (c *Consumer) handle(ctx context.Context, r *kafka.Reader, w *kafka.Writer, msgs []kafka.Message) {
	start := time.Now()
	// The batch in hand is finished after ctx is done, within DrainTimeout.
	wctx, cancel := c.drainContext(ctx)
	defer cancel()

	records := make([]Record, 0, len(msgs))
	var dead []Failure
	for _, m := range msgs {
		rec := recordOf(m)
		msg, err := topic.Decode(m.Topic, m.Value)
		if err != nil {
			dead = append(dead, Failure{Record: rec, Reason: err})
			continue
		}
		rec.Message = msg
		records = append(records, rec)
	}
	written := len(records)
	if len(records) > 0 {
		failures, ok := c.retry(ctx, "writing batch to sink", func() error {
			return c.sink.Write(wctx, records)
		})
		if !ok {
			return
		}
		dead = append(dead, failures...)
		written -= len(failures)
	}
	if len(dead) > 0 {
		out := make([]kafka.Message, len(dead))
		for i, f := range dead {
			out[i] = c.deadLetter(f)
		}
		if _, ok := c.retry(ctx, "producing to dead-letter topic", func() error {
			return w.WriteMessages(wctx, out...)
		}); !ok {
			return
		}
		c.deadLetters.Add(float64(len(dead)))
		c.log.Warn("dead-lettered records", "count", len(dead), "topic", c.cfg.DeadLetterTopic,
			"first_origin", fmt.Sprintf("%s/%d@%d", dead[0].Record.Topic, dead[0].Record.Partition, dead[0].Record.Offset),
			"first_error", dead[0].Reason)
	}

	// Commit after the write: a crash before this line re-delivers the
	// batch, and the sink is idempotent.
	last := lastPerPartition(msgs)
	if err := r.CommitMessages(wctx, last...); err != nil {
		c.log.Warn("committing offsets; the batch will be delivered again", "records", len(msgs), "err", err)
		return
	}
	c.records.Add(float64(written))
	c.batches.Add(1)
	c.batchSeconds.Observe(time.Since(start).Seconds())
	name := c.sink.Name()
	for _, m := range last {
		lagRecords.WithLabelValues(name, m.Topic, strconv.Itoa(m.Partition)).Set(float64(max(m.HighWaterMark-m.Offset-1, 0)))
	}
}

// retry runs op until it succeeds or fails permanently (a *PermanentError,
// whose failures it returns), backing off exponentially with jitter between
// transient failures. It returns ok = false, without retrying further, when
// ctx is done after a transient failure.
func (c *Consumer) retry(ctx context.Context, what string, op func() error) (failures []Failure, ok bool) {
	backoff := c.cfg.MinBackoff
	for attempt := 1; ; attempt++ {
		err := op()
		var perm *PermanentError
		if err == nil || errors.As(err, &perm) {
			if c.failure.Swap(nil) != nil {
				c.log.Info("write recovered", "what", what, "attempts", attempt)
			}
			if perm != nil {
				failures = perm.Failures
			}
			return failures, true
		}
		c.sinkErrors.Add(1)
		err = fmt.Errorf("%s: %w", what, err)
		c.failure.Store(&err)
		if ctx.Err() != nil {
			c.log.Warn("batch left uncommitted at shutdown", "err", err)
			return nil, false
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		c.log.Warn("transient failure, retrying the batch", "attempt", attempt, "retry_in", wait, "err", err)
		if !sleep(ctx, wait) {
			c.log.Warn("batch left uncommitted at shutdown", "err", err)
			return nil, false
		}
		backoff = min(2*backoff, c.cfg.MaxBackoff)
	}
}

// drainContext returns a context for writing the batch in hand: it is not
// cancelled with ctx but DrainTimeout after ctx is done.
func (c *Consumer) drainContext(ctx context.Context) (context.Context, context.CancelFunc) {
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(ctx, func() {
		t := time.NewTimer(c.cfg.DrainTimeout)
		defer t.Stop()
		select {
		case <-t.C:
			cancel()
		case <-wctx.Done():
		}
	})
	return wctx, func() {
		stop()
		cancel()
	}
}

// deadLetter returns the dead-letter message of a failure: the original key,
// value and headers plus the origin and the reason.
func (c *Consumer) deadLetter(f Failure) kafka.Message {
	added := []kafka.Header{
		{Key: topic.HeaderOriginTopic, Value: []byte(f.Record.Topic)},
		{Key: topic.HeaderOriginPartition, Value: []byte(strconv.Itoa(f.Record.Partition))},
		{Key: topic.HeaderOriginOffset, Value: []byte(strconv.FormatInt(f.Record.Offset, 10))},
		{Key: topic.HeaderSink, Value: []byte(c.sink.Name())},
		{Key: topic.HeaderError, Value: []byte(f.Reason.Error())},
	}
	headers := make([]kafka.Header, 0, len(f.Record.Headers)+len(added))
	for _, h := range f.Record.Headers {
		// A re-driven record that fails again carries its new origin only.
		switch h.Key {
		case topic.HeaderOriginTopic, topic.HeaderOriginPartition, topic.HeaderOriginOffset, topic.HeaderSink, topic.HeaderError:
			continue
		}
		headers = append(headers, kafka.Header{Key: h.Key, Value: h.Value})
	}
	return kafka.Message{Key: f.Record.Key, Value: f.Record.Value, Headers: append(headers, added...)}
}

func recordOf(m kafka.Message) Record {
	var headers []Header
	if len(m.Headers) > 0 {
		headers = make([]Header, len(m.Headers))
		for i, h := range m.Headers {
			headers[i] = Header{Key: h.Key, Value: h.Value}
		}
	}
	return Record{
		Topic:     m.Topic,
		Partition: m.Partition,
		Offset:    m.Offset,
		Key:       m.Key,
		Headers:   headers,
		Value:     m.Value,
		Time:      m.Time,
	}
}

// lastPerPartition returns the last message of each topic partition in msgs;
// committing it commits every earlier one.
func lastPerPartition(msgs []kafka.Message) []kafka.Message {
	type tp struct {
		topic     string
		partition int
	}
	index := map[tp]int{}
	var last []kafka.Message
	for _, m := range msgs {
		k := tp{m.Topic, m.Partition}
		if i, ok := index[k]; ok {
			if m.Offset > last[i].Offset {
				last[i] = m
			}
			continue
		}
		index[k] = len(last)
		last = append(last, m)
	}
	return last
}

// sleep waits d or until ctx is done; it reports whether it waited d.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
