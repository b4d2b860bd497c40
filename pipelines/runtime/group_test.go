package runtime_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/chapper/chapper/pipelines/runtime"
	"github.com/chapper/chapper/pipelines/runtime/sinktest"
	"github.com/chapper/chapper/proto/topic"
	"github.com/chapper/chapper/services/devstack/devtest"
)

// holdSink blocks its first Write until released, whatever the context
// says: a member that is slow to give up a batch when its partitions move.
type holdSink struct {
	*memSink
	calls   atomic.Int64
	entered chan struct{}
	release chan struct{}
}

func (s *holdSink) Write(ctx context.Context, batch []runtime.Record) error {
	if s.calls.Add(1) == 1 {
		s.entered <- struct{}{}
		<-s.release
	}
	return s.memSink.Write(ctx, batch)
}

// Issue 9, failure mode 3: a member holding a batch while its partitions
// move to another member must not commit that batch afterwards, or the
// group's offset goes back over the new owner's commits. With one
// partition per topic, the range assignor gives every partition to one
// member, so the partitions move whole when the second member gets them.
func TestStaleMemberCannotMoveOffsetsBack(t *testing.T) {
	k := devtest.Kafka(t)
	sinktest.CreateTopicsN(t, k.Addr(), 1)
	cfg := sinktest.ConsumerConfig(k.Addr(), "stale")
	cfg.DrainTimeout = 200 * time.Millisecond
	recs := sinktest.Records(21, 300)
	sinktest.ProduceRecords(t, k.Addr(), recs...)
	end := sinktest.EndOffsets(t, k.Addr())

	store := newMemSink("memory")
	first := &holdSink{memSink: store, entered: make(chan struct{}, 1), release: make(chan struct{})}
	a := sinktest.Start(t, cfg, first)
	select {
	case <-first.entered:
	case <-ctxT(t).Done():
		t.Fatal("the first member got no batch")
	}

	// A second member joins while the first holds its batch. Until it
	// owns the partitions (it may take a few joins with today's
	// assignment), its sink sees nothing.
	var b *sinktest.Running
	for attempt := 0; ; attempt++ {
		second := &countingSink{memSink: store}
		b = sinktest.Start(t, cfg, second)
		deadline := time.Now().Add(15 * time.Second)
		for second.n.Load() == 0 && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if second.n.Load() > 0 {
			break
		}
		if attempt == 5 {
			t.Fatal("the second member never got the partitions")
		}
		b.Stop(t)
	}
	sinktest.WaitCommitted(t, k.Addr(), cfg.GroupID, 30*time.Second)

	// The first member now finishes its old batch and tries to commit it.
	close(first.release)
	a.Stop(t)
	got := sinktest.Committed(t, k.Addr(), cfg.GroupID)
	for tp, e := range end {
		if e > 0 && got[tp] != e {
			t.Errorf("%s/%d: committed offset %d after the old member finished, want %d (moved back over the new owner's commits)",
				tp.Topic, tp.Partition, got[tp], e)
		}
	}
	if store.Total(t) != len(recs) {
		t.Errorf("%d records stored, want %d", store.Total(t), len(recs))
	}
	b.Stop(t)
}

// fatalSink writes its first batch, then fails fatally.
type fatalSink struct {
	*memSink
	calls  atomic.Int64
	failed atomic.Pointer[[]runtime.Record]
}

var errSchema = errors.New("column \"visited_at\" does not exist")

func (s *fatalSink) Write(ctx context.Context, batch []runtime.Record) error {
	if s.calls.Add(1) == 1 {
		return s.memSink.Write(ctx, batch)
	}
	s.failed.CompareAndSwap(nil, &batch)
	return runtime.Fatal(fmt.Errorf("inserting batch: %w", errSchema))
}

func gaugeValue(t *testing.T, name string, labels map[string]string) (float64, bool) {
	t.Helper()
	families, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	next:
		for _, m := range f.GetMetric() {
			got := map[string]string{}
			for _, l := range m.GetLabel() {
				got[l.GetName()] = l.GetValue()
			}
			for k, v := range labels {
				if got[k] != v {
					continue next
				}
			}
			return m.GetGauge().GetValue(), true
		}
	}
	return 0, false
}

