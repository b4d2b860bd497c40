package timeline_test

import (
	"errors"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/chapper/chapper/pipelines/runtime"
	"github.com/chapper/chapper/pipelines/timeline"
	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
)

// While a rebuild is set, the live sink writes every batch under the
// active prefix and the rebuild prefix, and publishes news once, on the
// active prefix's channel; a switch moves it to the new prefix alone.
func TestRebuildDualWriteAndSwitch(t *testing.T) {
	e := newEnv(t, timeline.Config{})
	base, next := e.prefix, e.prefix+"r1:"
	ctx := ctxT(t)

	before := visit(canvassv1.Outcome_OUTCOME_ANSWERED, t0)
	e.write(t, recs(t, before))
	if err := timeline.StartRebuild(ctx, e.client, base, base); !errors.Is(err, timeline.ErrRebuildPrefix) {
		t.Errorf("StartRebuild into the active prefix = %v, want ErrRebuildPrefix", err)
	}
	if err := timeline.SwitchPrefix(ctx, e.client, base, next); !errors.Is(err, timeline.ErrNoRebuild) {
		t.Errorf("SwitchPrefix with no rebuild = %v, want ErrNoRebuild", err)
	}
	must(t, timeline.StartRebuild(ctx, e.client, base, next))
	p, err := timeline.ReadPrefixes(ctx, e.client, base)
	if err != nil || p != (timeline.Prefixes{Active: base, Rebuild: next}) {
		t.Fatalf("ReadPrefixes = %+v, %v; want active %q rebuild %q", p, err, base, next)
	}

	sub := e.client.Subscribe(ctx, timeline.NewsChannel(base, edChunk), timeline.NewsChannel(next, edChunk), timeline.SwitchChannel(base))
	defer sub.Close()
	for range 3 {
		if _, err := sub.Receive(ctx); err != nil {
			t.Fatal(err)
		}
	}
	during := intention("Green", t0)
	e.write(t, recs(t, during))
	e.write(t, recs(t, during)) // redelivery: once in each
	if ok, err := e.client.SIsMember(ctx, timeline.SeenKey(next, edLocality), during.Id).Result(); err != nil || !ok {
		t.Errorf("the live sink did not write the record under the rebuild prefix too (%v)", err)
	}
	// The rebuild's replay fills the new prefix with what came before.
	replay := &env{client: e.client, prefix: next, sink: fixedSink(t, e.client, next)}
	replay.write(t, recs(t, before, during))

	has := func(prefix string, id string) bool {
		ok, err := e.client.SIsMember(ctx, timeline.SeenKey(prefix, edLocality), id).Result()
		must(t, err)
		return ok
	}
	for _, prefix := range []string{base, next} {
		if !has(prefix, during.Id) {
			t.Errorf("record written during the rebuild is not under %q", prefix)
		}
		c := (&env{client: e.client, prefix: prefix}).counters(t, edLocality)
		if c["intentions"] != 1 || c["visits"] != 1 {
			t.Errorf("counters under %q = %v, want one visit and one intention", prefix, c)
		}
	}
	// News once, on the active channel: our marker on the rebuild channel
	// is the next message there.
	msg, err := sub.ReceiveMessage(ctx)
	must(t, err)
	if msg.Channel != timeline.NewsChannel(base, edChunk) {
		t.Errorf("news on %s, want the active channel", msg.Channel)
	}
	must(t, e.client.Publish(ctx, timeline.NewsChannel(next, edChunk), "marker").Err())
	if msg, err := sub.ReceiveMessage(ctx); err != nil || msg.Payload != "marker" {
		t.Errorf("next message = %v, %v; want our marker (the rebuild prefix got news)", msg, err)
	}

	must(t, timeline.SwitchPrefix(ctx, e.client, base, next))
	if msg, err := sub.ReceiveMessage(ctx); err != nil || msg.Channel != timeline.SwitchChannel(base) || msg.Payload != next {
		t.Errorf("after the switch: %v, %v; want %q on the switch channel", msg, err, next)
	}
	if p, err := timeline.ReadPrefixes(ctx, e.client, base); err != nil || p != (timeline.Prefixes{Active: next}) {
		t.Errorf("ReadPrefixes after the switch = %+v, %v; want active %q only", p, err, next)
	}
	after := followup(canvassv1.Method_METHOD_POST, t0)
	e.write(t, recs(t, after))
	if !has(next, after.Id) || has(base, after.Id) {
		t.Errorf("after the switch the record is under new %v / old %v; want new only", has(next, after.Id), has(base, after.Id))
	}
	if msg, err := sub.ReceiveMessage(ctx); err != nil || msg.Channel != timeline.NewsChannel(next, edChunk) {
		t.Errorf("news after the switch = %v, %v; want it on the new prefix's channel", msg, err)
	}
}

