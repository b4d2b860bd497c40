// Package admin is the operators' HTTP port: /metrics (Prometheus, the
// default registry unless SetGatherer says otherwise), /healthz (the process is alive), /readyz (every part finished
// its setup) and /debug/pprof.
package admin

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Config configures the admin server.
type Config struct {
	Addr string
}

// RegisterFlags registers the admin flags on fs under prefix (e.g. "admin"
// gives -admin.addr).
func (c *Config) RegisterFlags(prefix string, fs *flag.FlagSet) {
	fs.StringVar(&c.Addr, prefix+".addr", ":7071", "Listen address of /metrics, /healthz and /readyz (chapper dev uses 127.0.0.1:7071).")
}

// Validate reports the first problem with the configuration.
func (c *Config) Validate() error {
	if c.Addr == "" {
		return errors.New("admin listen address not set")
	}
	return nil
}

// Server serves the admin endpoints. AddCheck and SetGatherer may be called
// at any time; they are safe for concurrent use.
type Server struct {
	cfg Config
	log *slog.Logger

	mu       sync.Mutex
	checks   []check
	gatherer prometheus.Gatherer
	addr     net.Addr
	up       chan struct{}
}

type check struct {
	name string
	fn   func() error
}

// New returns an admin server for cfg.
func New(cfg Config, log *slog.Logger) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	return &Server{cfg: cfg, log: log.With("part", "admin"), up: make(chan struct{})}, nil
}

// AddCheck adds a readiness check: /readyz answers 200 only when every check
// returns nil. fn must be fast and safe for concurrent use.
func (s *Server) AddCheck(name string, fn func() error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.checks = append(s.checks, check{name, fn})
}

// SetGatherer makes /metrics serve what g gathers instead of the default
// registry (chapper dev adds its search child's metrics this way).
func (s *Server) SetGatherer(g prometheus.Gatherer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gatherer = g
}

// Handler returns the admin endpoints as an http.Handler.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metrics", s.metrics)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", s.readyz)
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	return mux
}

// metrics serves the gatherer's metrics, counted in promhttp's handler
// metrics as promhttp.Handler does.
func (s *Server) metrics(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	g := s.gatherer
	s.mu.Unlock()
	if g == nil {
		promhttp.Handler().ServeHTTP(w, r)
		return
	}
	promhttp.InstrumentMetricHandler(prometheus.DefaultRegisterer, promhttp.HandlerFor(g, promhttp.HandlerOpts{})).ServeHTTP(w, r)
}

// readyz lists every check with "ok" or its error; the status is 200 when
// all passed, 503 otherwise.
func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	checks := append([]check(nil), s.checks...)
	s.mu.Unlock()
	var b strings.Builder
	ready := true
	for _, c := range checks {
		if err := c.fn(); err != nil {
			ready = false
			fmt.Fprintf(&b, "%s: %v\n", c.name, err)
		} else {
			fmt.Fprintf(&b, "%s: ok\n", c.name)
		}
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if !ready {
		w.WriteHeader(http.StatusServiceUnavailable)
		b.WriteString("not ready\n")
	} else {
		b.WriteString("ready\n")
	}
	_, _ = w.Write([]byte(b.String()))
}

// Addr returns the address the server listens on, or nil before it listens.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// Listening returns a channel closed once the server listens.
func (s *Server) Listening() <-chan struct{} { return s.up }

// Run listens on the configured address and serves until ctx is done, then
// shuts down within a few seconds. It returns nil on a clean shutdown.
func (s *Server) Run(ctx context.Context) error {
	lis, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("listening for admin on %s: %w", s.cfg.Addr, err)
	}
	s.mu.Lock()
	s.addr = lis.Addr()
	s.mu.Unlock()
	close(s.up)
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second}
	s.log.Info("admin listening", "addr", lis.Addr().String())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serving admin: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
	}
	<-errc
	return nil
}
