package report_test

import (
	"bytes"
	"context"
	"errors"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/elastic/go-elasticsearch/v8"

	"github.com/chapper/chapper/pipelines/report"
	"github.com/chapper/chapper/pipelines/search"
	"github.com/chapper/chapper/pipelines/search/searchtest"
	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"github.com/chapper/chapper/proto/locality"
)

// fixture is a search server holding a generated data set, indexed once
// for all the report tests of this binary.
type fixture struct {
	es     *elasticsearch.Client
	prefix string
	data   *searchtest.Dataset
}

func setup(t *testing.T) *fixture {
	t.Helper()
	srv := searchtest.Start(t)
	cfg := srv.Config(t)
	data := searchtest.Generate(7, 5000)
	searchtest.Index(t, cfg, data.Records())
	es, err := search.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{es: es, prefix: cfg.IndexPrefix, data: data}
}

func (f *fixture) params(edit func(*report.Params)) report.Params {
	p := report.Params{
		From: searchtest.PeriodFrom, To: searchtest.PeriodTo, Region: -1, Size: 100, IndexPrefix: f.prefix,
	}
	if edit != nil {
		edit(&p)
	}
	return p
}

func inPeriod(p report.Params, ts interface{ AsTime() time.Time }) bool {
	t := ts.AsTime()
	return !t.Before(p.From) && t.Before(p.To)
}

func where(l *canvassv1.Location) (locality.Index, bool) {
	i, err := locality.Of(l.GetLatitude(), l.GetLongitude())
	return i, err == nil
}

func inBox(b report.Box, l *canvassv1.Location) bool {
	return !b.IsZero() && l.GetLatitude() >= b.South && l.GetLatitude() <= b.North &&
		l.GetLongitude() >= b.West && l.GetLongitude() <= b.East
}

func matches(p report.Params, l *canvassv1.Location) bool {
	loc, ok := where(l)
	if !ok {
		return false
	}
	if p.Region >= 0 && loc.Region() != p.Region {
		return false
	}
	if !p.Box.IsZero() && !inBox(p.Box, l) {
		return false
	}
	return true
}

