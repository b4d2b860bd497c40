package devstack

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ErrNotInstalled reports that a server binary (postgres, redis-server) is
// missing from this machine. `make setup` installs them.
var ErrNotInstalled = errors.New("not installed on this machine: run `make setup`")

// ErrClosed reports a Start after Close.
var ErrClosed = errors.New("server closed")

// stopTimeout bounds a graceful shutdown before the process is killed.
const stopTimeout = 60 * time.Second

// runUser is the system user a server runs as. A nil *runUser means the
// current user.
type runUser struct {
	name   string
	uid    uint32
	gid    uint32
	groups []uint32
}

// lookupRunUser returns the user named name, or nil when the current user
// is not root (servers then run as the current user).
func lookupRunUser(name string) (*runUser, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("looking up system user %q (the server refuses to run as root): %w: %w", name, err, ErrNotInstalled)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("parsing uid of %q: %w", name, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("parsing gid of %q: %w", name, err)
	}
	ru := &runUser{name: name, uid: uint32(uid), gid: uint32(gid)}
	gids, err := u.GroupIds()
	if err != nil {
		gids = []string{u.Gid}
	}
	for _, g := range gids {
		n, err := strconv.ParseUint(g, 10, 32)
		if err == nil {
			ru.groups = append(ru.groups, uint32(n))
		}
	}
	return ru, nil
}

// inGroup reports whether the user belongs to group gid.
func (u *runUser) inGroup(gid uint32) bool {
	if gid == u.gid {
		return true
	}
	for _, g := range u.groups {
		if g == gid {
			return true
		}
	}
	return false
}

// ensureTraversable makes every directory from dir up to / searchable by u,
// adding only the search (x) bit of the class u falls in where it is
// missing. Checkouts inside a mode-0700 directory owned by root (and
// t.TempDir) are otherwise unreachable for the postgres user.
func ensureTraversable(dir string, u *runUser, log *slog.Logger) error {
	if u == nil {
		return nil
	}
	for d := dir; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return fmt.Errorf("checking access to %s: %w", d, err)
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return fmt.Errorf("checking access to %s: no unix stat", d)
		}
		mode := fi.Mode().Perm()
		var bit os.FileMode
		switch {
		case st.Uid == u.uid:
			bit = 0o100
		case u.inGroup(st.Gid):
			bit = 0o010
		default:
			bit = 0o001
		}
		if mode&bit == 0 {
			if err := os.Chmod(d, mode|bit); err != nil {
				return fmt.Errorf("letting user %s enter %s: %w", u.name, d, err)
			}
			log.Info("made a directory searchable (x only) so the server's user can reach its data",
				"dir", d, "user", u.name, "mode", fmt.Sprintf("%04o", mode|bit))
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}

// chownTree gives dir and everything in it to u when they belong to
// someone else.
func chownTree(dir string, u *runUser) error {
	if u == nil {
		return nil
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid == u.uid && st.Gid == u.gid {
		return nil
	}
	return filepath.WalkDir(dir, func(path string, _ os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(path, int(u.uid), int(u.gid))
	})
}

// child is a server process this process started and reaps.
type child struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once the process exited and was reaped
	err  error         // exit error, valid after done
}

// childAttr returns the process attributes of a server started as u: its
// own process group (a terminal's Ctrl-C reaches only chapper, which then
// stops the servers in order) and, when dieWithParent is set, deathSig
// once this process dies.
func childAttr(u *runUser, dieWithParent bool, deathSig syscall.Signal) *syscall.SysProcAttr {
	attr := &syscall.SysProcAttr{Setpgid: true}
	if u != nil {
		attr.Credential = &syscall.Credential{Uid: u.uid, Gid: u.gid, Groups: u.groups}
	}
	if dieWithParent {
		attr.Pdeathsig = deathSig
	}
	return attr
}

// spawner starts processes from one goroutine locked to its OS thread that
// never exits: Linux sends the parent-death signal when the forking
// *thread* exits, so a child with Pdeathsig must be forked by a thread that
// lives as long as the process.
var spawner struct {
	once sync.Once
	reqs chan spawnReq
}

type spawnReq struct {
	cmd *exec.Cmd
	res chan error
}

