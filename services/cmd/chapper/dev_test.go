package main

import (
	"bufio"
	"context"
	"errors"
	"io"
	"os"
	"strings"
	"testing"
	"time"
)

// devRun is a `chapper dev` started by startDev.
type devRun struct {
	// Endpoints maps each endpoint line's label ("gRPC + gRPC-web",
	// "admin", "Kafka", "Postgres", "Redis", "search") to its address.
	Endpoints map[string]string
	// Lines maps each label to the rest of its endpoint line.
	Lines map[string]string
	// Dir is the dev data directory.
	Dir string

	stop func() error
}

// Stop stops chapper dev and returns what run returned.
func (d *devRun) Stop() error { return d.stop() }

// startDev runs `chapper dev` with every server on a free port under a
// temporary directory, plus extra flags, and waits for its endpoint lines.
// A cleanup stops it and fails the test unless it shut down cleanly.
func startDev(t *testing.T, ctx context.Context, extra ...string) *devRun {
	t.Helper()
	dir := t.TempDir()
	args := append([]string{"dev", "-log.level=warn", "-dev.dir=" + dir,
		"-grpc.addr=127.0.0.1:0", "-admin.addr=127.0.0.1:0", "-dev.kafka-addr=127.0.0.1:0",
		"-dev.postgres-addr=127.0.0.1:0", "-dev.redis-addr=127.0.0.1:0", "-dev.ids-redis-addr=127.0.0.1:0",
		"-dev.search-addr=127.0.0.1:0"}, extra...)
	runCtx, cancel := context.WithCancel(ctx)
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- run(runCtx, args, pw, os.Stderr)
		pw.Close()
	}()
	var stopped bool
	var stopErr error
	d := &devRun{Endpoints: map[string]string{}, Lines: map[string]string{}, Dir: dir, stop: func() error {
		if !stopped {
			stopped = true
			cancel()
			select {
			case stopErr = <-done:
			case <-time.After(30 * time.Second):
				stopErr = errors.New("chapper dev did not stop within 30s")
			}
		}
		return stopErr
	}}
	t.Cleanup(func() {
		if err := d.Stop(); err != nil {
			t.Errorf("chapper dev returned %v on shutdown", err)
		}
	})
	// endpoint lines are "  <label>  <address> ...", ending with "  data <dir>"
	sc := bufio.NewScanner(pr)
	for {
		if !sc.Scan() {
			t.Fatalf("chapper dev stopped before printing its endpoints: %v", d.Stop())
		}
		l := sc.Text()
		if !strings.HasPrefix(l, "  ") {
			continue
		}
		label, rest, _ := strings.Cut(strings.TrimSpace(l), "  ")
		if label == "data" {
			break
		}
		d.Lines[label] = rest
		if f := strings.Fields(rest); len(f) > 0 {
			d.Endpoints[label] = f[0]
		}
	}
	go io.Copy(io.Discard, pr)
	return d
}
