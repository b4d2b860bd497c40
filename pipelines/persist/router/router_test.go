package router_test

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/chapper/chapper/pipelines/persist"
	"github.com/chapper/chapper/pipelines/persist/persisttest"
	"github.com/chapper/chapper/pipelines/persist/router"
	"github.com/chapper/chapper/pipelines/runtime"
	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"github.com/chapper/chapper/proto/locality"
	"github.com/chapper/chapper/proto/topic"
	"github.com/chapper/chapper/services/devstack/devtest"
)

func TestMain(m *testing.M) { devtest.Main(m) }

var day0 = time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)

// Points in each database of the test map (shards 0-31 and 32-63).
var (
	edinburgh = &canvassv1.Location{Latitude: 55.9533, Longitude: -3.1883} // shard 24
	glasgow   = &canvassv1.Location{Latitude: 55.8642, Longitude: -4.2518} // shard 61
)

// dataset is a generated set of records and the truth computed from it.
type dataset struct {
	msgs []proto.Message
}

func id() string { return uuid.Must(uuid.NewV7()).String() }

func generate(seed uint64) *dataset {
	rng := rand.New(rand.NewPCG(seed, 7))
	d := &dataset{}
	// Postgres keeps microseconds
	at := func() time.Time {
		return day0.Add(time.Duration(rng.Int64N(int64(72 * time.Hour)))).Truncate(time.Microsecond)
	}
	ts := func(t time.Time) *timestamppb.Timestamp { return timestamppb.New(t) }
	outcomes := []canvassv1.Outcome{canvassv1.Outcome_OUTCOME_ANSWERED, canvassv1.Outcome_OUTCOME_NO_ANSWER,
		canvassv1.Outcome_OUTCOME_REFUSED, canvassv1.Outcome_OUTCOME_MOVED, canvassv1.Outcome_OUTCOME_UNSPECIFIED}
	options := []string{"Green", "Labour", "SNP", "undecided"}
	methods := []canvassv1.Method{canvassv1.Method_METHOD_TELEPHONE, canvassv1.Method_METHOD_EMAIL,
		canvassv1.Method_METHOD_POST, canvassv1.Method_METHOD_UNSPECIFIED}
	for range 1500 {
		// 10 × 20 regions: every logical shard, both databases
		loc := &canvassv1.Location{Latitude: 55.5 + rng.Float64(), Longitude: -4.5 + 2*rng.Float64()}
		canvasser := "c-" + strconv.Itoa(rng.IntN(12))
		switch k := rng.IntN(100); {
		case k < 60:
			d.msgs = append(d.msgs, &canvassv1.Visit{Id: id(), DwellingId: "d", Address: "a", Location: loc,
				CanvasserId: canvasser, VisitedAt: ts(at()), Outcome: outcomes[rng.IntN(len(outcomes))]})
		case k < 85:
			d.msgs = append(d.msgs, &canvassv1.Intention{Id: id(), ElectorId: "e-" + strconv.Itoa(rng.IntN(200)),
				Option: options[rng.IntN(len(options))], Location: loc, RecordedAt: ts(at()), CanvasserId: canvasser})
		default:
			d.msgs = append(d.msgs, &canvassv1.FollowupRequest{Id: id(), ElectorId: "e", Issue: "misc-" + strconv.Itoa(rng.IntN(5)),
				Method: methods[rng.IntN(len(methods))], Location: loc, RecordedAt: ts(at()), CanvasserId: canvasser})
		}
	}
	// Issue A is the busiest overall but second in each database: a
	// per-database LIMIT would report B and C.
	followups := func(issue string, n int, loc *canvassv1.Location) {
		for range n {
			d.msgs = append(d.msgs, &canvassv1.FollowupRequest{Id: id(), ElectorId: "e", Issue: issue,
				Method: methods[rng.IntN(len(methods))], Location: loc, RecordedAt: ts(at())})
		}
	}
	followups("A", 60, edinburgh)
	followups("A", 60, glasgow)
	followups("B", 100, edinburgh)
	followups("C", 90, glasgow)
	// An elector whose intentions are in both databases.
	for i := range 10 {
		loc := edinburgh
		if i%2 == 1 {
			loc = glasgow
		}
		d.msgs = append(d.msgs, &canvassv1.Intention{Id: id(), ElectorId: "e-traveller", Option: "Green",
			Location: loc, RecordedAt: ts(day0.Add(time.Duration(i) * time.Hour))})
	}
	// A canvasser working both databases on one day.
	for i := range 8 {
		loc := edinburgh
		if i%2 == 1 {
			loc = glasgow
		}
		outcome := canvassv1.Outcome_OUTCOME_ANSWERED
		if i%4 == 0 {
			outcome = canvassv1.Outcome_OUTCOME_REFUSED
		}
		d.msgs = append(d.msgs, &canvassv1.Visit{Id: id(), DwellingId: "d", Address: "a", Location: loc,
			CanvasserId: "c-both", VisitedAt: ts(day0.Add(10*time.Hour + time.Duration(i)*time.Minute)), Outcome: outcome})
	}
	return d
}