// startCmd starts cmd, through the spawner when it asks for a parent-death
// signal.
func startCmd(cmd *exec.Cmd) error {
	if cmd.SysProcAttr == nil || cmd.SysProcAttr.Pdeathsig == 0 {
		return cmd.Start()
	}
	spawner.once.Do(func() {
		spawner.reqs = make(chan spawnReq)
		go func() {
			runtime.LockOSThread() // never unlocked: this thread must outlive its children
			for r := range spawner.reqs {
				r.res <- r.cmd.Start()
			}
		}()
	})
	res := make(chan error, 1)
	spawner.reqs <- spawnReq{cmd: cmd, res: res}
	return <-res
}

// startChild starts cmd and reaps it in the background.
func startChild(cmd *exec.Cmd) (*child, error) {
	if err := startCmd(cmd); err != nil {
		return nil, err
	}
	c := &child{cmd: cmd, done: make(chan struct{})}
	go func() {
		c.err = cmd.Wait()
		close(c.done)
	}()
	return c, nil
}

// launchSpec says how to start one server child: launch appends its
// output to logPath, starts it as user (dying with this process on deathSig
// when dieWithParent), lowers its CPU priority to nice when not 0, and
// waits for ready.
type launchSpec struct {
	name          string // for messages: "redis-server", "postgres"
	addr, dir     string // the listen address and data directory, for messages
	logPath       string
	user          *runUser
	dieWithParent bool
	deathSig      syscall.Signal // also the signal that stops a child that failed to get ready
	nice          int
	ready         func(ctx context.Context, proc *child) error
}

// launch starts cmd as spec says and returns the child once it is ready.
// A child that does not get ready is stopped, and the error carries the
// tail of its log.
func launch(ctx context.Context, cmd *exec.Cmd, spec launchSpec) (*child, error) {
	logf, err := openLog(spec.logPath, spec.user)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = childAttr(spec.user, spec.dieWithParent, spec.deathSig)
	proc, err := startChild(cmd)
	if err != nil {
		return nil, fmt.Errorf("starting %s: %w", spec.name, err)
	}
	if spec.nice != 0 {
		err = renice(proc.pid(), spec.nice)
	}
	if err == nil {
		err = spec.ready(ctx, proc)
	}
	if err != nil {
		_ = proc.stop(spec.deathSig, 10*time.Second)
		return nil, withLogTail(fmt.Errorf("starting %s on %s (data %s): %w", spec.name, spec.addr, spec.dir, err), spec.logPath)
	}
	return proc, nil
}

// pollReady calls try every 10 ms until it reports the server ready (a
// nil error), fails for good (retry false), proc exits or ctx ends.
func pollReady(ctx context.Context, proc *child, name string, try func() (retry bool, err error)) error {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if proc.exited() {
			return fmt.Errorf("%s exited during start-up: %v", name, proc.err)
		}
		retry, err := try()
		if err == nil || !retry {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s to answer (last: %v): %w", name, err, ctx.Err())
		case <-tick.C:
		}
	}
}

// stopLaunched stops the child *proc (sig, then SIGKILL after
// stopTimeout) and clears *proc; it does nothing when *proc is nil.
func stopLaunched(proc **child, sig syscall.Signal, name, addr string, log *slog.Logger) error {
	if *proc == nil {
		return nil
	}
	p := *proc
	*proc = nil
	if err := p.stop(sig, stopTimeout); err != nil {
		return fmt.Errorf("stopping %s: %w", name, err)
	}
	log.Info(name+" stopped", "addr", addr)
	return nil
}

// renice sets the nice value of every thread of process pid. Linux keeps
// the value per thread and a new thread inherits its creator's, so the
// threads are set over and over until a pass finds none left to change: a
// thread cloned from one not yet set existed before its creator was set,
// and the next pass sees it.
func renice(pid, nice int) error {
	for {
		tids, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		if err != nil {
			return fmt.Errorf("listing the threads of pid %d: %w", pid, err)
		}
		changed := false
		for _, t := range tids {
			tid, err := strconv.Atoi(t.Name())
			if err != nil || threadNice(pid, tid) == nice {
				continue
			}
			// a thread may end between the listing and here
			if err := syscall.Setpriority(syscall.PRIO_PROCESS, tid, nice); err != nil && !errors.Is(err, syscall.ESRCH) {
				return fmt.Errorf("setting nice %d on pid %d: %w", nice, pid, err)
			}
			changed = true
		}
		if !changed {
			return nil
		}
	}
}

// threadNice returns the nice value of thread tid of process pid (field 19
// of its stat), or an impossible 100 when it cannot be read.
func threadNice(pid, tid int) int {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/stat", pid, tid))
	if err != nil {
		return 100
	}
	n, err := statNice(stat)
	if err != nil {
		return 100
	}
	return n
}

