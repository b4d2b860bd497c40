package runtime

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/chapper/chapper/proto/topic"
)

// errUnwritten says the batch in hand could not be written (or its dead
// letters produced) before the drain timeout ran out at shutdown; it is
// left uncommitted, to be delivered again.
var errUnwritten = errors.New("batch left unwritten at shutdown")

// batchHandler is the batch handling the live consumer and ReadRanges
// share: decode, filter, write with retries, dead-letter with limits. It
// never commits; its callers commit (or checkpoint) after it returned nil.
type batchHandler struct {
	cfg    Config
	sink   Sink
	log    *slog.Logger
	writer *kafka.Writer // the dead-letter topic
	// transport is the handler's own connection pool (the writer's and the
	// consumer's metadata client's), closed with it, so nothing outlives
	// the consumer (kafka-go's DefaultTransport keeps idle connections).
	transport *kafka.Transport
	limits    *deadLetterLimits

	failure atomic.Pointer[error] // set while writes keep failing transiently

	records, batches, deadLetters, sinkErrors interface{ Add(float64) }
	batchSeconds                              interface{ Observe(float64) }
}

// batchResult counts what became of a batch's records.
type batchResult struct {
	read, written, skipped, dead int
}

// newBatchHandler returns a handler; cfg has its defaults set. Close it to
// close its dead-letter writer.
func newBatchHandler(cfg Config, sink Sink, log *slog.Logger) *batchHandler {
	name := sink.Name()
	h := &batchHandler{
		cfg:          cfg,
		sink:         sink,
		log:          log,
		limits:       newDeadLetterLimits(cfg),
		records:      recordsTotal.WithLabelValues(name),
		batches:      batchesTotal.WithLabelValues(name),
		deadLetters:  deadLetterTotal.WithLabelValues(name),
		sinkErrors:   sinkErrorsTotal.WithLabelValues(name),
		batchSeconds: batchSeconds.WithLabelValues(name),
	}
	h.transport = &kafka.Transport{}
	h.writer = &kafka.Writer{
		Addr:         kafka.TCP(cfg.Brokers...),
		Transport:    h.transport,
		Topic:        cfg.DeadLetterTopic,
		Balancer:     &kafka.Murmur2Balancer{},
		RequiredAcks: kafka.RequireAll,
		BatchSize:    cfg.BatchSize,
		BatchTimeout: 5 * time.Millisecond,
		ErrorLogger:  kafka.LoggerFunc(h.kafkaError),
	}
	return h
}

func (h *batchHandler) kafkaError(msg string, args ...any) {
	h.log.Debug("kafka-go: " + fmt.Sprintf(msg, args...))
}

func (h *batchHandler) close() {
	if err := h.writer.Close(); err != nil {
		h.log.Warn("closing dead-letter writer", "err", err)
	}
	h.transport.CloseIdleConnections()
}

// decoded is a batch as the sink is handed it: the fetched messages, the
// records decoded from them that the filter kept, and the messages that
// could not be decoded (dead letters to be).
type decoded struct {
	msgs    []kafka.Message
	records []Record
	dead    []Failure
	skipped int
}

// decode decodes msgs and drops what filter rejects (nil keeps
// everything). It touches no store, so the live consumer runs it for the
// next batch while the sink writes the one before.
func (h *batchHandler) decode(msgs []kafka.Message, filter func(Record) bool) decoded {
	// d.msgs takes msgs' array: add appends each message in its own place
	d := decoded{msgs: msgs[:0], records: make([]Record, 0, len(msgs))}
	for _, m := range msgs {
		d.add(m, filter)
	}
	return d
}

// add decodes m onto d: a record, a dead letter, or skipped when filter
// (nil keeps everything) rejects it.
func (d *decoded) add(m kafka.Message, filter func(Record) bool) {
	d.msgs = append(d.msgs, m)
	rec := recordOf(m)
	msg, err := topic.Decode(m.Topic, m.Value)
	if err != nil {
		d.dead = append(d.dead, Failure{Record: rec, Reason: err})
		return
	}
	rec.Message = msg
	if filter != nil && !filter(rec) {
		d.skipped++
		return
	}
	d.records = append(d.records, rec)
}

// process decodes msgs (see decode) and writes them (see write).
func (h *batchHandler) process(ctx context.Context, msgs []kafka.Message, filter func(Record) bool) (batchResult, error) {
	return h.write(ctx, h.decode(msgs, filter))
}