// TestReports checks every report against answers computed here from the
// generated records.
func TestReports(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	f := setup(t)
	edinburgh := report.Box{South: 55.9, West: -3.3, North: 56.0, East: -3.1}

	// Truths.
	wantIntentions := func(p report.Params) map[int64]map[string]int64 { // region → "day option" → count
		out := map[int64]map[string]int64{}
		for _, it := range f.data.Intentions {
			if !inPeriod(p, it.RecordedAt) || !matches(p, it.Location) {
				continue
			}
			loc, _ := where(it.Location)
			if out[loc.Region()] == nil {
				out[loc.Region()] = map[string]int64{}
			}
			out[loc.Region()][it.RecordedAt.AsTime().Format(time.DateOnly)+" "+it.Option]++
		}
		return out
	}

	for _, tt := range []struct {
		name string
		edit func(*report.Params)
	}{
		{name: "every region"},
		{name: "one region", edit: func(p *report.Params) { p.Region = 5254168 }},
		{name: "box", edit: func(p *report.Params) { p.Box = edinburgh }},
	} {
		t.Run("intentions/"+tt.name, func(t *testing.T) {
			p := f.params(tt.edit)
			want := wantIntentions(p)
			if len(want) == 0 {
				t.Fatal("the data set has no intentions for these parameters; the test would prove nothing")
			}
			rows, err := report.Intentions(ctx, f.es, p)
			if err != nil {
				t.Fatal(err)
			}
			got := map[int64]map[string]int64{}
			for _, r := range rows {
				if got[r.Region] == nil {
					got[r.Region] = map[string]int64{}
				}
				got[r.Region][r.Day.Format(time.DateOnly)+" "+r.Option] += r.Count
			}
			if !maps.EqualFunc(got, want, maps.Equal) {
				t.Errorf("intentions:\n got %v\nwant %v", got, want)
			}
		})
	}

	t.Run("intentions/top regions", func(t *testing.T) {
		p := f.params(func(p *report.Params) { p.Size = 3 })
		totals := map[int64]int64{}
		for region, counts := range wantIntentions(p) {
			for _, n := range counts {
				totals[region] += n
			}
		}
		rows, err := report.Intentions(ctx, f.es, p)
		if err != nil {
			t.Fatal(err)
		}
		got := map[int64]int64{}
		for _, r := range rows {
			got[r.Region] += r.Count
		}
		if len(got) != 3 {
			t.Fatalf("got %d regions, want 3", len(got))
		}
		for region, n := range got {
			if n != totals[region] {
				t.Errorf("region %d: %d intentions, want %d", region, n, totals[region])
			}
			for other, m := range totals {
				if _, in := got[other]; !in && m > n {
					t.Errorf("region %d (%d) is in the top 3 but region %d (%d) is not", region, n, other, m)
				}
			}
		}
	})

	for _, tt := range []struct {
		name string
		edit func(*report.Params)
	}{
		{name: "every region"},
		{name: "box", edit: func(p *report.Params) { p.Box = edinburgh }},
	} {
		t.Run("followups/"+tt.name, func(t *testing.T) {
			p := f.params(tt.edit)
			want := map[string]report.FollowupRow{}
			electors := map[string]map[string]bool{}
			for _, fu := range f.data.Followups {
				if !inPeriod(p, fu.RecordedAt) || !matches(p, fu.Location) {
					continue
				}
				r, ok := want[fu.Issue]
				if !ok {
					r = report.FollowupRow{Issue: fu.Issue, ByMethod: map[string]int64{}}
					electors[fu.Issue] = map[string]bool{}
				}
				r.Total++
				r.ByMethod[search.EnumName(fu.Method.String(), "METHOD_")]++
				electors[fu.Issue][fu.ElectorId] = true
				r.Electors = int64(len(electors[fu.Issue]))
				want[fu.Issue] = r
			}
			rows, err := report.Followups(ctx, f.es, p)
			if err != nil {
				t.Fatal(err)
			}
			if len(rows) != len(want) {
				t.Errorf("got %d issues, want %d", len(rows), len(want))
			}
			for i, r := range rows {
				w := want[r.Issue]
				if r.Total != w.Total || r.Electors != w.Electors || !maps.Equal(r.ByMethod, w.ByMethod) {
					t.Errorf("issue %s: got %+v, want %+v", r.Issue, r, w)
				}
				if i > 0 && rows[i-1].Total < r.Total {
					t.Errorf("issue %s (%d) listed after %s (%d)", r.Issue, r.Total, rows[i-1].Issue, rows[i-1].Total)
				}
			}
		})
	}

	t.Run("canvassers", func(t *testing.T) {
		p := f.params(nil)
		want := map[string]*report.CanvasserRow{}
		cells := map[string]map[locality.Index]bool{}
		for _, v := range f.data.Visits {
			if !inPeriod(p, v.VisitedAt) || v.CanvasserId == "" {
				continue
			}
			r := want[v.CanvasserId]
			if r == nil {
				r = &report.CanvasserRow{CanvasserID: v.CanvasserId, Outcomes: map[string]int64{}}
				want[v.CanvasserId] = r
				cells[v.CanvasserId] = map[locality.Index]bool{}
			}
			r.Visits++
			r.Outcomes[search.EnumName(v.Outcome.String(), "OUTCOME_")]++
			loc, _ := where(v.Location)
			cells[v.CanvasserId][loc] = true
			r.Localities = int64(len(cells[v.CanvasserId]))
		}
		rows, err := report.Canvassers(ctx, f.es, p)
		if err != nil {
			t.Fatal(err)
		}
		if len(rows) != len(want) {
			t.Errorf("got %d canvassers, want %d", len(rows), len(want))
		}
		for i, r := range rows {
			w := want[r.CanvasserID]
			if w == nil || r.Visits != w.Visits || r.Localities != w.Localities || !maps.Equal(r.Outcomes, w.Outcomes) {
				t.Errorf("canvasser %s: got %+v, want %+v", r.CanvasserID, r, w)
			}
			if i > 0 && rows[i-1].Visits < r.Visits {
				t.Errorf("canvasser %s (%d) listed after %s (%d)", r.CanvasserID, r.Visits, rows[i-1].CanvasserID, rows[i-1].Visits)
			}
		}
	})

	knockBox := report.Box{South: searchtest.KnockBox.South, West: searchtest.KnockBox.West,
		North: searchtest.KnockBox.North, East: searchtest.KnockBox.East}
	for _, tt := range []struct {
		name      string
		edit      func(*report.Params)
		wantCells int64
	}{
		{name: "knock box", edit: func(p *report.Params) { p.Box = knockBox }, wantCells: 400},
		{name: "one cell wide", edit: func(p *report.Params) {
			p.Box = report.Box{South: knockBox.South, West: knockBox.West + 0.0055, North: knockBox.North, East: knockBox.West + 0.0058}
		}, wantCells: 20},
		{name: "region", edit: func(p *report.Params) { p.Region = 5254168 }, wantCells: 10000},
		{name: "previous week", edit: func(p *report.Params) {
			p.Box, p.From, p.To = knockBox, searchtest.DataFrom.Add(-7*24*time.Hour), searchtest.DataFrom
		}, wantCells: 400},
	} {
		t.Run("unknocked/"+tt.name, func(t *testing.T) {
			p := f.params(tt.edit)
			u, err := report.Unknocked(ctx, f.es, p)
			if err != nil {
				t.Fatal(err)
			}
			if u.Cells.Len() != tt.wantCells {
				t.Fatalf("box has %d localities, want %d", u.Cells.Len(), tt.wantCells)
			}
			in := map[locality.Index]bool{}
			for _, l := range u.Cells.Localities() {
				in[l] = true
			}
			visited := map[locality.Index]bool{}
			for _, v := range f.data.Visits {
				if loc, _ := where(v.Location); inPeriod(p, v.VisitedAt) && in[loc] {
					visited[loc] = true
				}
			}
			var want []locality.Index
			for _, l := range u.Cells.Localities() {
				if !visited[l] {
					want = append(want, l)
				}
			}
			if u.Visited != len(visited) || !slices.Equal(u.Localities, want) {
				t.Errorf("got %d visited, %d un-knocked; want %d visited, %d un-knocked (diff %v)",
					u.Visited, len(u.Localities), len(visited), len(want), diff(u.Localities, want))
			}
			if tt.name == "knock box" && (len(visited) == 0 || len(want) == 0) {
				t.Errorf("the knock box should be partly knocked; %d visited", len(visited))
			}
		})
	}

	t.Run("print", func(t *testing.T) {
		p := f.params(func(p *report.Params) { p.Box = knockBox })
		for _, r := range report.Reports {
			var b bytes.Buffer
			if err := report.Run(ctx, f.es, r.Name, p, &b); err != nil {
				t.Fatalf("%s: %v", r.Name, err)
			}
			if lines := strings.Count(b.String(), "\n"); lines < 4 {
				t.Errorf("%s printed %d lines:\n%s", r.Name, lines, b.String())
			}
		}
		var b bytes.Buffer
		if err := report.Run(ctx, f.es, "canvassers", f.params(nil), &b); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(b.String(), "canvasser-15") || !strings.Contains(b.String(), "NO_ANSWER") {
			t.Errorf("canvassers table lacks canvasser-15 or the NO_ANSWER column:\n%s", b.String())
		}
	})

	t.Run("no index yet", func(t *testing.T) {
		p := f.params(func(p *report.Params) { p.IndexPrefix = "nothing"; p.Region = 5254168 })
		for _, r := range report.Reports {
			var b bytes.Buffer
			if err := report.Run(ctx, f.es, r.Name, p, &b); err != nil {
				t.Errorf("%s on missing indices: %v", r.Name, err)
			}
		}
	})
}

