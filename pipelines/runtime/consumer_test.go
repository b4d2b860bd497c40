package runtime_test

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/segmentio/kafka-go"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

	"github.com/chapper/chapper/pipelines/runtime"
	"github.com/chapper/chapper/pipelines/runtime/sinktest"
	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"github.com/chapper/chapper/proto/topic"
	"github.com/chapper/chapper/services/devstack/devtest"
)

// TestMain runs the tests, then checks that no goroutine outlived them.
// devtest.Main (which stops the servers shared by a test binary and exits)
// cannot run code after the tests, and this package uses none of its
// shared servers: every test starts its own broker (devtest.Kafka), closed
// by t.Cleanup before m.Run returns. So the check runs here, after every
// broker, consumer and reader of the tests was closed.
func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		// bleve's analysis queue starts at init in the search server that
		// devtest links in; it is not ours and lives as long as the binary
		if err := goleak.Find(goleak.IgnoreTopFunction("github.com/blevesearch/bleve_index_api.AnalysisWorker")); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: goroutines left after the tests: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// memSink is an idempotent in-memory sink: the seam the runtime owns,
// standing in for a store so the runtime's own behaviour is tested alone.
// It rejects records whose id starts with "poison" permanently.
type memSink struct {
	name string
	mu   sync.Mutex
	ids  map[string]proto.Message
}

func newMemSink(name string) *memSink { return &memSink{name: name, ids: map[string]proto.Message{}} }

// records returns every record the sink holds.
func (s *memSink) records() []proto.Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]proto.Message, 0, len(s.ids))
	for _, m := range s.ids {
		out = append(out, m)
	}
	return out
}

func (s *memSink) Name() string { return s.name }

func (s *memSink) Write(_ context.Context, batch []runtime.Record) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var perm runtime.PermanentError
	for _, r := range batch {
		meta, ok := topic.MetaOf(r.Message)
		if !ok || strings.HasPrefix(meta.ID, "poison") {
			perm.Failures = append(perm.Failures, runtime.Failure{Record: r, Reason: errors.New("poison record")})
			continue
		}
		s.ids[meta.ID] = r.Message
	}
	if len(perm.Failures) > 0 {
		return &perm
	}
	return nil
}

func (s *memSink) Has(_ testing.TB, rec proto.Message) bool {
	meta, _ := topic.MetaOf(rec)
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ids[meta.ID] != nil
}

func (s *memSink) Total(testing.TB) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.ids)
}

func poison(i int) proto.Message {
	return &canvassv1.Visit{Id: fmt.Sprintf("poison-%d", i), Location: &canvassv1.Location{Latitude: 55.95, Longitude: -3.19}}
}

// The runtime passes the suite with the in-memory sink; this also checks
// that the suite itself works.
func TestConformanceInMemory(t *testing.T) {
	sinktest.Run(t, sinktest.Harness{
		New: func(testing.TB) (runtime.Sink, sinktest.Store) {
			s := newMemSink("memory")
			return s, s
		},
		Poison: poison,
	})
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestDeadLettersUndecodable(t *testing.T) {
	tests := []struct {
		name    string
		topic   string
		value   []byte
		wantErr string
	}{
		{name: "invalid protobuf", topic: topic.Visits, value: []byte{0x0a, 0x7f, 0x01}, wantErr: "decoding canvass.v1.Visit"},
		{name: "topic without a record kind", topic: "canvass.other.v1", value: []byte("hello"), wantErr: "carries no record kind"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := devtest.Kafka(t)
			if tt.topic == topic.Visits {
				sinktest.CreateTopics(t, k.Addr())
			} else {
				sinktest.CreateTopics(t, k.Addr(), tt.topic)
			}
			cfg := sinktest.ConsumerConfig(k.Addr(), "undecodable")
			cfg.Topics = append(cfg.Topics, tt.topic)
			sink := newMemSink("memory")
			sinktest.Start(t, cfg, sink)

			before, after := sinktest.Records(1, 5), sinktest.Records(2, 5)
			var msgs []kafka.Message
			for _, r := range before {
				msgs = append(msgs, sinktest.Message(t, r))
			}
			msgs = append(msgs, kafka.Message{Topic: tt.topic, Key: []byte("52543256811"), Value: tt.value,
				Headers: []kafka.Header{{Key: topic.HeaderTraceID, Value: []byte("trace-1")}}})
			for _, r := range after {
				msgs = append(msgs, sinktest.Message(t, r))
			}
			sinktest.Produce(t, k.Addr(), msgs...)

			sinktest.Eventually(t, 30*time.Second, func() error {
				if n := sink.Total(t); n != 10 {
					return fmt.Errorf("%d of 10 records written", n)
				}
				return nil
			})
			var dead []kafka.Message
			sinktest.Eventually(t, 30*time.Second, func() error {
				if dead = sinktest.ReadTopic(t, k.Addr(), topic.DeadLetter); len(dead) != 1 {
					return fmt.Errorf("%d dead letters, want 1", len(dead))
				}
				return nil
			})
			d := dead[0]
			want := map[string]string{
				topic.HeaderOriginTopic: tt.topic, topic.HeaderOriginPartition: "", topic.HeaderOriginOffset: "",
				topic.HeaderSink: "memory", topic.HeaderTraceID: "trace-1",
			}
			got := map[string]string{}
			for _, h := range d.Headers {
				got[h.Key] = string(h.Value)
			}
			for key, w := range want {
				if _, ok := got[key]; !ok || (w != "" && got[key] != w) {
					t.Errorf("header %s = %q, want %q", key, got[key], w)
				}
			}
			if !strings.Contains(got[topic.HeaderError], tt.wantErr) {
				t.Errorf("error header %q does not say %q", got[topic.HeaderError], tt.wantErr)
			}
			if string(d.Value) != string(tt.value) || string(d.Key) != "52543256811" {
				t.Errorf("dead letter key/value = %q/%q, want the original", d.Key, d.Value)
			}
		})
	}
}

