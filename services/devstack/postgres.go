package devstack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// PostgresBinDir holds the Postgres 15 server binaries. Debian's
// postgresql-15 puts them here, and the plproxy extension of
// postgresql-15-plproxy is found only by these binaries.
const PostgresBinDir = "/usr/lib/postgresql/15/bin"

// postgresLog is the server's log file inside the data directory.
const postgresLog = "postgres.log"

// startTimeout bounds a server's start-up (crash recovery included) when
// the caller's context has no earlier deadline.
const startTimeout = 2 * time.Minute

// PostgresConfig configures a private Postgres cluster.
type PostgresConfig struct {
	// DataDir is the cluster directory; it is initdb'd when missing or
	// empty. The postgres user must be able to reach it when running as
	// root: StartPostgres adds the search bit to parents that lack it.
	DataDir string
	// Addr is the listen address, host:port. Port 0 picks a free port.
	Addr string
	// Databases are created when missing, e.g. chapper_router.
	Databases []string
	// Fast turns off fsync, synchronous_commit and full_page_writes: a
	// crash of the machine can lose or corrupt data. Tests only.
	Fast bool
	// Logger receives start/stop events; nil means slog.Default().
	Logger *slog.Logger
	// DieWithParent asks the kernel to stop the server (fast shutdown)
	// when this process dies, so a test binary that panics leaves nothing
	// running. Dev mode leaves it off: a server outliving a crash of
	// chapper is restarted by the next StartPostgres.
	DieWithParent bool
}

// Postgres is a private Postgres cluster run as a child process: trust
// authentication on loopback for the superuser `postgres`, listening only
// on the configured host, its unix socket in the data directory and its log
// in DataDir/postgres.log. The methods are safe for concurrent use.
type Postgres struct {
	cfg  PostgresConfig
	dir  string // absolute data directory
	host string
	port int
	user *runUser // nil: the current user
	log  *slog.Logger

	mu     sync.Mutex
	proc   *child
	closed bool
}

// StartPostgres initialises the cluster if needed, starts it and creates
// cfg.Databases. A server left running from the same data directory by a
// crashed run is shut down (fast) and started again as a child of this
// process; a stale postmaster.pid does not block the start. When running as
// root the server runs as the `postgres` system user. It returns an error
// wrapping ErrNotInstalled when Postgres 15 is missing.
func StartPostgres(ctx context.Context, cfg PostgresConfig) (*Postgres, error) {
	for _, bin := range []string{"initdb", "postgres"} {
		if _, err := os.Stat(filepath.Join(PostgresBinDir, bin)); err != nil {
			return nil, fmt.Errorf("finding %s: %w", filepath.Join(PostgresBinDir, bin), ErrNotInstalled)
		}
	}
	if cfg.DataDir == "" {
		return nil, errors.New("postgres data directory not set")
	}
	dir, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("resolving postgres data directory: %w", err)
	}
	host, port, err := splitAddr(cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	u, err := lookupRunUser("postgres")
	if err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	p := &Postgres{cfg: cfg, dir: dir, host: host, port: port, user: u, log: log.With("server", "postgres")}
	ctx, cancel := startContext(ctx)
	defer cancel()
	if err := p.prepare(ctx); err != nil {
		return nil, err
	}
	p.mu.Lock()
	err = p.startLocked(ctx)
	p.mu.Unlock()
	if err != nil {
		return nil, err
	}
	for _, db := range cfg.Databases {
		if err := p.CreateDatabase(ctx, db, ""); err != nil {
			_ = p.Close()
			return nil, err
		}
	}
	return p, nil
}

// startContext bounds ctx by startTimeout.
func startContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if d, ok := ctx.Deadline(); ok && time.Until(d) < startTimeout {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, startTimeout)
}

// prepare makes the data directory reachable and owned by the server's
// user, and runs initdb when it holds no cluster.
func (p *Postgres) prepare(ctx context.Context) error {
	parent := filepath.Dir(p.dir)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", parent, err)
	}
	if err := ensureTraversable(parent, p.user, p.log); err != nil {
		return err
	}
	if err := os.Mkdir(p.dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("creating postgres data directory: %w", err)
	}
	if err := chownTree(p.dir, p.user); err != nil {
		return fmt.Errorf("giving %s to the postgres user: %w", p.dir, err)
	}
	// Postgres refuses a data directory readable by others.
	if err := os.Chmod(p.dir, 0o700); err != nil {
		return fmt.Errorf("restricting %s: %w", p.dir, err)
	}
	if _, err := os.Stat(filepath.Join(p.dir, "PG_VERSION")); err == nil {
		return nil
	}
	entries, err := os.ReadDir(p.dir)
	if err != nil {
		return fmt.Errorf("reading postgres data directory: %w", err)
	}
	if len(entries) > 0 {
		return fmt.Errorf("postgres data directory %s is not empty but holds no cluster (no PG_VERSION): remove it to start afresh", p.dir)
	}
	args := []string{"-D", p.dir, "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--no-locale", "--no-instructions"}
	if p.cfg.Fast {
		args = append(args, "--no-sync")
	}
	cmd := exec.CommandContext(ctx, filepath.Join(PostgresBinDir, "initdb"), args...)
	cmd.Dir = "/"
	cmd.Env = serverEnv()
	cmd.SysProcAttr = childAttr(p.user, false, 0)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("initdb %s: %w\n%s", p.dir, err, out)
	}
	p.log.Info("initialised postgres cluster", "data_dir", p.dir, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// serverEnv is the environment of server processes: ours without
// client-side PG variables, in the C locale.
func serverEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") || strings.HasPrefix(kv, "LC_") || strings.HasPrefix(kv, "LANG=") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "LANG=C", "LC_ALL=C")
}

