package devstack

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// ChildConfig describes a long-running chapper child process that a Child
// starts and supervises: `chapper dev` runs its pipelines this way, at a
// lower CPU priority than ingest and the broker.
type ChildConfig struct {
	// Name names the child in logs and errors ("pipelines").
	Name string
	// Argv is the child's command line. The child must serve the admin
	// endpoints (/healthz, /readyz, /metrics) on the address given with
	// AdminFlag, which the Child appends: a free loopback port at each
	// start.
	Argv      []string
	AdminFlag string
	// Dir is the child's working directory; its output goes to LogPath.
	Dir, LogPath string
	// Nice is the child's nice value (0-19).
	Nice int
	// StopTimeout bounds a graceful stop (SIGTERM) before SIGKILL.
	StopTimeout time.Duration
	Logger      *slog.Logger
}

// Child is a supervised child process: started once it answers /healthz,
// restarted with backoff (restartDelay) whenever it exits before Close,
// killed when this process dies (SIGKILL: the stores it writes to die
// with this process too, and a new one starts on their ports), in its own
// process group (a terminal's Ctrl-C reaches only the parent, which stops
// it in order). Its /readyz checks and /metrics join the parent's through
// Ready and Gatherer.
type Child struct {
	cfg      ChildConfig
	log      *slog.Logger
	client   *http.Client
	restarts prometheus.Counter

	mu        sync.Mutex // guards proc, adminAddr, started
	proc      *child
	adminAddr string
	started   time.Time

	cancel context.CancelFunc
	done   chan struct{} // closed when the supervisor returned
}

// childScrapeTimeout bounds one read of a child's /readyz or /metrics.
const childScrapeTimeout = 2 * time.Second

// StartChild starts the child of cfg, waits until it answers /healthz (or
// ctx ends) and supervises it until Close.
func StartChild(ctx context.Context, cfg ChildConfig) (*Child, error) {
	switch {
	case len(cfg.Argv) == 0 || cfg.AdminFlag == "":
		return nil, fmt.Errorf("%w: child %q needs a command line and its admin flag", ErrStackConfig, cfg.Name)
	case cfg.Nice < 0 || cfg.Nice > 19:
		return nil, fmt.Errorf("%w: child %q: nice must be 0 to 19, got %d", ErrStackConfig, cfg.Name, cfg.Nice)
	}
	if cfg.StopTimeout <= 0 {
		cfg.StopTimeout = stopTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	c := &Child{
		cfg: cfg, log: log.With("child", cfg.Name),
		// no idle connections: nothing outlives a read
		client: &http.Client{Timeout: childScrapeTimeout, Transport: &http.Transport{DisableKeepAlives: true}},
		restarts: prometheus.NewCounter(prometheus.CounterOpts{
			Name:        "chapper_dev_child_restarts_total",
			Help:        "Unexpected exits of a child process of chapper dev, each followed by a restart (retried with backoff until one succeeds).",
			ConstLabels: prometheus.Labels{"child": cfg.Name},
		}),
		done: make(chan struct{}),
	}
	if err := c.start(ctx); err != nil {
		return nil, err
	}
	sctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	go c.supervise(sctx)
	return c, nil
}

// start launches the child on a new admin port and waits for /healthz.
func (c *Child) start(ctx context.Context) error {
	port, err := freePort("127.0.0.1")
	if err != nil {
		return fmt.Errorf("%s admin port: %w", c.cfg.Name, err)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	cmd := exec.Command(c.cfg.Argv[0], append(slices.Clone(c.cfg.Argv[1:]), c.cfg.AdminFlag+"="+addr)...)
	cmd.Dir = c.cfg.Dir
	ctx, cancel := startContext(ctx)
	defer cancel()
	t0 := time.Now()
	proc, err := launch(ctx, cmd, launchSpec{
		name: c.cfg.Name, addr: addr, dir: c.cfg.Dir, logPath: c.cfg.LogPath,
		dieWithParent: true, deathSig: syscall.SIGKILL, nice: c.cfg.Nice,
		ready: func(ctx context.Context, proc *child) error {
			return pollReady(ctx, proc, c.cfg.Name, func() (bool, error) {
				return true, getOK(ctx, c.client, "http://"+addr+"/healthz")
			})
		},
	})
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.proc, c.adminAddr, c.started = proc, addr, time.Now()
	c.mu.Unlock()
	c.log.Info("child process started", "pid", proc.pid(), "nice", c.cfg.Nice, "admin_addr", addr,
		"log", c.cfg.LogPath, "took", time.Since(t0).Round(time.Millisecond))
	return nil
}

// supervise restarts the child whenever it exits while ctx (cancelled by
// Close before it stops the child) is not done.
func (c *Child) supervise(ctx context.Context) {
	defer close(c.done)
	var delay time.Duration
	for {
		c.mu.Lock()
		proc, started := c.proc, c.started
		c.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-proc.done:
		}
		if ctx.Err() != nil {
			return
		}
		ran := time.Since(started)
		delay = restartDelay(delay, ran)
		c.restarts.Inc()
		c.log.Error("child process exited unexpectedly; restarting it", "pid", proc.pid(), "exit", proc.err,
			"ran", ran.Round(time.Millisecond), "restart_in", delay, "log", c.cfg.LogPath, "log_tail", logTail(c.cfg.LogPath, 10))
		if !restartUntil(ctx, &delay, c.start, c.log, "the child process") {
			return
		}
	}
}

// Pid returns the running child's process id, 0 when none runs.
func (c *Child) Pid() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.proc == nil || c.proc.exited() {
		return 0
	}
	return c.proc.pid()
}

