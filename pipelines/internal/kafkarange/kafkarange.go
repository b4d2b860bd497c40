// Package kafkarange reads explicit offset ranges of Kafka partitions
// without a consumer group, and lists the offsets that bound them (log
// start, high watermark, first offset at a time). Replay and the
// dead-letter tools read through it; the live pipelines read through their
// consumer groups.
package kafkarange

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
)

// Partition names one partition of a topic.
type Partition struct {
	Topic     string
	Partition int
}

func (p Partition) String() string { return fmt.Sprintf("%s/%d", p.Topic, p.Partition) }

// Range is the offsets [From, To) of one partition.
type Range struct {
	From, To int64
}

// Len returns the number of offsets in r (0 when To <= From).
func (r Range) Len() int64 { return max(r.To-r.From, 0) }

// Sorted returns the partitions of m by topic, then partition.
func Sorted[V any](m map[Partition]V) []Partition {
	out := make([]Partition, 0, len(m))
	for p := range m {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Topic != out[j].Topic {
			return out[i].Topic < out[j].Topic
		}
		return out[i].Partition < out[j].Partition
	})
	return out
}

// Partitions returns every partition of topics. A topic that does not
// exist is an error.
func Partitions(ctx context.Context, client *kafka.Client, topics ...string) ([]Partition, error) {
	resp, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: topics})
	if err != nil {
		return nil, fmt.Errorf("reading metadata of %v: %w", topics, err)
	}
	var out []Partition
	for _, name := range topics {
		i := slices.IndexFunc(resp.Topics, func(t kafka.Topic) bool { return t.Name == name })
		if i < 0 {
			return nil, fmt.Errorf("reading metadata of topic %s: %w", name, kafka.UnknownTopicOrPartition)
		}
		t := resp.Topics[i]
		if t.Error != nil {
			return nil, fmt.Errorf("reading metadata of topic %s: %w", name, t.Error)
		}
		for _, p := range t.Partitions {
			out = append(out, Partition{name, p.ID})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Topic != out[j].Topic {
			return out[i].Topic < out[j].Topic
		}
		return out[i].Partition < out[j].Partition
	})
	return out, nil
}

// Starts returns the log start offset of each partition.
func Starts(ctx context.Context, client *kafka.Client, parts []Partition) (map[Partition]int64, error) {
	return listOffsets(ctx, client, parts, kafka.FirstOffset)
}

// Ends returns the high watermark (the next offset to be written) of each
// partition.
func Ends(ctx context.Context, client *kafka.Client, parts []Partition) (map[Partition]int64, error) {
	return listOffsets(ctx, client, parts, kafka.LastOffset)
}

// At returns, for each partition, the first offset whose record timestamp
// is at or after t (Kafka's offsets for times), or the high watermark when
// there is none.
func At(ctx context.Context, client *kafka.Client, parts []Partition, t time.Time) (map[Partition]int64, error) {
	offs, err := listOffsets(ctx, client, parts, t.UnixMilli())
	if err != nil {
		return nil, err
	}
	var none []Partition
	for p, o := range offs {
		if o < 0 {
			none = append(none, p)
		}
	}
	if len(none) > 0 {
		ends, err := Ends(ctx, client, none)
		if err != nil {
			return nil, err
		}
		for p, o := range ends {
			offs[p] = o
		}
	}
	return offs, nil
}

// listOffsets sends one ListOffsets request per kind of timestamp: kafka-go
// tells the answers apart by the timestamp the broker echoes, which is -1
// for both earliest and latest on some brokers.
func listOffsets(ctx context.Context, client *kafka.Client, parts []Partition, ts int64) (map[Partition]int64, error) {
	req := &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{}}
	for _, p := range parts {
		req.Topics[p.Topic] = append(req.Topics[p.Topic], kafka.OffsetRequest{Partition: p.Partition, Timestamp: ts})
	}
	resp, err := client.ListOffsets(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("listing offsets: %w", err)
	}
	out := make(map[Partition]int64, len(parts))
	for name, ps := range resp.Topics {
		for _, p := range ps {
			if p.Error != nil {
				return nil, fmt.Errorf("listing offsets of %s/%d: %w", name, p.Partition, p.Error)
			}
			var off int64
			switch {
			case len(p.Offsets) > 0:
				for o := range p.Offsets {
					off = o
				}
			case ts == kafka.FirstOffset && p.LastOffset == -1:
				off = p.FirstOffset
			default:
				off = p.LastOffset
			}
			out[Partition{name, p.Partition}] = off
		}
	}
	for _, p := range parts {
		if _, ok := out[p]; !ok {
			return nil, fmt.Errorf("listing offsets of %s: no answer for the partition", p)
		}
	}
	return out, nil
}

// Read reads every range of ranges, each partition in offset order on its
// own goroutine, and sends the messages to out. It returns once every range
// was read to its end (nil), ctx is done (ctx.Err()) or a read failed; it
// never closes out. Ranges with To <= From are not read.
func Read(ctx context.Context, brokers []string, ranges map[Partition]Range, out chan<- kafka.Message) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	for p, r := range ranges {
		if r.Len() == 0 {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := readOne(ctx, brokers, p, r, out); err != nil {
				mu.Lock()
				if first == nil {
					first = err
				}
				mu.Unlock()
				cancel()
			}
		}()
	}
	wg.Wait()
	return first
}

func readOne(ctx context.Context, brokers []string, p Partition, r Range, out chan<- kafka.Message) error {
	reader := kafka.NewReader(kafka.ReaderConfig{
		Brokers:   brokers,
		Topic:     p.Topic,
		Partition: p.Partition,
		MinBytes:  1,
		MaxBytes:  16 << 20,
		MaxWait:   250 * time.Millisecond,
	})
	defer reader.Close()
	if err := reader.SetOffset(r.From); err != nil {
		return fmt.Errorf("seeking %s to %d: %w", p, r.From, err)
	}
	for {
		m, err := reader.FetchMessage(ctx)
		if err != nil {
			return fmt.Errorf("reading %s: %w", p, err)
		}
		if m.Offset >= r.To {
			return nil
		}
		select {
		case out <- m:
		case <-ctx.Done():
			return ctx.Err()
		}
		if m.Offset >= r.To-1 {
			return nil
		}
	}
}