func region(loc *canvassv1.Location) int64 {
	idx, _ := locality.Of(loc.GetLatitude(), loc.GetLongitude())
	return idx.Region()
}

func (d *dataset) intentionsByRegion(since, until time.Time) []router.RegionOption {
	counts := map[router.RegionOption]int64{}
	for _, m := range d.msgs {
		if r, ok := m.(*canvassv1.Intention); ok {
			t := r.GetRecordedAt().AsTime()
			if !t.Before(since) && t.Before(until) {
				counts[router.RegionOption{Region: region(r.GetLocation()), Option: r.GetOption()}]++
			}
		}
	}
	var out []router.RegionOption
	for k, n := range counts {
		k.Intentions = n
		out = append(out, k)
	}
	slices.SortFunc(out, func(a, b router.RegionOption) int {
		return cmp.Or(cmp.Compare(a.Region, b.Region), cmp.Compare(b.Intentions, a.Intentions), cmp.Compare(a.Option, b.Option))
	})
	return out
}

func (d *dataset) followupsOutstanding(limit int) []router.IssueBacklog {
	by := map[string]*router.IssueBacklog{}
	for _, m := range d.msgs {
		r, ok := m.(*canvassv1.FollowupRequest)
		if !ok {
			continue
		}
		b := by[r.GetIssue()]
		if b == nil {
			b = &router.IssueBacklog{Issue: r.GetIssue(), Oldest: r.GetRecordedAt().AsTime()}
			by[r.GetIssue()] = b
		}
		b.Outstanding++
		switch r.GetMethod() {
		case canvassv1.Method_METHOD_TELEPHONE:
			b.Telephone++
		case canvassv1.Method_METHOD_EMAIL:
			b.Email++
		case canvassv1.Method_METHOD_POST:
			b.Post++
		default:
			b.Unspecified++
		}
		if t := r.GetRecordedAt().AsTime(); t.Before(b.Oldest) {
			b.Oldest = t
		}
	}
	var out []router.IssueBacklog
	for _, b := range by {
		out = append(out, *b)
	}
	slices.SortFunc(out, func(a, b router.IssueBacklog) int {
		return cmp.Or(cmp.Compare(b.Outstanding, a.Outstanding), cmp.Compare(a.Issue, b.Issue))
	})
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	return out
}

func (d *dataset) canvasserActivity(since, until time.Time) ([]router.CanvasserActivity, router.VisitSummary) {
	type acc struct {
		visits, answered int64
		days             map[string]bool
	}
	by := map[string]*acc{}
	for _, m := range d.msgs {
		v, ok := m.(*canvassv1.Visit)
		if !ok {
			continue
		}
		t := v.GetVisitedAt().AsTime()
		if t.Before(since) || !t.Before(until) {
			continue
		}
		a := by[v.GetCanvasserId()]
		if a == nil {
			a = &acc{days: map[string]bool{}}
			by[v.GetCanvasserId()] = a
		}
		a.visits++
		if v.GetOutcome() == canvassv1.Outcome_OUTCOME_ANSWERED {
			a.answered++
		}
		a.days[t.UTC().Format(time.DateOnly)] = true
	}
	var out []router.CanvasserActivity
	var s router.VisitSummary
	for c, a := range by {
		out = append(out, router.CanvasserActivity{CanvasserID: c, Visits: a.visits, Answered: a.answered,
			AnswerRate: float64(a.answered) / float64(a.visits), Days: int64(len(a.days)),
			VisitsPerDay: float64(a.visits) / float64(len(a.days))})
		s.Visits += a.visits
		s.Answered += a.answered
		s.Canvassers++
		s.CanvasserDays += int64(len(a.days))
	}
	slices.SortFunc(out, func(a, b router.CanvasserActivity) int {
		return cmp.Or(cmp.Compare(b.Visits, a.Visits), cmp.Compare(a.CanvasserID, b.CanvasserID))
	})
	if s.Visits > 0 {
		s.AnswerRate = float64(s.Answered) / float64(s.Visits)
		s.VisitsPerCanvasserDay = float64(s.Visits) / float64(s.CanvasserDays)
	}
	return out, s
}

