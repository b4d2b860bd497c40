package replay_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/chapper/chapper/pipelines/replay"
	"github.com/chapper/chapper/pipelines/runtime"
	"github.com/chapper/chapper/pipelines/runtime/sinktest"
	"github.com/chapper/chapper/pipelines/search"
	"github.com/chapper/chapper/pipelines/search/searchtest"
	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"github.com/chapper/chapper/proto/topic"
	"github.com/chapper/chapper/services/devstack/devtest"
)

// kindCounts counts msgs by kind.
func kindCounts(msgs []proto.Message) map[topic.Kind]int {
	out := map[topic.Kind]int{}
	for _, m := range msgs {
		k, _ := topic.KindOf(m)
		out[k]++
	}
	return out
}

// TestRebuildSearch rebuilds the search indices into a new generation
// while the live search pipeline runs and records keep being produced
// before, during and after the rebuild. `_count` through each alias is
// checked before (the old generation, every record so far), throughout
// the rebuild (never more than was produced, never less than was there
// before it: the switch neither double counts nor drops), and after (every
// record exactly once, all of them in the new generation's indices); the
// live sink writes the new generation after the switch, the old
// generation stops growing, and CleanGenerations drops only it.
func TestRebuildSearch(t *testing.T) {
	ctx := timeoutCtx(t)
	k := devtest.Kafka(t)
	sinktest.CreateTopics(t, k.Addr())
	srv := searchtest.Start(t)
	cfg := srv.Config(t)
	live := searchtest.NewSink(t, cfg)
	ccfg := sinktest.ConsumerConfig(k.Addr(), topic.GroupSearch)
	running := sinktest.Start(t, ccfg, live)

	recs := sinktest.Records(52, 900)
	before, during, after := recs[:300], recs[300:700], recs[700:]
	sinktest.ProduceRecords(t, k.Addr(), before...)
	sinktest.WaitCommitted(t, k.Addr(), ccfg.GroupID, time.Minute)
	wantBefore := kindCounts(before)
	for _, kind := range topic.Kinds {
		if got := searchtest.Count(t, cfg, kind); got != wantBefore[kind] {
			t.Fatalf("before the rebuild %s counts %d, want %d", search.Names{Prefix: cfg.IndexPrefix}.Alias(kind), got, wantBefore[kind])
		}
	}

	// produced[kind] is how many records of kind were produced so far, or
	// are being produced: counted before they are sent, so that no count
	// taken before it is read can exceed it
	var mu sync.Mutex
	produced := kindCounts(before)
	produce := func(msgs ...proto.Message) {
		mu.Lock()
		for kind, n := range kindCounts(msgs) {
			produced[kind] += n
		}
		mu.Unlock()
		sinktest.ProduceRecords(t, k.Addr(), msgs...)
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < len(during); i += 10 {
			produce(during[i : i+10]...)
			select {
			case <-stop:
				produce(during[i+10:]...) // the rest at once
				return
			case <-time.After(15 * time.Millisecond):
			}
		}
	}()
	// _count through each alias throughout the rebuild
	var samples atomic.Int64
	sampleErr := make(chan error, 1)
	sampling, stopSampling := context.WithCancel(ctx)
	var sampler sync.WaitGroup
	sampler.Add(1)
	go func() {
		defer sampler.Done()
		for sampling.Err() == nil {
			for _, kind := range topic.Kinds {
				got := searchtest.Count(t, cfg, kind)
				mu.Lock()
				most := produced[kind]
				mu.Unlock()
				if got > most || got < wantBefore[kind] {
					select {
					case sampleErr <- fmt.Errorf("during the rebuild %s counts %d, want between %d (before) and %d (produced)", kind, got, wantBefore[kind], most):
					default:
					}
				}
				samples.Add(1)
			}
		}
	}()

	// let some of "during" go to the old generation only, before the rebuild
	sinktest.Eventually(t, time.Minute, func() error {
		if n := searchtest.Total(t, cfg); n < 320 {
			return fmt.Errorf("%d counted so far", n)
		}
		return nil
	})
	gen, sum, err := replay.RebuildSearch(ctx, cfg, replay.Config{Brokers: []string{k.Addr()}, BatchSize: 50, Linger: 10 * time.Millisecond})
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatalf("RebuildSearch = %v (summary %+v)", err, sum)
	}
	es, err := search.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	g, err := search.ReadGenerations(ctx, es, cfg.IndexPrefix)
	if err != nil || g.Active != gen || g.Rebuild != "" || len(g.Old) != 1 || g.Old[0] != "" {
		t.Fatalf("generations after the rebuild = %+v, %v; want active %q, no rebuild, the first generation old", g, err, gen)
	}
	produce(after...)
	sinktest.WaitCommitted(t, k.Addr(), ccfg.GroupID, time.Minute)
	running.Stop(t)
	stopSampling()
	sampler.Wait()
	select {
	case err := <-sampleErr:
		t.Error(err)
	default:
	}
	if samples.Load() < 6 {
		t.Errorf("only %d _count samples during the rebuild", samples.Load())
	}

	want := kindCounts(recs)
	newGen := search.Names{Prefix: cfg.IndexPrefix, Generation: gen}
	for _, kind := range topic.Kinds {
		if got := searchtest.Count(t, cfg, kind); got != want[kind] {
			t.Errorf("after the switch %s counts %d, want %d (each record exactly once)", newGen.Alias(kind), got, want[kind])
		}
	}
	for i, m := range recs {
		if i%11 != 0 {
			continue
		}
		kind, _ := topic.KindOf(m)
		doc := searchtest.Get(t, cfg, kind, searchtest.IDOf(m))
		if doc == nil || !newGen.Owns(kind, fmt.Sprint(doc["_index"])) {
			t.Errorf("record %s through the alias: %v, want a document in generation %s", searchtest.IDOf(m), doc, gen)
		}
	}
	// the old generation stopped getting records at the switch
	oldGen := search.Names{Prefix: cfg.IndexPrefix}
	oldTotal := 0
	for _, kind := range topic.Kinds {
		list, err := search.Indices(ctx, es, oldGen, kind)
		if err != nil || len(list) == 0 {
			t.Fatalf("old generation's %s indices = %v, %v", kind, list, err)
		}
		for _, ix := range list {
			oldTotal += searchtest.CountIndex(t, cfg, ix)
		}
	}
	if oldTotal < 320 || oldTotal > len(before)+len(during) {
		t.Errorf("old generation holds %d documents, want between 320 and %d", oldTotal, len(before)+len(during))
	}

	// a sink started after the switch sets up the new generation: a
	// record of a month not seen yet lands in a new index of it, which
	// joins the alias as it is created
	var later *canvassv1.Visit
	for _, m := range after {
		if v, ok := m.(*canvassv1.Visit); ok && later == nil {
			later = proto.Clone(v).(*canvassv1.Visit)
		}
	}
	later.Id, later.VisitedAt = "0190c000-0000-7000-8000-000000000001", timestamppb.New(time.Date(2027, 3, 1, 9, 0, 0, 0, time.UTC))
	restarted := searchtest.NewSink(t, cfg)
	if got := restarted.Names().Generation; got != gen {
		t.Fatalf("a sink started after the switch set up generation %q, want %q", got, gen)
	}
	if err := restarted.Write(ctx, []runtime.Record{searchtest.Record(later, time.Now(), 0)}); err != nil {
		t.Fatal(err)
	}
	doc := searchtest.Get(t, cfg, topic.KindVisits, later.Id)
	if want := newGen.Index(topic.KindVisits, later.VisitedAt.AsTime()); doc == nil || doc["_index"] != want {
		t.Fatalf("a visit of a new month through the alias: %v, want it in %s", doc, want)
	}
	want[topic.KindVisits]++

	cleaned, err := search.CleanGenerations(ctx, cfg)
	if err != nil || len(cleaned.Generations) != 1 || cleaned.Generations[0] != "" || len(cleaned.Indices) == 0 {
		t.Fatalf("CleanGenerations = %+v, %v; want the first generation dropped", cleaned, err)
	}
	for _, kind := range topic.Kinds {
		if list, err := search.Indices(ctx, es, oldGen, kind); err != nil || len(list) != 0 {
			t.Errorf("after clean the old generation's %s indices are %v, %v", kind, list, err)
		}
		if got := searchtest.Count(t, cfg, kind); got != want[kind] {
			t.Errorf("clean touched the new generation: %s counts %d, want %d", kind, got, want[kind])
		}
	}
}
