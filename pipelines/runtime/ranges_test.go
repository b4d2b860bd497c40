package runtime_test

import (
	"context"
	"errors"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/chapper/chapper/pipelines/runtime"
	"github.com/chapper/chapper/pipelines/runtime/sinktest"
	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"github.com/chapper/chapper/proto/topic"
	"github.com/chapper/chapper/services/devstack/devtest"
)

// rangesOf returns one range per record partition, from from[tp] (0 when
// absent) to the end offset.
func rangesOf(end map[sinktest.TopicPartition]int64, from map[sinktest.TopicPartition]int64) []runtime.Range {
	var out []runtime.Range
	for tp, e := range end {
		out = append(out, runtime.Range{Topic: tp.Topic, Partition: tp.Partition, From: min(from[tp], e), To: e})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Topic != out[j].Topic {
			return out[i].Topic < out[j].Topic
		}
		return out[i].Partition < out[j].Partition
	})
	return out
}

func rangeConfig(addr string) runtime.RangeConfig {
	return runtime.RangeConfig{Config: sinktest.ConsumerConfig(addr, "unused")}
}

func TestReadRanges(t *testing.T) {
	k := devtest.Kafka(t)
	sinktest.CreateTopics(t, k.Addr())
	recs := sinktest.Records(11, 400)
	var msgs []kafka.Message
	for _, r := range recs {
		msgs = append(msgs, sinktest.Message(t, r))
	}
	for i := range 4 {
		msgs = append(msgs, sinktest.Message(t, poison(i)))
	}
	sinktest.Produce(t, k.Addr(), msgs...)
	end := sinktest.EndOffsets(t, k.Addr())
	// Skip the first 5 records of every partition: they are not read.
	from := map[sinktest.TopicPartition]int64{}
	var want int64
	for tp, e := range end {
		from[tp] = min(5, e)
		want += e - from[tp]
	}
	ranges := rangesOf(end, from)

	sink := newMemSink("memory")
	cfg := rangeConfig(k.Addr())
	cfg.Filter = func(r runtime.Record) bool { _, isIntention := r.Message.(*canvassv1.Intention); return !isIntention }
	var (
		mu      sync.Mutex
		batches int
		last    []runtime.Checkpoint
	)
	cfg.OnBatch = func(done []runtime.Checkpoint) {
		mu.Lock()
		defer mu.Unlock()
		batches++
		last = done
	}
	stats, err := runtime.ReadRanges(ctxT(t), cfg, ranges, sink)
	if err != nil {
		t.Fatalf("ReadRanges = %v", err)
	}
	if stats.Read != want {
		t.Errorf("read %d records, want %d", stats.Read, want)
	}
	if stats.Skipped == 0 || stats.Written == 0 || stats.Read != stats.Written+stats.Skipped+stats.DeadLettered {
		t.Errorf("stats %+v: want read = written + skipped + dead-lettered, some of each", stats)
	}
	if got := int64(sink.Total(t)); got != stats.Written {
		t.Errorf("sink holds %d records, stats say %d written", got, stats.Written)
	}
	for _, r := range sink.records() {
		if _, ok := r.(*canvassv1.Intention); ok {
			t.Fatalf("filtered record %v written", r)
		}
	}
	dead := sinktest.ReadTopic(t, k.Addr(), topic.DeadLetter)
	if int64(len(dead)) != stats.DeadLettered {
		t.Errorf("%d dead letters on the topic, stats say %d", len(dead), stats.DeadLettered)
	}
	mu.Lock()
	if batches < 2 {
		t.Errorf("OnBatch called %d times, want once per batch (batch size 50)", batches)
	}
	if len(last) != len(ranges) {
		t.Fatalf("last checkpoint has %d partitions, want %d", len(last), len(ranges))
	}
	for i, cp := range last {
		if cp.Topic != ranges[i].Topic || cp.Partition != ranges[i].Partition || cp.Next != ranges[i].To {
			t.Errorf("checkpoint %d = %+v, want %s/%d next %d", i, cp, ranges[i].Topic, ranges[i].Partition, ranges[i].To)
		}
	}
	mu.Unlock()
	// No group joined, nothing committed anywhere.
	groups, err := sinktest.Client(t, k.Addr()).ListGroups(ctxT(t), &kafka.ListGroupsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(groups.Groups) != 0 {
		t.Errorf("ReadRanges left groups %v", groups.Groups)
	}
}

// Ctrl-C mid-batch: the batch in hand is finished, OnBatch called for it,
// and ReadRanges returns ctx's error without reading further.
func TestReadRangesCancelFinishesBatchInHand(t *testing.T) {
	k := devtest.Kafka(t)
	sinktest.CreateTopics(t, k.Addr())
	sinktest.ProduceRecords(t, k.Addr(), sinktest.Records(12, 300)...)
	ranges := rangesOf(sinktest.EndOffsets(t, k.Addr()), nil)

	sink := &gatedSink{memSink: newMemSink("memory"), entered: make(chan struct{}, 1), release: make(chan struct{})}
	cfg := rangeConfig(k.Addr())
	cfg.DrainTimeout = 20 * time.Second
	var checkpoints [][]runtime.Checkpoint
	cfg.OnBatch = func(done []runtime.Checkpoint) { checkpoints = append(checkpoints, done) }
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type result struct {
		stats runtime.RangeStats
		err   error
	}
	done := make(chan result, 1)
	go func() {
		s, err := runtime.ReadRanges(ctx, cfg, ranges, sink)
		done <- result{s, err}
	}()
	select {
	case <-sink.entered:
	case <-ctxT(t).Done():
		t.Fatal("no write")
	}
	cancel()
	close(sink.release)
	var res result
	select {
	case res = <-done:
	case <-ctxT(t).Done():
		t.Fatal("ReadRanges did not return after cancel")
	}
	if !errors.Is(res.err, context.Canceled) {
		t.Errorf("ReadRanges = %v, want context.Canceled", res.err)
	}
	if res.stats.Written == 0 || res.stats.Written >= 300 || int64(sink.Total(t)) != res.stats.Written {
		t.Errorf("written %d (sink holds %d) of 300; want the batch in hand only", res.stats.Written, sink.Total(t))
	}
	if len(checkpoints) != 1 {
		t.Fatalf("OnBatch called %d times, want once, for the batch in hand", len(checkpoints))
	}
	var handled int64
	for i, cp := range checkpoints[0] {
		handled += cp.Next - ranges[i].From
	}
	if handled != res.stats.Read {
		t.Errorf("checkpoint covers %d records, stats read %d", handled, res.stats.Read)
	}
}

func TestReadRangesFatal(t *testing.T) {
	k := devtest.Kafka(t)
	sinktest.CreateTopics(t, k.Addr())
	sinktest.ProduceRecords(t, k.Addr(), sinktest.Records(13, 100)...)
	ranges := rangesOf(sinktest.EndOffsets(t, k.Addr()), nil)
	errSchema := errors.New("column missing")
	calls := 0
	sink := runtime.SinkFunc("memory", func(context.Context, []runtime.Record) error {
		calls++
		return runtime.Fatal(errSchema)
	})
	cfg := rangeConfig(k.Addr())
	called := false
	cfg.OnBatch = func([]runtime.Checkpoint) { called = true }
	_, err := runtime.ReadRanges(ctxT(t), cfg, ranges, sink)
	var fatal *runtime.FatalError
	if !errors.As(err, &fatal) || !errors.Is(err, errSchema) {
		t.Errorf("ReadRanges = %v, want a *FatalError wrapping the sink's", err)
	}
	if calls != 1 || called {
		t.Errorf("%d writes and OnBatch called %v after a fatal error; want 1 write, no checkpoint", calls, called)
	}
}

func TestReadRangesBadInput(t *testing.T) {
	cfg := rangeConfig("127.0.0.1:1")
	tests := []struct {
		name   string
		ranges []runtime.Range
		want   string
	}{
		{name: "no topic", ranges: []runtime.Range{{Partition: 0, To: 1}}, want: "topic not set"},
		{name: "negative partition", ranges: []runtime.Range{{Topic: "t", Partition: -1, To: 1}}, want: "partition -1 is negative"},
		{name: "negative from", ranges: []runtime.Range{{Topic: "t", From: -2, To: 1}}, want: "from offset -2 is negative"},
		{name: "to before from", ranges: []runtime.Range{{Topic: "t", From: 5, To: 4}}, want: "to offset 4 is before from offset 5"},
		{name: "partition twice", ranges: []runtime.Range{{Topic: "t", To: 1}, {Topic: "t", To: 2}}, want: "partition t/0 given twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := runtime.ReadRanges(context.Background(), cfg, tt.ranges, newMemSink("x"))
			if !errors.Is(err, runtime.ErrBadRange) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("ReadRanges = %v, want ErrBadRange saying %q", err, tt.want)
			}
		})
	}
	noBrokers := cfg
	noBrokers.Brokers = nil
	if _, err := runtime.ReadRanges(context.Background(), noBrokers, nil, newMemSink("x")); !errors.Is(err, runtime.ErrNoBrokers) {
		t.Errorf("ReadRanges without brokers = %v, want ErrNoBrokers", err)
	}
	// Empty ranges are done at once; a partition that does not exist is
	// refused, not waited for.
	stats, err := runtime.ReadRanges(context.Background(), cfg, []runtime.Range{{Topic: "t", From: 3, To: 3}}, newMemSink("x"))
	if err != nil || stats != (runtime.RangeStats{}) {
		t.Errorf("ReadRanges over an empty range = %+v, %v; want nothing and nil", stats, err)
	}
	k := devtest.Kafka(t)
	sinktest.CreateTopics(t, k.Addr())
	missing := []runtime.Range{{Topic: topic.Visits, Partition: sinktest.Partitions, To: 1}}
	if _, err := runtime.ReadRanges(ctxT(t), rangeConfig(k.Addr()), missing, newMemSink("x")); !errors.Is(err, runtime.ErrBadRange) ||
		!strings.Contains(err.Error(), "does not exist") {
		t.Errorf("ReadRanges over a missing partition = %v, want ErrBadRange saying it does not exist", err)
	}
}