// ids of the intentions of elector, newest first, and of follow-ups of
// issue, oldest first.
func (d *dataset) electorIntentions(elector string, limit int) []string {
	var list []*canvassv1.Intention
	for _, m := range d.msgs {
		if r, ok := m.(*canvassv1.Intention); ok && r.GetElectorId() == elector {
			list = append(list, r)
		}
	}
	slices.SortFunc(list, func(a, b *canvassv1.Intention) int {
		return cmp.Or(b.GetRecordedAt().AsTime().Compare(a.GetRecordedAt().AsTime()), cmp.Compare(a.GetId(), b.GetId()))
	})
	var out []string
	for _, r := range list[:min(limit, len(list))] {
		out = append(out, r.GetId())
	}
	return out
}

func (d *dataset) oldestFollowups(issue string, limit int) []string {
	var list []*canvassv1.FollowupRequest
	for _, m := range d.msgs {
		if r, ok := m.(*canvassv1.FollowupRequest); ok && r.GetIssue() == issue {
			list = append(list, r)
		}
	}
	slices.SortFunc(list, func(a, b *canvassv1.FollowupRequest) int {
		return cmp.Or(a.GetRecordedAt().AsTime().Compare(b.GetRecordedAt().AsTime()), cmp.Compare(a.GetId(), b.GetId()))
	})
	var out []string
	for _, r := range list[:min(limit, len(list))] {
		out = append(out, r.GetId())
	}
	return out
}

func write(t testing.TB, ctx context.Context, env *persisttest.Env, msgs []proto.Message) {
	t.Helper()
	sink, err := persist.New(ctx, persist.Config{RouterURL: env.RouterURL, PoolSize: 2, ShardBits: 6})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	for start := 0; start < len(msgs); start += 500 {
		var batch []runtime.Record
		for i, m := range msgs[start:min(start+500, len(msgs))] {
			k, _ := topic.KindOf(m)
			batch = append(batch, runtime.Record{Topic: k.Topic(), Offset: int64(start + i), Message: m})
		}
		if err := sink.Write(ctx, batch); err != nil {
			t.Fatalf("writing records: %v", err)
		}
	}
}

