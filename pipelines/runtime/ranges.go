package runtime

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
)

// ErrBadRange is wrapped by ReadRanges' errors about its ranges.
var ErrBadRange = errors.New("invalid range")

// Range is an explicit span of one partition's offsets: From (inclusive)
// up to To (exclusive, typically the high watermark read at start).
type Range struct {
	Topic     string
	Partition int
	From, To  int64
}

// Checkpoint is the progress on one partition: Next is the first offset not
// yet handled (written, skipped or dead-lettered).
type Checkpoint struct {
	Topic     string
	Partition int
	Next      int64
}

// RangeStats counts what ReadRanges did with the records it read.
type RangeStats struct {
	// Read is every record read and handled.
	Read int64
	// Written is the records the sink took.
	Written int64
	// Skipped is the records RangeConfig.Filter rejected (not written).
	Skipped int64
	// DeadLettered is the records sent to the dead-letter topic
	// (undecodable, or rejected permanently by the sink).
	DeadLettered int64
}

// RangeConfig configures ReadRanges.
type RangeConfig struct {
	// Config gives the brokers, batch size, linger, dead-letter topic and
	// limits, backoffs, drain timeout and logger, with the same defaults
	// as the live consumer; its GroupID, Topics, StuckAfter and group
	// timings are not used (ReadRanges joins no group).
	Config
	// Filter, if not nil, is called with every decoded record; a record
	// it returns false for is not written and counts as skipped.
	Filter func(Record) bool
	// OnBatch, if not nil, is called after every handled batch (written,
	// dead-lettered, skipped) with the progress of every range, in the
	// order of the ranges, so a caller can save a checkpoint. It runs on
	// ReadRanges' goroutine; ReadRanges waits for it.
	OnBatch func(done []Checkpoint)
}

// ReadRanges reads the given offset ranges, without joining any consumer
// group, and hands them to sink through the same batching, retries,
// dead-lettering and dead-letter limits as the live consumer (so a replayed
// record takes the live write path). Each partition's records are written
// in offset order; partitions are read concurrently.
//
// It returns when every range was handled (nil), when the sink or a
// dead-letter limit said the stream cannot go on (an error wrapping a
// *FatalError), when a partition cannot be read, or when ctx is done: then
// the batch in hand is finished within DrainTimeout, OnBatch is called for
// it, and ctx's error is returned. A transient sink failure is retried
// until it recovers or ctx is done. Ranges with From == To are done at once.
func ReadRanges(ctx context.Context, cfg RangeConfig, ranges []Range, sink Sink) (RangeStats, error) {
	var stats RangeStats
	if err := cfg.validate(ranges); err != nil {
		return stats, err
	}
	if sink == nil {
		return stats, errors.New("reading ranges needs a sink")
	}
	c := cfg.Config.withDefaults()
	h := newBatchHandler(c, sink, c.Logger.With("sink", sink.Name(), "replay", true))
	defer h.close()
	client := &kafka.Client{Addr: kafka.TCP(c.Brokers...), Timeout: 10 * time.Second, Transport: h.transport}
	if err := checkPartitions(ctx, client, ranges); err != nil {
		return stats, err
	}
	// Records the topic no longer holds (deleted by retention) cannot be
	// read: start each range at the partition's first offset at least.
	first, err := firstOffsets(ctx, client, ranges)
	if err != nil {
		return stats, err
	}

	progress := make([]Checkpoint, len(ranges))
	index := map[topicPartition]int{}
	for i, r := range ranges {
		progress[i] = Checkpoint{Topic: r.Topic, Partition: r.Partition, Next: r.From}
		index[topicPartition{r.Topic, r.Partition}] = i
	}

	rctx, cancel := context.WithCancel(ctx)
	in := make(chan kafka.Message, max(2*c.BatchSize, 100))
	readErr := make(chan error, len(ranges))
	var wg sync.WaitGroup
	for _, r := range ranges {
		r.From = min(max(r.From, first[topicPartition{r.Topic, r.Partition}]), r.To)
		if r.From == r.To {
			continue
		}
		wg.Go(func() {
			if err := readRange(rctx, c, r, in); err != nil && rctx.Err() == nil {
				readErr <- err
				cancel()
			}
		})
	}
	go func() {
		wg.Wait()
		close(in)
	}()
	defer func() {
		cancel()
		for range in {
			// drain so the readers can stop
		}
	}()

	for {
		msgs := nextBatch(ctx, in, c.BatchSize, c.Linger)
		if len(msgs) == 0 {
			select {
			case err := <-readErr:
				return stats, err
			default:
			}
			if err := ctx.Err(); err != nil {
				return stats, err
			}
			// every range is done; a range ending on a gap (no record at
			// To-1) is done too
			moved := false
			for i := range progress {
				if progress[i].Next != ranges[i].To {
					progress[i].Next, moved = ranges[i].To, true
				}
			}
			if moved && cfg.OnBatch != nil {
				cfg.OnBatch(append([]Checkpoint(nil), progress...))
			}
			return stats, nil
		}
		start := time.Now()
		res, err := h.process(ctx, msgs, cfg.Filter)
		if errors.Is(err, errUnwritten) {
			return stats, ctx.Err()
		}
		if err != nil {
			return stats, err
		}
		h.account(res, start)
		stats.Read += int64(res.read)
		stats.Written += int64(res.written)
		stats.Skipped += int64(res.skipped)
		stats.DeadLettered += int64(res.dead)
		for _, m := range lastPerPartition(msgs) {
			progress[index[topicPartition{m.Topic, m.Partition}]].Next = m.Offset + 1
		}
		if cfg.OnBatch != nil {
			cfg.OnBatch(append([]Checkpoint(nil), progress...))
		}
		if err := ctx.Err(); err != nil {
			return stats, err
		}
	}
}

