// Package deadletter reads, prints and re-drives the records on the
// dead-letter topic (canvass.deadletter.v1). A dead letter is addressed by
// its own <partition>:<offset> on that topic. Its headers are the original
// record's plus origin-topic, origin-partition, origin-offset, sink and
// error (see proto/topic); a re-driven record also carries redrive-of and
// attempt.
package deadletter

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/chapper/chapper/pipelines/internal/kafkarange"
	"github.com/chapper/chapper/pipelines/runtime"
	"github.com/chapper/chapper/proto/topic"
)

// ErrBadAddr is wrapped by ParseAddr's errors.
var ErrBadAddr = errors.New("dead-letter address must be <partition>:<offset> with non-negative integers")

// Letter is one record of the dead-letter topic.
type Letter struct {
	Partition int
	Offset    int64
	// Time is the broker timestamp of the dead letter (when it was
	// dead-lettered).
	Time    time.Time
	Key     []byte
	Value   []byte
	Headers []kafka.Header
}

// Addr returns the letter's address, <partition>:<offset>.
func (l Letter) Addr() string { return Addr(l.Partition, l.Offset) }

// Addr formats a dead-letter address.
func Addr(partition int, offset int64) string {
	return strconv.Itoa(partition) + ":" + strconv.FormatInt(offset, 10)
}

// ParseAddr parses <partition>:<offset>.
func ParseAddr(s string) (partition int, offset int64, err error) {
	ps, os, ok := strings.Cut(strings.TrimSpace(s), ":")
	if !ok {
		return 0, 0, fmt.Errorf("%w: got %q", ErrBadAddr, s)
	}
	p, err1 := strconv.Atoi(ps)
	o, err2 := strconv.ParseInt(os, 10, 64)
	if err1 != nil || err2 != nil || p < 0 || o < 0 {
		return 0, 0, fmt.Errorf("%w: got %q", ErrBadAddr, s)
	}
	return p, o, nil
}

// Header returns the value of the first header named key, or "".
func (l Letter) Header(key string) string {
	for _, h := range l.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

// IsMarker reports whether l is not a dead letter but the marker redrive
// writes after re-driving one (redrive-of set, no origin-topic).
func (l Letter) IsMarker() bool {
	return l.Header(topic.HeaderOriginTopic) == "" && l.Header(topic.HeaderRedriveOf) != ""
}

// Attempt returns the delivery attempt that failed: the attempt header, 1
// when it is absent.
func (l Letter) Attempt() int {
	n, err := strconv.Atoi(l.Header(topic.HeaderAttempt))
	if err != nil || n < 1 {
		return 1
	}
	return n
}

// Kind returns the record kind of the origin topic; ok is false when the
// origin topic carries no record kind.
func (l Letter) Kind() (topic.Kind, bool) {
	return topic.KindOfTopic(l.Header(topic.HeaderOriginTopic))
}

// Decode decodes the record as the message of its origin topic.
func (l Letter) Decode() (proto.Message, error) {
	return topic.Decode(l.Header(topic.HeaderOriginTopic), l.Value)
}

// RecordID returns the id of the decoded record, "" when it cannot be
// decoded.
func (l Letter) RecordID() string {
	m, err := l.Decode()
	if err != nil {
		return ""
	}
	meta, _ := topic.MetaOf(m)
	return meta.ID
}

// Record returns the letter as the runtime record it was at its origin
// (topic, partition, offset, key, value, headers), decoded.
func (l Letter) Record() (runtime.Record, error) {
	p, _ := strconv.Atoi(l.Header(topic.HeaderOriginPartition))
	o, _ := strconv.ParseInt(l.Header(topic.HeaderOriginOffset), 10, 64)
	rec := runtime.Record{
		Topic:     l.Header(topic.HeaderOriginTopic),
		Partition: p,
		Offset:    o,
		Key:       l.Key,
		Value:     l.Value,
		Time:      l.Time,
	}
	for _, h := range l.Headers {
		rec.Headers = append(rec.Headers, runtime.Header{Key: h.Key, Value: h.Value})
	}
	m, err := l.Decode()
	if err != nil {
		return rec, err
	}
	rec.Message = m
	return rec, nil
}

// Read returns every record on the dead-letter topic up to the high
// watermarks read at the start, markers included, by partition and offset.
func Read(ctx context.Context, brokers []string, dlTopic string) ([]Letter, error) {
	// A connection pool of its own, closed on return: the default one
	// would keep idle connections (and their goroutines) after a command.
	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	client := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 10 * time.Second, Transport: tr}
	parts, err := kafkarange.Partitions(ctx, client, dlTopic)
	if err != nil {
		return nil, err
	}
	starts, err := kafkarange.Starts(ctx, client, parts)
	if err != nil {
		return nil, err
	}
	ends, err := kafkarange.Ends(ctx, client, parts)
	if err != nil {
		return nil, err
	}
	ranges := map[kafkarange.Partition]kafkarange.Range{}
	total := int64(0)
	for _, p := range parts {
		ranges[p] = kafkarange.Range{From: starts[p], To: ends[p]}
		total += ranges[p].Len()
	}
	ch := make(chan kafka.Message, 256)
	errc := make(chan error, 1)
	go func() { errc <- kafkarange.Read(ctx, brokers, ranges, ch); close(ch) }()
	byPart := map[int][]Letter{}
	for m := range ch {
		byPart[m.Partition] = append(byPart[m.Partition], Letter{
			Partition: m.Partition, Offset: m.Offset, Time: m.Time, Key: m.Key, Value: m.Value, Headers: m.Headers,
		})
	}
	if err := <-errc; err != nil {
		return nil, fmt.Errorf("reading dead-letter topic %s: %w", dlTopic, err)
	}
	out := make([]Letter, 0, total)
	for _, p := range parts {
		out = append(out, byPart[p.Partition]...)
	}
	return out, nil
}