// gatedSink blocks every Write until released, counting calls.
type gatedSink struct {
	*memSink
	entered chan struct{}
	release chan struct{}
}

func (s *gatedSink) Write(ctx context.Context, batch []runtime.Record) error {
	s.entered <- struct{}{}
	select {
	case <-s.release:
	case <-ctx.Done():
		return ctx.Err()
	}
	return s.memSink.Write(ctx, batch)
}

func TestGracefulShutdownCommitsBatchInHand(t *testing.T) {
	k := devtest.Kafka(t)
	sinktest.CreateTopics(t, k.Addr())
	cfg := sinktest.ConsumerConfig(k.Addr(), "graceful")
	cfg.BatchSize = 1000
	cfg.Linger = 200 * time.Millisecond
	cfg.DrainTimeout = 10 * time.Second
	recs := sinktest.Records(1, 100)
	sinktest.ProduceRecords(t, k.Addr(), recs...)

	sink := &gatedSink{memSink: newMemSink("memory"), entered: make(chan struct{}, 1), release: make(chan struct{})}
	c := sinktest.Start(t, cfg, sink)
	select {
	case <-sink.entered:
	case <-ctxT(t).Done():
		t.Fatal("no write")
	}
	// Shutdown begins while the write is in progress; the write then
	// completes within the drain timeout, so the batch is committed.
	stopped := make(chan struct{})
	go func() {
		c.Stop(t)
		close(stopped)
	}()
	time.Sleep(50 * time.Millisecond) // let the cancellation land first
	close(sink.release)
	<-stopped
	committed, end := sinktest.Committed(t, k.Addr(), cfg.GroupID), sinktest.EndOffsets(t, k.Addr())
	var got, want int64
	for tp, e := range end {
		want += e
		got += max(committed[tp], 0)
	}
	if got == 0 || sink.Total(t) != int(got) {
		t.Errorf("after a graceful stop %d records written and %d committed (of %d); want the batch in hand written and committed",
			sink.Total(t), got, want)
	}
}

// flakySink fails while failing is set.
type flakySink struct {
	*memSink
	failing atomic.Bool
	calls   atomic.Int64
}

var errDown = errors.New("store down")

func (s *flakySink) Write(ctx context.Context, batch []runtime.Record) error {
	s.calls.Add(1)
	if s.failing.Load() {
		return errDown
	}
	return s.memSink.Write(ctx, batch)
}

