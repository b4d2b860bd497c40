package devstack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisServerBin is the redis-server binary Debian's redis-server package
// installs.
const RedisServerBin = "redis-server"

// RedisConfig configures a private redis-server.
type RedisConfig struct {
	// DataDir holds the append-only file, redis.pid and redis.log; it is
	// created when missing.
	DataDir string
	// Addr is the listen address, host:port. Port 0 picks a free port.
	Addr string
	// Logger receives start/stop events; nil means slog.Default().
	Logger *slog.Logger
	// DieWithParent asks the kernel to stop the server (SIGTERM, which
	// flushes the append-only file) when this process dies, so a test
	// binary that panics leaves nothing running. Dev mode leaves it off.
	DieWithParent bool
	// Extra are more redis-server command-line options, such as
	// {"--cluster-enabled", "yes"}. They come after the defaults, so they
	// override them (redis-server keeps the last value of an option).
	Extra []string
}

// Redis is a private redis-server run as a child process: no password,
// bound to the configured host, append-only file on (fsync every second),
// RDB snapshots off, unless RedisConfig.Extra says otherwise. The methods
// are safe for concurrent use.
type Redis struct {
	cfg  RedisConfig
	bin  string
	dir  string
	host string
	port int
	log  *slog.Logger

	mu     sync.Mutex
	proc   *child
	closed bool
}

// StartRedis starts a redis-server on cfg.Addr with its data in
// cfg.DataDir. A redis-server left running from the same data directory by
// a crashed run is shut down (it flushes its append-only file) and started
// again as a child of this process; a stale pidfile does not block the
// start. It returns an error wrapping ErrNotInstalled when redis-server is
// missing.
func StartRedis(ctx context.Context, cfg RedisConfig) (*Redis, error) {
	bin, err := exec.LookPath(RedisServerBin)
	if err != nil {
		return nil, fmt.Errorf("finding redis-server: %w", ErrNotInstalled)
	}
	if cfg.DataDir == "" {
		return nil, errors.New("redis data directory not set")
	}
	dir, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("resolving redis data directory: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating redis data directory: %w", err)
	}
	host, port, err := splitAddr(cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("redis: %w", err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	r := &Redis{cfg: cfg, bin: bin, dir: dir, host: host, port: port, log: log.With("server", "redis")}
	ctx, cancel := startContext(ctx)
	defer cancel()
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.startLocked(ctx); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *Redis) pidPath() string { return filepath.Join(r.dir, "redis.pid") }
func (r *Redis) logPath() string { return filepath.Join(r.dir, "redis.log") }

// startLocked starts the server and waits until it answers PING. r.mu is
// held.
func (r *Redis) startLocked(ctx context.Context) error {
	if r.closed {
		return ErrClosed
	}
	if r.proc != nil && !r.proc.exited() {
		return nil
	}
	r.proc = nil
	if pid := readPidFile(r.pidPath()); pid > 0 {
		if processIn(pid, "redis-server", r.dir) {
			r.log.Warn("a redis-server from this data directory was left running (crashed run?); restarting it", "pid", pid)
			if err := stopOrphan(pid, syscall.SIGTERM, stopTimeout); err != nil {
				return fmt.Errorf("stopping leftover redis-server: %w", err)
			}
		}
		// redis-server overwrites its pidfile; removing a stale one keeps
		// a dead or reused pid from being mistaken for ours later.
		_ = os.Remove(r.pidPath())
	}
	bind := r.host
	if bind == "" {
		bind = "* -::*"
	}
	cmd := exec.Command(r.bin,
		"--bind", bind,
		"--port", strconv.Itoa(r.port),
		"--dir", r.dir,
		"--daemonize", "no",
		"--pidfile", r.pidPath(),
		"--logfile", r.logPath(),
		"--appendonly", "yes",
		"--appendfsync", "everysec",
		"--save", "",
		"--protected-mode", "no",
	)
	cmd.Args = append(cmd.Args, r.cfg.Extra...)
	cmd.Dir = r.dir
	start := time.Now()
	proc, err := launch(ctx, cmd, launchSpec{
		name: "redis-server", addr: r.Addr(), dir: r.dir, logPath: r.logPath(), dieWithParent: r.cfg.DieWithParent, deathSig: syscall.SIGTERM,
		ready: r.waitReady,
	})
	if err != nil {
		return err
	}
	r.proc = proc
	r.log.Info("redis-server started", "addr", r.Addr(), "data_dir", r.dir, "pid", proc.pid(), "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// waitReady waits until proc answers PING (not LOADING) and serves this
// data directory.
func (r *Redis) waitReady(ctx context.Context, proc *child) error {
	c := redis.NewClient(&redis.Options{Addr: r.Addr(), DialTimeout: time.Second, MaxRetries: -1, PoolSize: 1})
	defer c.Close()
	return pollReady(ctx, proc, "redis-server", func() (bool, error) {
		// Dial first: go-redis logs every refused dial of its pool.
		if err := dialOnce(ctx, r.Addr()); err != nil {
			return true, err
		}
		if err := c.Ping(ctx).Err(); err != nil {
			return true, err
		}
		dir, err := c.ConfigGet(ctx, "dir").Result()
		if err != nil {
			return false, fmt.Errorf("asking for the data directory: %w", err)
		}
		a, errA := os.Stat(dir["dir"])
		b, errB := os.Stat(r.dir)
		if errA != nil || errB != nil || !os.SameFile(a, b) {
			return false, fmt.Errorf("the server on %s serves %s, not %s", r.Addr(), dir["dir"], r.dir)
		}
		return false, nil
	})
}

// dialOnce reports whether a TCP connection to addr succeeds.
func dialOnce(ctx context.Context, addr string) error {
	var d net.Dialer
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	return conn.Close()
}

// Addr returns the server's host:port.
func (r *Redis) Addr() string {
	return net.JoinHostPort(dialHost(r.host), strconv.Itoa(r.port))
}

// DataDir returns the absolute data directory.
func (r *Redis) DataDir() string { return r.dir }

// Stop shuts the server down (SIGTERM: it flushes the append-only file)
// and waits for it to exit. Start brings it back on the same address with
// the same data. Stop on a stopped server does nothing.
func (r *Redis) Stop() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stopLocked()
}

func (r *Redis) stopLocked() error {
	return stopLaunched(&r.proc, syscall.SIGTERM, "redis-server", r.Addr(), r.log)
}

// Start starts the server again after Stop (or after it died), on the same
// address and data. Start on a running server does nothing; after Close it
// returns ErrClosed.
func (r *Redis) Start(ctx context.Context) error {
	ctx, cancel := startContext(ctx)
	defer cancel()
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.startLocked(ctx)
}

// Close stops the server for good, keeping its data. It is idempotent.
func (r *Redis) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	return r.stopLocked()
}
