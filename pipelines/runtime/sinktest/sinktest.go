// Package sinktest is the conformance suite every runtime.Sink passes: it
// runs the sink behind the real consumer runtime against a private kfake
// broker and checks what the sink's store holds afterwards.
//
// A sink package calls Run from a test, with a Harness that makes fresh
// sinks over its real store and reads that store back:
//
//	func TestConformance(t *testing.T) {
//		sinktest.Run(t, sinktest.Harness{
//			New: func(t testing.TB) (runtime.Sink, sinktest.Store) {
//				prefix := devtest.KeyPrefix(t)
//				...
//				return sink, store
//			},
//			Poison: func(i int) proto.Message { ... a record the sink rejects ... },
//		})
//	}
//
// The cases:
//
//   - idempotent re-delivery: the same records produced twice, then the
//     whole topics replayed by a new group, are stored once (Has) and
//     counted once (Total).
//   - partial permanent failure: poison records (Harness.Poison) and
//     undecodable values are dead-lettered with the original headers plus
//     origin-topic, origin-partition, origin-offset, sink and error; the
//     rest is stored and committed, and later records still flow.
//   - transient failure: Write fails (after writing half the batch) on two
//     calls; the failing batch is not committed, the runtime is not ready
//     while failing, the same batch is retried, and everything ends up
//     stored exactly once.
//   - shutdown mid-batch: the consumer is stopped while Write, having
//     written its batch, has not returned; that batch is not committed, and
//     a new consumer in the same group leaves every record stored exactly
//     once.
//   - fatal error: Write returns a *runtime.FatalError (after writing half
//     its batch) on its second call; the consumer writes nothing more,
//     commits nothing of that batch, reports the cause from Ready, and its
//     Run returns nil only when stopped; a new consumer over the repaired
//     store leaves every record stored exactly once.
//
// Each case starts its own broker and calls Harness.New once; the whole
// suite takes a few seconds. It needs devtest.Main in the package's
// TestMain (devtest starts the brokers).
package sinktest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"google.golang.org/protobuf/proto"

	"github.com/chapper/chapper/pipelines/runtime"
	"github.com/chapper/chapper/proto/topic"
	"github.com/chapper/chapper/services/devstack/devtest"
)

// Harness connects the suite to one sink implementation.
type Harness struct {
	// New returns a sink over a fresh, empty namespace of its real store (a
	// new key prefix, database or index) and a Store reading that same
	// namespace. The suite calls it once per case. The sink is used by one
	// consumer at a time, possibly several consumers one after another.
	New func(t testing.TB) (runtime.Sink, Store)
	// Poison returns the i-th of a series of distinct records that decode
	// but that the sink must reject with a *runtime.PermanentError (say, a
	// record without a location). Nil if the sink rejects nothing that
	// decodes; undecodable values are tested either way.
	Poison func(i int) proto.Message
}

// Store reads back what a sink's store holds.
type Store interface {
	// Has reports whether the record (one of the suite's valid records) is
	// stored and readable.
	Has(t testing.TB, rec proto.Message) bool
	// Total returns how many records the namespace counts in all: rows,
	// documents, or the sum of per-kind counters. A record written twice
	// shows as an excess here.
	Total(t testing.TB) int
}

// caseTimeout bounds every wait of a case.
const caseTimeout = 30 * time.Second

// Run runs every case of the suite as a subtest of t.
func Run(t *testing.T, h Harness) {
	if h.New == nil {
		t.Fatal("sinktest.Harness.New is nil")
	}
	t.Run("idempotent re-delivery", func(t *testing.T) { testRedelivery(t, h) })
	t.Run("partial permanent failure", func(t *testing.T) { testPermanent(t, h) })
	t.Run("transient failure", func(t *testing.T) { testTransient(t, h) })
	t.Run("shutdown mid-batch", func(t *testing.T) { testShutdown(t, h) })
	t.Run("fatal error", func(t *testing.T) { testFatal(t, h) })
}

// fixture is one case's broker, sink and store.
type fixture struct {
	addr  string
	sink  runtime.Sink
	store Store
}