// Records deleted from a partition (retention, DeleteRecords) cannot be
// read; a range starting before the partition's first offset starts there
// instead of waiting forever.
func TestReadRangesAfterDeletedRecords(t *testing.T) {
	k := devtest.Kafka(t)
	sinktest.CreateTopicsN(t, k.Addr(), 1)
	var msgs []kafka.Message
	for _, r := range sinktest.Records(14, 300) {
		if m := sinktest.Message(t, r); m.Topic == topic.Visits {
			msgs = append(msgs, m)
		}
	}
	sinktest.Produce(t, k.Addr(), msgs...)
	end := int64(len(msgs))
	sink := newMemSink("memory")
	tests := []struct {
		name     string
		deleted  int64 // records before it are deleted
		from, to int64
		want     int64
	}{
		{name: "partly deleted", deleted: end - 10, from: 0, to: end, want: 10},
		// nothing at or after the range's end to show the reader it is
		// done: without the first offset it would wait forever
		{name: "all deleted", deleted: end, from: 0, to: end - 20, want: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			deleteBefore(t, k.Addr(), topic.Visits, 0, tt.deleted)
			var last []runtime.Checkpoint
			cfg := rangeConfig(k.Addr())
			cfg.OnBatch = func(done []runtime.Checkpoint) { last = done }
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			stats, err := runtime.ReadRanges(ctx, cfg, []runtime.Range{{Topic: topic.Visits, From: tt.from, To: tt.to}}, sink)
			if err != nil || stats.Read != tt.want {
				t.Errorf("ReadRanges = %+v, %v; want %d read", stats, err, tt.want)
			}
			if len(last) != 1 || last[0].Next != tt.to {
				t.Errorf("last checkpoint %+v, want next %d", last, tt.to)
			}
		})
	}
}

// deleteBefore deletes the records of a partition before offset.
func deleteBefore(t *testing.T, addr, name string, partition int32, offset int64) {
	t.Helper()
	c, err := kgo.NewClient(kgo.SeedBrokers(addr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	req := kmsg.NewPtrDeleteRecordsRequest()
	rt := kmsg.NewDeleteRecordsRequestTopic()
	rt.Topic = name
	p := kmsg.NewDeleteRecordsRequestTopicPartition()
	p.Partition, p.Offset = partition, offset
	rt.Partitions = append(rt.Partitions, p)
	req.Topics = append(req.Topics, rt)
	req.TimeoutMillis = 10000
	resp, err := req.RequestWith(ctxT(t), c)
	if err != nil {
		t.Fatalf("deleting records: %v", err)
	}
	for _, rt := range resp.Topics {
		for _, p := range rt.Partitions {
			if err := kerr.ErrorForCode(p.ErrorCode); err != nil {
				t.Fatalf("deleting records of %s/%d: %v", rt.Topic, p.Partition, err)
			}
		}
	}
}