// A prefix in the control key with a hash tag would split localities over
// slots: fatal, not silently used.
func TestRebuildBadPrefixIsFatal(t *testing.T) {
	e := newEnv(t, timeline.Config{})
	must(t, e.client.Set(ctxT(t), timeline.RebuildPrefixKey(e.prefix), "x{1}:", 0).Err())
	err := e.sink.Write(ctxT(t), recs(t, visit(canvassv1.Outcome_OUTCOME_ANSWERED, t0)))
	var fatal *runtime.FatalError
	if !errors.As(err, &fatal) || !errors.Is(err, timeline.ErrPrefix) {
		t.Errorf("Write = %v, want fatal ErrPrefix", err)
	}
}

func fixedSink(t testing.TB, client redis.UniversalClient, prefix string) *timeline.Sink {
	t.Helper()
	s, err := timeline.New(client, timeline.Config{Prefix: prefix, Fixed: true})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// DropPrefix deletes the old prefix's keys after a switch, never a prefix
// in force and never a key the sink did not write.
func TestDropPrefix(t *testing.T) {
	e := newEnv(t, timeline.Config{})
	ctx := ctxT(t)
	base, next := e.prefix, e.prefix+"r1:"
	e.write(t, recs(t, visit(canvassv1.Outcome_OUTCOME_ANSWERED, t0)))
	must(t, e.client.Set(ctx, base+"other", "x", 0).Err())
	if _, err := timeline.DropPrefix(ctx, e.client, base, base); !errors.Is(err, timeline.ErrPrefixInUse) {
		t.Errorf("DropPrefix of the active prefix = %v, want ErrPrefixInUse", err)
	}
	must(t, timeline.StartRebuild(ctx, e.client, base, next))
	if _, err := timeline.DropPrefix(ctx, e.client, base, next); !errors.Is(err, timeline.ErrPrefixInUse) {
		t.Errorf("DropPrefix of the rebuild prefix = %v, want ErrPrefixInUse", err)
	}
	e.write(t, recs(t, visit(canvassv1.Outcome_OUTCOME_ANSWERED, t0)))
	must(t, timeline.SwitchPrefix(ctx, e.client, base, next))
	n, err := timeline.DropPrefix(ctx, e.client, base, base)
	must(t, err)
	// The old prefix held the locality's 4 keys (no record was replaced)
	// and 2 id records; the new prefix's keys start with base too but not
	// with base's own key names, so they stay.
	if n != 6 {
		t.Errorf("dropped %d keys, want 6", n)
	}
	if c := e.counters(t, edLocality); len(c) != 0 {
		t.Errorf("old counters still there: %v", c)
	}
	if c := (&env{client: e.client, prefix: next}).counters(t, edLocality); c["visits"] != 1 {
		t.Errorf("new prefix's counters = %v, want its one visit", c)
	}
	for _, k := range []string{base + "other", timeline.ActivePrefixKey(base)} {
		if n, err := e.client.Exists(ctx, k).Result(); err != nil || n != 1 {
			t.Errorf("%s deleted (%v)", k, err)
		}
	}
}