func approx(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

func TestReportsMatchTheTruth(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	env := persisttest.New(t)
	d := generate(1)
	write(t, ctx, env, d.msgs)
	c := router.New(persisttest.Pool(t, env.RouterURL))

	// The checks, run once on the data as written and once after stray
	// copies of some rows land in the database not holding their shard (as
	// a shard move leaves them while it copies): reports must not change.
	check := func(t *testing.T) {
		for _, tt := range []struct {
			name         string
			since, until time.Time
		}{
			{name: "everything", since: day0.Add(-time.Hour), until: day0.Add(100 * time.Hour)},
			{name: "second day", since: day0.Add(24 * time.Hour), until: day0.Add(48 * time.Hour)},
			{name: "nothing", since: day0.Add(-48 * time.Hour), until: day0.Add(-24 * time.Hour)},
		} {
			t.Run("intentions by region/"+tt.name, func(t *testing.T) {
				got, err := c.IntentionsByRegion(ctx, tt.since, tt.until)
				if err != nil {
					t.Fatal(err)
				}
				if want := d.intentionsByRegion(tt.since, tt.until); !slices.Equal(got, want) {
					t.Errorf("got %d rows, want %d; first differences: %v", len(got), len(want), firstDiff(got, want))
				}
			})
			t.Run("canvasser activity/"+tt.name, func(t *testing.T) {
				got, err := c.CanvasserActivity(ctx, tt.since, tt.until, 0)
				if err != nil {
					t.Fatal(err)
				}
				want, wantSum := d.canvasserActivity(tt.since, tt.until)
				if len(got) != len(want) {
					t.Fatalf("got %d canvassers, want %d", len(got), len(want))
				}
				for i := range got {
					g, w := got[i], want[i]
					if g.CanvasserID != w.CanvasserID || g.Visits != w.Visits || g.Answered != w.Answered || g.Days != w.Days ||
						!approx(g.AnswerRate, w.AnswerRate) || !approx(g.VisitsPerDay, w.VisitsPerDay) {
						t.Errorf("row %d = %+v, want %+v", i, g, w)
					}
				}
				sum, err := c.VisitSummary(ctx, tt.since, tt.until)
				if err != nil {
					t.Fatal(err)
				}
				if sum.Visits != wantSum.Visits || sum.Answered != wantSum.Answered || sum.Canvassers != wantSum.Canvassers ||
					sum.CanvasserDays != wantSum.CanvasserDays || !approx(sum.AnswerRate, wantSum.AnswerRate) ||
					!approx(sum.VisitsPerCanvasserDay, wantSum.VisitsPerCanvasserDay) {
					t.Errorf("summary = %+v, want %+v", sum, wantSum)
				}
			})
		}
		t.Run("canvasser in both databases", func(t *testing.T) {
			got, err := c.CanvasserActivity(ctx, day0, day0.Add(24*time.Hour), 0)
			if err != nil {
				t.Fatal(err)
			}
			for _, g := range got {
				if g.CanvasserID == "c-both" && (g.Visits != 8 || g.Days != 1 || g.Answered != 6 || g.VisitsPerDay != 8) {
					t.Errorf("c-both = %+v, want 8 visits, 6 answered, on 1 day", g)
				}
			}
		})
		for _, limit := range []int{0, 1, 3} {
			t.Run(fmt.Sprintf("follow-ups outstanding/limit %d", limit), func(t *testing.T) {
				got, err := c.FollowupsOutstanding(ctx, limit)
				if err != nil {
					t.Fatal(err)
				}
				want := d.followupsOutstanding(limit)
				if len(got) != len(want) {
					t.Fatalf("got %d issues, want %d", len(got), len(want))
				}
				for i := range got {
					if !got[i].Oldest.Equal(want[i].Oldest) || !sameBacklog(got[i], want[i]) {
						t.Errorf("row %d = %+v, want %+v", i, got[i], want[i])
					}
				}
				if limit == 1 && got[0].Issue != "A" {
					t.Errorf("busiest issue = %s, want A (second in each database, first overall)", got[0].Issue)
				}
			})
		}
		t.Run("intentions by elector", func(t *testing.T) {
			got, err := c.IntentionsByElector(ctx, "e-traveller", 3)
			if err != nil {
				t.Fatal(err)
			}
			var ids []string
			for _, r := range got {
				ids = append(ids, r.ID)
			}
			if want := d.electorIntentions("e-traveller", 3); !slices.Equal(ids, want) {
				t.Errorf("got %v, want %v", ids, want)
			}
		})
		t.Run("oldest follow-ups", func(t *testing.T) {
			got, err := c.OldestFollowups(ctx, "A", 7)
			if err != nil {
				t.Fatal(err)
			}
			var ids []string
			for _, r := range got {
				ids = append(ids, r.ID)
			}
			if want := d.oldestFollowups("A", 7); !slices.Equal(ids, want) {
				t.Errorf("got %v, want %v", ids, want)
			}
		})
	}
	t.Run("as written", check)

	// Stray copies: every row of shards 24 and 61 also in the other database.
	for i, sh := range env.Shards {
		other := env.Shards[1-i]
		for _, tbl := range persisttest.Tables {
			copyRows(t, ctx, env, sh.URL, other.URL, tbl, []int{24, 61}[i])
		}
	}
	t.Run("with stray copies", check)
}

func sameBacklog(a, b router.IssueBacklog) bool {
	a.Oldest, b.Oldest = time.Time{}, time.Time{}
	return a == b
}

func firstDiff[T comparable](got, want []T) string {
	for i := range min(len(got), len(want)) {
		if got[i] != want[i] {
			return fmt.Sprintf("at %d got %+v want %+v", i, got[i], want[i])
		}
	}
	return "one is a prefix of the other"
}

// copyRows copies table's rows of one logical shard from one database to
// another (not holding the shard), the way a shard move does before it
// switches the map.
func copyRows(t testing.TB, ctx context.Context, env *persisttest.Env, from, to, table string, shard int) {
	t.Helper()
	src := persisttest.Pool(t, from)
	dst := persisttest.Pool(t, to)
	var buf []byte
	err := src.QueryRow(ctx, fmt.Sprintf(`SELECT coalesce(json_agg(t), '[]') FROM (SELECT * FROM %s WHERE shard = $1) t`, table), shard).Scan(&buf)
	if err != nil {
		t.Fatal(err)
	}
	_, err = dst.Exec(ctx, fmt.Sprintf(`INSERT INTO %[1]s OVERRIDING SYSTEM VALUE SELECT * FROM json_populate_recordset(NULL::%[1]s, $1)`, table), buf)
	if err != nil {
		t.Fatal(err)
	}
	if n := persisttest.Count(t, to, table, shard); n == 0 && table == "visits" {
		t.Fatalf("no %s of shard %d copied", table, shard)
	}
}
