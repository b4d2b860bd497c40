// Package search is Chapper's embedded search server: an HTTP server that
// speaks the subset of the Elasticsearch 8 REST API that Chapper's indexer
// and report queries use, backed by Bleve (scorch) indexes on disk. The
// official go-elasticsearch client, its esutil.BulkIndexer and curl work
// against it. Anything outside the subset answers 400 with an
// Elasticsearch-shaped error that names what is unsupported, never a
// wrong answer; docs/search-server.md lists the subset.
//
// Index metadata (mappings, settings, aliases) and index templates live in
// DataDir/state.json; each index is a bleve index under DataDir/indices.
// Everything survives a restart on the same DataDir. A bulk or document
// write returns after its batch is persisted (fsync), and is searchable at
// once: refresh is implicit.
//
// Where the API lives:
//
//	routes.go        every endpoint: methods, paths, URL parameters, handler
//	endpoint.go      what every call shares: routing, parameter checks,
//	                 body decoding; response.go: replies, errors, filter_path
//	documents.go     GET/PUT/POST/DELETE /<index>/_doc, _create, _source
//	bulk.go          POST /_bulk (parsing, per-item results)
//	writes.go        the write path shared by bulk and documents: versions,
//	                 conflicts, dynamic mapping, one bleve batch per index
//	encode.go        JSON document -> bleve fields and doc values
//	indices.go       PUT/GET/HEAD/DELETE /<index>, _mapping, _settings, _refresh
//	aliases.go       POST /_aliases, /<index>/_alias, GET /_alias
//	templates.go     /_index_template
//	search.go        /_search and /_count: request parsing, hit collection,
//	                 sort, paging; query.go: the query DSL
//	aggregations.go  the aggregations under "aggs"
//	cat.go           GET /, /_cluster/health, /_cat/indices, /_cat/aliases
//	mapping.go       mappings and field types; dates.go: date formats, math
//	state.go         index and template state on disk, index expressions
//	errors.go        Elasticsearch-shaped errors and ordered JSON objects
package search

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// Config configures the search server.
type Config struct {
	// DataDir holds the indexes and the cluster state.
	DataDir string
	// Addr is the listen address, host:port; port 0 picks a free port.
	Addr string
	// Logger receives the server's logs; nil means slog.Default().
	Logger *slog.Logger
	// Scorch are the Bleve merge and persister settings of every index;
	// the zero value means the ones ScorchEnv picks (DefaultScorchOptions
	// unless it says otherwise).
	Scorch ScorchOptions
}

// RegisterFlags registers the configuration flags under prefix (for
// example "search-server" gives -search-server.data-dir).
func (c *Config) RegisterFlags(prefix string, fs *flag.FlagSet) {
	fs.StringVar(&c.DataDir, prefix+".data-dir", "var/search", "Directory holding the embedded search server's indexes and state.")
	fs.StringVar(&c.Addr, prefix+".addr", "127.0.0.1:19200", "Listen address of the embedded search server (Elasticsearch REST API subset); port 0 picks a free port.")
	c.Scorch.RegisterFlags(prefix+".scorch", fs)
}

// GCPercent and MemoryLimit are the Go GC settings a process serving the
// search server should run with (the search child sets them; so does
// BenchmarkBulkIndexing, for both of its sides): Bleve's segment building
// and merging allocate heavily, and at Go's default GOGC of 100 the
// collector took about a tenth of the indexing CPU. BenchmarkBulkIndexing
// in two alternating pairs of runs (2 December 2026): GOGC 100 449 and
// 407 µs of the server's CPU per document (5,412 and 6,081 docs/s), GOGC
// 400 320 and 350 µs (6,898 and 6,732 docs/s). The soft limit makes the
// GC collect sooner as the heap nears it.
const (
	GCPercent   = 400
	MemoryLimit = 1 << 30
)

// Sentinel configuration errors.
var (
	ErrNoDataDir = errors.New("search server data directory not set")
	ErrNoAddr    = errors.New("search server listen address not set")
	// ErrDataDirInUse means another server (in this or another process)
	// holds the data directory.
	ErrDataDirInUse = errors.New("search server data directory is in use")
	// ErrClosed is returned by Listen and Run after Close.
	ErrClosed = errors.New("search server closed")
	// ErrStateMissing means the data directory holds indexes but not the
	// state file describing them.
	ErrStateMissing = errors.New("search server state file missing")
)

// Validate checks the configuration.
func (c *Config) Validate() error {
	if c.DataDir == "" {
		return ErrNoDataDir
	}
	if c.Addr == "" {
		return ErrNoAddr
	}
	if c.Scorch != (ScorchOptions{}) {
		return c.Scorch.Validate()
	}
	return nil
}

