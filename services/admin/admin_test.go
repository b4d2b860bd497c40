package admin

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

var testCounter = promauto.NewCounter(prometheus.CounterOpts{Name: "chapper_admin_test_total", Help: "Test."})

func TestAdmin(t *testing.T) {
	s, err := New(Config{Addr: "127.0.0.1:0"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var ingestReady, otherReady atomic.Bool
	s.AddCheck("ingest", func() error {
		if !ingestReady.Load() {
			return errors.New("topics not ready yet")
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- s.Run(runCtx) }()
	select {
	case <-s.Listening():
	case <-ctx.Done():
		t.Fatal("admin not listening")
	}
	base := "http://" + s.Addr().String()
	testCounter.Inc()

	get := func(path string) (int, string) {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}

	steps := []struct {
		name     string
		setup    func()
		path     string
		wantCode int
		want     []string
	}{
		{name: "healthz while not ready", path: "/healthz", wantCode: 200, want: []string{"ok"}},
		{name: "readyz not ready", path: "/readyz", wantCode: 503, want: []string{"ingest: topics not ready yet", "not ready"}},
		{name: "readyz ready", setup: func() { ingestReady.Store(true) }, path: "/readyz", wantCode: 200, want: []string{"ingest: ok", "ready"}},
		{name: "a check added later counts", setup: func() {
			s.AddCheck("other", func() error {
				if !otherReady.Load() {
					return errors.New("still starting")
				}
				return nil
			})
		}, path: "/readyz", wantCode: 503, want: []string{"ingest: ok", "other: still starting"}},
		{name: "all ready", setup: func() { otherReady.Store(true) }, path: "/readyz", wantCode: 200, want: []string{"ingest: ok", "other: ok"}},
		{name: "metrics", path: "/metrics", wantCode: 200, want: []string{"chapper_admin_test_total 1", "go_goroutines"}},
		{name: "metrics of a gatherer", setup: func() {
			extra := prometheus.NewRegistry()
			promauto.With(extra).NewGauge(prometheus.GaugeOpts{Name: "chapper_admin_test_extra", Help: "A gauge of another registry."}).Set(7)
			s.SetGatherer(prometheus.Gatherers{prometheus.DefaultGatherer, extra})
		}, path: "/metrics", wantCode: 200, want: []string{"chapper_admin_test_total 1", "chapper_admin_test_extra 7", "promhttp_metric_handler_requests_total"}},
		{name: "pprof", path: "/debug/pprof/", wantCode: 200, want: []string{"goroutine"}},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			if st.setup != nil {
				st.setup()
			}
			code, body := get(st.path)
			if code != st.wantCode {
				t.Errorf("GET %s = %d, want %d: %q", st.path, code, st.wantCode, body)
			}
			for _, w := range st.want {
				if !strings.Contains(body, w) {
					t.Errorf("GET %s body lacks %q: %q", st.path, w, body)
				}
			}
		})
	}
	stop()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
}
