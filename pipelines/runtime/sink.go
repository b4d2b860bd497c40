// Package runtime is the one consumer loop every pipeline shares: fetch a
// batch from a Kafka consumer group, decode it, hand it to a Sink, dead-letter
// what can never be written, and commit offsets only after the sink returned.
package runtime

import (
	"context"
	"fmt"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
)

// Header is one Kafka record header.
type Header struct {
	Key   string
	Value []byte
}

// Record is one Kafka record as a sink sees it.
type Record struct {
	Topic     string
	Partition int
	Offset    int64
	Key       []byte
	Headers   []Header
	Value     []byte
	// Time is the broker's timestamp of the record.
	Time time.Time
	// Message is the decoded value: *canvassv1.Visit, *canvassv1.Intention
	// or *canvassv1.FollowupRequest, by topic.
	Message proto.Message
}

// Header returns the value of the first header named key, or nil.
func (r Record) Header(key string) []byte {
	for _, h := range r.Headers {
		if h.Key == key {
			return h.Value
		}
	}
	return nil
}

// A Sink durably writes batches of records into one store.
type Sink interface {
	// Name names the sink in metrics, logs and the dead-letter `sink` header.
	Name() string
	// Write returns only when the batch is safe; the runtime commits after.
	// Write must be idempotent: after a crash the runtime re-delivers, so a
	// record can arrive twice. A *PermanentError says which records can never
	// be written (they are dead-lettered, the rest counts as written); a
	// *FatalError (see Fatal) says no retry can help and stops the consumer;
	// any other error is transient and the whole batch is retried.
	Write(ctx context.Context, batch []Record) error
}

// Failure is one record that can never be written, and why.
type Failure struct {
	Record Record
	Reason error
}

// PermanentError lists the records of a batch that can never be written.
// Every record of the batch not listed was written.
type PermanentError struct {
	Failures []Failure
}

func (e *PermanentError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d record(s) can never be written", len(e.Failures))
	for i, f := range e.Failures {
		if i == 3 {
			b.WriteString("; ...")
			break
		}
		fmt.Fprintf(&b, "; %s/%d@%d: %v", f.Record.Topic, f.Record.Partition, f.Record.Offset, f.Reason)
	}
	return b.String()
}

// FatalError is a sink error that no retry can help (a missing table or
// template, a key of the wrong type): the consumer stops fetching and
// committing, reports the cause on /readyz and leaves the records in Kafka
// until an operator repairs the store and restarts it. The process and its
// other parts keep running.
type FatalError struct {
	Err error
}

// Fatal wraps err as a *FatalError. Fatal(nil) is nil.
func Fatal(err error) error {
	if err == nil {
		return nil
	}
	return &FatalError{Err: err}
}

func (e *FatalError) Error() string { return "fatal: " + e.Err.Error() }

// Unwrap returns the wrapped error.
func (e *FatalError) Unwrap() error { return e.Err }

// SinkFunc returns a Sink named name whose Write calls write.
func SinkFunc(name string, write func(ctx context.Context, batch []Record) error) Sink {
	return funcSink{name, write}
}

type funcSink struct {
	name  string
	write func(context.Context, []Record) error
}

func (s funcSink) Name() string                                    { return s.name }
func (s funcSink) Write(ctx context.Context, batch []Record) error { return s.write(ctx, batch) }