func diff(got, want []locality.Index) string {
	g := map[locality.Index]bool{}
	for _, l := range got {
		g[l] = true
	}
	var b strings.Builder
	for _, l := range want {
		if !g[l] {
			b.WriteString(" -" + strconv.FormatInt(int64(l), 10))
		}
		delete(g, l)
	}
	for l := range g {
		b.WriteString(" +" + strconv.FormatInt(int64(l), 10))
	}
	return b.String()
}

func TestParams(t *testing.T) {
	now := time.Date(2026, 11, 9, 12, 0, 0, 0, time.UTC)
	base := report.Params{From: now.Add(-time.Hour), To: now, Region: -1, Size: 10, IndexPrefix: "canvass"}
	tests := []struct {
		name    string
		edit    func(*report.Params)
		wantErr error
	}{
		{name: "ok"},
		{name: "empty period", edit: func(p *report.Params) { p.To = p.From }, wantErr: report.ErrTimeRange},
		{name: "inverted box", edit: func(p *report.Params) { p.Box = report.Box{South: 56, West: -3, North: 55, East: -2} }, wantErr: report.ErrBox},
		{name: "no prefix", edit: func(p *report.Params) { p.IndexPrefix = "" }, wantErr: report.ErrNoIndexPrefix},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := base
			if tt.edit != nil {
				tt.edit(&p)
			}
			if err := p.Validate(); !errors.Is(err, tt.wantErr) {
				t.Fatalf("Validate() = %v, want %v", err, tt.wantErr)
			}
		})
	}
}