// Issue 10: a fatal error stops that consumer only: no more writes, no
// commit of the failed batch, Ready names the cause, the fatal gauge is 1,
// and Run keeps running (returning nil) until its context is done.
func TestFatalErrorStopsTheConsumer(t *testing.T) {
	k := devtest.Kafka(t)
	sinktest.CreateTopics(t, k.Addr())
	cfg := sinktest.ConsumerConfig(k.Addr(), "fatal")
	cfg.BatchSize = 20
	sinktest.ProduceRecords(t, k.Addr(), sinktest.Records(22, 200)...)
	sink := &fatalSink{memSink: newMemSink("fatal-test")}
	c, err := runtime.New(cfg, sink)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()

	sinktest.Eventually(t, 30*time.Second, func() error {
		var fatal *runtime.FatalError
		if err := c.Ready(); !errors.As(err, &fatal) || !errors.Is(err, errSchema) {
			return fmt.Errorf("Ready = %v, want the fatal error", err)
		}
		return nil
	})
	if v, ok := gaugeValue(t, "chapper_pipeline_fatal", map[string]string{"sink": "fatal-test"}); !ok || v != 1 {
		t.Errorf("chapper_pipeline_fatal{sink=fatal-test} = %v (present %v), want 1", v, ok)
	}
	// It left the group: no member, and no more writes.
	sinktest.Eventually(t, 30*time.Second, func() error {
		resp, err := sinktest.Client(t, k.Addr()).DescribeGroups(ctxT(t), &kafka.DescribeGroupsRequest{GroupIDs: []string{cfg.GroupID}})
		if err != nil {
			return err
		}
		if len(resp.Groups) == 1 && len(resp.Groups[0].Members) > 0 {
			return fmt.Errorf("group %s still has %d members", cfg.GroupID, len(resp.Groups[0].Members))
		}
		return nil
	})
	calls := sink.calls.Load()
	if calls != 2 {
		t.Errorf("%d writes, want 2 (one good, one fatal, no retry)", calls)
	}
	committed := sinktest.Committed(t, k.Addr(), cfg.GroupID)
	for _, r := range *sink.failed.Load() {
		if committed[sinktest.TopicPartition{Topic: r.Topic, Partition: r.Partition}] > r.Offset {
			t.Fatalf("%s/%d@%d of the failed batch committed", r.Topic, r.Partition, r.Offset)
		}
	}
	select {
	case err := <-done:
		t.Fatalf("Run returned %v after the fatal error; want it to wait for its context", err)
	default:
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v after cancel, want nil (the process's other parts go on)", err)
		}
	case <-ctxT(t).Done():
		t.Fatal("Run did not return after cancel")
	}
	if sink.calls.Load() != calls {
		t.Errorf("writes after the fatal error")
	}
}

// Issue 10: past the dead-letter limit, the consumer turns fatal naming the
// partition and the limit, instead of shovelling the stream into the
// dead-letter topic.
func TestDeadLetterLimitTurnsFatal(t *testing.T) {
	k := devtest.Kafka(t)
	sinktest.CreateTopics(t, k.Addr())
	cfg := sinktest.ConsumerConfig(k.Addr(), "dlq-limit")
	cfg.DeadLetterMaxConsecutive = 5
	var msgs []kafka.Message
	for i := range 30 {
		msgs = append(msgs, sinktest.Message(t, poison(i))) // one locality: one partition
	}
	sinktest.Produce(t, k.Addr(), msgs...)
	partition := -1
	for tp, e := range sinktest.EndOffsets(t, k.Addr()) {
		if e > 0 {
			partition = tp.Partition
		}
	}
	c := sinktest.Start(t, cfg, newMemSink("memory"))
	want := "partition " + topic.Visits + "/" + strconv.Itoa(partition) + ": 6 records in a row dead-lettered, past the dead-letter limit max-consecutive=5"
	sinktest.Eventually(t, 30*time.Second, func() error {
		var fatal *runtime.FatalError
		if err := c.Consumer.Ready(); !errors.As(err, &fatal) || !strings.Contains(err.Error(), want) {
			return fmt.Errorf("Ready = %v, want fatal saying %q", err, want)
		}
		return nil
	})
	if dead := sinktest.ReadTopic(t, k.Addr(), topic.DeadLetter); len(dead) > 5 {
		t.Errorf("%d records dead-lettered, want at most the 5 the limit allows", len(dead))
	}
	if got := sinktest.Committed(t, k.Addr(), cfg.GroupID)[sinktest.TopicPartition{Topic: topic.Visits, Partition: partition}]; got > 5 {
		t.Errorf("committed offset %d, want at most 5", got)
	}
}

