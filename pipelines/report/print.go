package report

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Method and outcome columns, in the order of their proto enums.
var (
	methodColumns  = []string{"telephone", "email", "post", "unspecified"}
	outcomeColumns = []string{"answered", "no_answer", "refused", "moved", "unspecified"}
)

func table(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
}

func row(tw io.Writer, cells ...any) {
	s := make([]string, len(cells))
	for i, c := range cells {
		s[i] = fmt.Sprint(c)
	}
	fmt.Fprintln(tw, strings.Join(s, "\t")+"\t")
}

// printIntentions prints one line per region and day with a column per option.
func printIntentions(w io.Writer, rows []IntentionRow) error {
	if len(rows) == 0 {
		_, err := fmt.Fprintln(w, "No intentions in the period.")
		return err
	}
	var options []string
	for _, r := range rows {
		if !slices.Contains(options, r.Option) {
			options = append(options, r.Option)
		}
	}
	slices.Sort(options)
	tw := table(w)
	header := []any{"REGION", "DAY"}
	for _, o := range options {
		header = append(header, strings.ToUpper(o))
	}
	row(tw, append(header, "TOTAL")...)
	type key struct {
		region int64
		day    time.Time
	}
	var order []key
	counts := map[key]map[string]int64{}
	for _, r := range rows {
		k := key{r.Region, r.Day}
		if counts[k] == nil {
			counts[k] = map[string]int64{}
			order = append(order, k)
		}
		counts[k][r.Option] += r.Count
	}
	for _, k := range order {
		line := []any{k.region, k.day.Format(time.DateOnly)}
		var total int64
		for _, o := range options {
			line = append(line, counts[k][o])
			total += counts[k][o]
		}
		row(tw, append(line, total)...)
	}
	return tw.Flush()
}

// printFollowups prints one line per issue with a column per method.
func printFollowups(w io.Writer, rows []FollowupRow) error {
	if len(rows) == 0 {
		_, err := fmt.Fprintln(w, "No follow-up requests in the period.")
		return err
	}
	tw := table(w)
	header := []any{"ISSUE"}
	for _, m := range methodColumns {
		header = append(header, strings.ToUpper(m))
	}
	row(tw, append(header, "TOTAL", "ELECTORS")...)
	for _, r := range rows {
		line := []any{r.Issue}
		for _, m := range methodColumns {
			line = append(line, r.ByMethod[m])
		}
		row(tw, append(line, r.Total, r.Electors)...)
	}
	return tw.Flush()
}

// printCanvassers prints one line per canvasser.
func printCanvassers(w io.Writer, rows []CanvasserRow) error {
	if len(rows) == 0 {
		_, err := fmt.Fprintln(w, "No visits with a canvasser in the period.")
		return err
	}
	tw := table(w)
	header := []any{"CANVASSER", "VISITS", "LOCALITIES"}
	for _, o := range outcomeColumns {
		header = append(header, strings.ToUpper(o))
	}
	row(tw, header...)
	for _, r := range rows {
		line := []any{r.CanvasserID, r.Visits, r.Localities}
		for _, o := range outcomeColumns {
			line = append(line, r.Outcomes[o])
		}
		row(tw, line...)
	}
	return tw.Flush()
}

// printUnknocked prints a summary and one line per un-knocked locality with
// its south-west corner, chunk and region.
func printUnknocked(w io.Writer, u *UnknockedResult) error {
	b := u.Cells.Bounds()
	fmt.Fprintf(w, "Box %.3f,%.3f,%.3f,%.3f: %d localities, %d visited, %d un-knocked\n\n",
		b.South, b.West, b.North, b.East, u.Cells.Len(), u.Visited, len(u.Localities))
	if len(u.Localities) == 0 {
		return nil
	}
	tw := table(w)
	row(tw, "LOCALITY", "SOUTH", "WEST", "CHUNK", "REGION")
	for _, l := range u.Localities {
		c := l.Cell()
		row(tw, int64(l), fmt.Sprintf("%.3f", float64(c.Row)/1000-90), fmt.Sprintf("%.3f", float64(c.Col)/1000-180), l.Chunk(), l.Region())
	}
	return tw.Flush()
}
