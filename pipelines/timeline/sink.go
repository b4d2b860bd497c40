// Package timeline is the sink that materialises every record kind into
// per-locality Redis timelines (DESIGN.md, Storage/Redis), the store the
// query service reads: a sorted set of the newest records, a set of every id
// counted, a hash of counters and a hash of record bodies, and a Pub/Sub
// message per new record on its chunk's news channel.
package timeline

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/chapper/chapper/pipelines/runtime"
	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"github.com/chapper/chapper/proto/locality"
	"github.com/chapper/chapper/proto/topic"
)

// Reasons a record is rejected permanently; Failure.Reason wraps one of them.
var (
	ErrNotRecord  = errors.New("message is not a canvassing record")
	ErrNoID       = errors.New("record has no id")
	ErrNoLocation = errors.New("record has no valid location")
)

// script materialises one record; see record.lua.
//
//go:embed record.lua
var scriptSource string

// Sink writes records to Redis timelines. Write is idempotent: a record id
// already in its locality's seen set changes nothing and publishes nothing,
// so replaying a topic, even past the trim, leaves every key as it was.
// Sink is safe for concurrent use.
type Sink struct {
	client redis.UniversalClient
	script *redis.Script
	prefix string
	keep   string
	ttl    string
}

// New returns a timeline sink writing through client and loads its Lua script
// into Redis (SCRIPT LOAD, on every master of a cluster). The caller owns and
// closes client.
func New(client redis.UniversalClient, cfg Config) (*Sink, error) {
	if err := cfg.validateSink(); err != nil {
		return nil, err
	}
	keep, ttl := cfg.Keep, cfg.TTL
	if keep == 0 {
		keep = DefaultKeep
	}
	if ttl == 0 {
		ttl = DefaultTTL
	}
	s := &Sink{
		client: client,
		script: redis.NewScript(scriptSource),
		prefix: cfg.Prefix,
		keep:   strconv.Itoa(keep),
		ttl:    strconv.FormatInt(max(ttl.Milliseconds(), 1), 10),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.script.Load(ctx, client).Err(); err != nil {
		return nil, fmt.Errorf("loading timeline script into redis: %w", err)
	}
	return s, nil
}

func (c *Config) validateSink() error {
	switch {
	case c.Keep < 0:
		return ErrKeep
	case c.TTL < 0:
		return ErrTTL
	}
	return nil
}

// Name returns "timeline".
func (s *Sink) Name() string { return "timeline" }

// Write materialises a batch: one script call per record, all pipelined in
// one round trip (split by slot on a cluster). Records that cannot be placed
// on a timeline (not a record message, no id, no valid location) are
// returned in a *runtime.PermanentError; the rest are written first. A key
// of the wrong type or a counter that is not an integer is a
// *runtime.FatalError wrapping BrokenKeyError (the script checks before its
// first write, so the record is written once the key is repaired). Other
// Redis errors are returned as they are: transient, the runtime retries the
// batch.
func (s *Sink) Write(ctx context.Context, batch []runtime.Record) error {
	calls := make([]call, 0, len(batch))
	var failures []runtime.Failure
	for _, r := range batch {
		c, err := s.prepare(r)
		if err != nil {
			failures = append(failures, runtime.Failure{Record: r, Reason: err})
			continue
		}
		calls = append(calls, c)
	}
	if len(calls) > 0 {
		if err := s.exec(ctx, calls); err != nil {
			return err
		}
	}
	if len(failures) > 0 {
		return &runtime.PermanentError{Failures: failures}
	}
	return nil
}

// call is the keys and arguments of one script call.
type call struct {
	keys []string
	args []any
}

// exec runs the calls in one pipeline (split by slot on a cluster). If
// Redis lost the script (restart, SCRIPT FLUSH, failover) it loads it again
// and runs the whole batch once more: the calls that succeeded the first
// time are replays and change nothing.
func (s *Sink) exec(ctx context.Context, calls []call) error {
	err := s.pipeline(ctx, calls)
	if err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
		if err := s.script.Load(ctx, s.client).Err(); err != nil {
			return fmt.Errorf("reloading timeline script into redis: %w", err)
		}
		err = s.pipeline(ctx, calls)
	}
	return err
}

func (s *Sink) pipeline(ctx context.Context, calls []call) error {
	if len(calls) == 0 {
		return nil
	}
	pipe := s.client.Pipeline()
	cmds := make([]*redis.Cmd, len(calls))
	for i, c := range calls {
		cmds[i] = s.script.EvalSha(ctx, pipe, c.keys, c.args...)
	}
	_, err := pipe.Exec(ctx)
	if err == nil {
		return nil
	}
	// Exec returns the first failed command's error. A NOSCRIPT one comes
	// first, so that exec knows to reload; then a broken key, which no
	// retry can repair.
	var fatal error
	for i, cmd := range cmds {
		cerr := cmd.Err()
		switch {
		case cerr == nil:
		case redis.HasErrorPrefix(cerr, "NOSCRIPT"):
			return fmt.Errorf("writing %d records to redis timelines: %w", len(calls), cerr)
		case fatal == nil && isBrokenKey(cerr):
			fatal = runtime.Fatal(fmt.Errorf("writing record %s to redis key %s: %w", calls[i].args[0], calls[i].keys[0], BrokenKeyError{cerr}))
		}
	}
	if fatal != nil {
		return fatal
	}
	return fmt.Errorf("writing %d records to redis timelines: %w", len(calls), err)
}