func TestReady(t *testing.T) {
	k := devtest.Kafka(t)
	sinktest.CreateTopics(t, k.Addr())
	cfg := sinktest.ConsumerConfig(k.Addr(), "ready")
	sink := &flakySink{memSink: newMemSink("memory")}
	c, err := runtime.New(cfg, sink)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Ready(); !errors.Is(err, runtime.ErrNotJoined) {
		t.Errorf("Ready before Run = %v, want ErrNotJoined", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()

	// Idle, no records: ready once it joined.
	sinktest.Eventually(t, 30*time.Second, c.Ready)

	sink.failing.Store(true)
	sinktest.ProduceRecords(t, k.Addr(), sinktest.Records(1, 10)...)
	sinktest.Eventually(t, 30*time.Second, func() error {
		if err := c.Ready(); !errors.Is(err, errDown) {
			return fmt.Errorf("Ready = %v, want an error wrapping the sink's", err)
		}
		return nil
	})
	// Retries back off: a few calls, not a busy loop (MaxBackoff 100ms).
	time.Sleep(300 * time.Millisecond)
	if n := sink.calls.Load(); n < 2 || n > 20 {
		t.Errorf("%d write attempts in about 300ms of failure, want a few", n)
	}
	if sink.Total(t) != 0 {
		t.Fatalf("records written while failing")
	}
	sink.failing.Store(false)
	sinktest.WaitCommitted(t, k.Addr(), cfg.GroupID, 30*time.Second)
	sinktest.Eventually(t, 30*time.Second, c.Ready)
	if sink.Total(t) != 10 {
		t.Errorf("%d records written after recovery, want 10", sink.Total(t))
	}
	if err := c.Run(context.Background()); !errors.Is(err, runtime.ErrStarted) {
		t.Errorf("second Run = %v, want ErrStarted", err)
	}
}

func TestTwoConsumersShareTheGroup(t *testing.T) {
	k := devtest.Kafka(t)
	sinktest.CreateTopics(t, k.Addr())
	cfg := sinktest.ConsumerConfig(k.Addr(), "shared")
	sink := newMemSink("memory")
	first := &countingSink{memSink: sink}
	second := &countingSink{memSink: sink}
	sinktest.Start(t, cfg, first)
	recs := sinktest.Records(1, 2000)
	sinktest.ProduceRecords(t, k.Addr(), recs[:1000]...)
	s2 := sinktest.Start(t, cfg, second) // joins mid-stream: a rebalance
	sinktest.Eventually(t, 30*time.Second, s2.Consumer.Ready)
	sinktest.ProduceRecords(t, k.Addr(), recs[1000:]...)
	sinktest.WaitCommitted(t, k.Addr(), cfg.GroupID, 30*time.Second)
	if sink.Total(t) != len(recs) {
		t.Errorf("%d records written, want %d", sink.Total(t), len(recs))
	}
	if first.n.Load() == 0 || second.n.Load() == 0 {
		t.Errorf("records per consumer: %d and %d; want both to take a share", first.n.Load(), second.n.Load())
	}
}

type countingSink struct {
	*memSink
	n atomic.Int64
}

func (s *countingSink) Write(ctx context.Context, batch []runtime.Record) error {
	s.n.Add(int64(len(batch)))
	return s.memSink.Write(ctx, batch)
}

func TestMetrics(t *testing.T) {
	k := devtest.Kafka(t)
	sinktest.CreateTopics(t, k.Addr())
	cfg := sinktest.ConsumerConfig(k.Addr(), "metrics")
	sink := newMemSink("metrics-test")
	var msgs []kafka.Message
	for _, r := range sinktest.Records(1, 120) {
		msgs = append(msgs, sinktest.Message(t, r))
	}
	for i := range 3 {
		msgs = append(msgs, sinktest.Message(t, poison(i)))
	}
	sinktest.Produce(t, k.Addr(), msgs...)
	sinktest.Start(t, cfg, sink)
	sinktest.WaitCommitted(t, k.Addr(), cfg.GroupID, 30*time.Second)

	families, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		metric string
		check  func(ms []*dto.Metric) error
	}{
		{name: "records", metric: "chapper_pipeline_records_total", check: sum(func(m *dto.Metric) float64 { return m.GetCounter().GetValue() }, 120)},
		{name: "dead letters", metric: "chapper_pipeline_dead_letter_records_total", check: sum(func(m *dto.Metric) float64 { return m.GetCounter().GetValue() }, 3)},
		{name: "lag is zero when caught up", metric: "chapper_pipeline_consumer_lag_records", check: sum(func(m *dto.Metric) float64 { return m.GetGauge().GetValue() }, 0)},
		{name: "batches", metric: "chapper_pipeline_batches_total", check: atLeast(func(m *dto.Metric) float64 { return m.GetCounter().GetValue() }, 3)},
		{name: "batch latency", metric: "chapper_pipeline_batch_seconds", check: atLeast(func(m *dto.Metric) float64 { return float64(m.GetHistogram().GetSampleCount()) }, 3)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ms []*dto.Metric
			for _, f := range families {
				if f.GetName() != tt.metric {
					continue
				}
				for _, m := range f.GetMetric() {
					for _, l := range m.GetLabel() {
						if l.GetName() == "sink" && l.GetValue() == sink.Name() {
							ms = append(ms, m)
						}
					}
				}
			}
			if len(ms) == 0 {
				t.Fatalf("no %s{sink=%q}", tt.metric, sink.Name())
			}
			if err := tt.check(ms); err != nil {
				t.Error(err)
			}
		})
	}
}

