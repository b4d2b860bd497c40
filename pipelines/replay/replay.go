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
	"math/rand/v2"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/chapper/chapper/pipelines/deadletter"
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
	// Region keeps records of one 0.1° region; -1 (or unset with Box)
	// keeps every region. Use NoRegion for "every region".
	Region int64
	// Box keeps records inside it, when set.
	Box report.Box
	// Since and Until keep records whose own time (visited_at,
	// recorded_at) is in [Since, Until), when set.
	Since, Until time.Time
}

// NoRegion is Filter.Region for every region.
const NoRegion = -1

// keep reports whether the filter keeps m.
func (f Filter) keep(m topic.Meta) bool {
	if !f.Since.IsZero() && m.Time.Before(f.Since) {
		return false
	}
	if !f.Until.IsZero() && !m.Time.Before(f.Until) {
		return false
	}
	if f.Region == NoRegion && f.Box.IsZero() {
		return true
	}
	lat, lon := m.Location.GetLatitude(), m.Location.GetLongitude()
	if !f.Box.IsZero() && (lat < f.Box.South || lat > f.Box.North || lon < f.Box.West || lon > f.Box.East) {
		return false
	}
	if f.Region != NoRegion {
		loc, err := locality.Of(lat, lon)
		if err != nil || loc.Region() != f.Region {
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
	return c.plan(ctx, c.client())
}

func (c *Config) client() *kafka.Client {
	return &kafka.Client{Addr: kafka.TCP(c.Brokers...), Timeout: 10 * time.Second}
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
		cp, err := Checkpoint(ctx, c.Brokers, c.Group, parts)
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
	client := c.client()
	ranges, err := c.plan(ctx, client)
	if err != nil {
		return &Summary{}, fmt.Errorf("planning the replay: %w", err)
	}
	r := &run{cfg: c, client: client, log: c.Logger, sum: &Summary{
		Ranges: ranges, Next: map[Partition]int64{}, PerKind: map[topic.Kind]int64{}, PerPartition: map[Partition]int64{},
	}}
	return r.sum, r.run(ctx)
}

type run struct {
	cfg    Config
	client *kafka.Client
	log    *slog.Logger
	sum    *Summary
	dlw    *kafka.Writer
	total  int64
	done   int64
	start  time.Time
}

func (r *run) run(ctx context.Context) error {
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
	if !r.cfg.DryRun {
		r.dlw = &kafka.Writer{
			Addr:         kafka.TCP(r.cfg.Brokers...),
			Topic:        r.cfg.DeadLetterTopic,
			Balancer:     &kafka.Murmur2Balancer{},
			RequiredAcks: kafka.RequireAll,
			BatchTimeout: 5 * time.Millisecond,
		}
		defer r.dlw.Close()
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
	if r.sum.DeadLettered > 0 {
		return fmt.Errorf("%d %w to %s (chapper deadletter list shows them)", r.sum.DeadLettered, ErrDeadLettered, r.cfg.DeadLetterTopic)
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

// handle decodes, filters, writes, dead-letters and checkpoints one batch.
// The batch is finished even when ctx is done meanwhile; only a transient
// failure that lasts past ctx leaves it unwritten.
func (r *run) handle(ctx context.Context, msgs []kafka.Message) error {
	records := make([]runtime.Record, 0, len(msgs))
	var dead []runtime.Failure
	for _, m := range msgs {
		rec := recordOf(m)
		msg, err := topic.Decode(m.Topic, m.Value)
		if err != nil {
			dead = append(dead, runtime.Failure{Record: rec, Reason: err})
			continue
		}
		meta, _ := topic.MetaOf(msg)
		if !r.cfg.Filter.keep(meta) {
			r.sum.Skipped++
			continue
		}
		rec.Message = msg
		records = append(records, rec)
	}
	wctx := context.WithoutCancel(ctx)
	if len(records) > 0 && !r.cfg.DryRun {
		failures, err := r.write(ctx, wctx, records)
		if err != nil {
			return err
		}
		dead = append(dead, failures...)
	}
	failed := map[kafkarange.Partition]map[int64]bool{}
	if len(dead) > 0 && !r.cfg.DryRun {
		name := r.cfg.Sink.Name()
		out := make([]kafka.Message, len(dead))
		for i, f := range dead {
			out[i] = deadletter.Message(f.Record, name, f.Reason)
		}
		if err := r.dlw.WriteMessages(wctx, out...); err != nil {
			return fmt.Errorf("producing %d records to the dead-letter topic: %w", len(out), err)
		}
		r.log.Warn("dead-lettered records", "count", len(dead), "first_error", dead[0].Reason)
	}
	for _, f := range dead {
		tp := kafkarange.Partition{Topic: f.Record.Topic, Partition: f.Record.Partition}
		if failed[tp] == nil {
			failed[tp] = map[int64]bool{}
		}
		failed[tp][f.Record.Offset] = true
	}
	r.sum.DeadLettered += int64(len(dead))
	for _, rec := range records {
		tp := kafkarange.Partition{Topic: rec.Topic, Partition: rec.Partition}
		if failed[tp][rec.Offset] {
			continue
		}
		k, _ := topic.KindOfTopic(rec.Topic)
		r.sum.Written++
		r.sum.PerKind[k]++
		r.sum.PerPartition[tp]++
	}
	next := map[kafkarange.Partition]int64{}
	for _, m := range msgs {
		tp := kafkarange.Partition{Topic: m.Topic, Partition: m.Partition}
		next[tp] = max(next[tp], m.Offset+1)
	}
	if !r.cfg.DryRun {
		// checkpoint after the write: a crash before this line replays
		// the batch again, and sinks are idempotent
		if err := commit(wctx, r.client, r.cfg.Group, next); err != nil {
			return err
		}
	}
	for tp, o := range next {
		r.sum.Next[tp] = o
	}
	r.sum.Read += int64(len(msgs))
	r.done += int64(len(msgs))
	r.progress()
	return nil
}

// write writes records to the sink, retrying transient failures with
// backoff; it returns the records the sink can never write.
func (r *run) write(ctx, wctx context.Context, records []runtime.Record) ([]runtime.Failure, error) {
	backoff := r.cfg.MinBackoff
	for attempt := 1; ; attempt++ {
		err := r.cfg.Sink.Write(wctx, records)
		var perm *runtime.PermanentError
		var fatal *runtime.FatalError
		switch {
		case err == nil:
			return nil, nil
		case errors.As(err, &perm):
			return perm.Failures, nil
		case errors.As(err, &fatal):
			return nil, fmt.Errorf("writing batch to sink %s: %w", r.cfg.Sink.Name(), err)
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%w: writing batch to sink %s: %w", ErrInterrupted, r.cfg.Sink.Name(), err)
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		r.log.Warn("transient failure, retrying the batch", "attempt", attempt, "retry_in", wait, "err", err)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("%w: writing batch to sink %s: %w", ErrInterrupted, r.cfg.Sink.Name(), err)
		}
		backoff = min(2*backoff, r.cfg.MaxBackoff)
	}
}

func (r *run) progress() {
	if r.cfg.Progress != nil {
		r.cfg.Progress(Progress{Done: r.done, Total: r.total, Started: r.start})
	}
}

func recordOf(m kafka.Message) runtime.Record {
	var headers []runtime.Header
	for _, h := range m.Headers {
		headers = append(headers, runtime.Header{Key: h.Key, Value: h.Value})
	}
	return runtime.Record{Topic: m.Topic, Partition: m.Partition, Offset: m.Offset, Key: m.Key, Headers: headers, Value: m.Value, Time: m.Time}
}