// write writes a decoded batch to the sink (retrying transient failures
// with backoff) and produces the dead letters. When ctx is done the batch
// in hand is still finished within DrainTimeout. It returns nil when the
// batch may be committed; errUnwritten when ctx was done and the batch
// could not be finished; a *FatalError (wrapped) when the sink said so or
// a partition went past a dead-letter limit, in which case nothing was
// dead-lettered.
func (h *batchHandler) write(ctx context.Context, d decoded) (batchResult, error) {
	res := batchResult{read: len(d.msgs), skipped: d.skipped, written: len(d.records)}
	wctx, cancel := drainContext(ctx, h.cfg.DrainTimeout)
	defer cancel()

	dead := d.dead
	if len(d.records) > 0 {
		failures, err := h.retry(ctx, "writing batch to sink", func() error {
			return h.sink.Write(wctx, d.records)
		})
		if err != nil {
			return res, err
		}
		dead = append(dead, failures...)
		res.written -= len(failures)
	}
	if err := h.limits.observe(outcomes(d.msgs, dead)); err != nil {
		return res, Fatal(err)
	}
	if len(dead) > 0 {
		out := make([]kafka.Message, len(dead))
		for i, f := range dead {
			out[i] = h.deadLetter(f)
		}
		if _, err := h.retry(ctx, "producing to dead-letter topic", func() error {
			return h.writer.WriteMessages(wctx, out...)
		}); err != nil {
			return res, err
		}
		res.dead = len(dead)
		h.log.Warn("dead-lettered records", "count", len(dead), "topic", h.cfg.DeadLetterTopic,
			"first_origin", fmt.Sprintf("%s/%d@%d", dead[0].Record.Topic, dead[0].Record.Partition, dead[0].Record.Offset),
			"first_error", dead[0].Reason)
	}
	return res, nil
}

// account counts a finished (committed) batch in the metrics.
func (h *batchHandler) account(res batchResult, start time.Time) {
	h.records.Add(float64(res.written))
	h.deadLetters.Add(float64(res.dead))
	h.batches.Add(1)
	h.batchSeconds.Observe(time.Since(start).Seconds())
}

// outcomes lists every message of a batch, in batch order (offset order
// per partition), saying whether it is one of the dead letters.
func outcomes(msgs []kafka.Message, dead []Failure) []outcome {
	type at struct {
		tp     topicPartition
		offset int64
	}
	isDead := make(map[at]bool, len(dead))
	for _, f := range dead {
		isDead[at{topicPartition{f.Record.Topic, f.Record.Partition}, f.Record.Offset}] = true
	}
	out := make([]outcome, len(msgs))
	for i, m := range msgs {
		tp := topicPartition{m.Topic, m.Partition}
		out[i] = outcome{tp: tp, offset: m.Offset, dead: isDead[at{tp, m.Offset}]}
	}
	return out
}

// retry runs op until it succeeds or fails permanently (a *PermanentError,
// whose failures it returns), backing off exponentially with jitter between
// transient failures. It returns a *FatalError at once (wrapped with what),
// and errUnwritten, without retrying further, when ctx is done after a
// transient failure.
func (h *batchHandler) retry(ctx context.Context, what string, op func() error) ([]Failure, error) {
	backoff := h.cfg.MinBackoff
	for attempt := 1; ; attempt++ {
		err := op()
		var perm *PermanentError
		var fatal *FatalError
		switch {
		case err == nil || errors.As(err, &perm):
			if h.failure.Swap(nil) != nil {
				h.log.Info("write recovered", "what", what, "attempts", attempt)
			}
			if perm != nil {
				return perm.Failures, nil
			}
			return nil, nil
		case errors.As(err, &fatal):
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		h.sinkErrors.Add(1)
		err = fmt.Errorf("%s: %w", what, err)
		h.failure.Store(&err)
		if ctx.Err() != nil {
			h.log.Warn("batch left uncommitted at shutdown", "err", err)
			return nil, errUnwritten
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		h.log.Warn("transient failure, retrying the batch", "attempt", attempt, "retry_in", wait, "err", err)
		if !sleep(ctx, wait) {
			h.log.Warn("batch left uncommitted at shutdown", "err", err)
			return nil, errUnwritten
		}
		backoff = min(2*backoff, h.cfg.MaxBackoff)
	}
}

// failing returns the transient failure being retried, or nil.
func (h *batchHandler) failing() error {
	if err := h.failure.Load(); err != nil {
		return *err
	}
	return nil
}

// drainContext returns a context for finishing the batch in hand: it is
// not cancelled with ctx but timeout after ctx is done.
func drainContext(ctx context.Context, timeout time.Duration) (context.Context, context.CancelFunc) {
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(ctx, func() {
		t := time.NewTimer(timeout)
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
func (h *batchHandler) deadLetter(f Failure) kafka.Message {
	added := []kafka.Header{
		{Key: topic.HeaderOriginTopic, Value: []byte(f.Record.Topic)},
		{Key: topic.HeaderOriginPartition, Value: []byte(strconv.Itoa(f.Record.Partition))},
		{Key: topic.HeaderOriginOffset, Value: []byte(strconv.FormatInt(f.Record.Offset, 10))},
		{Key: topic.HeaderSink, Value: []byte(h.sink.Name())},
		{Key: topic.HeaderError, Value: []byte(f.Reason.Error())},
	}
	headers := make([]kafka.Header, 0, len(f.Record.Headers)+len(added))
	for _, hd := range f.Record.Headers {
		// A re-driven record that fails again carries its new origin only.
		switch hd.Key {
		case topic.HeaderOriginTopic, topic.HeaderOriginPartition, topic.HeaderOriginOffset, topic.HeaderSink, topic.HeaderError:
			continue
		}
		headers = append(headers, kafka.Header{Key: hd.Key, Value: hd.Value})
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
	index := map[topicPartition]int{}
	var last []kafka.Message
	for _, m := range msgs {
		k := topicPartition{m.Topic, m.Partition}
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
