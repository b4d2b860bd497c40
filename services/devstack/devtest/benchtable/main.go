// Command benchtable prints the figures of a `make bench` run
// (var/bench/results.jsonl, one devtest.Figure per line) as one table:
// figure, value, baseline, ratio, target and whether it is met.
//
//	go run ./devstack/devtest/benchtable var/bench/results.jsonl
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"text/tabwriter"

	"github.com/chapper/chapper/services/devstack/devtest"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: benchtable <results.jsonl>")
		os.Exit(2)
	}
	f, err := os.Open(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchtable:", err)
		os.Exit(1)
	}
	defer f.Close()
	figs, err := read(f)
	if err != nil {
		fmt.Fprintf(os.Stderr, "benchtable: %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
	if err := write(os.Stdout, figs); err != nil {
		fmt.Fprintln(os.Stderr, "benchtable:", err)
		os.Exit(1)
	}
}

// read decodes one figure per line.
func read(r io.Reader) ([]devtest.Figure, error) {
	var figs []devtest.Figure
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for n := 1; sc.Scan(); n++ {
		if len(sc.Bytes()) == 0 {
			continue
		}
		var f devtest.Figure
		if err := json.Unmarshal(sc.Bytes(), &f); err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		figs = append(figs, f)
	}
	return figs, sc.Err()
}

// write prints figs as an aligned table and a last line counting the
// targets met.
func write(w io.Writer, figs []devtest.Figure) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "figure\tvalue\tbaseline\tratio\ttarget\tmet")
	targets, met := 0, 0
	for _, f := range figs {
		verdict := ""
		if f.Target != "" {
			targets++
			verdict = "NOT met"
			if f.Met {
				met++
				verdict = "met"
			}
		}
		baseline, ratio := "", ""
		if f.BaselineName != "" || f.Baseline != 0 {
			baseline = number(f.Baseline) + " (" + f.BaselineName + ")"
			ratio = strconv.FormatFloat(f.Ratio, 'f', 3, 64)
		}
		fmt.Fprintf(tw, "%s\t%s %s\t%s\t%s\t%s\t%s\n", f.Name, number(f.Value), f.Unit, baseline, ratio, f.Target, verdict)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "%d figures, %d of %d targets met\n", len(figs), met, targets)
	return err
}

// number prints v without an exponent: whole numbers from 100 up (with
// thousands separated by commas), otherwise four significant digits.
func number(v float64) string {
	if math.Abs(v) >= 100 {
		return commas(strconv.FormatFloat(math.Round(v), 'f', 0, 64))
	}
	return strconv.FormatFloat(v, 'g', 4, 64)
}

// commas separates the thousands of an integer in decimal.
func commas(s string) string {
	sign := ""
	if s[0] == '-' {
		sign, s = "-", s[1:]
	}
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return sign + s
}
