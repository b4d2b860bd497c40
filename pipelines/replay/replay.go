// Package replay re-reads the record topics over explicit offset ranges,
// without joining the live consumer groups, into one sink: the same Sink
// (timeline, persist or search) the live pipeline writes through, in
// batches bounded by count and time, with the same dead-lettering. A
// checkpoint (the next offset per partition) is committed after every
// written batch as the offsets of a consumer group that never joins
// (chapper-replay-<sink>), so an interrupted replay resumes where it
// stopped. Every sink is idempotent, so a replay twice over the same range
// changes nothing.
package replay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/chapper/chapper/pipelines/internal/kafkarange"
	"github.com/chapper/chapper/pipelines/report"
	"github.com/chapper/chapper/pipelines/runtime"
	"github.com/chapper/chapper/proto/locality"
	"github.com/chapper/chapper/proto/topic"
)

// Errors returned by Run.
var (
	// ErrInterrupted: ctx was done; the batch in hand was finished and
	// checkpointed, the rest of the range was not read. Resume continues.
	ErrInterrupted = errors.New("replay interrupted before the end of its range")
	// ErrDeadLettered: the whole range was read, but some records could
	// never be written and went to the dead-letter topic.
	ErrDeadLettered = errors.New("records dead-lettered")
	// ErrNoSink: Config.Sink is nil and DryRun is off.
	ErrNoSink = errors.New("replay needs a sink unless it is a dry run")
)

// GroupPrefix starts the name of a replay's checkpoint group:
// chapper-replay-<sink>.
const GroupPrefix = "chapper-replay-"

// Filter selects records by their content. The zero Filter keeps every
// record.
type Filter struct {
	// Region, when not nil, keeps records of that one 0.1° region.
	Region *int64
	// Box keeps records inside it, when set.
	Box report.Box
	// Since and Until keep records whose own time (visited_at,
	// recorded_at) is in [Since, Until), when set.
	Since, Until time.Time
}

// isZero reports whether f keeps every record.
func (f Filter) isZero() bool {
	return f.Region == nil && f.Box.IsZero() && f.Since.IsZero() && f.Until.IsZero()
}

// keep reports whether the filter keeps m.
func (f Filter) keep(m topic.Meta) bool {
	if !f.Since.IsZero() && m.Time.Before(f.Since) {
		return false
	}
	if !f.Until.IsZero() && !m.Time.Before(f.Until) {
		return false
	}
	if f.Region == nil && f.Box.IsZero() {
		return true
	}
	lat, lon := m.Location.GetLatitude(), m.Location.GetLongitude()
	if !f.Box.IsZero() && (lat < f.Box.South || lat > f.Box.North || lon < f.Box.West || lon > f.Box.East) {
		return false
	}
	if f.Region != nil {
		loc, err := locality.Of(lat, lon)
		if err != nil || loc.Region() != *f.Region {
			return false
		}
	}
	return true
}

// Config configures one replay.
type Config struct {
	// Brokers are the Kafka bootstrap addresses.
	Brokers []string
	// Sink receives the records; nil only with DryRun.
	Sink runtime.Sink
	// Kinds are the record kinds to replay; empty means all three.
	Kinds []topic.Kind
	// From and To bound the ranges (see Position); the zero values are
	// the beginning and, for To, now.
	From Position
	To   *Position
	// Filter keeps records by content; the others are read and skipped.
	Filter Filter
	// BatchSize and Linger bound a batch, as in the live pipeline
	// (runtime defaults when zero).
	BatchSize int
	Linger    time.Duration
	// MinBackoff and MaxBackoff bound the backoff between retries of a
	// batch whose write failed transiently (runtime defaults when zero).
	MinBackoff, MaxBackoff time.Duration
	// DeadLetterTopic takes the records that can never be written
	// (topic.DeadLetter when empty).
	DeadLetterTopic string
	// Group is the checkpoint group (GroupPrefix + sink name when empty).
	Group string
	// Resume starts each partition at the checkpoint, where one exists
	// and lies past From.
	Resume bool
	// DryRun reads and counts what would be written, per kind and
	// partition, and writes nothing (no sink, no checkpoint).
	DryRun bool
	// Progress, when set, is called at the start and after every batch.
	// It must not block for long.
	Progress func(Progress)
	// Logger receives the replay's logs; nil means slog.Default().
	Logger *slog.Logger
}

