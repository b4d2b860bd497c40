package devtest

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

func TestReportFigure(t *testing.T) {
	path := filepath.Join(t.TempDir(), "results.jsonl")
	t.Setenv(ResultsEnv, path)
	ReportFigure(t, Figure{Name: "BenchmarkX/rate", Value: 21000, Unit: "records/s", BaselineName: "raw", Baseline: 30000, Target: ">=20000"})
	ReportFigure(t, Figure{Name: "BenchmarkX/p99", Value: 60, Unit: "ms", BaselineName: "raw", Baseline: 10, Target: "<=50"})
	ReportFigure(t, Figure{Name: "BenchmarkX/share", Value: 21000, Unit: "records/s", BaselineName: "raw", Baseline: 30000, Target: "ratio>=0.8"})
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var got []Figure
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var fig Figure
		if err := json.Unmarshal(sc.Bytes(), &fig); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		got = append(got, fig)
	}
	want := []struct {
		name  string
		ratio float64
		met   bool
	}{{"BenchmarkX/rate", 0.7, true}, {"BenchmarkX/p99", 6, false}, {"BenchmarkX/share", 0.7, false}}
	if len(got) != len(want) {
		t.Fatalf("%d figures in the file, want %d", len(got), len(want))
	}
	for i, w := range want {
		if got[i].Name != w.name || got[i].Met != w.met || got[i].Ratio < w.ratio-1e-9 || got[i].Ratio > w.ratio+1e-9 {
			t.Errorf("figure %d = %+v, want name %s ratio %v met %v", i, got[i], w.name, w.ratio, w.met)
		}
	}
	if _, err := meets(Figure{Target: "about 5"}); err == nil {
		t.Error("a target without a direction was accepted")
	}
}

func TestFigureLine(t *testing.T) {
	for _, c := range []struct {
		f    Figure
		want string
	}{
		{Figure{Name: "B/x", Value: 5, Unit: "MB"}, "B/x: 5 MB"},
		{Figure{Name: "B/r", Value: 21000, Unit: "records/s", BaselineName: "raw", Baseline: 30000, Ratio: 0.7, Target: "ratio>=0.8"},
			"B/r: 2.1e+04 records/s (raw: 3e+04, ratio 0.700); target ratio>=0.8 NOT met"},
		{Figure{Name: "B/p", Value: 20, Unit: "ms", Target: "<=50", Met: true}, "B/p: 20 ms; target <=50 met"},
	} {
		if got := c.f.line(); got != c.want {
			t.Errorf("line() = %q, want %q", got, c.want)
		}
	}
}
