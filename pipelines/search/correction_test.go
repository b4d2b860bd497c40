package search_test

import (
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/elastic/go-elasticsearch/v8"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/chapper/chapper/pipelines/report"
	"github.com/chapper/chapper/pipelines/runtime"
	"github.com/chapper/chapper/pipelines/search"
	"github.com/chapper/chapper/pipelines/search/searchtest"
	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"github.com/chapper/chapper/proto/topic"
)

// permutations returns every order of 0..n-1.
func permutations(n int) [][]int {
	if n == 1 {
		return [][]int{{0}}
	}
	var out [][]int
	for _, p := range permutations(n - 1) {
		for i := 0; i <= len(p); i++ {
			out = append(out, slices.Insert(slices.Clone(p), i, n-1))
		}
	}
	return out
}

// correctionCase is a record and its corrections, and the one that counts.
type correctionCase struct {
	name   string
	msgs   []proto.Message
	recv   []time.Time
	newest string // the id that counts
	option string // its option
}

func correctionCases() []correctionCase {
	t0 := time.Date(2026, 11, 2, 10, 0, 0, 0, time.UTC)
	orig := &canvassv1.Intention{
		Id: "0190b000-0000-7000-8000-000000000001", VisitId: "0190b000-0000-7000-8000-0000000000a1", ElectorId: "elector-1",
		Option: "yes", Location: &canvassv1.Location{Latitude: 55.9533, Longitude: -3.1883},
		RecordedAt: timestamppb.New(t0), CanvasserId: "canvasser-1",
	}
	corr := func(of *canvassv1.Intention, id, option string, month time.Month) *canvassv1.Intention {
		c := proto.Clone(of).(*canvassv1.Intention)
		c.Id, c.ReplacesId, c.Option = id, of.Id, option
		// a corrected time in another month: another index than the original's
		c.RecordedAt = timestamppb.New(time.Date(2026, month, 2, 10, 0, 0, 0, time.UTC))
		c.Location = &canvassv1.Location{Latitude: 55.8642, Longitude: -4.2518} // and another place
		return c
	}
	b := corr(orig, "0190b000-0000-7000-8000-000000000002", "no", 10)
	c := corr(b, "0190b000-0000-7000-8000-000000000003", "undecided", 12)
	sib := corr(orig, "0190b000-0000-7000-8000-000000000004", "maybe", 11)
	return []correctionCase{
		{name: "chain", msgs: []proto.Message{orig, b, c}, recv: []time.Time{t0, t0.Add(time.Hour), t0.Add(2 * time.Hour)},
			newest: c.Id, option: "undecided"},
		// two corrections of one record: the one received last counts,
		// whichever arrives at the sink first
		{name: "siblings", msgs: []proto.Message{orig, b, sib}, recv: []time.Time{t0, t0.Add(2 * time.Hour), t0.Add(time.Hour)},
			newest: b.Id, option: "no"},
	}
}

// TestCorrections: whatever the order in which a record and its
// corrections reach the sink (one per batch, or all in one batch), and
// after every record is delivered again and replayed through a new sink,
// the aliases (and so _count and the reports) show only the newest
// version; the replaced documents stay in their indices, marked.
func TestCorrections(t *testing.T) {
	srv := searchtest.Start(t)
	for _, cc := range correctionCases() {
		for _, order := range permutations(len(cc.msgs)) {
			for _, oneBatch := range []bool{false, true} {
				t.Run(fmt.Sprintf("%s order %v one batch %v", cc.name, order, oneBatch), func(t *testing.T) {
					cfg := srv.Config(t)
					sink := searchtest.NewSink(t, cfg)
					ctx := timeoutCtx(t)
					var recs []runtime.Record
					for _, i := range order {
						recs = append(recs, searchtest.Record(cc.msgs[i], cc.recv[i], int64(i)))
					}
					write := func(batches ...[]runtime.Record) {
						t.Helper()
						for _, b := range batches {
							if err := sink.Write(ctx, b); err != nil {
								t.Fatal(err)
							}
						}
					}
					if oneBatch {
						write(recs)
					} else {
						for _, r := range recs {
							write([]runtime.Record{r})
						}
					}
					check := func(when string) {
						t.Helper()
						if got := searchtest.Count(t, cfg, topic.KindIntentions); got != 1 {
							t.Errorf("%s: the alias counts %d intentions, want 1", when, got)
						}
						if doc := searchtest.Get(t, cfg, topic.KindIntentions, cc.newest); doc == nil {
							t.Errorf("%s: the newest version %s is not seen through the alias", when, cc.newest)
						}
						rows, err := report.Intentions(ctx, mustClient(t, cfg), report.Params{
							From: time.Date(2026, 9, 1, 0, 0, 0, 0, time.UTC), To: time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC),
							Region: -1, Size: 100, IndexPrefix: cfg.IndexPrefix,
						})
						if err != nil {
							t.Fatal(err)
						}
						got := map[string]int64{}
						for _, r := range rows {
							got[r.Option] += r.Count
						}
						if want := map[string]int64{cc.option: 1}; !maps.Equal(got, want) {
							t.Errorf("%s: intentions report counts %v, want %v", when, got, want)
						}
						if n := searchtest.CountIndex(t, cfg, search.Names{Prefix: cfg.IndexPrefix}.Pattern(topic.KindIntentions)); n != len(cc.msgs) {
							t.Errorf("%s: %d documents in the indices, want %d (replaced ones are kept, marked)", when, n, len(cc.msgs))
						}
					}
					check("after the writes")
					slices.Reverse(recs)
					write(recs) // redelivered, reversed, in one batch
					check("after redelivery")
					for _, r := range recs {
						write([]runtime.Record{r})
					}
					check("after redelivery one by one")
					searchtest.Index(t, cfg, recs) // a replay through a new sink
					check("after a replay")
				})
			}
		}
	}
}

func mustClient(t testing.TB, cfg search.Config) *elasticsearch.Client {
	t.Helper()
	es, err := search.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return es
}