// Progress is the state of a running replay.
type Progress struct {
	// Done is the number of offsets read so far; Total of the whole range.
	Done, Total int64
	// Started is when reading began.
	Started time.Time
}

// Summary is what a replay did.
type Summary struct {
	// Ranges are the offsets read, per partition.
	Ranges map[Partition]Range
	// Next is the next offset per partition when the replay stopped (the
	// checkpoint a resume starts from).
	Next map[Partition]int64
	// Read counts records read; Written those the sink took (in a dry run:
	// would take); Skipped those the filter dropped; DeadLettered those
	// that can never be written.
	Read, Written, Skipped, DeadLettered int64
	// PerKind and PerPartition count Written by kind and by partition.
	PerKind      map[topic.Kind]int64
	PerPartition map[Partition]int64
	// Elapsed is the time from the first read to the end.
	Elapsed time.Duration
}

func (c *Config) withDefaults() (Config, error) {
	cfg := *c
	if len(cfg.Brokers) == 0 {
		return cfg, runtime.ErrNoBrokers
	}
	if cfg.Sink == nil && !cfg.DryRun {
		return cfg, ErrNoSink
	}
	if len(cfg.Kinds) == 0 {
		cfg.Kinds = topic.Kinds
	}
	for _, k := range cfg.Kinds {
		if k.Topic() == "" {
			return cfg, fmt.Errorf("replay kinds: unknown kind %q (want visits, intentions or followups)", k)
		}
	}
	if cfg.To == nil {
		now := Now()
		cfg.To = &now
	}
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = runtime.DefaultBatchSize
	}
	if cfg.Linger <= 0 {
		cfg.Linger = runtime.DefaultLinger
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = runtime.DefaultMinBackoff
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = max(runtime.DefaultMaxBackoff, cfg.MinBackoff)
	}
	if cfg.DeadLetterTopic == "" {
		cfg.DeadLetterTopic = topic.DeadLetter
	}
	if cfg.Group == "" && cfg.Sink != nil {
		cfg.Group = GroupPrefix + cfg.Sink.Name()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return cfg, nil
}

// Plan resolves the ranges a replay with cfg would read (the checkpoint
// applied when Resume is set), without reading them.
func Plan(ctx context.Context, cfg Config) (map[Partition]Range, error) {
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	client, closeClient := newClient(c.Brokers)
	defer closeClient()
	return c.plan(ctx, client)
}

func (c *Config) plan(ctx context.Context, client *kafka.Client) (map[Partition]Range, error) {
	topics := make([]string, len(c.Kinds))
	for i, k := range c.Kinds {
		topics[i] = k.Topic()
	}
	parts, err := kafkarange.Partitions(ctx, client, topics...)
	if err != nil {
		return nil, err
	}
	ranges, err := resolve(ctx, client, parts, c.From, *c.To)
	if err != nil {
		return nil, err
	}
	if c.Resume && c.Group != "" {
		cp, err := checkpoint(ctx, client, c.Group, parts)
		if err != nil {
			return nil, err
		}
		for tp, r := range ranges {
			if next, ok := cp[tp]; ok && next > r.From {
				r.From = min(next, r.To)
				ranges[tp] = r
			}
		}
	}
	return ranges, nil
}

