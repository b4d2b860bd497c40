package report_test

import (
	"encoding/json"
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chapper/chapper/pipelines/report"
)

// TestDocsQueries checks that the queries docs/reporting.md shows Kibana
// users are the ones the report command runs.
func TestDocsQueries(t *testing.T) {
	md, err := os.ReadFile("../../docs/reporting.md")
	if err != nil {
		t.Fatal(err)
	}
	p := report.Params{
		From: time.Date(2026, 11, 2, 0, 0, 0, 0, time.UTC), To: time.Date(2026, 11, 9, 0, 0, 0, 0, time.UTC),
		Region: -1, Size: 10, IndexPrefix: "canvass",
	}
	regions, perRegion := report.IntentionsQueries(p, 5254168)
	cells, err := report.RegionCells(5254168)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, index string
		query       map[string]any
	}{
		{"intentions-regions", "canvass-intentions", regions},
		{"intentions-region", "canvass-intentions", perRegion},
		{"followups", "canvass-followups", report.FollowupsQuery(p)},
		{"canvassers", "canvass-visits", report.CanvassersQuery(p)},
		{"unknocked", "canvass-visits", report.UnknockedQuery(p, cells)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			re := regexp.MustCompile("(?s)<!-- query: " + regexp.QuoteMeta(tt.name) + " -->\n```\n(.*?)```")
			m := re.FindSubmatch(md)
			if m == nil {
				t.Fatalf("docs/reporting.md has no query block %q", tt.name)
			}
			first, body, _ := strings.Cut(string(m[1]), "\n")
			if want := "GET " + tt.index + "/_search"; first != want {
				t.Errorf("request line %q, want %q", first, want)
			}
			var doc, code any
			if err := json.Unmarshal([]byte(body), &doc); err != nil {
				t.Fatalf("query in the docs is not JSON: %v", err)
			}
			b, _ := json.Marshal(tt.query)
			_ = json.Unmarshal(b, &code)
			if !reflect.DeepEqual(doc, code) {
				pretty, _ := json.MarshalIndent(code, "", "  ")
				t.Errorf("docs differ from the code's query; the code sends:\n%s", pretty)
			}
		})
	}
}
