package devstack_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chapper/chapper/services/devstack"
)

// TestSearchChild runs the search server as a niced child process of the
// stack: its threads run at the nice asked for, a SIGKILL of it turns
// SearchReady red, StartSearch brings it back with its data, StopSearch
// and StartSearch restart it, and Close leaves no process behind.
func TestSearchChild(t *testing.T) {
	if testing.Short() {
		t.Skip("starts postgres, redis-server and a search child")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cfg := devstack.StackConfig{
		Dir:       filepath.Join(t.TempDir(), "var"),
		KafkaAddr: "127.0.0.1:0", PostgresAddr: "127.0.0.1:0", RedisAddr: "127.0.0.1:0", SearchAddr: "127.0.0.1:0",
		Partitions: 3, SearchProcess: true, SearchNice: 7,
	}
	s, err := devstack.StartStack(ctx, cfg)
	if err != nil {
		t.Fatalf("starting the stack: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
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
	searchDo(ctx, t, http.MethodPut, url+"/marks/_doc/1?refresh=true", `{"n":1}`, http.StatusCreated)

	// SIGKILL: the stack sees it die, and StartSearch brings it back on
	// the same address with its data
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitUntil(ctx, t, "SearchReady red after SIGKILL of the child", func() bool { return s.SearchReady() != nil })
	t.Logf("after SIGKILL: %v", s.SearchReady())
	if err := s.StartSearch(); err != nil {
		t.Fatalf("StartSearch after SIGKILL: %v", err)
	}
	if err := s.SearchReady(); err != nil {
		t.Fatalf("SearchReady() = %v after StartSearch", err)
	}
	if s.SearchURL() != url {
		t.Errorf("address after restart = %s, want %s", s.SearchURL(), url)
	}
	pid2 := s.SearchPid()
	if pid2 == pid || !alive(pid2) {
		t.Fatalf("SearchPid() after restart = %d (before %d), want a new live child", pid2, pid)
	}
	checkNice(t, pid2, 7)
	searchDo(ctx, t, http.MethodGet, url+"/marks/_doc/1", "", http.StatusOK)

	// StopSearch: SIGTERM, the process is gone and clients are refused
	if err := s.StopSearch(); err != nil {
		t.Fatalf("StopSearch: %v", err)
	}
	if alive(pid2) {
		t.Errorf("pid %d still alive after StopSearch", pid2)
	}
	if s.SearchReady() == nil || s.SearchPid() != 0 {
		t.Errorf("after StopSearch: SearchReady() = nil or SearchPid() = %d", s.SearchPid())
	}
	if resp, err := http.Get(url + "/"); err == nil {
		resp.Body.Close()
		t.Errorf("GET / answered %s after StopSearch", resp.Status)
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