// statNice returns the nice value (field 19) of a /proc stat line.
func statNice(stat []byte) (int, error) {
	// The fields after the parenthesised command name (field 2) are
	// space-separated; field 3, the state, comes first.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("no command name in stat")
	}
	fields := strings.Fields(string(stat[i+1:]))
	if len(fields) < 17 {
		return 0, fmt.Errorf("stat has %d fields after the command name, want at least 17", len(fields))
	}
	return strconv.Atoi(fields[16])
}

// pid returns the child's process id.
func (c *child) pid() int { return c.cmd.Process.Pid }

// exited reports whether the child has exited.
func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// stop sends sig and waits for the child to exit; after timeout it kills
// the child. It returns nil when the child exited (for whatever reason).
func (c *child) stop(sig syscall.Signal, timeout time.Duration) error {
	if c.exited() {
		return nil
	}
	if err := c.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signalling pid %d: %w", c.pid(), err)
	}
	select {
	case <-c.done:
		return nil
	case <-time.After(timeout):
	}
	_ = c.cmd.Process.Kill()
	<-c.done
	return fmt.Errorf("pid %d did not stop within %s after %s; killed it", c.pid(), timeout, sig)
}

// processAlive reports whether pid is a live process (a zombie is dead).
func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name, which may itself
	// hold spaces or parentheses.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 || i+2 >= len(stat) {
		return true
	}
	state := stat[i+2]
	return state != 'Z' && state != 'X'
}

// processIn reports whether the live process pid runs program (by its
// command name) with its working directory at dir. Postgres and
// redis-server both change into their data directory, so this tells a
// server left from the same data directory from a reused pid.
func processIn(pid int, program, dir string) bool {
	if !processAlive(pid) {
		return false
	}
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil || !strings.HasPrefix(strings.TrimSpace(string(comm)), program) {
		return false
	}
	cwd, err := os.Stat(fmt.Sprintf("/proc/%d/cwd", pid))
	if err != nil {
		return false
	}
	want, err := os.Stat(dir)
	if err != nil {
		return false
	}
	return os.SameFile(cwd, want)
}

// stopOrphan stops a server process this process did not start (left over
// from a crashed run): sig, then SIGKILL after timeout.
func stopOrphan(pid int, sig syscall.Signal, timeout time.Duration) error {
	if err := syscall.Kill(pid, sig); err != nil {
		if errors.Is(err, syscall.ESRCH) {
			return nil
		}
		return fmt.Errorf("signalling leftover pid %d: %w", pid, err)
	}
	if waitGone(pid, timeout) {
		return nil
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	if waitGone(pid, 10*time.Second) {
		return nil
	}
	return fmt.Errorf("leftover pid %d survived SIGKILL", pid)
}

// waitGone waits until pid is no longer alive, up to timeout.
func waitGone(pid int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for processAlive(pid) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

// readPidFile returns the pid on the first line of path, 0 if there is
// none.
func readPidFile(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		return 0
	}
	return pid
}

// logTail returns the last n lines of the file at path, for error messages.
func logTail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	const max = 16 << 10
	if fi, err := f.Stat(); err == nil && fi.Size() > max {
		_, _ = f.Seek(fi.Size()-max, io.SeekStart)
	}
	b, _ := io.ReadAll(f)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// withLogTail appends the tail of the log at path to err.
func withLogTail(err error, path string) error {
	tail := logTail(path, 25)
	if tail == "" {
		return err
	}
	return fmt.Errorf("%w\n--- last lines of %s ---\n%s", err, path, tail)
}

// openLog opens path for appending, owned by u.
func openLog(path string, u *runUser) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return nil, fmt.Errorf("opening log %s: %w", path, err)
	}
	if u != nil {
		_ = f.Chown(int(u.uid), int(u.gid))
	}
	return f, nil
}

// splitAddr splits host:port, choosing a free port for port 0.
func splitAddr(addr string) (string, int, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("parsing listen address %q: %w", addr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return "", 0, fmt.Errorf("parsing listen port %q: %w", portStr, err)
	}
	if port == 0 {
		if port, err = freePort(host); err != nil {
			return "", 0, err
		}
	}
	return host, port, nil
}

// dialHost returns the host clients should dial for a server listening on
// host: loopback for an unspecified address.
func dialHost(host string) string {
	switch host {
	case "", "0.0.0.0", "::", "*":
		return "127.0.0.1"
	}
	return host
}