// Issue 10: a partition with lag and no commit for StuckAfter turns Ready
// red, naming it; once it commits again Ready is green.
func TestStuckPartition(t *testing.T) {
	k := devtest.Kafka(t)
	sinktest.CreateTopics(t, k.Addr())
	cfg := sinktest.ConsumerConfig(k.Addr(), "stuck")
	cfg.StuckAfter = 500 * time.Millisecond
	sink := &holdSink{memSink: newMemSink("stuck-test"), entered: make(chan struct{}, 1), release: make(chan struct{})}
	c := sinktest.Start(t, cfg, sink)
	sinktest.Eventually(t, 30*time.Second, c.Consumer.Ready)
	sinktest.ProduceRecords(t, k.Addr(), sinktest.Records(23, 100)...)
	<-sink.entered
	sinktest.Eventually(t, 30*time.Second, func() error {
		if err := c.Consumer.Ready(); !errors.Is(err, runtime.ErrStuck) || !strings.Contains(err.Error(), "canvass.") {
			return fmt.Errorf("Ready = %v, want ErrStuck naming partitions", err)
		}
		return nil
	})
	if age, ok := gaugeValue(t, "chapper_pipeline_commit_age_seconds", map[string]string{"sink": "stuck-test"}); !ok || age < 0.5 {
		t.Errorf("chapper_pipeline_commit_age_seconds = %v (present %v), want at least 0.5", age, ok)
	}
	close(sink.release)
	sinktest.WaitCommitted(t, k.Addr(), cfg.GroupID, 30*time.Second)
	sinktest.Eventually(t, 30*time.Second, c.Consumer.Ready)
}

// Issue 10: lag gauges of partitions that moved to another member in a
// rebalance are deleted, so no partition is reported by two members.
func TestLagGaugesFollowAssignment(t *testing.T) {
	k := devtest.Kafka(t)
	sinktest.CreateTopics(t, k.Addr())
	cfg := sinktest.ConsumerConfig(k.Addr(), "lag-gauges")
	store := newMemSink("store")
	sinktest.ProduceRecords(t, k.Addr(), sinktest.Records(24, 600)...)
	a := sinktest.Start(t, cfg, &renamed{memSink: store, name: "lag-a"})
	sinktest.WaitCommitted(t, k.Addr(), cfg.GroupID, 30*time.Second)
	if n := len(lagSeries(t, "lag-a")); n != 3*sinktest.Partitions {
		t.Fatalf("%d lag gauges for the only member, want %d", n, 3*sinktest.Partitions)
	}
	b := sinktest.Start(t, cfg, &renamed{memSink: store, name: "lag-b"})
	sinktest.Eventually(t, 30*time.Second, b.Consumer.Ready)
	sinktest.ProduceRecords(t, k.Addr(), sinktest.Records(25, 600)...)
	sinktest.WaitCommitted(t, k.Addr(), cfg.GroupID, 30*time.Second)
	sinktest.Eventually(t, 30*time.Second, func() error {
		sa, sb := lagSeries(t, "lag-a"), lagSeries(t, "lag-b")
		for p := range sa {
			if sb[p] {
				return fmt.Errorf("partition %s has a lag gauge under both members", p)
			}
		}
		if len(sa) == 0 || len(sb) == 0 || len(sa)+len(sb) != 3*sinktest.Partitions {
			return fmt.Errorf("lag gauges: %d under a, %d under b, want the %d partitions split", len(sa), len(sb), 3*sinktest.Partitions)
		}
		return nil
	})
	a.Stop(t)
	b.Stop(t)
	if n := len(lagSeries(t, "lag-a")) + len(lagSeries(t, "lag-b")); n != 0 {
		t.Errorf("%d lag gauges left after both members stopped", n)
	}
}

type renamed struct {
	*memSink
	name string
}

func (s *renamed) Name() string { return s.name }

// lagSeries returns the partitions ("topic/partition") with a lag gauge
// for sink.
func lagSeries(t *testing.T, sink string) map[string]bool {
	t.Helper()
	families, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, f := range families {
		if f.GetName() != "chapper_pipeline_consumer_lag_records" {
			continue
		}
		for _, m := range f.GetMetric() {
			l := map[string]string{}
			for _, p := range m.GetLabel() {
				l[p.GetName()] = p.GetValue()
			}
			if l["sink"] == sink {
				out[l["topic"]+"/"+l["partition"]] = true
			}
		}
	}
	return out
}