// Version is the Elasticsearch version the server reports in GET /.
const Version = "8.15.0"

// Server is the embedded search server. Its methods are safe for
// concurrent use; requests are served concurrently.
type Server struct {
	cfg Config
	log *slog.Logger

	mu          sync.RWMutex // guards indices, templates and index aliases
	saveMu      sync.Mutex   // serialises writes of state.json
	indices     map[string]*esIndex
	templates   map[string]*template
	clusterUUID string
	lock        *os.File // flock on DataDir

	lnMu      sync.Mutex
	ln        net.Listener
	addr      string
	listening chan struct{}
	closed    bool
	closeOnce sync.Once
	closeErr  error
	handler   http.Handler
}

// New opens (or creates) the data directory and every index in it. It does
// not listen yet: Listen or Run does.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Scorch == (ScorchOptions{}) {
		o, err := scorchFromEnv()
		if err != nil {
			return nil, err
		}
		cfg.Scorch = o
	}
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return nil, fmt.Errorf("creating search data directory %s: %w", cfg.DataDir, err)
	}
	lock, err := os.OpenFile(filepath.Join(cfg.DataDir, "LOCK"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening search data directory lock: %w", err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		return nil, fmt.Errorf("%w: %s", ErrDataDirInUse, cfg.DataDir)
	}
	s := &Server{
		cfg:       cfg,
		log:       cfg.Logger,
		indices:   map[string]*esIndex{},
		templates: map[string]*template{},
		lock:      lock,
		listening: make(chan struct{}),
	}
	if err := s.loadState(); err != nil {
		s.closeIndices()
		lock.Close()
		return nil, err
	}
	s.handler = http.HandlerFunc(s.serveHTTP)
	return s, nil
}

// Handler returns the HTTP handler serving the API, for use in another
// server or httptest.
func (s *Server) Handler() http.Handler { return s.handler }

// Listen binds the listen address, so Addr is known before Run serves.
// Calling it again returns the same address.
func (s *Server) Listen() (string, error) {
	s.lnMu.Lock()
	defer s.lnMu.Unlock()
	if s.closed {
		return "", ErrClosed
	}
	if s.ln != nil {
		return s.addr, nil
	}
	ln, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return "", fmt.Errorf("listening for the search server on %s: %w", s.cfg.Addr, err)
	}
	s.ln, s.addr = ln, ln.Addr().String()
	close(s.listening)
	return s.addr, nil
}

// Addr returns the address the server listens on, once Listen (or Run)
// bound it; "" before.
func (s *Server) Addr() string {
	s.lnMu.Lock()
	defer s.lnMu.Unlock()
	return s.addr
}

// URL returns http://Addr.
func (s *Server) URL() string { return "http://" + s.Addr() }

// Listening returns a channel closed once the server listens.
func (s *Server) Listening() <-chan struct{} { return s.listening }

// Ready returns nil once the server listens, and why not before.
func (s *Server) Ready() error {
	select {
	case <-s.listening:
		return nil
	default:
		return errors.New("search server not listening yet")
	}
}

// Run listens (unless Listen already did), serves until ctx is done, then
// stops accepting requests, waits up to 10 s for running ones, and closes
// the indexes. It returns nil on a clean shutdown.
func (s *Server) Run(ctx context.Context) error {
	if _, err := s.Listen(); err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	s.log.Info("search server listening", "addr", s.addr, "data_dir", s.cfg.DataDir)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(s.ln) }()
	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
	}
	shutCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutCtx); err != nil {
		s.log.Warn("search server shutdown", "err", err)
	}
	closeErr := s.Close()
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) && !errors.Is(serveErr, net.ErrClosed) {
		return fmt.Errorf("serving the search server: %w", serveErr)
	}
	return closeErr
}

// Close closes the listener (if Run is not serving) and every index, after
// waiting for requests using them. It is idempotent.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.lnMu.Lock()
		s.closed = true
		if s.ln != nil {
			_ = s.ln.Close()
		}
		s.lnMu.Unlock()
		s.closeErr = s.closeIndices()
		if s.lock != nil {
			_ = syscall.Flock(int(s.lock.Fd()), syscall.LOCK_UN)
			s.lock.Close()
		}
	})
	return s.closeErr
}

func (s *Server) closeIndices() error {
	s.mu.Lock()
	list := make([]*esIndex, 0, len(s.indices))
	for _, ix := range s.indices {
		list = append(list, ix)
	}
	s.mu.Unlock()
	var first error
	for _, ix := range list {
		ix.life.Lock()
		if !ix.closed {
			ix.closed = true
			if err := ix.bi.Close(); err != nil && first == nil {
				first = fmt.Errorf("closing index %s: %w", ix.name, err)
			}
		}
		ix.life.Unlock()
	}
	return first
}
