package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// TestDevPipelinesChild runs `chapper dev` as it ships, with the pipelines
// in their child process: the child runs at nice 10, its readiness checks
// and metrics are dev's, it is restarted after a SIGKILL under load with
// nothing lost or counted twice, and it dies with dev.
func TestDevPipelinesChild(t *testing.T) {
	chapperBin(t)
	t.Parallel()
	ctx, seed, rng, dir, ports := startCrashTest(t, 5*time.Minute, 4)
	dev := newProc(t, "chapper-dev", ports.args(dir)...)
	dev.Start(t)
	waitReady(t, ctx, dev, ports.admin, 3*time.Minute)

	pid := devChildren(t, dev)["pipelines"]
	if pid == 0 {
		t.Fatal("chapper dev has no pipelines child process")
	}
	if n := processNice(t, pid); n != 10 {
		t.Errorf("the pipelines child runs at nice %d, want 10", n)
	}
	_, body := readyz(ctx, ports.admin)
	for _, n := range pipelineTargets {
		if !strings.Contains(body, n+": ok\n") {
			t.Errorf("dev's /readyz does not carry the child's %s check:\n%s", n, body)
		}
	}

	l := newLedger(seed)
	stop := loadFor(ctx, t, l, ports.grpc)
	waitFor(t, ctx, time.Minute, "the persist pipeline's records in dev's /metrics", func() bool {
		return adminMetric(t, ports.admin, "chapper_pipeline_records_total", `sink="persist"`) > 0
	})
	time.Sleep(randomMoment(rng, 200*time.Millisecond, 2*time.Second))
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("killing the pipelines child: %v", err)
	}
	waitFor(t, ctx, time.Minute, "a restarted pipelines child", func() bool {
		p := devChildren(t, dev)["pipelines"]
		return p != 0 && p != pid
	})
	waitReady(t, ctx, dev, ports.admin, 2*time.Minute)
	if got := adminMetric(t, ports.admin, "chapper_dev_child_restarts_total", `child="pipelines"`); got != 1 {
		t.Errorf("chapper_dev_child_restarts_total = %v after one SIGKILL, want 1", got)
	}
	stop()
	l.settle(ctx, t, ports.grpc, time.Minute)
	verify(t, ctx, ports.stores(), l.want(t), 3*time.Minute)

	pid = devChildren(t, dev)["pipelines"]
	dev.Kill()
	waitFor(t, ctx, 10*time.Second, "the pipelines child gone with chapper dev", func() bool {
		return syscall.Kill(pid, 0) != nil
	})
}

// processNice returns the nice value of process pid (field 19 of its
// /proc stat line).
func processNice(t *testing.T, pid int) int {
	t.Helper()
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// the command name (field 2) is in parentheses and may hold spaces
	fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	var n int
	if _, err := fmt.Sscan(fields[16], &n); err != nil {
		t.Fatalf("/proc/%d/stat: %v", pid, err)
	}
	return n
}

// adminMetric returns the sum of the series of family name on adminAddr's
// /metrics whose labels include match (`sink="persist"`), failing t when
// /metrics does not answer 200 or does not parse (a Gather error, such as
// a series collected twice, answers 500).
func adminMetric(t *testing.T, adminAddr, name, match string) float64 {
	t.Helper()
	res, err := http.Get("http://" + adminAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(res.Body)
		t.Fatalf("GET /metrics: %s\n%s", res.Status, b)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(res.Body)
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	var sum float64
	for _, m := range fams[name].GetMetric() {
		var labels []string
		for _, l := range m.GetLabel() {
			labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
		}
		if !strings.Contains(strings.Join(labels, ","), match) {
			continue
		}
		switch {
		case m.Counter != nil:
			sum += m.Counter.GetValue()
		case m.Gauge != nil:
			sum += m.Gauge.GetValue()
		case m.Untyped != nil:
			sum += m.Untyped.GetValue()
		}
	}
	return sum
}