// validate checks the ranges and the settings ReadRanges uses.
func (cfg *RangeConfig) validate(ranges []Range) error {
	c := cfg.Config
	switch {
	case len(c.Brokers) == 0:
		return ErrNoBrokers
	case c.BatchSize < 0:
		return ErrBadBatchSize
	case c.Linger < 0 || c.MinBackoff < 0 || c.MaxBackoff < 0 || c.DrainTimeout < 0:
		return ErrNegativeDuration
	case c.MinBackoff > 0 && c.MaxBackoff > 0 && c.MinBackoff > c.MaxBackoff:
		return ErrBadBackoff
	case c.DeadLetterWindow < 0:
		return ErrBadWindow
	case math.IsNaN(c.DeadLetterMaxRatio):
		return ErrBadRatio
	}
	seen := map[topicPartition]bool{}
	for i, r := range ranges {
		tp := topicPartition{r.Topic, r.Partition}
		switch {
		case r.Topic == "":
			return fmt.Errorf("%w %d: topic not set", ErrBadRange, i)
		case r.Partition < 0:
			return fmt.Errorf("%w %d (%s): partition %d is negative", ErrBadRange, i, r.Topic, r.Partition)
		case r.From < 0:
			return fmt.Errorf("%w %d (%s): from offset %d is negative", ErrBadRange, i, tp, r.From)
		case r.To < r.From:
			return fmt.Errorf("%w %d (%s): to offset %d is before from offset %d", ErrBadRange, i, tp, r.To, r.From)
		case seen[tp]:
			return fmt.Errorf("%w %d: partition %s given twice", ErrBadRange, i, tp)
		}
		seen[tp] = true
	}
	return nil
}

// checkPartitions returns an error naming the first range whose partition
// the brokers do not know (a reader would wait for it forever).
func checkPartitions(ctx context.Context, client *kafka.Client, ranges []Range) error {
	var topics []string
	for _, r := range ranges {
		if r.From < r.To && !slices.Contains(topics, r.Topic) {
			topics = append(topics, r.Topic)
		}
	}
	if len(topics) == 0 {
		return nil
	}
	resp, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: topics})
	if err != nil {
		return fmt.Errorf("reading metadata of the topics to read: %w", err)
	}
	partitions := map[string]int{}
	for _, t := range resp.Topics {
		if t.Error == nil {
			partitions[t.Name] = len(t.Partitions)
		}
	}
	for i, r := range ranges {
		if r.From < r.To && r.Partition >= partitions[r.Topic] {
			return fmt.Errorf("%w %d: partition %s/%d does not exist (the topic has %d)", ErrBadRange, i, r.Topic, r.Partition, partitions[r.Topic])
		}
	}
	return nil
}