// isBrokenKey reports whether err is Redis refusing a write because of what
// a key holds: the script's own check (CHAPPER_BADKEY) or Redis's WRONGTYPE.
func isBrokenKey(err error) bool {
	return redis.HasErrorPrefix(err, "CHAPPER_BADKEY") || redis.HasErrorPrefix(err, "WRONGTYPE") ||
		strings.Contains(err.Error(), "not an integer")
}

// BrokenKeyError is a Redis key of the wrong type, or a counter field that is
// not an integer, that stops a timeline write (inside a *runtime.FatalError):
// no retry can help until an operator repairs or deletes the key. Nothing of
// the record was written, so after the repair it is counted once.
type BrokenKeyError struct{ Err error }

func (e BrokenKeyError) Error() string {
	return "broken timeline key (repair or delete it, then restart the pipeline): " +
		strings.TrimPrefix(e.Err.Error(), "CHAPPER_BADKEY ")
}

// Unwrap returns the Redis error.
func (e BrokenKeyError) Unwrap() error { return e.Err }

// prepare builds the script call of one record.
func (s *Sink) prepare(r runtime.Record) (call, error) {
	meta, ok := topic.MetaOf(r.Message)
	if !ok {
		return call{}, fmt.Errorf("%w: %T", ErrNotRecord, r.Message)
	}
	if meta.ID == "" {
		return call{}, ErrNoID
	}
	if meta.Location == nil {
		return call{}, ErrNoLocation
	}
	loc, err := locality.Of(meta.Location.GetLatitude(), meta.Location.GetLongitude())
	if err != nil {
		return call{}, fmt.Errorf("%w: %w", ErrNoLocation, err)
	}
	at := meta.Time
	if at.UnixMilli() <= 0 && !r.Time.IsZero() {
		// A record without its own time is placed at the time the broker
		// took it rather than at the start of the epoch.
		at = r.Time
	}

	body, err := recordBody(r)
	if err != nil {
		return call{}, err
	}
	// The published TimelineEntry is its fields 1 to 3 followed by field 4
	// (the Record), whose bytes are the body; the script appends the body to
	// this prefix, so the body crosses the network once.
	entry, err := proto.Marshal(&canvassv1.TimelineEntry{Id: meta.ID, Locality: int64(loc), Time: timestamppb.New(at)})
	if err != nil {
		return call{}, fmt.Errorf("encoding timeline entry: %w", err)
	}
	entry = protowire.AppendTag(entry, 4, protowire.BytesType)
	entry = protowire.AppendVarint(entry, uint64(len(body)))

	l := int64(loc)
	c := call{
		keys: []string{SeenKey(s.prefix, l), TimelineKey(s.prefix, l), CountersKey(s.prefix, l), RecordsKey(s.prefix, l)},
		args: make([]any, 0, 9),
	}
	c.args = append(c.args, meta.ID, at.UnixMilli(), body, s.keep, s.ttl, NewsChannel(s.prefix, loc.Chunk()), entry)
	c.args = append(c.args, counterFields(r.Message)...)
	return c, nil
}

// recordBody returns the protobuf bytes of the canvassv1.Record holding the
// record's message. The Record's oneof field is the raw value as read from
// Kafka, wrapped without decoding and encoding it again.
func recordBody(r runtime.Record) ([]byte, error) {
	var field protowire.Number
	switch r.Message.(type) {
	case *canvassv1.Visit:
		field = 1
	case *canvassv1.Intention:
		field = 2
	case *canvassv1.FollowupRequest:
		field = 3
	}
	value := r.Value
	if len(value) == 0 {
		var err error
		if value, err = proto.Marshal(r.Message); err != nil {
			return nil, fmt.Errorf("encoding record: %w", err)
		}
	}
	body := make([]byte, 0, len(value)+6)
	body = protowire.AppendTag(body, field, protowire.BytesType)
	body = protowire.AppendBytes(body, value)
	return body, nil
}

// counterFields returns the ct hash fields a record increments.
func counterFields(m proto.Message) []any {
	switch r := m.(type) {
	case *canvassv1.Visit:
		return []any{"visits", "visits:" + enumName(r.GetOutcome().String(), "OUTCOME_")}
	case *canvassv1.Intention:
		return []any{"intentions", "intentions:" + r.GetOption()}
	case *canvassv1.FollowupRequest:
		return []any{"followups", "followups:" + enumName(r.GetMethod().String(), "METHOD_")}
	}
	return nil
}

// enumName turns OUTCOME_NO_ANSWER into no_answer.
func enumName(name, prefix string) string {
	return strings.ToLower(strings.TrimPrefix(name, prefix))
}
