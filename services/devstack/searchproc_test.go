package devstack_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/chapper/chapper/services/devstack"
)

// TestSearchChild runs the search server as a niced child process of the
// stack: its threads run at the nice asked for, its search server metrics
// are in the stack's Gatherer, a SIGKILL of it turns SearchReady red until
// the supervisor has brought it back by itself (logged, counted, a new pid,
// its data kept), StopSearch is not undone by the supervisor, StartSearch
// starts it again, and Close leaves no process behind.
func TestSearchChild(t *testing.T) {
	if testing.Short() {
		t.Skip("starts postgres, redis-server and a search child")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var logs syncBuffer
	cfg := devstack.StackConfig{
		Dir:       filepath.Join(t.TempDir(), "var"),
		KafkaAddr: "127.0.0.1:0", PostgresAddr: "127.0.0.1:0", RedisAddr: "127.0.0.1:0", SearchAddr: "127.0.0.1:0",
		Partitions: 3, SearchProcess: true, SearchNice: 7,
		Logger: slog.New(slog.NewTextHandler(&logs, nil)),
	}
	s, err := devstack.StartStack(ctx, cfg)
	if err != nil {
		t.Fatalf("starting the stack: %v", err)
	}
	t.Cleanup(func() {
		_ = s.Close()
		if t.Failed() {
			t.Logf("stack log:\n%s", logs.String())
		}
	})
	if s.Search != nil {
		t.Errorf("Stack.Search = %v with SearchProcess, want nil (the server runs in the child)", s.Search)
	}
	pid := s.SearchPid()
	if pid == 0 || pid == os.Getpid() {
		t.Fatalf("SearchPid() = %d, want a child's pid", pid)
	}
	if err := s.SearchReady(); err != nil {
		t.Fatalf("SearchReady() = %v with the child running", err)
	}
	checkNice(t, pid, 7)
	if _, err := os.Stat(s.SearchLog()); err != nil {
		t.Errorf("no search child log: %v", err)
	}

	url := s.SearchURL()
	for i := 1; i <= 3; i++ {
		searchDo(ctx, t, http.MethodPut, fmt.Sprintf("%s/marks/_doc/%d?refresh=true", url, i), `{"n":1}`, http.StatusCreated)
	}
	// the child's metrics, read through the stack, beside local's
	local := prometheus.NewRegistry()
	promauto.With(local).NewCounter(prometheus.CounterOpts{Name: "chapper_test_local_total", Help: "A metric of this process."}).Inc()
	g := s.Gatherer(local)
	m := gather(t, g)
	if m["chapper_searchserver_documents_written_total"] < 3 || m["chapper_dev_search_metrics_up"] != 1 || m["chapper_test_local_total"] != 1 {
		t.Errorf("gathered with the child running: %v, want chapper_searchserver_documents_written_total >= 3, chapper_dev_search_metrics_up 1 and chapper_test_local_total 1", m)
	}
	if _, ok := m["chapper_searchserver_request_seconds"]; !ok {
		t.Errorf("gathered with the child running: no chapper_searchserver_request_seconds in %v", m)
	}
	restarts := m["chapper_dev_search_restarts_total"]
	// the child's own Go runtime runs with the search server's GC settings
	child := scrape(ctx, t, "http://"+s.SearchMetricsAddr()+"/metrics")
	if child["go_gc_gogc_percent"] != 400 || child["go_gc_gomemlimit_bytes"] != 1<<30 {
		t.Errorf("search child's GOGC %v and GOMEMLIMIT %v, want 400 and 1 GiB (-search-server.gc-percent, -search-server.memory-limit)",
			child["go_gc_gogc_percent"], child["go_gc_gomemlimit_bytes"])
	}

	// SIGKILL: the stack sees it die, and its supervisor brings it back by
	// itself on the same address with its data
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitUntil(ctx, t, "SearchReady red after SIGKILL of the child", func() bool { return s.SearchReady() != nil })
	t.Logf("after SIGKILL: %v", s.SearchReady())
	waitUntil(ctx, t, "the supervisor to restart the child", func() bool { return s.SearchReady() == nil && s.SearchPid() != pid })
	if s.SearchURL() != url {
		t.Errorf("address after restart = %s, want %s", s.SearchURL(), url)
	}
	pid2 := s.SearchPid()
	if pid2 == 0 || !alive(pid2) || alive(pid) {
		t.Fatalf("SearchPid() after restart = %d (before %d), want a new live child and the old one gone", pid2, pid)
	}
	checkNice(t, pid2, 7)
	for i := 1; i <= 3; i++ {
		searchDo(ctx, t, http.MethodGet, fmt.Sprintf("%s/marks/_doc/%d", url, i), "", http.StatusOK)
	}
	m = gather(t, g)
	if got := m["chapper_dev_search_restarts_total"]; got != restarts+1 {
		t.Errorf("chapper_dev_search_restarts_total = %v after one SIGKILL, want %v", got, restarts+1)
	}
	if m["chapper_dev_search_metrics_up"] != 1 {
		t.Errorf("chapper_dev_search_metrics_up = %v after the restart, want 1", m["chapper_dev_search_metrics_up"])
	}
	if l := logs.String(); !strings.Contains(l, "exited unexpectedly") || !strings.Contains(l, "signal: killed") {
		t.Errorf("the log does not tell of the SIGKILLed child with its exit status:\n%s", l)
	}

	// StopSearch: SIGTERM, the process is gone, clients are refused, and
	// the supervisor leaves it stopped
	if err := s.StopSearch(); err != nil {
		t.Fatalf("StopSearch: %v", err)
	}
	if alive(pid2) {
		t.Errorf("pid %d still alive after StopSearch", pid2)
	}
	time.Sleep(2 * time.Second) // 20 times the first restart's backoff
	if s.SearchReady() == nil || s.SearchPid() != 0 {
		t.Errorf("2 s after StopSearch: SearchReady() = nil or SearchPid() = %d, want it stopped", s.SearchPid())
	}
	if resp, err := http.Get(url + "/"); err == nil {
		resp.Body.Close()
		t.Errorf("GET / answered %s after StopSearch", resp.Status)
	}
	// the Gatherer still answers, without the child's metrics
	m = gather(t, g)
	if _, ok := m["chapper_searchserver_documents_written_total"]; ok || m["chapper_dev_search_metrics_up"] != 0 || m["chapper_test_local_total"] != 1 {
		t.Errorf("gathered with the child stopped: %v, want no chapper_searchserver_*, chapper_dev_search_metrics_up 0, chapper_test_local_total 1", m)
	}
	if got := m["chapper_dev_search_restarts_total"]; got != restarts+1 {
		t.Errorf("chapper_dev_search_restarts_total = %v after StopSearch, want %v (no restart)", got, restarts+1)
	}
	if err := s.StartSearch(); err != nil {
		t.Fatalf("StartSearch after StopSearch: %v", err)
	}
	searchDo(ctx, t, http.MethodGet, url+"/marks/_doc/1", "", http.StatusOK)
	pid3 := s.SearchPid()

	if err := s.Close(); err != nil {
		t.Fatalf("closing the stack: %v", err)
	}
	if alive(pid3) {
		t.Errorf("search child %d still alive after Close", pid3)
	}
}

// TestSearchChildFails reports a child that cannot start (a command
// that exits at once) with its log.
func TestSearchChildFails(t *testing.T) {
	dir := t.TempDir()
	cfg := devstack.StackConfig{Dir: dir, SearchAddr: "127.0.0.1:0", SearchProcess: true,
		SearchCommand: []string{"/bin/sh", "-c", "echo no search for you >&2; exit 3", "sh"}}
	err := devstack.StartSearchOnly(cfg)
	if err == nil || !strings.Contains(err.Error(), "exited during start-up") || !strings.Contains(err.Error(), "no search for you") {
		t.Fatalf("StartSearch with a failing child = %v, want its exit and log", err)
	}
}

// gather returns the value of every counter and gauge g gathers, summed
// over series, and 0 for any other family gathered.
func gather(t *testing.T, g prometheus.Gatherer) map[string]float64 {
	t.Helper()
	fams, err := g.Gather()
	if err != nil {
		t.Fatalf("gathering: %v", err)
	}
	m := map[string]float64{}
	for _, f := range fams {
		m[f.GetName()] += 0
		for _, x := range f.GetMetric() {
			m[f.GetName()] += x.GetCounter().GetValue() + x.GetGauge().GetValue()
		}
	}
	return m
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// scrape reads the unlabelled samples of a Prometheus text page.
func scrape(ctx context.Context, t *testing.T, url string) map[string]float64 {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing %s: %v", url, err)
	}
	out := map[string]float64{}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			if len(m.GetLabel()) == 0 {
				out[name] = m.GetGauge().GetValue() + m.GetCounter().GetValue() + m.GetUntyped().GetValue()
			}
		}
	}
	return out
}

// checkNice checks field 19 (nice) of /proc/<pid>/stat and of every
// thread's stat.
func checkNice(t *testing.T, pid, want int) {
	t.Helper()
	paths := []string{fmt.Sprintf("/proc/%d/stat", pid)}
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
	if err != nil || len(tasks) == 0 {
		t.Fatalf("no threads of pid %d: %v", pid, err)
	}
	for _, p := range append(paths, tasks...) {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		fields := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
		// fields[0] is field 3 (state): field 19 is fields[16]
		if got, err := strconv.Atoi(fields[16]); err != nil || got != want {
			t.Errorf("%s: nice %s, want %d", p, fields[16], want)
		}
	}
	t.Logf("pid %d: %d threads at nice %d", pid, len(tasks), want)
}

// alive reports whether pid is a live process, not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	state := b[bytes.LastIndexByte(b, ')')+2]
	return state != 'Z' && state != 'X'
}

func waitUntil(ctx context.Context, t *testing.T, what string, ok func() bool) {
	t.Helper()
	for !ok() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		case <-time.After(10 * time.Millisecond):
		}
	}
}
