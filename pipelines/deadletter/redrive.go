package deadletter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/chapper/chapper/pipelines/runtime"
	"github.com/chapper/chapper/proto/topic"
)

// Redrive targets.
const (
	// ToSink writes a dead letter straight into the sink named by its sink
	// header, the only one that failed.
	ToSink = "sink"
	// ToOrigin re-produces key and value byte-identical to the origin
	// topic; every pipeline sees the record again, harmlessly.
	ToOrigin = "origin"
)

// ErrNoSink is returned when a dead letter names a sink the redrive was
// not given.
var ErrNoSink = errors.New("no such sink for redrive -to=sink")

// Redrive re-drives dead letters. It writes to Kafka with acks=all and
// marks each re-driven letter with a marker record on the dead-letter topic
// (headers redrive-of, redrive-to, attempt; no value), after the redrive
// itself, so a crash between the two re-drives it once more, harmlessly.
type Redrive struct {
	// Brokers are the Kafka bootstrap addresses.
	Brokers []string
	// Topic is the dead-letter topic (topic.DeadLetter).
	Topic string
	// To is ToSink or ToOrigin.
	To string
	// Sinks are the sinks ToSink writes to, by name (the sink header).
	Sinks map[string]runtime.Sink
	// Again re-drives letters that were re-driven before.
	Again bool
	// Logger receives progress; nil means slog.Default().
	Logger *slog.Logger
}

// Result counts what a redrive did.
type Result struct {
	// Redriven were written to their sink or origin topic.
	Redriven int
	// Skipped were re-driven before (and Again was false).
	Skipped int
	// FailedAgain were rejected by the sink again (ToSink) and went back
	// to the dead-letter topic with attempt + 1.
	FailedAgain int
}

// Run re-drives the letters that are not markers. all is the whole
// dead-letter topic (Read), used to skip what was re-driven before; sel
// are the letters to re-drive.
func (r *Redrive) Run(ctx context.Context, all, sel []Letter) (Result, error) {
	log := r.Logger
	if log == nil {
		log = slog.Default()
	}
	if r.To != ToSink && r.To != ToOrigin {
		return Result{}, fmt.Errorf("redrive -to must be %s or %s, got %q", ToSink, ToOrigin, r.To)
	}
	done := Redriven(all)
	var res Result
	var todo []Letter
	for _, l := range sel {
		if l.IsMarker() {
			continue
		}
		if done[l.Addr()] && !r.Again {
			res.Skipped++
			continue
		}
		todo = append(todo, l)
	}
	if len(todo) == 0 {
		return res, nil
	}
	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	w := &kafka.Writer{
		Addr:         kafka.TCP(r.Brokers...),
		Transport:    tr,
		Balancer:     &kafka.Murmur2Balancer{},
		RequiredAcks: kafka.RequireAll,
		BatchTimeout: 5 * time.Millisecond,
	}
	defer w.Close()

	var out []kafka.Message
	var ok []Letter
	switch r.To {
	case ToOrigin:
		for _, l := range todo {
			if l.Header(topic.HeaderOriginTopic) == "" {
				return res, fmt.Errorf("redriving %s to its origin: no %s header", l.Addr(), topic.HeaderOriginTopic)
			}
			out = append(out, originMessage(l))
			ok = append(ok, l)
		}
	case ToSink:
		bySink := map[string][]Letter{}
		var order []string
		for _, l := range todo {
			name := l.Header(topic.HeaderSink)
			if _, seen := bySink[name]; !seen {
				order = append(order, name)
			}
			bySink[name] = append(bySink[name], l)
		}
		for _, name := range order {
			written, failed, err := r.toSink(ctx, name, bySink[name])
			if err != nil {
				return res, err
			}
			ok = append(ok, written...)
			for i := range failed {
				failed[i].Topic = r.Topic
			}
			out = append(out, failed...)
			res.FailedAgain += len(failed)
		}
	}
	for _, l := range ok {
		out = append(out, marker(r.Topic, l, r.To))
	}
	if err := w.WriteMessages(ctx, out...); err != nil {
		return res, fmt.Errorf("producing %d redriven records and markers: %w", len(out), err)
	}
	res.Redriven = len(ok)
	log.Info("redrive done", "to", r.To, "redriven", res.Redriven, "failed_again", res.FailedAgain, "skipped", res.Skipped)
	return res, nil
}

// toSink writes letters into the sink named name. It returns the letters
// written and the new dead letters of those the sink rejected again.
func (r *Redrive) toSink(ctx context.Context, name string, letters []Letter) (written []Letter, failed []kafka.Message, err error) {
	sink := r.Sinks[name]
	if sink == nil {
		return nil, nil, fmt.Errorf("redriving %d letters of sink %q: %w", len(letters), name, ErrNoSink)
	}
	byOrigin := map[string]Letter{}
	var recs []runtime.Record
	for _, l := range letters {
		rec, err := l.Record()
		if err != nil {
			failed = append(failed, Message(rec, name, err, again(l)...))
			continue
		}
		byOrigin[originKey(rec)] = l
		recs = append(recs, rec)
	}
	if len(recs) == 0 {
		return nil, failed, nil
	}
	werr := sink.Write(ctx, recs)
	rejected := map[string]bool{}
	var perm *runtime.PermanentError
	switch {
	case werr == nil:
	case errors.As(werr, &perm):
		for _, f := range perm.Failures {
			k := originKey(f.Record)
			rejected[k] = true
			failed = append(failed, Message(f.Record, name, f.Reason, again(byOrigin[k])...))
		}
	default:
		return nil, nil, fmt.Errorf("redriving %d letters into sink %s: %w", len(recs), name, werr)
	}
	for _, rec := range recs {
		if !rejected[originKey(rec)] {
			written = append(written, byOrigin[originKey(rec)])
		}
	}
	return written, failed, nil
}

func originKey(rec runtime.Record) string {
	return rec.Topic + "/" + strconv.Itoa(rec.Partition) + "@" + strconv.FormatInt(rec.Offset, 10)
}

// again returns the headers of a redrive of l: redrive-of and attempt.
func again(l Letter) []kafka.Header {
	return []kafka.Header{
		{Key: topic.HeaderRedriveOf, Value: []byte(l.Addr())},
		{Key: topic.HeaderAttempt, Value: []byte(strconv.Itoa(l.Attempt() + 1))},
	}
}

// originMessage is l re-produced to its origin topic: key and value
// byte-identical, the original headers, redrive-of and attempt.
func originMessage(l Letter) kafka.Message {
	var headers []kafka.Header
	for _, h := range l.Headers {
		if !dlHeader(h.Key) {
			headers = append(headers, h)
		}
	}
	return kafka.Message{Topic: l.Header(topic.HeaderOriginTopic), Key: l.Key, Value: l.Value, Headers: append(headers, again(l)...)}
}

// marker is the record saying l was re-driven.
func marker(dlTopic string, l Letter, to string) kafka.Message {
	return kafka.Message{Topic: dlTopic, Key: l.Key, Headers: append(again(l), kafka.Header{Key: topic.HeaderRedriveTo, Value: []byte(to)})}
}
