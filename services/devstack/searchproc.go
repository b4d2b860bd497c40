package devstack

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/chapper/chapper/services/devstack/search"
)

// SearchServerCommand is the argument that makes a binary run the embedded
// search server alone: the default StackConfig.SearchCommand runs this
// executable with it. chapper answers it with a hidden subcommand, and
// test binaries whose TestMain runs devtest.Main answer it through
// RunSearchChild.
const SearchServerCommand = "search-server"

// searchLog is the search child's log file inside its data directory.
const searchLog = "search.log"

// RunSearchChild runs the search server when args (os.Args) ask for it
// (args[1] is SearchServerCommand), with the flags of SearchChildConfig
// under the prefix search-server, until SIGTERM or SIGINT; it returns the
// exit code and true. For any other args it returns false at once. A test
// binary calls it first thing in TestMain (devtest.Main does).
func RunSearchChild(args []string, stderr io.Writer) (code int, ran bool) {
	if len(args) < 2 || args[1] != SearchServerCommand {
		return 0, false
	}
	fs := flag.NewFlagSet(SearchServerCommand, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg SearchChildConfig
	cfg.RegisterFlags(SearchServerCommand, fs)
	if err := fs.Parse(args[2:]); err != nil {
		return 2, true
	}
	cfg.Logger = slog.New(slog.NewTextHandler(stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := ServeSearch(ctx, cfg); err != nil {
		cfg.Logger.Error("search server stopped", "err", err)
		return 1, true
	}
	return 0, true
}

// SearchChildConfig configures the search child: the search server and the
// listener of its metrics.
type SearchChildConfig struct {
	search.Config
	// MetricsAddr is where the child serves GET /metrics (this process's
	// default Prometheus registry) for the parent to gather; "" serves
	// none. Not the search address: there /metrics would be an index.
	MetricsAddr string
	// GCPercent and MemoryLimit set the Go garbage collector of the
	// process serving the search server (ServeSearch); the defaults are
	// search.GCPercent and search.MemoryLimit, 0 leaves each as the
	// runtime has it (GOGC, GOMEMLIMIT).
	GCPercent   int
	MemoryLimit int64
}

// RegisterFlags registers search.Config's flags and metrics-addr under
// prefix (search-server gives -search-server.metrics-addr).
func (c *SearchChildConfig) RegisterFlags(prefix string, fs *flag.FlagSet) {
	c.Config.RegisterFlags(prefix, fs)
	fs.StringVar(&c.MetricsAddr, prefix+".metrics-addr", "", "Listen address of the search server's Prometheus /metrics, for the parent `chapper dev` to gather; empty serves none.")
	fs.IntVar(&c.GCPercent, prefix+".gc-percent", search.GCPercent, "Go GC target percentage of the search server's process (GOGC; fewer collections while indexing); 0 keeps the runtime's.")
	fs.Int64Var(&c.MemoryLimit, prefix+".memory-limit", search.MemoryLimit, "Soft memory limit of the search server's process in bytes (GOMEMLIMIT), which makes the GC collect sooner as the heap nears it; 0 keeps the runtime's.")
}

// ServeSearch opens the search server's data and serves it, and its
// metrics on cfg.MetricsAddr when set, until ctx is done: the body of the
// search child. The metrics listen before the search server does, so a
// child that answers on its search address serves its metrics too.
func ServeSearch(ctx context.Context, cfg SearchChildConfig) error {
	if cfg.GCPercent > 0 {
		debug.SetGCPercent(cfg.GCPercent)
	}
	if cfg.MemoryLimit > 0 {
		debug.SetMemoryLimit(cfg.MemoryLimit)
	}
	srv, err := search.New(cfg.Config)
	if err != nil {
		return err
	}
	if cfg.MetricsAddr == "" {
		return srv.Run(ctx)
	}
	ln, err := net.Listen("tcp", cfg.MetricsAddr)
	if err != nil {
		return errors.Join(fmt.Errorf("listening for the search server's metrics on %s: %w", cfg.MetricsAddr, err), srv.Close())
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.Handler())
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = hs.Serve(ln)
	}()
	err = srv.Run(ctx)
	_ = hs.Close()
	<-served
	return err
}

// searchCommand returns the child's command line before its flags.
func (c *StackConfig) searchCommand() ([]string, error) {
	if len(c.SearchCommand) > 0 {
		return c.SearchCommand, nil
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("finding this executable to run the search server: %w", err)
	}
	return []string{exe, SearchServerCommand}, nil
}

// startSearchChild starts the search server as a child process on
// s.searchAddr (a port 0 is fixed here, at the first start) with its
// metrics on a free loopback port, at nice s.cfg.SearchNice, dying with
// this process, its log in <search dir>/search.log, and waits until it
// answers HTTP or ctx ends. It does nothing while a child runs. s.lifeMu
// is held.
func (s *Stack) startSearchChild(ctx context.Context) error {
	s.searchMu.Lock()
	running := s.searchProc != nil && !s.searchProc.exited()
	s.searchMu.Unlock()
	if running {
		return nil
	}
	if _, port, err := net.SplitHostPort(s.searchAddr); err != nil || port == "0" {
		// the first start: fix the port, so restarts keep the address
		h, p, err := splitAddr(s.searchAddr)
		if err != nil {
			return fmt.Errorf("search server: %w", err)
		}
		s.searchMu.Lock()
		s.searchAddr = net.JoinHostPort(h, strconv.Itoa(p))
		s.searchMu.Unlock()
	}
	// a new port at every start: only this process dials it
	mport, err := freePort("127.0.0.1")
	if err != nil {
		return fmt.Errorf("search server metrics: %w", err)
	}
	metricsAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(mport))
	if err := os.MkdirAll(s.searchDir, 0o755); err != nil {
		return fmt.Errorf("creating search data directory: %w", err)
	}
	argv, err := s.cfg.searchCommand()
	if err != nil {
		return err
	}
	ctx, cancel := startContext(ctx)
	defer cancel()
	// a child of a chapper that was just killed, or one that crashed, may
	// still be closing its indexes and hold the data directory
	if err := waitDirUnlocked(ctx, s.searchDir); err != nil {
		return err
	}
	cmd := exec.Command(argv[0], append(argv[1:],
		"-"+SearchServerCommand+".data-dir="+s.searchDir,
		"-"+SearchServerCommand+".addr="+s.searchAddr,
		"-"+SearchServerCommand+".metrics-addr="+metricsAddr)...)
	cmd.Dir = s.searchDir
	start := time.Now()
	proc, err := launch(ctx, cmd, launchSpec{
		name: "search server", addr: s.searchDialAddr(), dir: s.searchDir, logPath: s.SearchLog(),
		dieWithParent: true, deathSig: syscall.SIGTERM, nice: s.cfg.SearchNice,
		ready: s.waitSearchHTTP,
	})
	if err != nil {
		return err
	}
	s.searchMu.Lock()
	s.searchProc, s.searchMetricsAddr, s.searchStarted = proc, metricsAddr, time.Now()
	s.searchMu.Unlock()
	s.log.Info("search server started", "addr", s.searchDialAddr(), "data_dir", s.searchDir, "pid", proc.pid(), "nice", s.cfg.SearchNice,
		"metrics_addr", metricsAddr, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// Restart backoff of the search child: the first restart after an
// unexpected exit waits restartMin, each quick exit or failed start after
// it doubles the wait up to restartMax, and a child that ran restartHealthy
// or longer before dying is restarted after restartMin again.
const (
	restartMin     = 100 * time.Millisecond
	restartMax     = 5 * time.Second
	restartHealthy = 30 * time.Second
)

// restartDelay returns the wait before restarting a child that ran for
// ran (0 for a start that failed), given the wait before the previous
// restart (0 for none).
func restartDelay(prev, ran time.Duration) time.Duration {
	if prev == 0 || ran >= restartHealthy {
		return restartMin
	}
	return min(2*prev, restartMax)
}

// superviseSearch restarts the search child whenever it exits while ctx is
// not done, on the same address and data, with restartDelay's backoff, and
// closes done when it returns (ctx done). StopSearch cancels ctx before it
// stops the child, so a deliberate stop is never undone.
func (s *Stack) superviseSearch(ctx context.Context, done chan<- struct{}) {
	defer close(done)
	var delay time.Duration
	for {
		s.searchMu.Lock()
		proc, started := s.searchProc, s.searchStarted
		s.searchMu.Unlock()
		if proc == nil {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-proc.done:
		}
		if ctx.Err() != nil {
			return // StopSearch's SIGTERM
		}
		ran := time.Since(started)
		delay = restartDelay(delay, ran)
		s.searchStats.restarts.Inc()
		s.log.Error("search server exited unexpectedly; restarting it", "pid", proc.pid(), "exit", proc.err,
			"ran", ran.Round(time.Millisecond), "restart_in", delay, "log", s.SearchLog(), "log_tail", logTail(s.SearchLog(), 10))
		if !restartUntil(ctx, &delay, s.restartSearch, s.log, "the search server") {
			return
		}
	}
}

// restartUntil calls start after *delay, and again after each failure
// with restartDelay's growing wait (logged, naming what), until it
// succeeds (true) or ctx ends (false).
func restartUntil(ctx context.Context, delay *time.Duration, start func(context.Context) error, log *slog.Logger, what string) bool {
	for {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(*delay):
		}
		err := start(ctx)
		if err == nil {
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		*delay = restartDelay(*delay, 0)
		log.Error("restarting "+what, "err", err, "retry_in", *delay)
	}
}

// restartSearch starts the search child again unless ctx (supervision)
// ended.
func (s *Stack) restartSearch(ctx context.Context) error {
	s.lifeMu.Lock()
	defer s.lifeMu.Unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.startSearchChild(ctx)
}

// waitSearchHTTP waits until the search child answers GET / with 200.
func (s *Stack) waitSearchHTTP(ctx context.Context, proc *child) error {
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: time.Second}
	return pollReady(ctx, proc, "the search server", func() (bool, error) {
		return true, getOK(ctx, c, s.searchURL()+"/")
	})
}

// getOK reports whether GET url answers 200.
func getOK(ctx context.Context, c *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}

// waitDirUnlocked waits until no process holds the search server's lock
// on dir (its flock on dir/LOCK).
func waitDirUnlocked(ctx context.Context, dir string) error {
	for {
		f, err := os.OpenFile(filepath.Join(dir, "LOCK"), os.O_CREATE|os.O_RDWR, 0o644)
		if err != nil {
			return fmt.Errorf("opening the search server's lock: %w", err)
		}
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		}
		f.Close()
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %s is still held by another process", search.ErrDataDirInUse, dir)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
