package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/chapper/chapper/services/devstack/devtest"
)

func TestMain(m *testing.M) { devtest.Main(m) }

func TestTable(t *testing.T) {
	in := `{"name":"BenchmarkX/rate","value":21034.6,"unit":"records/s","baseline_name":"raw","baseline":179039,"ratio":0.1175,"target":"ratio>=0.8","met":false}

{"name":"BenchmarkY/p99","value":0.01862,"unit":"s","baseline_name":"","baseline":0,"ratio":0,"target":"<=0.05","met":true}
{"name":"BenchmarkZ/count","value":-1234567,"unit":"rows","baseline_name":"","baseline":0,"ratio":0,"target":"","met":true}
`
	figs, err := read(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := write(&out, figs); err != nil {
		t.Fatal(err)
	}
	got := out.String()
	for _, want := range []string{"21,035 records/s", "179,039 (raw)", "0.117", "NOT met", "0.01862 s", "-1,234,567 rows", "3 figures, 1 of 2 targets met"} {
		if !strings.Contains(got, want) {
			t.Errorf("table lacks %q:\n%s", want, got)
		}
	}
	if _, err := read(strings.NewReader("{not json}\n")); err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Errorf("bad line: error %v, want one naming line 1", err)
	}
}
