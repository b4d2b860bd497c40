// Package report holds Chapper's ready-made reporting queries over the
// search indices (the aliases <prefix>-visits, <prefix>-intentions and
// <prefix>-followups) and prints their answers as tables for the `chapper
// report` command. Every query stays within one level of sub-aggregations,
// so it runs on Elasticsearch 8 and on Chapper's embedded search server
// alike; docs/reporting.md has the same queries for Kibana Dev Tools.
package report

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/chapper/chapper/proto/locality"
	"github.com/elastic/go-elasticsearch/v8"
)

// A Report is one ready-made report.
type Report struct {
	Name        string
	Description string
}

// Reports lists the reports Run knows, in the order `chapper report` lists them.
var Reports = []Report{
	{"intentions", "Intentions by option per region and day (the largest -size regions)."},
	{"followups", "Follow-up requests outstanding by issue and method, with distinct electors."},
	{"canvassers", "Canvasser activity: visits, distinct localities and outcomes per canvasser."},
	{"unknocked", "Localities of a bounding box (or a region) with no visit in the period."},
}

// Run runs the report called name and prints it as a table to w.
func Run(ctx context.Context, es *elasticsearch.Client, name string, p Params, w io.Writer) error {
	if err := p.Validate(); err != nil {
		return err
	}
	period := fmt.Sprintf("%s to %s", p.From.Format(time.RFC3339), p.To.Format(time.RFC3339))
	switch name {
	case "intentions":
		rows, err := Intentions(ctx, es, p)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "Intentions by option per region and day (UTC), %s\n\n", period)
		return printIntentions(w, rows)
	case "followups":
		rows, err := Followups(ctx, es, p)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "Follow-up requests by issue and method, %s\n\n", period)
		return printFollowups(w, rows)
	case "canvassers":
		rows, err := Canvassers(ctx, es, p)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "Canvasser activity, %s\n\n", period)
		return printCanvassers(w, rows)
	case "unknocked":
		u, err := Unknocked(ctx, es, p)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "Un-knocked localities, %s\n", period)
		return printUnknocked(w, u)
	}
	names := make([]string, len(Reports))
	for i, r := range Reports {
		names[i] = r.Name
	}
	return fmt.Errorf("%w %q: want one of %s", ErrUnknownReport, name, strings.Join(names, ", "))
}

// maxTermsSmall bounds the terms of small, campaign-defined sets (options,
// methods, outcomes) so that none is cut off.
const maxTermsSmall = 100

// IntentionRow counts the intentions of one option in one region on one day.
type IntentionRow struct {
	Region int64
	Day    time.Time // midnight UTC
	Option string
	Count  int64
}

// IntentionsQueries returns the two queries of the intentions report: the
// regions with the most intentions, then, per region, the options and their
// days. Kibana users run the second with the region filled in.
func IntentionsQueries(p Params, region int64) (regions, perRegion map[string]any) {
	regions = searchBody(p.filters("recorded_at"), obj{
		"regions": obj{"terms": obj{"field": "region", "size": p.Size}},
	})
	q := p
	q.Region = region
	perRegion = searchBody(q.filters("recorded_at"), obj{
		"options": obj{
			"terms": obj{"field": "option", "size": maxTermsSmall},
			"aggs": obj{"days": obj{"date_histogram": obj{
				"field": "recorded_at", "calendar_interval": "day", "min_doc_count": 1,
			}}},
		},
	})
	return regions, perRegion
}

// Intentions returns the intentions of the period by region, day and
// option, for p.Region or for the p.Size regions with the most intentions,
// ordered by region (largest first), day and option.
func Intentions(ctx context.Context, es *elasticsearch.Client, p Params) ([]IntentionRow, error) {
	index := p.IndexPrefix + "-intentions"
	regions := []int64{p.Region}
	if p.Region < 0 {
		q, _ := IntentionsQueries(p, -1)
		res, err := search(ctx, es, index, q)
		if errors.Is(err, errNoIndex) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		bs, err := buckets(res.Aggregations["regions"], "regions")
		if err != nil {
			return nil, err
		}
		regions = regions[:0]
		for _, b := range bs {
			r, err := b.IntKey()
			if err != nil {
				return nil, err
			}
			regions = append(regions, r)
		}
	}
	var rows []IntentionRow
	for _, region := range regions {
		_, q := IntentionsQueries(p, region)
		res, err := search(ctx, es, index, q)
		if errors.Is(err, errNoIndex) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		options, err := buckets(res.Aggregations["options"], "options")
		if err != nil {
			return nil, err
		}
		first := len(rows)
		for _, o := range options {
			option, err := o.StringKey()
			if err != nil {
				return nil, err
			}
			days, err := buckets(o.Aggs["days"], "days")
			if err != nil {
				return nil, err
			}
			for _, d := range days {
				ms, err := d.IntKey()
				if err != nil {
					return nil, err
				}
				if d.DocCount == 0 {
					continue
				}
				rows = append(rows, IntentionRow{Region: region, Day: time.UnixMilli(ms).UTC(), Option: option, Count: d.DocCount})
			}
		}
		slices.SortFunc(rows[first:], func(a, b IntentionRow) int {
			if c := a.Day.Compare(b.Day); c != 0 {
				return c
			}
			return strings.Compare(a.Option, b.Option)
		})
	}
	return rows, nil
}