// Redriven returns the addresses of the dead letters that were re-driven
// already: those named by a redrive-of header of any record on the topic
// (a marker, or a dead letter of a redrive that failed again).
func Redriven(letters []Letter) map[string]bool {
	out := map[string]bool{}
	for _, l := range letters {
		if a := l.Header(topic.HeaderRedriveOf); a != "" {
			out[a] = true
		}
	}
	return out
}

// Filter selects dead letters. Zero fields select everything.
type Filter struct {
	// Sink keeps letters whose sink header equals it.
	Sink string
	// Since keeps letters dead-lettered at or after it.
	Since time.Time
	// Error keeps letters whose error header contains it.
	Error string
	// Addrs keeps only these addresses.
	Addrs []string
}

// Match reports whether l is a dead letter (not a marker) the filter keeps.
func (f Filter) Match(l Letter) bool {
	switch {
	case l.IsMarker():
		return false
	case f.Sink != "" && l.Header(topic.HeaderSink) != f.Sink:
		return false
	case !f.Since.IsZero() && l.Time.Before(f.Since):
		return false
	case f.Error != "" && !strings.Contains(l.Header(topic.HeaderError), f.Error):
		return false
	}
	if len(f.Addrs) == 0 {
		return true
	}
	for _, a := range f.Addrs {
		if a == l.Addr() {
			return true
		}
	}
	return false
}

// Line formats l as one line of `chapper deadletter list`: its address
// first, then time, sink, origin, kind, record id, attempt and error.
func Line(l Letter, redriven bool) string {
	kind, _ := l.Kind()
	id := l.RecordID()
	if id == "" {
		id = "-"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s\t%s\tsink=%s\torigin=%s/%s@%s\tkind=%s\tid=%s\tattempt=%d",
		l.Addr(), l.Time.UTC().Format(time.RFC3339), l.Header(topic.HeaderSink),
		l.Header(topic.HeaderOriginTopic), l.Header(topic.HeaderOriginPartition), l.Header(topic.HeaderOriginOffset),
		orDash(string(kind)), id, l.Attempt())
	if redriven {
		b.WriteString("\tredriven")
	}
	fmt.Fprintf(&b, "\terror=%s", oneLine(l.Header(topic.HeaderError)))
	return b.String()
}

// Show prints every header of l and its record, as proto JSON when it
// decodes and as hex otherwise.
func Show(w io.Writer, dlTopic string, l Letter) error {
	var b strings.Builder
	fmt.Fprintf(&b, "dead letter %s of %s\n", l.Addr(), dlTopic)
	fmt.Fprintf(&b, "time: %s\n", l.Time.UTC().Format(time.RFC3339Nano))
	fmt.Fprintf(&b, "key: %s\n", l.Key)
	b.WriteString("headers:\n")
	for _, h := range l.Headers {
		fmt.Fprintf(&b, "  %s: %s\n", h.Key, h.Value)
	}
	m, err := l.Decode()
	if err != nil {
		fmt.Fprintf(&b, "record (%d bytes, not decodable: %v), hex:\n%s", len(l.Value), err, hex.Dump(l.Value))
	} else {
		js, err := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(m)
		if err != nil {
			return fmt.Errorf("encoding record of %s as JSON: %w", l.Addr(), err)
		}
		fmt.Fprintf(&b, "record (%s):\n%s\n", m.ProtoReflect().Descriptor().FullName(), js)
	}
	_, err = io.WriteString(w, b.String())
	return err
}

// Message returns the dead letter of a record that sink could never write:
// the original key, value and headers (without the dead-letter headers of
// an earlier failure) plus origin-topic, origin-partition, origin-offset,
// sink, error and the extra headers. It builds the same record as the
// consumer runtime does.
func Message(rec runtime.Record, sink string, reason error, extra ...kafka.Header) kafka.Message {
	headers := make([]kafka.Header, 0, len(rec.Headers)+5+len(extra))
	for _, h := range rec.Headers {
		if dlHeader(h.Key) {
			continue
		}
		headers = append(headers, kafka.Header{Key: h.Key, Value: h.Value})
	}
	headers = append(headers,
		kafka.Header{Key: topic.HeaderOriginTopic, Value: []byte(rec.Topic)},
		kafka.Header{Key: topic.HeaderOriginPartition, Value: []byte(strconv.Itoa(rec.Partition))},
		kafka.Header{Key: topic.HeaderOriginOffset, Value: []byte(strconv.FormatInt(rec.Offset, 10))},
		kafka.Header{Key: topic.HeaderSink, Value: []byte(sink)},
		kafka.Header{Key: topic.HeaderError, Value: []byte(reason.Error())},
	)
	return kafka.Message{Key: rec.Key, Value: rec.Value, Headers: append(headers, extra...)}
}

// dlHeader reports whether key is a header the dead-letter path sets.
func dlHeader(key string) bool {
	switch key {
	case topic.HeaderOriginTopic, topic.HeaderOriginPartition, topic.HeaderOriginOffset, topic.HeaderSink,
		topic.HeaderError, topic.HeaderRedriveOf, topic.HeaderAttempt, topic.HeaderRedriveTo:
		return true
	}
	return false
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func oneLine(s string) string { return strings.ReplaceAll(s, "\n", " ") }
