package devstack

import (
	"fmt"
	"slices"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/proto"
)

// TestMergeFamilies checks how a child's metrics join the parent's: a
// family only the child has is added, and in a family both have, the
// child's series replace the parent's with the same labels (the parent's
// idle copy of a pipeline metric) while the parent's other series stay.
func TestMergeFamilies(t *testing.T) {
	series := func(sink string, v float64) *dto.Metric {
		return &dto.Metric{
			Label:   []*dto.LabelPair{{Name: proto.String("sink"), Value: proto.String(sink)}},
			Counter: &dto.Counter{Value: proto.Float64(v)},
		}
	}
	counter := func(name string, ms ...*dto.Metric) *dto.MetricFamily {
		return &dto.MetricFamily{Name: proto.String(name), Type: dto.MetricType_COUNTER.Enum(), Metric: ms}
	}
	ours := []*dto.MetricFamily{
		counter("records_total", series("ingest", 5), series("persist", 0)),
		counter("ours_only", series("x", 1)),
	}
	theirs := []*dto.MetricFamily{
		counter("records_total", series("persist", 7), series("search", 3)),
		counter("theirs_only", series("y", 2)),
	}
	got := map[string][]string{}
	for _, f := range mergeFamilies(ours, theirs) {
		for _, m := range f.Metric {
			got[f.GetName()] = append(got[f.GetName()], fmt.Sprintf("%s=%g", m.Label[0].GetValue(), m.Counter.GetValue()))
		}
	}
	want := map[string][]string{
		"records_total": {"ingest=5", "persist=7", "search=3"},
		"ours_only":     {"x=1"},
		"theirs_only":   {"y=2"},
	}
	for name, w := range want {
		g := got[name]
		slices.Sort(g)
		if !slices.Equal(g, w) {
			t.Errorf("%s: got %v, want %v", name, g, w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("families %v, want %v", got, want)
	}
}
