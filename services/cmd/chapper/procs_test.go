package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chapper/chapper/services/devstack"
)

// The crash and fault tests run chapper as child processes: the binary is
// built once per test binary, on first use, into binDir (removed by
// TestMain).
var (
	binDir   string
	binOnce  sync.Once
	binPath  string
	binBuild error
)

// chapperBin returns the path of a chapper binary built from this package,
// building it on first use. It skips the test under -short.
func chapperBin(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and starts chapper processes; skipped with -short")
	}
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "chapper-bin-")
		if err != nil {
			binBuild = err
			return
		}
		binDir = dir
		binPath = filepath.Join(dir, "chapper")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			binBuild = fmt.Errorf("go build: %w\n%s", err, out)
		}
	})
	if binBuild != nil {
		t.Fatalf("building chapper: %v", binBuild)
	}
	return binPath
}

// proc is a chapper child process; its output goes to a log file that a
// failing test prints the end of.
type proc struct {
	name string
	args []string
	env  []string
	log  string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// newProc prepares `chapper args...`; Start starts it. A cleanup stops
// it (SIGTERM, then SIGKILL) and prints the end of its log if t failed.
func newProc(t testing.TB, name string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, args: args, log: filepath.Join(t.TempDir(), name+".log")}
	t.Cleanup(func() {
		if err := p.Stop(); err != nil {
			t.Logf("%s: %v", name, err)
		}
		if t.Failed() {
			t.Logf("end of %s's log:\n%s", name, tail(p.log, 40))
		}
	})
	return p
}

// Start starts the process (again, after Kill or Stop), appending to its
// log.
func (p *proc) Start(t testing.TB) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(f, "==== %s start %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(p.args, " "))
	cmd := exec.Command(chapperBin(t), p.args...)
	cmd.Env = append(append(os.Environ(), "CHAPPER_AUTH=off"), p.env...)
	cmd.Stdout, cmd.Stderr = f, f
	// chapper is killed with the test binary, not orphaned
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("starting %s: %v", p.name, err)
	}
	done := make(chan struct{})
	p.cmd, p.done = cmd, done
	go func() {
		err := cmd.Wait()
		f.Close()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(done)
	}()
}

// Kill SIGKILLs the process and waits for it to be gone.
func (p *proc) Kill() {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-done
}

// Stop sends SIGTERM and waits up to a minute for a clean exit; it
// returns the exit error. Stop on a process not running does nothing.
func (p *proc) Stop() error {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return nil
	}
	select {
	case <-done:
		return nil // already gone (killed)
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(time.Minute):
		_ = cmd.Process.Kill()
		<-done
		return errors.New("did not stop within a minute of SIGTERM; killed")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// Exited reports whether the process has exited.
func (p *proc) Exited() bool {
	p.mu.Lock()
	done := p.done
	p.mu.Unlock()
	select {
	case <-done:
		return true
	default:
		return false
	}
}

// tail returns the last n lines of the file at path.
func tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}

// readyz returns the status code and body of the admin server's /readyz,
// 0 and the error when it does not answer.
func readyz(ctx context.Context, adminAddr string) (int, string) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+adminAddr+"/readyz", nil)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer res.Body.Close()
	var b strings.Builder
	sc := bufio.NewScanner(res.Body)
	for sc.Scan() {
		b.WriteString(sc.Text() + "\n")
	}
	return res.StatusCode, b.String()
}

// waitReady polls /readyz until it answers 200, failing t after timeout
// or when p exits first.
func waitReady(t testing.TB, ctx context.Context, p *proc, adminAddr string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var code int
	var body string
	for time.Now().Before(deadline) {
		if code, body = readyz(ctx, adminAddr); code == http.StatusOK {
			return
		}
		if p != nil && p.Exited() {
			t.Fatalf("%s exited while waiting for it to be ready; log:\n%s", p.name, tail(p.log, 40))
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s /readyz: %v", adminAddr, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	t.Fatalf("%s /readyz not 200 within %v: last %d %q", adminAddr, timeout, code, body)
}

// killOrphans stops, at the end of a test, the postgres and redis-server
// that a SIGKILLed `chapper dev` left running from dir (dev mode starts
// them without a parent-death signal, to adopt them after a crash).
func killOrphans(t testing.TB, dir string) {
	t.Cleanup(func() {
		for _, pf := range []string{filepath.Join(dir, "redis", "redis.pid"), filepath.Join(dir, "redis-ids", "redis.pid"), filepath.Join(dir, "pg", "postmaster.pid")} {
			b, err := os.ReadFile(pf)
			if err != nil {
				continue
			}
			first, _, _ := strings.Cut(string(b), "\n")
			pid, err := strconv.Atoi(strings.TrimSpace(first))
			if err != nil || pid <= 0 {
				continue
			}
			// only a process of this directory: the pid may be reused
			cwd, _ := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
			cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			if strings.HasPrefix(cwd, dir) || strings.Contains(string(cmdline), dir) {
				_ = syscall.Kill(pid, syscall.SIGTERM)
			}
		}
	})
}

// devChildren returns dev's chapper child processes by role: "search"
// (`chapper search-server`) and "pipelines" (`chapper serve`), those that
// run.
func devChildren(t testing.TB, dev *proc) map[string]int {
	roles := map[string]string{devstack.SearchServerCommand: "search", "serve": "pipelines"}
	dev.mu.Lock()
	pid := dev.cmd.Process.Pid
	dev.mu.Unlock()
	found := map[string]int{}
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	for _, task := range tasks {
		data, _ := os.ReadFile(task)
		for _, c := range strings.Fields(string(data)) {
			cmdline, _ := os.ReadFile("/proc/" + c + "/cmdline")
			if args := strings.Split(string(cmdline), "\x00"); len(args) > 1 && roles[args[1]] != "" {
				n, err := strconv.Atoi(c)
				if err != nil {
					t.Fatalf("/proc children of pid %d: %q", pid, c)
				}
				found[roles[args[1]]] = n
			}
		}
	}
	return found
}
