package replay

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/chapper/chapper/pipelines/internal/kafkarange"
	"github.com/chapper/chapper/proto/topic"
)

// Partition names one partition of a record topic.
type Partition = kafkarange.Partition

// Range is the offsets [From, To) of one partition that a replay reads.
type Range = kafkarange.Range

// ErrPosition is wrapped by the errors of ParsePosition.
var ErrPosition = errors.New(`position must be "beginning", "now", an RFC 3339 time or <kind>/<partition>:<offset>,... with kind visits, intentions or followups`)

type posKind int

const (
	posBeginning posKind = iota
	posNow
	posTime
	posOffsets
)

// Position is where a replay starts (-from) or ends (-to): the beginning
// of the partitions, now (the high watermarks read at the start), the first
// offset at or after a time (Kafka's offsets for times), or explicit
// offsets per partition. The zero Position is the beginning.
type Position struct {
	kind    posKind
	at      time.Time
	offsets map[Partition]int64
}

// Beginning is the log start of every partition.
func Beginning() Position { return Position{kind: posBeginning} }

// Now is the high watermark of every partition, read when the replay starts.
func Now() Position { return Position{kind: posNow} }

// At is, on every partition, the first offset whose record was appended at
// or after t.
func At(t time.Time) Position { return Position{kind: posTime, at: t} }

// Offsets is an explicit offset per partition.
func Offsets(offs map[Partition]int64) Position { return Position{kind: posOffsets, offsets: offs} }

// ParsePosition parses a -from or -to value: "beginning", "now", an RFC
// 3339 time, or <kind>/<partition>:<offset>,... (kind visits, intentions
// or followups).
func ParsePosition(s string) (Position, error) {
	s = strings.TrimSpace(s)
	switch s {
	case "beginning":
		return Beginning(), nil
	case "now":
		return Now(), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return At(t), nil
	}
	if !strings.Contains(s, "/") {
		return Position{}, fmt.Errorf("%w: got %q", ErrPosition, s)
	}
	offs := map[Partition]int64{}
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		kind, rest, _ := strings.Cut(f, "/")
		ps, os, ok := strings.Cut(rest, ":")
		k := topic.Kind(kind)
		if k.Topic() == "" || !ok {
			return Position{}, fmt.Errorf("%w: %q in %q", ErrPosition, f, s)
		}
		p, err1 := strconv.Atoi(ps)
		o, err2 := strconv.ParseInt(os, 10, 64)
		if err1 != nil || err2 != nil || p < 0 || o < 0 {
			return Position{}, fmt.Errorf("%w: %q in %q: partition and offset must be non-negative integers", ErrPosition, f, s)
		}
		offs[Partition{Topic: k.Topic(), Partition: p}] = o
	}
	if len(offs) == 0 {
		return Position{}, fmt.Errorf("%w: got %q", ErrPosition, s)
	}
	return Offsets(offs), nil
}

// String formats p as ParsePosition takes it.
func (p Position) String() string {
	switch p.kind {
	case posNow:
		return "now"
	case posTime:
		return p.at.UTC().Format(time.RFC3339Nano)
	case posOffsets:
		return FormatOffsets(p.offsets)
	}
	return "beginning"
}

// FormatOffsets formats offsets as <kind>/<partition>:<offset>,... sorted
// by topic and partition.
func FormatOffsets(offs map[Partition]int64) string {
	var b strings.Builder
	for i, tp := range kafkarange.Sorted(offs) {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := topic.KindOfTopic(tp.Topic)
		fmt.Fprintf(&b, "%s/%d:%d", k, tp.Partition, offs[tp])
	}
	return b.String()
}

// resolve turns a -from and a -to into the ranges to read on parts. A
// partition not named by offsets in -from is not read; one not named in
// -to ends at its high watermark. Every bound is clamped to the partition's
// [log start, high watermark].
func resolve(ctx context.Context, client *kafka.Client, parts []Partition, from, to Position) (map[Partition]Range, error) {
	starts, err := kafkarange.Starts(ctx, client, parts)
	if err != nil {
		return nil, err
	}
	ends, err := kafkarange.Ends(ctx, client, parts)
	if err != nil {
		return nil, err
	}
	bound := func(p Position) (map[Partition]int64, error) {
		switch p.kind {
		case posBeginning:
			return starts, nil
		case posNow:
			return ends, nil
		case posTime:
			return kafkarange.At(ctx, client, parts, p.at)
		}
		return p.offsets, nil
	}
	f, err := bound(from)
	if err != nil {
		return nil, err
	}
	t, err := bound(to)
	if err != nil {
		return nil, err
	}
	out := map[Partition]Range{}
	for _, tp := range parts {
		lo, ok := f[tp]
		if !ok {
			continue
		}
		hi, ok := t[tp]
		if !ok {
			hi = ends[tp]
		}
		lo = min(max(lo, starts[tp]), ends[tp])
		hi = min(max(hi, lo), ends[tp])
		out[tp] = Range{From: lo, To: hi}
	}
	if from.kind == posOffsets {
		for tp := range from.offsets {
			if _, ok := out[tp]; !ok {
				return nil, fmt.Errorf("-from names %s, which is not a partition of the topics replayed", tp)
			}
		}
	}
	return out, nil
}

// Sorted returns the partitions of ranges by topic, then partition.
func Sorted(ranges map[Partition]Range) []Partition { return kafkarange.Sorted(ranges) }