func sum(v func(*dto.Metric) float64, want float64) func([]*dto.Metric) error {
	return func(ms []*dto.Metric) error {
		var got float64
		for _, m := range ms {
			got += v(m)
		}
		if got != want {
			return fmt.Errorf("sum = %v, want %v", got, want)
		}
		return nil
	}
}

func atLeast(v func(*dto.Metric) float64, want float64) func([]*dto.Metric) error {
	return func(ms []*dto.Metric) error {
		var got float64
		for _, m := range ms {
			got += v(m)
		}
		if got < want {
			return fmt.Errorf("sum = %v, want at least %v", got, want)
		}
		return nil
	}
}

func TestConfig(t *testing.T) {
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	var cfg runtime.Config
	cfg.RegisterFlags("timeline", fs)
	if err := fs.Parse([]string{"-timeline.brokers=a:1, b:2", "-timeline.batch-size=10",
		"-timeline.deadletter-max-consecutive=7", "-timeline.stuck-after=1m"}); err != nil {
		t.Fatal(err)
	}
	if cfg.GroupID != topic.GroupTimeline || cfg.BatchSize != 10 || cfg.DeadLetterTopic != topic.DeadLetter ||
		len(cfg.Brokers) != 2 || cfg.Brokers[1] != "b:2" || len(cfg.Topics) != 3 || cfg.Linger != runtime.DefaultLinger {
		t.Errorf("parsed config = %+v", cfg)
	}
	if cfg.DeadLetterWindow != runtime.DefaultDeadLetterWindow || cfg.DeadLetterMaxRatio != runtime.DefaultDeadLetterMaxRatio ||
		cfg.DeadLetterMaxConsecutive != 7 || cfg.StuckAfter != time.Minute {
		t.Errorf("parsed dead-letter limits and stuck-after = %d, %v, %d, %v", cfg.DeadLetterWindow, cfg.DeadLetterMaxRatio,
			cfg.DeadLetterMaxConsecutive, cfg.StuckAfter)
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("Validate = %v", err)
	}

	tests := []struct {
		name   string
		modify func(*runtime.Config)
		want   error
	}{
		{name: "no brokers", modify: func(c *runtime.Config) { c.Brokers = nil }, want: runtime.ErrNoBrokers},
		{name: "no group", modify: func(c *runtime.Config) { c.GroupID = "" }, want: runtime.ErrNoGroup},
		{name: "no topics", modify: func(c *runtime.Config) { c.Topics = nil }, want: runtime.ErrNoTopics},
		{name: "negative batch", modify: func(c *runtime.Config) { c.BatchSize = -1 }, want: runtime.ErrBadBatchSize},
		{name: "backoff inverted", modify: func(c *runtime.Config) { c.MinBackoff, c.MaxBackoff = time.Second, time.Millisecond }, want: runtime.ErrBadBackoff},
		{name: "negative linger", modify: func(c *runtime.Config) { c.Linger = -1 }, want: runtime.ErrNegativeDuration},
		{name: "negative dead-letter window", modify: func(c *runtime.Config) { c.DeadLetterWindow = -1 }, want: runtime.ErrBadWindow},
		{name: "dead-letter ratio not a number", modify: func(c *runtime.Config) { c.DeadLetterMaxRatio = math.NaN() }, want: runtime.ErrBadRatio},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := cfg
			tt.modify(&c)
			if err := c.Validate(); !errors.Is(err, tt.want) {
				t.Errorf("Validate = %v, want %v", err, tt.want)
			}
			if _, err := runtime.New(c, newMemSink("x")); !errors.Is(err, tt.want) {
				t.Errorf("New = %v, want %v", err, tt.want)
			}
		})
	}
}