// startLocked starts the server and waits until it accepts connections.
// p.mu is held.
func (p *Postgres) startLocked(ctx context.Context) error {
	if p.closed {
		return ErrClosed
	}
	if p.proc != nil && !p.proc.exited() {
		return nil
	}
	p.proc = nil
	if err := p.clearLeftovers(); err != nil {
		return err
	}
	args := []string{"-D", p.dir,
		"-c", "listen_addresses=" + listenHost(p.host),
		"-c", "port=" + strconv.Itoa(p.port),
		"-c", "unix_socket_directories=" + p.socketDir(),
		"-c", "max_connections=300",
		"-c", "logging_collector=off",
	}
	if p.cfg.Fast {
		args = append(args, "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")
	}
	cmd := exec.Command(filepath.Join(PostgresBinDir, "postgres"), args...)
	cmd.Dir = "/"
	cmd.Env = serverEnv()
	start := time.Now()
	proc, err := launch(ctx, cmd, launchSpec{
		name: "postgres", addr: p.Addr(), dir: p.dir, logPath: filepath.Join(p.dir, postgresLog), user: p.user,
		dieWithParent: p.cfg.DieWithParent, deathSig: syscall.SIGINT,
		ready: p.waitReady,
	})
	if err != nil {
		return err
	}
	p.proc = proc
	p.log.Info("postgres started", "addr", p.Addr(), "data_dir", p.dir, "pid", proc.pid(), "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// socketDir returns the unix socket directory: the data directory, or none
// when its path is too long for a socket address.
func (p *Postgres) socketDir() string {
	if len(p.dir)+len("/.s.PGSQL.65535") >= 100 {
		return ""
	}
	// The setting is a comma-separated list; quoting keeps a directory
	// with a comma whole.
	return `"` + strings.ReplaceAll(p.dir, `"`, `""`) + `"`
}

// listenHost maps a Go listen host to listen_addresses.
func listenHost(host string) string {
	if host == "" {
		return "*"
	}
	return host
}

// clearLeftovers stops a postmaster left running from this data directory
// by a crashed run, kills backends orphaned by a killed postmaster, and
// removes a postmaster.pid naming a live process that is not ours (pid
// reuse) which postgres would take for a running server. A postmaster.pid
// naming a dead process is left for postgres, which checks the old shared
// memory before reusing the directory.
func (p *Postgres) clearLeftovers() error {
	pidPath := filepath.Join(p.dir, "postmaster.pid")
	if pid := readPidFile(pidPath); pid > 0 && processIn(pid, "postgres", p.dir) {
		p.log.Warn("a postgres from this data directory was left running (crashed run?); restarting it", "pid", pid)
		if err := stopOrphan(pid, syscall.SIGINT, stopTimeout); err != nil {
			return fmt.Errorf("stopping leftover postgres: %w", err)
		}
	}
	for _, pid := range processesIn("postgres", p.dir) {
		p.log.Warn("killing a postgres process orphaned by a dead postmaster", "pid", pid)
		_ = syscall.Kill(pid, syscall.SIGKILL)
		waitGone(pid, 10*time.Second)
	}
	if pid := readPidFile(pidPath); pid > 0 && processAlive(pid) && !processIn(pid, "postgres", p.dir) {
		p.log.Warn("removing a stale postmaster.pid naming an unrelated live process", "pid", pid)
		if err := os.Remove(pidPath); err != nil {
			return fmt.Errorf("removing stale postmaster.pid: %w", err)
		}
	}
	return nil
}

// processesIn lists live processes running program in dir.
func processesIn(program, dir string) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if processIn(pid, program, dir) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// waitReady waits until the postmaster proc reports "ready" in
// postmaster.pid (as pg_ctl does) and answers a query from this data
// directory.
func (p *Postgres) waitReady(ctx context.Context, proc *child) error {
	pidPath := filepath.Join(p.dir, "postmaster.pid")
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if proc.exited() {
			return fmt.Errorf("postgres exited during start-up: %v", proc.err)
		}
		if postmasterReady(pidPath, proc.pid()) {
			err := p.verify(ctx)
			if err == nil {
				return nil
			}
			if ctx.Err() != nil {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for postgres to accept connections: %w", ctx.Err())
		case <-tick.C:
		}
	}
}

// postmasterReady reports whether postmaster.pid names pid and says
// "ready" (line 8, PM_STATUS_READY).
func postmasterReady(path string, pid int) bool {
	b, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	lines := strings.Split(string(b), "\n")
	return len(lines) >= 8 && strings.TrimSpace(lines[0]) == strconv.Itoa(pid) && strings.TrimSpace(lines[7]) == "ready"
}

// verify connects and checks that the server on Addr serves this data
// directory, not some other server holding the port.
func (p *Postgres) verify(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(cctx, p.URL("postgres"))
	if err != nil {
		return fmt.Errorf("connecting: %w", err)
	}
	defer conn.Close(context.Background())
	var dataDir string
	if err := conn.QueryRow(cctx, "SHOW data_directory").Scan(&dataDir); err != nil {
		return fmt.Errorf("asking for the data directory: %w", err)
	}
	a, errA := os.Stat(dataDir)
	b, errB := os.Stat(p.dir)
	if errA != nil || errB != nil || !os.SameFile(a, b) {
		return fmt.Errorf("the server on %s serves %s, not %s", p.Addr(), dataDir, p.dir)
	}
	return nil
}

// Addr returns the server's host:port.
func (p *Postgres) Addr() string {
	return net.JoinHostPort(dialHost(p.host), strconv.Itoa(p.port))
}

// DataDir returns the absolute data directory.
func (p *Postgres) DataDir() string { return p.dir }

// URL returns a connection URL for database db as the superuser, e.g.
// postgres://postgres@127.0.0.1:15432/chapper_router?sslmode=disable.
func (p *Postgres) URL(db string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User("postgres"),
		Host:     p.Addr(),
		Path:     "/" + db,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// CreateDatabase creates database name as a copy of template ("" means the
// default, template1). An existing database is left as it is. A template
// still in use by a closing connection is retried until ctx is done.
func (p *Postgres) CreateDatabase(ctx context.Context, name, template string) error {
	conn, err := pgx.Connect(ctx, p.URL("postgres"))
	if err != nil {
		return fmt.Errorf("connecting to create database %s: %w", name, err)
	}
	defer conn.Close(context.Background())
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		return fmt.Errorf("checking for database %s: %w", name, err)
	}
	if exists {
		return nil
	}
	sql := "CREATE DATABASE " + pgx.Identifier{name}.Sanitize()
	if template != "" {
		sql += " TEMPLATE " + pgx.Identifier{template}.Sanitize()
	}
	for delay := 20 * time.Millisecond; ; delay = min(2*delay, 500*time.Millisecond) {
		_, err := conn.Exec(ctx, sql)
		var pgErr *pgconn.PgError
		switch {
		case err == nil:
			return nil
		case errors.As(err, &pgErr) && pgErr.Code == "42P04": // duplicate_database: created concurrently
			return nil
		case errors.As(err, &pgErr) && pgErr.Code == "55006": // object_in_use: template still has a session
		default:
			return fmt.Errorf("creating database %s: %w", name, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("creating database %s from %s: %w", name, template, err)
		case <-time.After(delay):
		}
	}
}

// DropDatabase drops database name if it exists, ending its sessions
// (WITH (FORCE)).
func (p *Postgres) DropDatabase(ctx context.Context, name string) error {
	conn, err := pgx.Connect(ctx, p.URL("postgres"))
	if err != nil {
		return fmt.Errorf("connecting to drop database %s: %w", name, err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("dropping database %s: %w", name, err)
	}
	return nil
}

// Stop shuts the server down (fast shutdown: sessions are ended, data is
// kept) and waits for it to exit. Start brings it back on the same address.
// Stop on a stopped server does nothing.
func (p *Postgres) Stop() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stopLocked()
}

func (p *Postgres) stopLocked() error {
	return stopLaunched(&p.proc, syscall.SIGINT, "postgres", p.Addr(), p.log)
}

// Start starts the server again after Stop (or after it died), on the same
// address and data. Start on a running server does nothing; after Close it
// returns ErrClosed.
func (p *Postgres) Start(ctx context.Context) error {
	ctx, cancel := startContext(ctx)
	defer cancel()
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.startLocked(ctx)
}

// Close stops the server for good, keeping its data. It is idempotent.
func (p *Postgres) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	return p.stopLocked()
}