// Run replays the range cfg describes and returns what it did. It returns
// nil only when every record of the range was written or skipped by the
// filter; ErrDeadLettered (wrapped) when some were dead-lettered;
// ErrInterrupted (wrapped) when ctx was done first, after finishing and
// checkpointing the batch in hand; a *runtime.FatalError from the sink or
// any other error as it stops. The Summary is valid in every case.
func Run(ctx context.Context, cfg Config) (*Summary, error) {
	c, err := cfg.withDefaults()
	if err != nil {
		return &Summary{}, err
	}
	// closed after the last checkpoint commit (write waits for it)
	client, closeClient := newClient(c.Brokers)
	defer closeClient()
	ranges, err := c.plan(ctx, client)
	if err != nil {
		return &Summary{}, fmt.Errorf("planning the replay: %w", err)
	}
	r := &run{cfg: c, client: client, log: c.Logger, sum: &Summary{
		Ranges: ranges, Next: map[Partition]int64{}, PerKind: map[topic.Kind]int64{}, PerPartition: map[Partition]int64{},
	}}
	if c.DryRun {
		return r.sum, r.dryRun(ctx)
	}
	return r.sum, r.write(ctx)
}

// write replays the ranges through runtime.ReadRanges: the live
// pipeline's batching, retries, dead-lettering and dead-letter limits.
// The checkpoint is committed after every handled batch.
func (r *run) write(ctx context.Context) error {
	r.start = time.Now()
	defer func() { r.sum.Elapsed = time.Since(r.start) }()
	var ranges []runtime.Range
	for _, tp := range kafkarange.Sorted(r.sum.Ranges) {
		rg := r.sum.Ranges[tp]
		r.sum.Next[tp] = rg.From
		r.total += rg.Len()
		ranges = append(ranges, runtime.Range{Topic: tp.Topic, Partition: tp.Partition, From: rg.From, To: rg.To})
	}
	r.progress()
	if r.total == 0 {
		return nil
	}
	sink := r.cfg.Sink
	type at struct {
		tp     Partition
		offset int64
	}
	counting := runtime.SinkFunc(sink.Name(), func(ctx context.Context, batch []runtime.Record) error {
		err := sink.Write(ctx, batch)
		var perm *runtime.PermanentError
		if err != nil && !errors.As(err, &perm) {
			return err
		}
		var failed map[at]bool
		if perm != nil {
			failed = make(map[at]bool, len(perm.Failures))
			for _, f := range perm.Failures {
				failed[at{Partition{Topic: f.Record.Topic, Partition: f.Record.Partition}, f.Record.Offset}] = true
			}
		}
		for _, rec := range batch {
			tp := Partition{Topic: rec.Topic, Partition: rec.Partition}
			if failed[at{tp, rec.Offset}] {
				continue
			}
			k, _ := topic.KindOfTopic(rec.Topic)
			r.sum.PerKind[k]++
			r.sum.PerPartition[tp]++
		}
		return err
	})
	// checkpoint after the write: the checkpointer commits only positions
	// of written batches; a crash before a commit replays those batches
	// again, and sinks are idempotent
	ckpt := newCheckpointer(context.WithoutCancel(ctx), r.client, r.cfg.Group)
	rc := runtime.RangeConfig{
		Config: runtime.Config{
			Brokers: r.cfg.Brokers, BatchSize: r.cfg.BatchSize, Linger: r.cfg.Linger, DeadLetterTopic: r.cfg.DeadLetterTopic,
			MinBackoff: r.cfg.MinBackoff, MaxBackoff: r.cfg.MaxBackoff, Logger: r.log,
		},
		OnBatch: func(done []runtime.Checkpoint) {
			next := map[Partition]int64{}
			r.done = 0
			for _, cp := range done {
				tp := Partition{Topic: cp.Topic, Partition: cp.Partition}
				if cp.Next != r.sum.Next[tp] {
					next[tp] = cp.Next
				}
				r.sum.Next[tp] = cp.Next
				r.done += cp.Next - r.sum.Ranges[tp].From
			}
			ckpt.save(next)
			r.progress()
		},
	}
	if !r.cfg.Filter.isZero() {
		// decoding the filter's fields costs per record: only when asked
		rc.Filter = func(rec runtime.Record) bool {
			meta, _ := topic.MetaOf(rec.Message)
			return r.cfg.Filter.keep(meta)
		}
	}
	stats, err := runtime.ReadRanges(ctx, rc, ranges, counting)
	commitErr := ckpt.close()
	r.sum.Read, r.sum.Written, r.sum.Skipped, r.sum.DeadLettered = stats.Read, stats.Written, stats.Skipped, stats.DeadLettered
	switch {
	case commitErr != nil:
		return commitErr
	case err != nil && ctx.Err() != nil && errors.Is(err, ctx.Err()):
		return fmt.Errorf("%w: %d of %d records read", ErrInterrupted, r.done, r.total)
	case err != nil:
		return fmt.Errorf("replaying into sink %s: %w", sink.Name(), err)
	case r.sum.DeadLettered > 0:
		return fmt.Errorf("%d %w to %s (chapper deadletter list shows them)", r.sum.DeadLettered, ErrDeadLettered, r.cfg.DeadLetterTopic)
	}
	return nil
}

