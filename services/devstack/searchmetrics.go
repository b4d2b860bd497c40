package devstack

import (
	"fmt"
	"net/http"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/chapper/chapper/services/devstack/search"
)

// Metrics of the stack about its search child.
const (
	metricSearchRestarts  = "chapper_dev_search_restarts_total"
	metricSearchMetricsUp = "chapper_dev_search_metrics_up"
)

// searchStats are the stack's own metrics about its search child, in a
// registry of the stack's (several stacks may share a test binary), and
// the state of the reads of the child's metrics.
type searchStats struct {
	reg      *prometheus.Registry
	restarts prometheus.Counter
	up       prometheus.Gauge
	client   *http.Client

	mu   sync.Mutex // serialises reads of the child's metrics and guards down
	down bool       // the last read failed (logged once per outage)
}

func newSearchStats() *searchStats {
	st := &searchStats{
		reg: prometheus.NewRegistry(),
		restarts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: metricSearchRestarts,
			Help: "Unexpected exits of the search child, each followed by a restart (retried with backoff until one succeeds).",
		}),
		up: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: metricSearchMetricsUp,
			Help: "1 when the search child's metrics were read for this scrape, 0 when they are left out (the child is stopped, dead or did not answer).",
		}),
		// no idle connections: nothing outlives a read
		client: &http.Client{Timeout: childScrapeTimeout, Transport: &http.Transport{DisableKeepAlives: true}},
	}
	st.reg.MustRegister(st.restarts, st.up)
	return st
}

// Gatherer returns a Gatherer of local's metrics (prometheus.DefaultGatherer
// for dev's /metrics) and the stack's. With the search child
// (StackConfig.SearchProcess) those are the child's search server metrics
// (search.MetricPrefix), read from the child at each Gather, and
// chapper_dev_search_restarts_total and chapper_dev_search_metrics_up;
// local's own search server metrics, idle in this process then, are left
// out. A child that is stopped, dead or slower than 2 s to answer leaves
// its metrics out (metrics_up 0, and a log line once per outage) and never
// fails the Gather. In process, the Gatherer is local itself. It is safe
// for concurrent use.
func (s *Stack) Gatherer(local prometheus.Gatherer) prometheus.Gatherer {
	if s.searchStats == nil {
		return local
	}
	withoutSearch := prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) {
		fams, err := local.Gather()
		return keepFamilies(fams, false), err
	})
	return prometheus.Gatherers{withoutSearch, prometheus.GathererFunc(s.gatherSearch)}
}

// gatherSearch returns the search child's search server metrics, when it
// answers, and the stack's metrics about it.
func (s *Stack) gatherSearch() ([]*dto.MetricFamily, error) {
	st := s.searchStats
	st.mu.Lock()
	defer st.mu.Unlock()
	var fams []*dto.MetricFamily
	err := s.SearchReady()
	if err == nil {
		s.searchMu.Lock()
		addr := s.searchMetricsAddr
		s.searchMu.Unlock()
		fams, err = st.read(addr)
	}
	if err != nil {
		st.up.Set(0)
		if !st.down {
			s.log.Warn("the search server's metrics are left out of /metrics", "err", err)
		}
	} else {
		st.up.Set(1)
		if st.down {
			s.log.Info("the search server's metrics are back on /metrics")
		}
	}
	st.down = err != nil
	own, gerr := st.reg.Gather()
	return append(fams, own...), gerr
}

// read returns the search server metrics the child serves on addr.
func (st *searchStats) read(addr string) ([]*dto.MetricFamily, error) {
	fams, err := scrapeMetrics(st.client, "http://"+addr+"/metrics")
	if err != nil {
		return nil, fmt.Errorf("the search server's metrics: %w", err)
	}
	return keepFamilies(fams, true), nil
}

// keepFamilies returns the families of fams that are search server metrics
// (search.MetricPrefix) when want is true, those that are not otherwise,
// reusing fams.
func keepFamilies(fams []*dto.MetricFamily, want bool) []*dto.MetricFamily {
	kept := fams[:0]
	for _, f := range fams {
		if IsSearchMetric(f.GetName()) == want {
			kept = append(kept, f)
		}
	}
	return kept
}

// IsSearchMetric reports whether a metric family is the embedded search
// server's (search.MetricPrefix): live in its child process, idle copies
// elsewhere.
func IsSearchMetric(name string) bool { return strings.HasPrefix(name, search.MetricPrefix) }
