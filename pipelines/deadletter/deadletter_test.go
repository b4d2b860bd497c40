package deadletter_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/chapper/chapper/pipelines/deadletter"
	"github.com/chapper/chapper/pipelines/runtime"
	"github.com/chapper/chapper/pipelines/runtime/sinktest"
	"github.com/chapper/chapper/pipelines/search"
	"github.com/chapper/chapper/pipelines/search/searchtest"
	"github.com/chapper/chapper/proto/topic"
	"github.com/chapper/chapper/services/devstack/devtest"
)

// TestMain checks for leaked goroutines once the shared servers stopped.
func TestMain(m *testing.M) { devtest.Main(m) }

func timeoutCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// TestListShowRedrive: the live search pipeline dead-letters the November
// intentions that a hand-made index with a wrong mapping rejects; list and
// show print them; a redrive before the fix fails again and comes back
// with attempt 2; after the fix (the index dropped, so the template
// recreates it) redrive -to=sink indexes them, a second redrive skips
// them, and redrive -to=origin re-produces key and value byte-identical,
// which the live pipeline then indexes harmlessly (counts unchanged).
func TestListShowRedrive(t *testing.T) {
	ctx := timeoutCtx(t)
	k := devtest.Kafka(t)
	sinktest.CreateTopics(t, k.Addr())
	brokers := []string{k.Addr()}
	srv := searchtest.Start(t)
	cfg := srv.Config(t)
	nov := search.Names{Prefix: cfg.IndexPrefix}.Index(topic.KindIntentions, searchtest.DataTo)
	searchtest.CreateIndex(t, cfg, nov, `{"mappings":{"properties":{"option":{"type":"long"}}}}`)
	sink := searchtest.NewSink(t, cfg)

	data := searchtest.Generate(11, 600)
	wantBad := 0
	for _, it := range data.Intentions {
		if it.RecordedAt.AsTime().Month() == searchtest.DataTo.Month() {
			wantBad++
		}
	}
	if wantBad < 5 {
		t.Fatalf("only %d November intentions", wantBad)
	}
	ccfg := sinktest.ConsumerConfig(k.Addr(), topic.GroupSearch)
	live := sinktest.Start(t, ccfg, sink)
	sinktest.ProduceRecords(t, k.Addr(), data.Messages()...)
	sinktest.WaitCommitted(t, k.Addr(), ccfg.GroupID, time.Minute)
	live.Stop(t)

	all, err := deadletter.Read(ctx, brokers, topic.DeadLetter)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != wantBad {
		t.Fatalf("%d dead letters, want %d", len(all), wantBad)
	}
	first := all[0]
	line := deadletter.Line(first, false)
	if !strings.HasPrefix(line, first.Addr()+"\t") || !strings.Contains(line, "sink=search") ||
		!strings.Contains(line, "kind=intentions") || !strings.Contains(line, "id="+first.RecordID()) {
		t.Errorf("list line %q lacks the address first, the sink, kind or id", line)
	}
	if got := len(filter(all, deadletter.Filter{Sink: "timeline"})); got != 0 {
		t.Errorf("filter -sink=timeline kept %d", got)
	}
	if got := len(filter(all, deadletter.Filter{Error: "option"})); got != wantBad {
		t.Errorf("filter -error=option kept %d, want %d", got, wantBad)
	}
	if got := len(filter(all, deadletter.Filter{Since: time.Now().Add(time.Hour)})); got != 0 {
		t.Errorf("filter -since=<in an hour> kept %d", got)
	}
	var shown bytes.Buffer
	if err := deadletter.Show(&shown, topic.DeadLetter, first); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"origin-topic: canvass.intentions.v1", "sink: search", "error: ", "schema: canvass.v1.Intention",
		"record (canvass.v1.Intention)", first.RecordID()} {
		if !strings.Contains(shown.String(), want) {
			t.Errorf("show lacks %q:\n%s", want, shown.String())
		}
	}

	rd := &deadletter.Redrive{Brokers: brokers, Topic: topic.DeadLetter, To: deadletter.ToSink,
		Sinks: map[string]runtime.Sink{"search": sink}}
	// Before the fix: every one fails again and goes back with attempt 2.
	res, err := rd.Run(ctx, all, all)
	if err != nil || res.FailedAgain != wantBad || res.Redriven != 0 {
		t.Fatalf("redrive before the fix = %+v, %v; want %d failed again", res, err, wantBad)
	}
	now, err := deadletter.Read(ctx, brokers, topic.DeadLetter)
	if err != nil {
		t.Fatal(err)
	}
	var second []deadletter.Letter
	for _, l := range now[:] {
		if l.Attempt() == 2 {
			second = append(second, l)
			if deadletter.Redriven(now)[l.Header(topic.HeaderRedriveOf)] != true {
				t.Errorf("%s: redrive-of %q", l.Addr(), l.Header(topic.HeaderRedriveOf))
			}
		}
	}
	if len(second) != wantBad {
		t.Fatalf("%d dead letters with attempt 2, want %d", len(second), wantBad)
	}

	// The fix, then the redrive: the originals were re-driven once, so it
	// takes -again.
	searchtest.DeleteIndex(t, cfg, nov)
	if res, err := rd.Run(ctx, now, all); err != nil || res.Skipped != wantBad || res.Redriven != 0 {
		t.Fatalf("redrive of re-driven letters without -again = %+v, %v; want all skipped", res, err)
	}
	rd.Again = true
	if res, err := rd.Run(ctx, now, all); err != nil || res.Redriven != wantBad || res.FailedAgain != 0 {
		t.Fatalf("redrive -to=sink -again after the fix = %+v, %v; want %d redriven", res, err, wantBad)
	}
	total := len(data.Visits) + len(data.Intentions) + len(data.Followups)
	if got := searchtest.Total(t, cfg); got != total {
		t.Fatalf("%d documents after redrive -to=sink, want %d", got, total)
	}

	// -to=origin for the attempt-2 letters: byte-identical key and value.
	rd.To, rd.Again = deadletter.ToOrigin, false
	now, _ = deadletter.Read(ctx, brokers, topic.DeadLetter)
	if res, err := rd.Run(ctx, now, second); err != nil || res.Redriven != wantBad {
		t.Fatalf("redrive -to=origin = %+v, %v; want %d", res, err, wantBad)
	}
	byAddr := map[string]deadletter.Letter{}
	for _, l := range second {
		byAddr[l.Addr()] = l
	}
	found := 0
	for _, m := range sinktest.ReadTopic(t, k.Addr(), topic.Intentions) {
		var of, attempt string
		for _, h := range m.Headers {
			switch h.Key {
			case topic.HeaderRedriveOf:
				of = string(h.Value)
			case topic.HeaderAttempt:
				attempt = string(h.Value)
			}
		}
		if of == "" {
			continue
		}
		found++
		l, ok := byAddr[of]
		if !ok {
			t.Errorf("origin record with redrive-of %q names no letter re-driven", of)
			continue
		}
		if !bytes.Equal(m.Key, l.Key) || !bytes.Equal(m.Value, l.Value) || attempt != "3" {
			t.Errorf("re-produced %s: key/value differ or attempt %q, want 3", of, attempt)
		}
	}
	if found != wantBad {
		t.Fatalf("%d records re-produced to %s, want %d", found, topic.Intentions, wantBad)
	}
	live = sinktest.Start(t, ccfg, sink)
	sinktest.WaitCommitted(t, k.Addr(), ccfg.GroupID, time.Minute)
	live.Stop(t)
	if got := searchtest.Total(t, cfg); got != total {
		t.Fatalf("%d documents after redrive -to=origin, want %d (exactly once)", got, total)
	}
	now, _ = deadletter.Read(ctx, brokers, topic.DeadLetter)
	if res, err := rd.Run(ctx, now, second); err != nil || res.Skipped != wantBad {
		t.Fatalf("second redrive -to=origin = %+v, %v; want all skipped", res, err)
	}
}

func filter(ls []deadletter.Letter, f deadletter.Filter) []deadletter.Letter {
	var out []deadletter.Letter
	for _, l := range ls {
		if f.Match(l) {
			out = append(out, l)
		}
	}
	return out
}

func TestParseAddr(t *testing.T) {
	tests := []struct {
		name string
		in   string
		p    int
		o    int64
		bad  bool
	}{
		{name: "ok", in: "3:120", p: 3, o: 120},
		{name: "no colon", in: "3", bad: true},
		{name: "negative", in: "-1:2", bad: true},
		{name: "words", in: "a:b", bad: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, o, err := deadletter.ParseAddr(tt.in)
			if tt.bad != (err != nil) || (!tt.bad && (p != tt.p || o != tt.o)) {
				t.Fatalf("ParseAddr(%q) = %d, %d, %v", tt.in, p, o, err)
			}
		})
	}
}