type run struct {
	cfg    Config
	client *kafka.Client
	log    *slog.Logger
	sum    *Summary
	total  int64
	done   int64
	start  time.Time
}

// dryRun reads the ranges and counts what would be written, per kind and
// partition; it writes nothing, not even a checkpoint.
func (r *run) dryRun(ctx context.Context) error {
	for tp, rg := range r.sum.Ranges {
		r.sum.Next[tp] = rg.From
		r.total += rg.Len()
	}
	r.start = time.Now()
	defer func() { r.sum.Elapsed = time.Since(r.start) }()
	r.progress()
	if r.total == 0 {
		return nil
	}
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	ch := make(chan kafka.Message, 2*r.cfg.BatchSize)
	readErr := make(chan error, 1)
	go func() {
		readErr <- kafkarange.Read(rctx, r.cfg.Brokers, r.sum.Ranges, ch)
		close(ch)
	}()
	// stopReading ends the readers and waits for them.
	stopReading := func() error {
		cancel()
		for range ch {
		}
		err := <-readErr
		if errors.Is(err, context.Canceled) {
			return nil
		}
		return err
	}

	for {
		batch, open := r.next(ctx, ch)
		if len(batch) > 0 {
			if err := r.handle(ctx, batch); err != nil {
				_ = stopReading()
				return err
			}
		}
		if !open {
			if err := <-readErr; err != nil {
				return err
			}
			break
		}
		if ctx.Err() != nil {
			if err := stopReading(); err != nil {
				return err
			}
			return fmt.Errorf("%w: %d of %d records read", ErrInterrupted, r.done, r.total)
		}
	}
	return nil
}

// next returns the next batch: it waits for a first message (or ctx, or
// the end of the range), then takes more until the batch is full or Linger
// passed. open is false once every range was read.
func (r *run) next(ctx context.Context, ch <-chan kafka.Message) (batch []kafka.Message, open bool) {
	select {
	case m, ok := <-ch:
		if !ok {
			return nil, false
		}
		batch = append(batch, m)
	case <-ctx.Done():
		return nil, true
	}
	linger := time.NewTimer(r.cfg.Linger)
	defer linger.Stop()
	for len(batch) < r.cfg.BatchSize {
		select {
		case m, ok := <-ch:
			if !ok {
				return batch, false
			}
			batch = append(batch, m)
		case <-linger.C:
			return batch, true
		}
	}
	return batch, true
}

// handle decodes, filters and counts one batch of a dry run.
func (r *run) handle(_ context.Context, msgs []kafka.Message) error {
	for _, m := range msgs {
		tp := kafkarange.Partition{Topic: m.Topic, Partition: m.Partition}
		r.sum.Read++
		r.done++
		r.sum.Next[tp] = max(r.sum.Next[tp], m.Offset+1)
		msg, err := topic.Decode(m.Topic, m.Value)
		if err != nil {
			r.sum.DeadLettered++ // would be
			continue
		}
		meta, _ := topic.MetaOf(msg)
		if !r.cfg.Filter.keep(meta) {
			r.sum.Skipped++
			continue
		}
		k, _ := topic.KindOfTopic(m.Topic)
		r.sum.Written++
		r.sum.PerKind[k]++
		r.sum.PerPartition[tp]++
	}
	r.progress()
	return nil
}

func (r *run) progress() {
	if r.cfg.Progress != nil {
		r.cfg.Progress(Progress{Done: r.done, Total: r.total, Started: r.start})
	}
}
