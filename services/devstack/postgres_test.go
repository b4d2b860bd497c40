package devstack_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/chapper/chapper/services/devstack"
	"github.com/chapper/chapper/services/devstack/devtest"
)

func TestMain(m *testing.M) { devtest.Main(m) }

// startPG starts a private cluster in dir with the options of a test and
// closes it when t ends.
func startPG(ctx context.Context, t *testing.T, dir string, dbs ...string) *devstack.Postgres {
	t.Helper()
	pg, err := devstack.StartPostgres(ctx, devstack.PostgresConfig{
		DataDir: dir, Addr: "127.0.0.1:0", Databases: dbs, Fast: true, DieWithParent: true,
	})
	if err != nil {
		t.Fatalf("starting postgres: %v", err)
	}
	t.Cleanup(func() {
		if err := pg.Close(); err != nil {
			t.Errorf("closing postgres: %v", err)
		}
	})
	return pg
}

// exec runs sql on database db of pg.
func execSQL(ctx context.Context, t *testing.T, pg *devstack.Postgres, db, sql string) {
	t.Helper()
	conn, err := pgx.Connect(ctx, pg.URL(db))
	if err != nil {
		t.Fatalf("connecting to %s: %v", db, err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, sql); err != nil {
		t.Fatalf("%s on %s: %v", sql, db, err)
	}
}

// count returns the rows of table marks in db, or an error.
func count(ctx context.Context, pg *devstack.Postgres, db string) (int, error) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(cctx, pg.URL(db))
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.Background())
	var n int
	err = conn.QueryRow(cctx, "SELECT count(*) FROM marks").Scan(&n)
	return n, err
}

func TestPostgresStopStartKeepsData(t *testing.T) {
	if testing.Short() {
		t.Skip("starts postgres")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pg := startPG(ctx, t, filepath.Join(t.TempDir(), "pg"), "chapper_router", "chapper_shard_0", "chapper_shard_1")
	addr := pg.Addr()
	if want := "postgres://postgres@" + addr + "/chapper_router?sslmode=disable"; pg.URL("chapper_router") != want {
		t.Errorf("URL = %s, want %s", pg.URL("chapper_router"), want)
	}
	for _, db := range []string{"chapper_router", "chapper_shard_0", "chapper_shard_1"} {
		execSQL(ctx, t, pg, db, "CREATE TABLE marks (n int); INSERT INTO marks VALUES (1), (2)")
	}
	// Creating again is a no-op.
	if err := pg.CreateDatabase(ctx, "chapper_shard_0", ""); err != nil {
		t.Fatalf("creating an existing database: %v", err)
	}

	if err := pg.Stop(); err != nil {
		t.Fatalf("stopping: %v", err)
	}
	if _, err := count(ctx, pg, "chapper_shard_0"); err == nil {
		t.Fatal("a stopped server answered")
	}
	if err := pg.Stop(); err != nil {
		t.Fatalf("stopping twice: %v", err)
	}
	if err := pg.Start(ctx); err != nil {
		t.Fatalf("starting again: %v", err)
	}
	if pg.Addr() != addr {
		t.Errorf("address changed across a restart: %s, then %s", addr, pg.Addr())
	}
	for _, db := range []string{"chapper_router", "chapper_shard_0", "chapper_shard_1"} {
		if n, err := count(ctx, pg, db); err != nil || n != 2 {
			t.Errorf("%s after restart: %d rows, err %v; want 2", db, n, err)
		}
	}
	if err := pg.Start(ctx); err != nil {
		t.Fatalf("starting a running server: %v", err)
	}
	if err := pg.Close(); err != nil {
		t.Fatalf("closing: %v", err)
	}
	if err := pg.Start(ctx); !errors.Is(err, devstack.ErrClosed) {
		t.Errorf("Start after Close = %v, want ErrClosed", err)
	}
}

func TestPostgresPlproxy(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pg := devtest.Postgres(t)
	db := devtest.Database(t, pg, "")
	execSQL(ctx, t, pg, db, "CREATE EXTENSION plproxy")
	conn, err := pgx.Connect(ctx, pg.URL(db))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var lang string
	if err := conn.QueryRow(ctx, "SELECT lanname FROM pg_language WHERE lanname = 'plproxy'").Scan(&lang); err != nil {
		t.Fatalf("plproxy language missing after CREATE EXTENSION: %v", err)
	}
}

func TestPostgresRecovery(t *testing.T) {
	if testing.Short() {
		t.Skip("starts postgres")
	}
	tests := []struct {
		name string
		// crash leaves the data directory of the running pg as a crashed
		// run would.
		crash func(ctx context.Context, t *testing.T, pg *devstack.Postgres)
	}{
		{
			name:  "left running by a crashed run",
			crash: func(context.Context, *testing.T, *devstack.Postgres) {},
		},
		{
			name: "postmaster killed, backend orphaned",
			crash: func(ctx context.Context, t *testing.T, pg *devstack.Postgres) {
				conn, err := pgx.Connect(ctx, pg.URL("postgres"))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { conn.Close(context.Background()) })
				pid := postmasterPid(t, pg)
				kill(t, pid, syscall.SIGKILL)
				waitExit(t, pid)
			},
		},
		{
			name: "stale postmaster.pid of a dead process",
			crash: func(ctx context.Context, t *testing.T, pg *devstack.Postgres) {
				pidFile := readPostmasterPid(t, pg)
				if err := pg.Stop(); err != nil {
					t.Fatal(err)
				}
				writePostmasterPid(t, pg, pidFile, deadPid(t))
			},
		},
		{
			name: "stale postmaster.pid naming a live process of the postgres user",
			crash: func(ctx context.Context, t *testing.T, pg *devstack.Postgres) {
				pidFile := readPostmasterPid(t, pg)
				if err := pg.Stop(); err != nil {
					t.Fatal(err)
				}
				writePostmasterPid(t, pg, pidFile, livePidAsPostgres(t))
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			dir := filepath.Join(t.TempDir(), "pg")
			first := startPG(ctx, t, dir, "chapper_shard_0")
			// Fast turns synchronous commit off; a killed server would lose
			// a commit still in its WAL buffers.
			execSQL(ctx, t, first, "chapper_shard_0", "SET synchronous_commit = on; CREATE TABLE marks (n int); INSERT INTO marks VALUES (1)")
			tc.crash(ctx, t, first)

			second := startPG(ctx, t, dir)
			if n, err := count(ctx, second, "chapper_shard_0"); err != nil || n != 1 {
				t.Fatalf("after recovery: %d rows, err %v; want 1", n, err)
			}
			execSQL(ctx, t, second, "chapper_shard_0", "INSERT INTO marks VALUES (2)")
		})
	}
}