// FollowupRow counts the follow-up requests about one issue.
type FollowupRow struct {
	Issue    string
	Total    int64
	Electors int64            // distinct electors (approximate above 3000 on Elasticsearch)
	ByMethod map[string]int64 // "telephone", "email", "post", "unspecified"
}

// FollowupsQuery returns the query of the follow-ups report.
func FollowupsQuery(p Params) map[string]any {
	return searchBody(p.filters("recorded_at"), obj{
		"issues": obj{
			"terms": obj{"field": "issue", "size": p.Size},
			"aggs": obj{
				"methods":  obj{"terms": obj{"field": "method", "size": maxTermsSmall}},
				"electors": obj{"cardinality": obj{"field": "elector_id"}},
			},
		},
	})
}

// Followups returns the follow-up requests of the period by issue (the
// p.Size issues with the most requests, largest first) and method. Chapper
// records no completion of a follow-up, so every request counts as
// outstanding.
func Followups(ctx context.Context, es *elasticsearch.Client, p Params) ([]FollowupRow, error) {
	res, err := search(ctx, es, p.IndexPrefix+"-followups", FollowupsQuery(p))
	if errors.Is(err, errNoIndex) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	issues, err := buckets(res.Aggregations["issues"], "issues")
	if err != nil {
		return nil, err
	}
	rows := make([]FollowupRow, 0, len(issues))
	for _, b := range issues {
		issue, err := b.StringKey()
		if err != nil {
			return nil, err
		}
		row := FollowupRow{Issue: issue, Total: b.DocCount, ByMethod: map[string]int64{}}
		if row.Electors, err = value(b.Aggs["electors"], "electors"); err != nil {
			return nil, err
		}
		methods, err := buckets(b.Aggs["methods"], "methods")
		if err != nil {
			return nil, err
		}
		for _, m := range methods {
			method, err := m.StringKey()
			if err != nil {
				return nil, err
			}
			row.ByMethod[method] = m.DocCount
		}
		rows = append(rows, row)
	}
	sortByCount(rows, func(r FollowupRow) (int64, string) { return r.Total, r.Issue })
	return rows, nil
}

// CanvasserRow is one canvasser's activity.
type CanvasserRow struct {
	CanvasserID string
	Visits      int64
	Localities  int64            // distinct localities visited (approximate above 40000 on Elasticsearch)
	Outcomes    map[string]int64 // "answered", "no_answer", "refused", "moved", "unspecified"
}

// CanvassersQuery returns the query of the canvassers report.
func CanvassersQuery(p Params) map[string]any {
	return searchBody(p.filters("visited_at"), obj{
		"canvassers": obj{
			"terms": obj{"field": "canvasser_id", "size": p.Size},
			"aggs": obj{
				"localities": obj{"cardinality": obj{"field": "locality", "precision_threshold": 40000}},
				"outcomes":   obj{"terms": obj{"field": "outcome", "size": maxTermsSmall}},
			},
		},
	})
}

// Canvassers returns the p.Size canvassers with the most visits in the
// period, largest first. Visits without a canvasser id (authentication off)
// are not counted.
func Canvassers(ctx context.Context, es *elasticsearch.Client, p Params) ([]CanvasserRow, error) {
	res, err := search(ctx, es, p.IndexPrefix+"-visits", CanvassersQuery(p))
	if errors.Is(err, errNoIndex) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	bs, err := buckets(res.Aggregations["canvassers"], "canvassers")
	if err != nil {
		return nil, err
	}
	rows := make([]CanvasserRow, 0, len(bs))
	for _, b := range bs {
		id, err := b.StringKey()
		if err != nil {
			return nil, err
		}
		row := CanvasserRow{CanvasserID: id, Visits: b.DocCount, Outcomes: map[string]int64{}}
		if row.Localities, err = value(b.Aggs["localities"], "localities"); err != nil {
			return nil, err
		}
		outcomes, err := buckets(b.Aggs["outcomes"], "outcomes")
		if err != nil {
			return nil, err
		}
		for _, o := range outcomes {
			k, err := o.StringKey()
			if err != nil {
				return nil, err
			}
			row.Outcomes[k] = o.DocCount
		}
		rows = append(rows, row)
	}
	sortByCount(rows, func(r CanvasserRow) (int64, string) { return r.Visits, r.CanvasserID })
	return rows, nil
}

// Cells is a rectangle of localities, rows and columns inclusive.
type Cells struct {
	Row0, Row1, Col0, Col1 int64
}

// Len returns the number of localities in c.
func (c Cells) Len() int64 { return (c.Row1 - c.Row0 + 1) * (c.Col1 - c.Col0 + 1) }

// Localities returns the localities of c row by row from the south-west.
func (c Cells) Localities() []locality.Index {
	out := make([]locality.Index, 0, c.Len())
	for r := c.Row0; r <= c.Row1; r++ {
		for col := c.Col0; col <= c.Col1; col++ {
			out = append(out, locality.Cell{Row: r, Col: col}.Index())
		}
	}
	return out
}