func TestParseTime(t *testing.T) {
	now := time.Date(2026, 11, 9, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name, in string
		want     time.Time
		wantErr  bool
	}{
		{name: "now", in: "now", want: now},
		{name: "relative", in: "-168h", want: now.Add(-168 * time.Hour)},
		{name: "date", in: "2026-11-02", want: time.Date(2026, 11, 2, 0, 0, 0, 0, time.UTC)},
		{name: "rfc3339 with zone", in: "2026-11-02T10:00:00+01:00", want: time.Date(2026, 11, 2, 9, 0, 0, 0, time.UTC)},
		{name: "garbage", in: "last tuesday", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := report.ParseTime(tt.in, now)
			if (err != nil) != tt.wantErr || (!tt.wantErr && !got.Equal(tt.want)) {
				t.Fatalf("ParseTime(%q) = %v, %v; want %v (error %v)", tt.in, got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestCells(t *testing.T) {
	tests := []struct {
		name    string
		box     report.Box
		want    int64
		wantErr error
	}{
		{name: "edges on cell edges", box: report.Box{South: 55.9, West: -3.3, North: 56.0, East: -3.1}, want: 100 * 200},
		{name: "inside one cell", box: report.Box{South: 55.9531, West: -3.1881, North: 55.9532, East: -3.18805}, want: 1},
		{name: "a point", box: report.Box{South: 55.9531, West: -3.1881, North: 55.9531, East: -3.1881}, want: 1},
		{name: "crossing the antimeridian", box: report.Box{South: 0, West: 179, North: 1, East: -179}, wantErr: report.ErrBox},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := report.CellsOf(tt.box)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("CellsOf = %v, want %v", err, tt.wantErr)
			}
			if err == nil && c.Len() != tt.want {
				t.Errorf("CellsOf(%v) has %d localities, want %d", tt.box, c.Len(), tt.want)
			}
		})
	}
	// Every region is exactly the cap.
	c, err := report.RegionCells(5254168)
	if err != nil || c.Len() != report.MaxBoxLocalities {
		t.Fatalf("RegionCells = %v (%d localities), %v", c, c.Len(), err)
	}
	if l, _ := locality.Of(55.9533, -3.1883); !slices.Contains(c.Localities(), l) {
		t.Errorf("region 5254168 lacks Edinburgh's locality %d", l)
	}
}

func TestBoxTooLarge(t *testing.T) {
	p := report.Params{From: searchtest.PeriodFrom, To: searchtest.PeriodTo, Region: -1, Size: 10, IndexPrefix: "canvass",
		Box: report.Box{South: 55, West: -4, North: 56, East: -3}}
	// The box is refused before any request, so no server is needed.
	_, err := report.Unknocked(context.Background(), nil, p)
	if !errors.Is(err, report.ErrBoxTooLarge) {
		t.Fatalf("Unknocked on a 1° box = %v, want ErrBoxTooLarge", err)
	}
	if err := report.Run(context.Background(), nil, "nonsense", p, &bytes.Buffer{}); !errors.Is(err, report.ErrUnknownReport) {
		t.Fatalf("Run(nonsense) = %v, want ErrUnknownReport", err)
	}
}