// firstOffsets returns the first offset each range's partition still holds.
func firstOffsets(ctx context.Context, client *kafka.Client, ranges []Range) (map[topicPartition]int64, error) {
	req := &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{}}
	for _, r := range ranges {
		if r.From < r.To {
			req.Topics[r.Topic] = append(req.Topics[r.Topic], kafka.FirstOffsetOf(r.Partition))
		}
	}
	out := map[topicPartition]int64{}
	if len(req.Topics) == 0 {
		return out, nil
	}
	resp, err := client.ListOffsets(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("listing the first offsets of the partitions to read: %w", err)
	}
	for name, parts := range resp.Topics {
		for _, p := range parts {
			if p.Error != nil {
				return nil, fmt.Errorf("listing the first offset of %s/%d: %w", name, p.Partition, p.Error)
			}
			out[topicPartition{name, p.Partition}] = p.FirstOffset
		}
	}
	return out, nil
}

// rangeMaxWait is how long a range reader's fetch may wait for records to
// arrive. A range lies below the high watermark, so its fetches return at
// once; only the reader's prefetch after a range's last record waits, and
// closing the reader waits for that fetch: short, so a replay ends soon
// after its last write (the live consumer's readers wait a second).
const rangeMaxWait = 100 * time.Millisecond

// readRange sends the records of r to out, in offset order, and returns
// nil when it sent the record before r.To (or one at or past it showed up:
// the range's end fell on a gap). It returns an error only when the
// partition cannot be read and ctx is not done.
func readRange(ctx context.Context, cfg Config, r Range, out chan<- kafka.Message) error {
	reader := kafka.NewReader(kafka.ReaderConfig{
		Brokers:       cfg.Brokers,
		Topic:         r.Topic,
		Partition:     r.Partition,
		QueueCapacity: max(cfg.BatchSize, 100),
		MinBytes:      1,
		MaxBytes:      16 << 20,
		MaxWait:       rangeMaxWait,
		ErrorLogger:   kafka.LoggerFunc(func(msg string, args ...any) { cfg.Logger.Debug("kafka-go: " + fmt.Sprintf(msg, args...)) }),
	})
	defer reader.Close()
	if err := reader.SetOffset(r.From); err != nil {
		return fmt.Errorf("seeking %s/%d to offset %d: %w", r.Topic, r.Partition, r.From, err)
	}
	for {
		m, err := reader.FetchMessage(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("reading %s/%d: %w", r.Topic, r.Partition, err)
		}
		if m.Offset >= r.To {
			return nil
		}
		select {
		case out <- m:
		case <-ctx.Done():
			return nil
		}
		if m.Offset == r.To-1 {
			return nil
		}
	}
}

// nextBatch returns the next batch from in: it waits for a first message
// (nil when ctx is done or in is closed and empty first), then takes more
// until the batch holds size messages, linger passed, or in is closed.
func nextBatch(ctx context.Context, in <-chan kafka.Message, size int, linger time.Duration) []kafka.Message {
	var msgs []kafka.Message
	select {
	case m, ok := <-in:
		if !ok {
			return nil
		}
		msgs = append(msgs, m)
	case <-ctx.Done():
		return nil
	}
	t := time.NewTimer(linger)
	defer t.Stop()
	for len(msgs) < size {
		select {
		case m, ok := <-in:
			if !ok {
				return msgs
			}
			msgs = append(msgs, m)
		case <-t.C:
			return msgs
		case <-ctx.Done():
			// the batch in hand is still written
			return msgs
		}
	}
	return msgs
}