// Bounds returns the box covering exactly the cells' area.
func (c Cells) Bounds() Box {
	return Box{
		South: float64(c.Row0)/1000 - 90, North: float64(c.Row1+1)/1000 - 90,
		West: float64(c.Col0)/1000 - 180, East: float64(c.Col1+1)/1000 - 180,
	}
}

// CellsOf returns the localities a box covers. An edge of the box on a cell
// edge takes the cell inside the box only: 55.9,-3.3,56.0,-3.1 is 100 × 200
// localities.
func CellsOf(b Box) (Cells, error) {
	if err := b.validate(); err != nil {
		return Cells{}, err
	}
	sw, _ := locality.CellOf(b.South, b.West)
	ne, _ := locality.CellOf(b.North, b.East)
	c := Cells{Row0: sw.Row, Row1: ne.Row, Col0: sw.Col, Col1: ne.Col}
	if c.Row1 > c.Row0 && float64(ne.Row) == (b.North+90)*1000 {
		c.Row1--
	}
	if c.Col1 > c.Col0 && float64(ne.Col) == (b.East+180)*1000 {
		c.Col1--
	}
	return c, nil
}

// RegionCells returns the localities of a region.
func RegionCells(region int64) (Cells, error) {
	if region < 0 || region >= (locality.MaxRow/locality.RegionSize+1)*locality.RegionCols {
		return Cells{}, fmt.Errorf("no region %d", region)
	}
	r0 := region / locality.RegionCols * locality.RegionSize
	c0 := region % locality.RegionCols * locality.RegionSize
	return Cells{Row0: r0, Row1: min(r0+locality.RegionSize-1, locality.MaxRow), Col0: c0, Col1: c0 + locality.RegionSize - 1}, nil
}

// UnknockedResult is the answer of the un-knocked report.
type UnknockedResult struct {
	Cells      Cells
	Visited    int              // localities of the box with at least one visit
	Localities []locality.Index // localities of the box with none, ascending
}

// geoMargin widens the search box past the cells' edges by about a metre,
// more than any geo_point quantisation, so no visit inside a cell is missed;
// visits of the neighbouring cells it lets in are dropped by locality.
const geoMargin = 1e-5

// UnknockedQuery returns the query of the un-knocked report for cells.
func UnknockedQuery(p Params, c Cells) map[string]any {
	b := c.Bounds()
	round := func(x float64) float64 { return math.Round(x*1e6) / 1e6 }
	b = Box{
		South: round(math.Max(b.South-geoMargin, -90)), North: round(math.Min(b.North+geoMargin, 90)),
		West: round(math.Max(b.West-geoMargin, -180)), East: round(math.Min(b.East+geoMargin, 180)),
	}
	q := p
	q.Region, q.Box = -1, b
	size := c.Len() + 2*(c.Row1-c.Row0+c.Col1-c.Col0+2) + 4
	return searchBody(q.filters("visited_at"), obj{
		"localities": obj{"terms": obj{"field": "locality", "size": size}},
	})
}

// Unknocked returns the localities of p.Box (or of region p.Region when no
// box is set) that had no visit in the period. The box may hold at most
// MaxBoxLocalities localities (ErrBoxTooLarge).
func Unknocked(ctx context.Context, es *elasticsearch.Client, p Params) (*UnknockedResult, error) {
	var c Cells
	var err error
	switch {
	case !p.Box.IsZero():
		c, err = CellsOf(p.Box)
	case p.Region >= 0:
		c, err = RegionCells(p.Region)
	default:
		return nil, ErrNoBox
	}
	if err != nil {
		return nil, err
	}
	if n := c.Len(); n > MaxBoxLocalities {
		return nil, fmt.Errorf("%w: %d, at most %d (one region): narrow the box", ErrBoxTooLarge, n, MaxBoxLocalities)
	}
	visited := map[locality.Index]bool{}
	res, err := search(ctx, es, p.IndexPrefix+"-visits", UnknockedQuery(p, c))
	switch {
	case errors.Is(err, errNoIndex):
	case err != nil:
		return nil, err
	default:
		bs, err := buckets(res.Aggregations["localities"], "localities")
		if err != nil {
			return nil, err
		}
		for _, b := range bs {
			l, err := b.IntKey()
			if err != nil {
				return nil, err
			}
			cell := locality.Index(l).Cell()
			if b.DocCount > 0 && cell.Row >= c.Row0 && cell.Row <= c.Row1 && cell.Col >= c.Col0 && cell.Col <= c.Col1 {
				visited[locality.Index(l)] = true
			}
		}
	}
	out := &UnknockedResult{Cells: c, Visited: len(visited)}
	for _, l := range c.Localities() {
		if !visited[l] {
			out.Localities = append(out.Localities, l)
		}
	}
	return out, nil
}

func sortByCount[T any](rows []T, key func(T) (int64, string)) {
	sort.SliceStable(rows, func(i, j int) bool {
		ci, ni := key(rows[i])
		cj, nj := key(rows[j])
		if ci != cj {
			return ci > cj
		}
		return ni < nj
	})
}