func setup(t *testing.T, h Harness) *fixture {
	t.Helper()
	k := devtest.Kafka(t)
	CreateTopics(t, k.Addr())
	sink, store := h.New(t)
	return &fixture{addr: k.Addr(), sink: sink, store: store}
}

// Running is a consumer running in the background.
type Running struct {
	Consumer *runtime.Consumer
	cancel   context.CancelFunc
	done     chan error
}

// Start runs a consumer with cfg and sink until Stop or the end of t.
func Start(t testing.TB, cfg runtime.Config, sink runtime.Sink) *Running {
	t.Helper()
	c, err := runtime.New(cfg, sink)
	if err != nil {
		t.Fatalf("runtime.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Running{Consumer: c, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- c.Run(ctx) }()
	t.Cleanup(func() { r.Stop(t) })
	return r
}

// Stop cancels the consumer and waits for Run to return nil.
func (r *Running) Stop(t testing.TB) {
	t.Helper()
	r.cancel()
	select {
	case err, ok := <-r.done:
		if ok && err != nil {
			t.Errorf("Run returned %v, want nil", err)
		}
		if ok {
			close(r.done)
		}
	case <-time.After(caseTimeout):
		t.Fatalf("Run did not return %v after its context was cancelled", caseTimeout)
	}
}

// checkStored fails t unless every record is stored and the store counts
// exactly want records.
func (f *fixture) checkStored(t testing.TB, recs []proto.Message, want int) {
	t.Helper()
	missing := 0
	for _, r := range recs {
		if !f.store.Has(t, r) {
			missing++
		}
	}
	if missing > 0 {
		t.Errorf("%d of %d records not stored", missing, len(recs))
	}
	if got := f.store.Total(t); got != want {
		t.Errorf("store counts %d records, want %d", got, want)
	}
}

func testRedelivery(t *testing.T, h Harness) {
	f := setup(t, h)
	recs := Records(1, 300)
	ProduceRecords(t, f.addr, recs...)
	cfg := ConsumerConfig(f.addr, "sinktest-redelivery")
	c := Start(t, cfg, f.sink)
	WaitCommitted(t, f.addr, cfg.GroupID, caseTimeout)
	f.checkStored(t, recs, len(recs))
	if err := c.Consumer.Ready(); err != nil {
		t.Errorf("Ready after a clean run = %v, want nil", err)
	}

	// Clients retry: the same records arrive again at new offsets.
	ProduceRecords(t, f.addr, recs...)
	WaitCommitted(t, f.addr, cfg.GroupID, caseTimeout)
	f.checkStored(t, recs, len(recs))
	c.Stop(t)

	// A rebuild replays both copies from the start in a new group.
	replay := ConsumerConfig(f.addr, "sinktest-replay")
	Start(t, replay, f.sink)
	WaitCommitted(t, f.addr, replay.GroupID, caseTimeout)
	f.checkStored(t, recs, len(recs))
}

func testPermanent(t *testing.T, h Harness) {
	f := setup(t, h)
	good := Records(2, 200)
	var msgs []kafka.Message
	var bad int
	for i, r := range good {
		msgs = append(msgs, Message(t, r))
		if i%40 == 7 {
			// Undecodable: field 1 (the id) as a varint instead of a string.
			garbage := Message(t, r)
			garbage.Value = []byte{0x08, 0x96, 0x01, 0xff}
			msgs = append(msgs, garbage)
			bad++
		}
		if h.Poison != nil && i%40 == 23 {
			msgs = append(msgs, Message(t, h.Poison(bad)))
			bad++
		}
	}
	Produce(t, f.addr, msgs...)
	cfg := ConsumerConfig(f.addr, "sinktest-permanent")
	Start(t, cfg, f.sink)
	WaitCommitted(t, f.addr, cfg.GroupID, caseTimeout)
	f.checkStored(t, good, len(good))

	// Every bad record, and nothing else, is on the dead-letter topic, once,
	// with its origin.
	origins := map[string]kafka.Message{}
	for _, name := range RecordTopics {
		for _, m := range ReadTopic(t, f.addr, name) {
			origins[fmt.Sprintf("%s/%d@%d", m.Topic, m.Partition, m.Offset)] = m
		}
	}
	dead := ReadTopic(t, f.addr, topic.DeadLetter)
	if len(dead) != bad {
		t.Errorf("%d records dead-lettered, want %d", len(dead), bad)
	}
	seen := map[string]bool{}
	for _, d := range dead {
		at := fmt.Sprintf("%s/%s@%s", header(d, topic.HeaderOriginTopic), header(d, topic.HeaderOriginPartition), header(d, topic.HeaderOriginOffset))
		orig, ok := origins[at]
		switch {
		case !ok:
			t.Errorf("dead letter names origin %s, which does not exist", at)
			continue
		case seen[at]:
			t.Errorf("origin %s dead-lettered twice", at)
		case string(orig.Value) != string(d.Value) || string(orig.Key) != string(d.Key):
			t.Errorf("dead letter from %s does not carry the original key and value", at)
		}
		seen[at] = true
		if got := header(d, topic.HeaderSink); got != f.sink.Name() {
			t.Errorf("dead letter from %s: sink header %q, want %q", at, got, f.sink.Name())
		}
		if header(d, topic.HeaderError) == "" {
			t.Errorf("dead letter from %s has no error header", at)
		}
		for _, name := range []string{topic.HeaderSchema, topic.HeaderTraceID, topic.HeaderReceivedAt} {
			if header(d, name) != header(orig, name) {
				t.Errorf("dead letter from %s: header %s = %q, want the original %q", at, name, header(d, name), header(orig, name))
			}
		}
	}

	// The partitions keep flowing.
	later := Records(3, 50)
	ProduceRecords(t, f.addr, later...)
	WaitCommitted(t, f.addr, cfg.GroupID, caseTimeout)
	f.checkStored(t, append(good, later...), len(good)+len(later))
}

func header(m kafka.Message, key string) string {
	for _, h := range m.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

// errInjected is the transient failure the suite's wrappers inject.
var errInjected = errors.New("sinktest: injected transient failure")

// faulty wraps a sink: its hook runs before every Write call (numbered from
// 1) and, by returning an error, makes that call fail after half the batch
// went through the inner sink.
type faulty struct {
	runtime.Sink
	calls atomic.Int64
	hook  func(ctx context.Context, call int64, batch []runtime.Record) error
}

func (s *faulty) Write(ctx context.Context, batch []runtime.Record) error {
	if err := s.hook(ctx, s.calls.Add(1), batch); err != nil {
		if werr := s.Sink.Write(ctx, batch[:len(batch)/2]); werr != nil {
			var perm *runtime.PermanentError
			if !errors.As(werr, &perm) {
				return werr
			}
		}
		return err
	}
	return s.Sink.Write(ctx, batch)
}

// uncommitted fails t if any record of batch is committed by group.
func uncommitted(t testing.TB, addr, group string, batch []runtime.Record) {
	t.Helper()
	committed := Committed(t, addr, group)
	for _, r := range batch {
		if c := committed[TopicPartition{r.Topic, r.Partition}]; c > r.Offset {
			t.Errorf("%s/%d@%d committed (group offset %d) before the sink took it", r.Topic, r.Partition, r.Offset, c)
			return
		}
	}
}

func offsets(batch []runtime.Record) []string {
	out := make([]string, len(batch))
	for i, r := range batch {
		out[i] = r.Topic + "/" + strconv.Itoa(r.Partition) + "@" + strconv.FormatInt(r.Offset, 10)
	}
	return out
}

func testTransient(t *testing.T, h Harness) {
	f := setup(t, h)
	recs := Records(4, 300)
	ProduceRecords(t, f.addr, recs...)
	cfg := ConsumerConfig(f.addr, "sinktest-transient")

	var (
		mu       sync.Mutex
		failed   []string // offsets of the batch that failed
		retried  bool
		consumer atomic.Pointer[runtime.Consumer]
	)
	sink := &faulty{Sink: f.sink, hook: func(_ context.Context, call int64, batch []runtime.Record) error {
		mu.Lock()
		defer mu.Unlock()
		switch call {
		case 2:
			failed = offsets(batch)
			uncommitted(t, f.addr, cfg.GroupID, batch)
			return errInjected
		case 3:
			if !slices.Equal(offsets(batch), failed) {
				t.Errorf("retry got a different batch: %d records from %v, want the failed %d from %v",
					len(batch), batch[0].Offset, len(failed), failed[0])
			}
			if c := consumer.Load(); c != nil && c.Ready() == nil {
				t.Errorf("Ready = nil while the sink is failing")
			}
			uncommitted(t, f.addr, cfg.GroupID, batch)
			return errInjected
		case 4:
			retried = slices.Equal(offsets(batch), failed)
		}
		return nil
	}}
	c := Start(t, cfg, sink)
	consumer.Store(c.Consumer)
	WaitCommitted(t, f.addr, cfg.GroupID, caseTimeout)
	mu.Lock()
	if failed == nil || !retried {
		t.Errorf("the failed batch was not retried whole (failed %d records, retried %v)", len(failed), retried)
	}
	mu.Unlock()
	f.checkStored(t, recs, len(recs))
	Eventually(t, caseTimeout, c.Consumer.Ready)
}

func testShutdown(t *testing.T, h Harness) {
	f := setup(t, h)
	recs := Records(5, 300)
	ProduceRecords(t, f.addr, recs...)
	cfg := ConsumerConfig(f.addr, "sinktest-shutdown")

	blocked := make(chan []runtime.Record, 1)
	var calls atomic.Int64
	sink := runtime.SinkFunc(f.sink.Name(), func(ctx context.Context, batch []runtime.Record) error {
		err := f.sink.Write(ctx, batch)
		var perm *runtime.PermanentError
		if calls.Add(1) != 3 || (err != nil && !errors.As(err, &perm)) {
			return err
		}
		// The third batch is written, but Write does not return until the
		// consumer gives up on it (DrainTimeout after shutdown began).
		blocked <- batch
		<-ctx.Done()
		return ctx.Err()
	})
	c := Start(t, cfg, sink)
	var batch []runtime.Record
	select {
	case batch = <-blocked:
	case <-time.After(caseTimeout):
		t.Fatal("the sink never got a batch")
	}
	c.Stop(t)
	uncommitted(t, f.addr, cfg.GroupID, batch)

	// A new consumer in the same group picks up where the first committed.
	Start(t, cfg, f.sink)
	WaitCommitted(t, f.addr, cfg.GroupID, caseTimeout)
	f.checkStored(t, recs, len(recs))
}

// errFatal is the fatal failure the fatal case injects.
var errFatal = errors.New("sinktest: injected fatal failure")

func testFatal(t *testing.T, h Harness) {
	f := setup(t, h)
	recs := Records(6, 300)
	ProduceRecords(t, f.addr, recs...)
	cfg := ConsumerConfig(f.addr, "sinktest-fatal")

	var (
		calls  atomic.Int64
		failed atomic.Pointer[[]runtime.Record]
	)
	sink := runtime.SinkFunc(f.sink.Name(), func(ctx context.Context, batch []runtime.Record) error {
		if calls.Add(1) != 2 {
			return f.sink.Write(ctx, batch)
		}
		// Half the batch reaches the store before the store breaks.
		if err := f.sink.Write(ctx, batch[:len(batch)/2]); err != nil {
			var perm *runtime.PermanentError
			if !errors.As(err, &perm) {
				return err
			}
		}
		failed.Store(&batch)
		return runtime.Fatal(errFatal)
	})
	c := Start(t, cfg, sink)
	Eventually(t, caseTimeout, func() error {
		var fatal *runtime.FatalError
		if err := c.Consumer.Ready(); !errors.As(err, &fatal) || !errors.Is(err, errFatal) {
			return fmt.Errorf("consumer readiness is %v, want the fatal error", err)
		}
		return nil
	})
	uncommitted(t, f.addr, cfg.GroupID, *failed.Load())
	c.Stop(t)
	if n := calls.Load(); n != 2 {
		t.Errorf("%d writes, want 2: none after the fatal error", n)
	}
	uncommitted(t, f.addr, cfg.GroupID, *failed.Load())

	// Once the store is repaired, a new consumer finishes the work.
	Start(t, cfg, f.sink)
	WaitCommitted(t, f.addr, cfg.GroupID, caseTimeout)
	f.checkStored(t, recs, len(recs))
}