// running returns the child's admin address, or an error when it is not
// running.
func (c *Child) running() (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.proc == nil || c.proc.exited() {
		return "", fmt.Errorf("the %s process is not running (restarting; log %s)", c.cfg.Name, c.cfg.LogPath)
	}
	return c.adminAddr, nil
}

// Ready returns the result of the child's readiness check name: nil when
// its /readyz says "name: ok", the reason it gives otherwise, or why the
// child could not be asked.
func (c *Child) Ready(name string) error {
	addr, err := c.running()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), childScrapeTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/readyz", nil)
	if err != nil {
		return err
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return fmt.Errorf("asking the %s process: %w", c.cfg.Name, err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if status, ok := strings.CutPrefix(sc.Text(), name+": "); ok {
			if status == "ok" {
				return nil
			}
			return errors.New(status)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("reading the %s process's /readyz: %w", c.cfg.Name, err)
	}
	return fmt.Errorf("the %s process has no %s check yet", c.cfg.Name, name)
}

// Gatherer returns a Gatherer of local's metrics merged with the child's,
// read at each Gather: the child's families other than the Go runtime's
// and the process's (go_*, process_*, promhttp_*, which stay local's) and
// those skip names; where both have a family, the child's series replace
// local's with the same labels (local's idle copies of the child's
// metrics). A child that is not running or does not answer within 2 s
// leaves its metrics out (a warning in the log) and never fails the
// Gather. It also carries chapper_dev_child_restarts_total.
func (c *Child) Gatherer(local prometheus.Gatherer, skip func(name string) bool) prometheus.Gatherer {
	reg := prometheus.NewRegistry()
	reg.MustRegister(c.restarts)
	var downMu sync.Mutex
	down := false
	return prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) {
		fams, err := local.Gather()
		own, oerr := reg.Gather()
		fams = append(fams, own...)
		theirs, cerr := c.gather(skip)
		downMu.Lock()
		switch {
		case cerr != nil && !down:
			c.log.Warn("the child's metrics are left out of /metrics", "err", cerr)
		case cerr == nil && down:
			c.log.Info("the child's metrics are back on /metrics")
		}
		down = cerr != nil
		downMu.Unlock()
		return mergeFamilies(fams, theirs), errors.Join(err, oerr)
	})
}

// gather reads the child's metrics, without the runtime's and skip's.
func (c *Child) gather(skip func(string) bool) ([]*dto.MetricFamily, error) {
	addr, err := c.running()
	if err != nil {
		return nil, err
	}
	fams, err := scrapeMetrics(c.client, "http://"+addr+"/metrics")
	if err != nil {
		return nil, err
	}
	kept := fams[:0]
	for _, f := range fams {
		n := f.GetName()
		if strings.HasPrefix(n, "go_") || strings.HasPrefix(n, "process_") || strings.HasPrefix(n, "promhttp_") ||
			(skip != nil && skip(n)) {
			continue
		}
		kept = append(kept, f)
	}
	return kept, nil
}

// mergeFamilies returns ours with theirs added: a family only theirs is
// appended, and in a family both have, their series replace ours with the
// same label values.
func mergeFamilies(ours, theirs []*dto.MetricFamily) []*dto.MetricFamily {
	byName := make(map[string]*dto.MetricFamily, len(ours))
	for _, f := range ours {
		byName[f.GetName()] = f
	}
	for _, t := range theirs {
		o, ok := byName[t.GetName()]
		if !ok || o.GetType() != t.GetType() {
			if !ok {
				ours = append(ours, t)
			}
			continue
		}
		replaced := make(map[string]bool, len(t.Metric))
		for _, m := range t.Metric {
			replaced[labelKey(m)] = true
		}
		kept := o.Metric[:0]
		for _, m := range o.Metric {
			if !replaced[labelKey(m)] {
				kept = append(kept, m)
			}
		}
		o.Metric = append(kept, t.Metric...)
	}
	return ours
}

// labelKey identifies a series by its label pairs (sorted by name, as
// gathered).
func labelKey(m *dto.Metric) string {
	var b strings.Builder
	for _, l := range m.GetLabel() {
		b.WriteString(l.GetName())
		b.WriteByte(0)
		b.WriteString(l.GetValue())
		b.WriteByte(0)
	}
	return b.String()
}

// scrapeMetrics reads the Prometheus text exposition at url.
func scrapeMetrics(client *http.Client, url string) ([]*dto.MetricFamily, error) {
	ctx, cancel := context.WithTimeout(context.Background(), childScrapeTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/plain;version=0.0.4")
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("reading metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("reading metrics: GET %s: %s", url, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	byName, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("parsing the metrics from %s: %w", url, err)
	}
	fams := make([]*dto.MetricFamily, 0, len(byName))
	for _, f := range byName {
		fams = append(fams, f)
	}
	return fams, nil
}

// Close stops supervising the child and stops it: SIGTERM (it finishes
// its batches and commits), SIGKILL after StopTimeout.
func (c *Child) Close() error {
	c.cancel()
	<-c.done
	c.mu.Lock()
	proc := c.proc
	c.mu.Unlock()
	if err := proc.stop(syscall.SIGTERM, c.cfg.StopTimeout); err != nil {
		return fmt.Errorf("stopping the %s process: %w", c.cfg.Name, err)
	}
	c.log.Info("child process stopped", "pid", proc.pid())
	return nil
}

// Nice returns the child's nice value.
func (c *Child) Nice() int { return c.cfg.Nice }

// LogPath returns the child's log file.
func (c *Child) LogPath() string { return c.cfg.LogPath }
