package devtest

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// ResultsEnv names the file Figure appends to; scripts/bench.sh sets it to
// var/bench/results.jsonl of the checkout (and empties that file first).
// Unset, Figure appends to var/bench/results.jsonl beside go.work, found
// from the working directory upwards.
const ResultsEnv = "CHAPPER_BENCH_RESULTS"

// Figure is one benchmark figure in the results format DESIGN.md fixes:
// one JSON object per line of var/bench/results.jsonl.
type Figure struct {
	// Name is "<Benchmark>/<figure>", stable across changes, e.g.
	// "BenchmarkDurableDev/submit-records-per-s".
	Name string `json:"name"`
	// Value and Unit are the figure, e.g. 21000 and "records/s".
	Value float64 `json:"value"`
	Unit  string  `json:"unit"`
	// BaselineName and Baseline are the raw figure measured in the same
	// run, e.g. "raw kafka-go produce, same broker".
	BaselineName string  `json:"baseline_name"`
	Baseline     float64 `json:"baseline"`
	// Ratio is Value / Baseline (0 without a baseline).
	Ratio float64 `json:"ratio"`
	// Target is the goal with its direction, on Value when it has a unit
	// ("<=50", ">=20000") or on Ratio when it starts with "ratio" (e.g.
	// "ratio>=0.8"); empty for a figure without a target.
	Target string `json:"target"`
	// Met says whether Value (or Ratio) meets Target; true without one.
	Met bool `json:"met"`
}

// ReportFigure completes f (Ratio, Met), prints it on one line next to its
// baseline and appends it to the results file. A file that cannot be
// written fails b.
func ReportFigure(b testing.TB, f Figure) {
	b.Helper()
	if f.Baseline != 0 {
		f.Ratio = f.Value / f.Baseline
	}
	met, err := meets(f)
	if err != nil {
		b.Fatalf("figure %s: %v", f.Name, err)
	}
	f.Met = met
	fmt.Println(f.line())
	path, err := resultsPath()
	if err != nil {
		b.Fatal(err)
	}
	line, err := json.Marshal(f)
	if err != nil {
		b.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		b.Fatalf("creating the results directory: %v", err)
	}
	fh, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		b.Fatalf("opening the results file: %v", err)
	}
	defer fh.Close()
	if _, err := fh.Write(append(line, '\n')); err != nil {
		b.Fatalf("writing %s: %v", path, err)
	}
}

// line is f on one line: the value, its baseline and ratio when it has
// one, its target and verdict when it has one.
func (f Figure) line() string {
	s := fmt.Sprintf("%s: %.4g %s", f.Name, f.Value, f.Unit)
	if f.BaselineName != "" || f.Baseline != 0 {
		s += fmt.Sprintf(" (%s: %.4g, ratio %.3f)", f.BaselineName, f.Baseline, f.Ratio)
	}
	if f.Target != "" {
		verdict := "met"
		if !f.Met {
			verdict = "NOT met"
		}
		s += fmt.Sprintf("; target %s %s", f.Target, verdict)
	}
	return s
}

// meets evaluates f.Target.
func meets(f Figure) (bool, error) {
	t := strings.TrimSpace(f.Target)
	if t == "" {
		return true, nil
	}
	v := f.Value
	if rest, ok := strings.CutPrefix(t, "ratio"); ok {
		t, v = rest, f.Ratio
	}
	for _, op := range []string{">=", "<=", ">", "<"} {
		if rest, ok := strings.CutPrefix(t, op); ok {
			want, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err != nil {
				return false, fmt.Errorf("target %q: %w", f.Target, err)
			}
			switch op {
			case ">=":
				return v >= want, nil
			case "<=":
				return v <= want, nil
			case ">":
				return v > want, nil
			default:
				return v < want, nil
			}
		}
	}
	return false, fmt.Errorf("target %q: want >=, <=, > or < and a number, optionally after \"ratio\"", f.Target)
}

// resultsPath is $CHAPPER_BENCH_RESULTS or var/bench/results.jsonl beside
// go.work.
func resultsPath() (string, error) {
	if p := os.Getenv(ResultsEnv); p != "" {
		return p, nil
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.work")); err == nil {
			return filepath.Join(dir, "var", "bench", "results.jsonl"), nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.work above the working directory: set " + ResultsEnv)
		}
		dir = parent
	}
}