func TestPostgresUnderPrivateRootDir(t *testing.T) {
	if testing.Short() {
		t.Skip("starts postgres")
	}
	if os.Geteuid() != 0 {
		t.Skip("meaningful only as root: postgres then runs as the postgres user")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// A checkout inside a mode-0700 directory owned by root, as /root is.
	private := filepath.Join(t.TempDir(), "home")
	if err := os.Mkdir(private, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(private, 0o700); err != nil {
		t.Fatal(err)
	}
	pg := startPG(ctx, t, filepath.Join(private, "checkout", "var", "pg"), "chapper_router")
	execSQL(ctx, t, pg, "chapper_router", "CREATE TABLE marks (n int)")
	fi, err := os.Stat(private)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o701 {
		t.Errorf("private parent mode = %04o, want 0701 (search bit for others only)", got)
	}
}

// readPostmasterPid returns the lines of pg's postmaster.pid.
func readPostmasterPid(t *testing.T, pg *devstack.Postgres) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(pg.DataDir(), "postmaster.pid"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(string(b), "\n")
}

func postmasterPid(t *testing.T, pg *devstack.Postgres) int {
	t.Helper()
	pid, err := strconv.Atoi(readPostmasterPid(t, pg)[0])
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// writePostmasterPid writes lines back as postmaster.pid with pid on the
// first line, owned like the data directory.
func writePostmasterPid(t *testing.T, pg *devstack.Postgres, lines []string, pid int) {
	t.Helper()
	lines[0] = strconv.Itoa(pid)
	path := filepath.Join(pg.DataDir(), "postmaster.pid")
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(pg.DataDir())
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if err := os.Chown(path, int(st.Uid), int(st.Gid)); err != nil {
		t.Fatal(err)
	}
}

func kill(t *testing.T, pid int, sig syscall.Signal) {
	t.Helper()
	if err := syscall.Kill(pid, sig); err != nil {
		t.Fatalf("kill %d: %v", pid, err)
	}
}

// waitExit waits until pid is gone (reaped).
func waitExit(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("pid %d still there after 10s", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// deadPid returns the pid of a process that has exited.
func deadPid(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	return cmd.Process.Pid
}

// livePidAsPostgres starts a process of the postgres user (of the current
// user when not root) that lives until t ends: postgres itself would take
// a postmaster.pid naming it for a running server.
func livePidAsPostgres(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("sleep", "300")
	cmd.Dir = "/"
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatal(err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return cmd.Process.Pid
}