// A consumer started before its topics exist (chapper dev starts the
// pipelines while ingest is still creating them) waits, then joins with
// every partition assigned.
func TestConsumerStartedBeforeTopics(t *testing.T) {
	k := devtest.Kafka(t)
	cfg := sinktest.ConsumerConfig(k.Addr(), "early")
	sink := newMemSink("early")
	c := sinktest.Start(t, cfg, sink)
	if err := c.Consumer.Ready(); err == nil {
		t.Fatal("Ready() = nil before the topics exist")
	}
	// a consumer that joined now would be assigned nothing and could stay
	// idle; give a wrong one time to join, then check the group is empty
	time.Sleep(time.Second)
	groups, err := sinktest.Client(t, k.Addr()).ListGroups(ctxT(t), &kafka.ListGroupsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range groups.Groups {
		if g.GroupID == cfg.GroupID {
			t.Fatalf("consumer joined group %s before its topics existed", cfg.GroupID)
		}
	}
	sinktest.CreateTopics(t, k.Addr())
	recs := sinktest.Records(3, 200)
	sinktest.ProduceRecords(t, k.Addr(), recs...)
	sinktest.Eventually(t, 30*time.Second, func() error {
		if n := sink.Total(t); n != len(recs) {
			return fmt.Errorf("sink holds %d of %d records", n, len(recs))
		}
		return nil
	})
}

// A batch that holds everything there is to read is written at once, not
// after the linger (issue 14, freshness): with a 10 s linger and room for
// 1000 records, a lone record reaches the sink well before the linger ends.
// The consumer used to linger the full 10 s for it.
func TestCaughtUpBatchSkipsLinger(t *testing.T) {
	k := devtest.Kafka(t)
	sinktest.CreateTopics(t, k.Addr())
	cfg := sinktest.ConsumerConfig(k.Addr(), "caught-up")
	cfg.BatchSize, cfg.Linger = 1000, 10*time.Second
	sink := newMemSink("memory")
	r := sinktest.Start(t, cfg, sink)
	sinktest.Eventually(t, 30*time.Second, r.Consumer.Ready)

	for i, recs := range [][]proto.Message{sinktest.Records(1, 1), sinktest.Records(2, 3)} {
		sinktest.ProduceRecords(t, k.Addr(), recs...)
		produced := time.Now()
		sinktest.Eventually(t, 5*time.Second, func() error {
			for _, m := range recs {
				if !sink.Has(t, m) {
					return fmt.Errorf("round %d: a record is not written %v after it was produced (linger %v)", i, time.Since(produced), cfg.Linger)
				}
			}
			return nil
		})
	}
}

// secondHeld writes its first batch at once and holds its second until
// released, handing the held batch to the test.
type secondHeld struct {
	*memSink
	calls   atomic.Int64
	first   atomic.Int64 // records of the first batch
	entered chan []runtime.Record
	release chan struct{}
}

func (s *secondHeld) Write(ctx context.Context, batch []runtime.Record) error {
	switch s.calls.Add(1) {
	case 1:
		s.first.Store(int64(len(batch)))
	case 2:
		s.entered <- batch
		<-s.release
	}
	return s.memSink.Write(ctx, batch)
}

// The live consumer gathers the next batch and commits the last one while
// the sink writes: a batch's offsets are committed once its write returned
// (even while the next write is under way), and never before.
func TestCommitFollowsEachWrite(t *testing.T) {
	k := devtest.Kafka(t)
	sinktest.CreateTopicsN(t, k.Addr(), 1)
	cfg := sinktest.ConsumerConfig(k.Addr(), "commit-follows")
	sinktest.ProduceRecords(t, k.Addr(), sinktest.Records(8, 4*cfg.BatchSize)...)

	sink := &secondHeld{memSink: newMemSink("memory"), entered: make(chan []runtime.Record, 1), release: make(chan struct{})}
	c := sinktest.Start(t, cfg, sink)
	defer c.Stop(t)
	defer close(sink.release)
	var held []runtime.Record
	select {
	case held = <-sink.entered:
	case <-ctxT(t).Done():
		t.Fatal("no second write")
	}
	committedTotal := func() (n int64) {
		for _, o := range sinktest.Committed(t, k.Addr(), cfg.GroupID) {
			n += max(o, 0)
		}
		return n
	}
	sinktest.Eventually(t, 10*time.Second, func() error {
		if n := committedTotal(); n < sink.first.Load() {
			return fmt.Errorf("%d records committed while the second batch is being written, want the first batch's %d", n, sink.first.Load())
		}
		return nil
	})
	if n := committedTotal(); n != sink.first.Load() {
		t.Errorf("%d records committed while the second batch is being written, want the first batch's %d and none of the second", n, sink.first.Load())
	}
	for _, r := range held {
		if o := sinktest.Committed(t, k.Addr(), cfg.GroupID)[sinktest.TopicPartition{Topic: r.Topic, Partition: r.Partition}]; o > r.Offset {
			t.Fatalf("%s/%d@%d committed (group offset %d) before its write returned", r.Topic, r.Partition, r.Offset, o)
		}
	}
}
