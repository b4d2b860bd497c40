// Package searchtest is the test support of the search sink and the
// reports: an embedded search server per test (which can be stopped and
// started again on the same data directory and address), a generated data
// set whose answers the tests compute themselves, and helpers that index
// records and read documents back.
package searchtest

import (
	"context"
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chapper/chapper/pipelines/search"
	searchsrv "github.com/chapper/chapper/services/devstack/search"
)

// startTimeout bounds starting and stopping the server.
const startTimeout = 30 * time.Second

// Server is an embedded search server on a private data directory.
type Server struct {
	dir, addr string
	cancel    context.CancelFunc
	done      chan error
	prefixes  atomic.Int64
}

// Start starts an embedded search server on a temporary directory and a
// free port, stopped at the end of t. It skips t under -short.
func Start(t testing.TB) *Server {
	t.Helper()
	if testing.Short() {
		t.Skip("starts the embedded search server")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	s := &Server{dir: t.TempDir(), addr: addr}
	s.start(t)
	t.Cleanup(func() {
		if s.cancel != nil {
			s.Stop(t)
		}
	})
	return s
}

func (s *Server) start(t testing.TB) {
	t.Helper()
	srv, err := searchsrv.New(searchsrv.Config{DataDir: s.dir, Addr: s.addr})
	if err != nil {
		t.Fatalf("starting search server: %v", err)
	}
	if _, err := srv.Listen(); err != nil {
		srv.Close()
		t.Fatalf("starting search server: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel, s.done = cancel, make(chan error, 1)
	go func() { s.done <- srv.Run(ctx) }()
}

// URL returns the server's base URL.
func (s *Server) URL() string { return "http://" + s.addr }

// Stop stops the server and waits until it closed its indices.
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	s.cancel()
	select {
	case err := <-s.done:
		if err != nil {
			t.Errorf("search server Run returned %v", err)
		}
	case <-time.After(startTimeout):
		t.Fatalf("search server did not stop within %s", startTimeout)
	}
	s.cancel = nil
}

// Restart starts the server again on the same directory and address.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.start(t)
}

// Config returns a sink configuration for this server with an index prefix
// of its own, so that tests sharing a server do not see each other.
func (s *Server) Config(t testing.TB) search.Config {
	t.Helper()
	return search.Config{
		Addresses:      []string{s.URL()},
		IndexPrefix:    fmt.Sprintf("t%d-canvass", s.prefixes.Add(1)),
		FlushBytes:     5 << 20,
		Workers:        1,
		RequestTimeout: 30 * time.Second,
		ShardBits:      6,
	}
}
