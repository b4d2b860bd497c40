package search_test

import (
	"testing"

	"github.com/chapper/chapper/services/devstack/devtest"
	"github.com/chapper/chapper/services/devstack/search"
)

func init() {
	search.ReportFigure = func(b testing.TB, name, unit string, value float64, baselineName string, baseline float64, target string) {
		b.Helper()
		devtest.ReportFigure(b, devtest.Figure{Name: name, Value: value, Unit: unit, BaselineName: baselineName, Baseline: baseline, Target: target})
	}
}
