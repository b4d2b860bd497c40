// Package devtest is the test harness of every module: real stores, started
// cheaply and cleaned up after each test.
//
// Every test package that uses it runs its tests through Main:
//
//	func TestMain(m *testing.M) { devtest.Main(m) }
//
// Kafka gives each test a private in-memory broker. Redis and Postgres
// share one server per test binary, started lazily on first use; each test
// takes its own key prefix (KeyPrefix) or database (Database) and cleans up
// with t.Cleanup. NewRedis and NewPostgres give a private server to tests
// that stop and start it; RedisCluster gives a private Redis Cluster.
// Everything that starts a process is skipped under
// -short.
package devtest

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/chapper/chapper/services/devstack"
)

// Partitions is the partition count of topics auto-created on the brokers
// Kafka starts.
const Partitions = 12

// startTimeout bounds starting a server for a test.
const startTimeout = 2 * time.Minute

// tempPrefix names the temporary directories of the shared servers; the pid
// lets a later run remove the leftovers of a test binary that crashed.
const tempPrefix = "chapper-devtest-"

// shared holds the servers shared by all tests of this binary.
var shared struct {
	mu       sync.Mutex
	dir      string
	redis    *devstack.Redis
	redisErr error
	pg       *devstack.Postgres
	pgErr    error
}

// seq makes key prefixes and database names unique within this binary.
var seq atomic.Uint64

// logger is quiet: tests see warnings and errors of the servers only.
var logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

// Main runs the tests, stops the shared servers started lazily by Redis,
// KeyPrefix and Postgres (whether the tests passed or not), then checks
// that no goroutine leaked (go.uber.org/goleak, when the tests passed) and
// exits with the tests' code, non-zero on a leak. Use it as the body of
// TestMain. opts are handed to goleak, e.g. goleak.IgnoreTopFunction for
// a library goroutine that outlives the tests by design (check that it is
// not ours first); goroutines of libraries every module uses are ignored
// already (leakIgnores). A test binary that dies without reaching the end
// of Main (panic, timeout) still stops its servers: they are started with
// a parent-death signal.
func Main(m *testing.M, opts ...goleak.Option) { os.Exit(Run(m, opts...)) }

// Run is Main without the exit: it returns the exit code, for a TestMain
// that has more to clean up before it exits.
//
// A test binary started with the argument devstack.SearchServerCommand
// (the search child of a Stack with StackConfig.SearchProcess) runs the
// search server instead of the tests.
func Run(m *testing.M, opts ...goleak.Option) int {
	if code, ran := devstack.RunSearchChild(os.Args, os.Stderr); ran {
		return code
	}
	code := m.Run()
	if err := stopShared(); err != nil {
		fmt.Fprintf(os.Stderr, "devtest: stopping shared servers: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	if code == 0 {
		if err := goleak.Find(append(leakIgnores(), opts...)...); err != nil {
			fmt.Fprintf(os.Stderr, "devtest: goroutines leaked by the tests: %v\n", err)
			code = 1
		}
	}
	return code
}

// leakIgnores are goroutines that outlive the tests by design, each
// checked: Bleve's analysis workers (started by an init of
// bleve_index_api, in every binary that links the search server), the
// timer goroutine of desertbit/timer (started by its init; a dependency
// of grpc-web) and
// devstack's spawner, the goroutine locked to the OS thread that forks
// servers with a parent-death signal, which must live as long as the
// process. goleak retries for a while, so goroutines still winding down
// (closed connections, stopped timers) are not reported.
func leakIgnores() []goleak.Option {
	return []goleak.Option{
		goleak.IgnoreTopFunction("github.com/blevesearch/bleve_index_api.AnalysisWorker"),
		goleak.IgnoreTopFunction("github.com/chapper/chapper/services/devstack.startCmd.func1.1"),
		goleak.IgnoreTopFunction("github.com/desertbit/timer.timerRoutine"),
	}
}

// stopShared closes the shared servers and removes their data.
func stopShared() error {
	shared.mu.Lock()
	defer shared.mu.Unlock()
	var errs []error
	if shared.pg != nil {
		errs = append(errs, shared.pg.Close())
		shared.pg = nil
	}
	if shared.redis != nil {
		errs = append(errs, shared.redis.Close())
		shared.redis = nil
	}
	if shared.dir != "" {
		errs = append(errs, os.RemoveAll(shared.dir))
		shared.dir = ""
	}
	return errors.Join(errs...)
}

// sharedDir returns the temporary directory of the shared servers,
// creating it (and removing leftovers of crashed test binaries) on first
// use. shared.mu is held.
func sharedDir() (string, error) {
	if shared.dir != "" {
		return shared.dir, nil
	}
	removeLeftovers()
	dir, err := os.MkdirTemp("", tempPrefix+strconv.Itoa(os.Getpid())+"-")
	if err != nil {
		return "", fmt.Errorf("creating a directory for the shared test servers: %w", err)
	}
	shared.dir = dir
	return dir, nil
}

// removeLeftovers removes the shared-server directories of test binaries
// that are no longer running.
func removeLeftovers() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), tempPrefix+"*-*"))
	for _, d := range dirs {
		rest := strings.TrimPrefix(filepath.Base(d), tempPrefix)
		pidStr, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid <= 0 || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, 0); err != nil && errors.Is(err, syscall.ESRCH) {
			_ = os.RemoveAll(d)
		}
	}
}

// fatal ends the test for a server that could not start, pointing at
// `make setup` when the binaries are missing.
func fatal(t testing.TB, what string, err error) {
	t.Helper()
	if errors.Is(err, devstack.ErrNotInstalled) {
		t.Fatalf("%s is not installed: run `make setup` (%v)", what, err)
	}
	t.Fatalf("starting %s: %v", what, err)
}

// skipShort skips t under -short: what starts a process.
func skipShort(t testing.TB, what string) {
	t.Helper()
	if testing.Short() {
		t.Skipf("starts %s; skipped with -short", what)
	}
}

// Kafka starts a new private in-memory broker (kfake, 12 partitions per
// auto-created topic) on a free loopback port and closes it when t ends.
// It is cheap and runs in-process, so it is not skipped under -short.
func Kafka(t testing.TB) *devstack.Kafka {
	t.Helper()
	k, err := devstack.StartKafka(devstack.KafkaConfig{Addr: "127.0.0.1:0", Partitions: Partitions})
	if err != nil {
		t.Fatalf("starting embedded kafka: %v", err)
	}
	t.Cleanup(func() { _ = k.Close() })
	return k
}

// Redis returns the redis-server shared by the tests of this binary,
// starting it on first use (temporary directory, free port). Tests must
// keep to their own KeyPrefix and must not stop it (use NewRedis). It skips
// the test under -short.
func Redis(t testing.TB) *devstack.Redis {
	t.Helper()
	skipShort(t, "redis-server")
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.redisErr != nil {
		fatal(t, "redis-server", shared.redisErr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if shared.redis != nil {
		// Start is a no-op on a running server and revives a dead one.
		if err := shared.redis.Start(ctx); err != nil {
			fatal(t, "redis-server", err)
		}
		return shared.redis
	}
	dir, err := sharedDir()
	if err != nil {
		t.Fatal(err)
	}
	r, err := devstack.StartRedis(ctx, devstack.RedisConfig{
		DataDir: filepath.Join(dir, "redis"), Addr: "127.0.0.1:0", Logger: logger, DieWithParent: true,
	})
	if err != nil {
		shared.redisErr = err
		fatal(t, "redis-server", err)
	}
	shared.redis = r
	return r
}

// NewRedis starts a private redis-server (temporary directory, free port)
// for a test that stops and starts it; it is closed when t ends. It skips
// the test under -short.
func NewRedis(t testing.TB) *devstack.Redis {
	t.Helper()
	skipShort(t, "redis-server")
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	r, err := devstack.StartRedis(ctx, devstack.RedisConfig{
		DataDir: filepath.Join(t.TempDir(), "redis"), Addr: "127.0.0.1:0", Logger: logger, DieWithParent: true,
	})
	if err != nil {
		fatal(t, "redis-server", err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("closing private redis-server: %v", err)
		}
	})
	return r
}

// ClusterMasters is the number of masters of the clusters RedisCluster
// starts: enough for a batch's keys to spread over several nodes.
const ClusterMasters = 3

// RedisCLIBin is the redis-cli binary (Debian's redis-tools, a dependency
// of redis-server) that creates the clusters.
const RedisCLIBin = "redis-cli"

// RedisCluster starts a private Redis Cluster of ClusterMasters masters (no
// replicas, append-only file off; temporary directories, free ports) for t
// and returns its nodes' addresses, for a cluster client (more than one
// address). Every slot is served when it returns. The nodes are stopped
// when t ends, and by the kernel if the test binary dies. It skips the test
// under -short.
func RedisCluster(t testing.TB) []string {
	t.Helper()
	skipShort(t, "a redis cluster")
	cli, err := exec.LookPath(RedisCLIBin)
	if err != nil {
		fatal(t, "redis-cli", fmt.Errorf("finding redis-cli: %w", devstack.ErrNotInstalled))
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	dir := t.TempDir()
	addrs := make([]string, ClusterMasters)
	for i := range addrs {
		// The cluster bus listens on port+10000 unless told otherwise,
		// which may be taken or past 65535 for a free port.
		busPort, err := freePort()
		if err != nil {
			t.Fatal(err)
		}
		nodeDir := filepath.Join(dir, "node"+strconv.Itoa(i))
		r, err := devstack.StartRedis(ctx, devstack.RedisConfig{
			DataDir: nodeDir, Addr: "127.0.0.1:0", Logger: logger, DieWithParent: true,
			Extra: []string{
				"--cluster-enabled", "yes",
				"--cluster-config-file", filepath.Join(nodeDir, "nodes.conf"),
				"--cluster-port", strconv.Itoa(busPort),
				"--appendonly", "no",
			},
		})
		if err != nil {
			fatal(t, "redis-server (cluster node)", err)
		}
		t.Cleanup(func() {
			if err := r.Close(); err != nil {
				t.Errorf("closing redis cluster node: %v", err)
			}
		})
		addrs[i] = r.Addr()
	}
	args := append([]string{"--cluster", "create"}, addrs...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	if out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput(); err != nil {
		t.Fatalf("creating redis cluster (%s): %v\n%s", strings.Join(addrs, " "), err, out)
	}
	if err := waitClusterOK(ctx, addrs); err != nil {
		t.Fatalf("starting redis cluster (%s): %v", strings.Join(addrs, " "), err)
	}
	return addrs
}

// waitClusterOK waits until every node of addrs reports cluster_state:ok
// and knows all the others.
func waitClusterOK(ctx context.Context, addrs []string) error {
	want := "cluster_known_nodes:" + strconv.Itoa(len(addrs))
	for _, addr := range addrs {
		c := redis.NewClient(&redis.Options{Addr: addr, PoolSize: 1})
		err := func() error {
			defer c.Close()
			for {
				info, err := c.ClusterInfo(ctx).Result()
				if err == nil && strings.Contains(info, "cluster_state:ok") && strings.Contains(info, want) {
					return nil
				}
				if err == nil {
					err = errors.New("cluster state not ok yet")
				}
				select {
				case <-ctx.Done():
					return fmt.Errorf("waiting for node %s to join (last: %v): %w", addr, err, ctx.Err())
				case <-time.After(20 * time.Millisecond):
				}
			}
		}()
		if err != nil {
			return err
		}
	}
	return nil
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// KeyPrefix returns a key prefix unique to t, such as "t1a2b3c4d7:", for
// keys in the shared Redis (which it starts if needed). Every key starting
// with it is deleted when t ends. It skips the test under -short.
func KeyPrefix(t testing.TB) string {
	t.Helper()
	r := Redis(t)
	prefix := "t" + uniqueSuffix(t) + ":"
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := deleteKeys(ctx, r.Addr(), prefix); err != nil {
			t.Logf("deleting keys %s*: %v", prefix, err)
		}
	})
	return prefix
}

// deleteKeys unlinks every key starting with prefix.
func deleteKeys(ctx context.Context, addr, prefix string) error {
	c := redis.NewClient(&redis.Options{Addr: addr})
	defer c.Close()
	iter := c.Scan(ctx, 0, prefix+"*", 1000).Iterator()
	batch := make([]string, 0, 1000)
	for iter.Next(ctx) {
		batch = append(batch, iter.Val())
		if len(batch) == cap(batch) {
			if err := c.Unlink(ctx, batch...).Err(); err != nil {
				return err
			}
			batch = batch[:0]
		}
	}
	if err := iter.Err(); err != nil {
		return err
	}
	if len(batch) > 0 {
		return c.Unlink(ctx, batch...).Err()
	}
	return nil
}

// uniqueSuffix returns a hash of t's name and a sequence number: unique in
// this binary, recognisable across a test's keys or databases.
func uniqueSuffix(t testing.TB) string {
	h := fnv.New32a()
	h.Write([]byte(t.Name()))
	return fmt.Sprintf("%08x%d", h.Sum32(), seq.Add(1))
}

// Postgres returns the Postgres cluster shared by the tests of this binary
// (Fast: fsync off), starting it on first use (temporary directory, free
// port). Tests must keep to their own Database and must not stop it (use
// NewPostgres). It skips the test under -short.
func Postgres(t testing.TB) *devstack.Postgres {
	t.Helper()
	skipShort(t, "postgres")
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.pgErr != nil {
		fatal(t, "postgres", shared.pgErr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if shared.pg != nil {
		if err := shared.pg.Start(ctx); err != nil {
			fatal(t, "postgres", err)
		}
		return shared.pg
	}
	dir, err := sharedDir()
	if err != nil {
		t.Fatal(err)
	}
	pg, err := devstack.StartPostgres(ctx, devstack.PostgresConfig{
		DataDir: filepath.Join(dir, "pg"), Addr: "127.0.0.1:0", Fast: true, Logger: logger, DieWithParent: true,
	})
	if err != nil {
		shared.pgErr = err
		fatal(t, "postgres", err)
	}
	shared.pg = pg
	return pg
}

// NewPostgres starts a private Postgres cluster (Fast, temporary
// directory, free port) for a test that stops and starts it; it is closed
// when t ends. It skips the test under -short.
func NewPostgres(t testing.TB) *devstack.Postgres {
	t.Helper()
	skipShort(t, "postgres")
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	pg, err := devstack.StartPostgres(ctx, devstack.PostgresConfig{
		DataDir: filepath.Join(t.TempDir(), "pg"), Addr: "127.0.0.1:0", Fast: true, Logger: logger, DieWithParent: true,
	})
	if err != nil {
		fatal(t, "postgres", err)
	}
	t.Cleanup(func() {
		if err := pg.Close(); err != nil {
			t.Errorf("closing private postgres: %v", err)
		}
	})
	return pg
}

// Database creates a fresh database on pg with a name unique to t, as a
// copy of template when it is not empty, and returns its name; connect with
// pg.URL(name). The database is dropped, sessions and all, when t ends.
func Database(t testing.TB, pg *devstack.Postgres, template string) string {
	t.Helper()
	name := "t_" + uniqueSuffix(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := pg.CreateDatabase(ctx, name, template); err != nil {
		t.Fatalf("creating test database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		// A test that stopped its private server leaves nothing to drop.
		if err := pg.DropDatabase(ctx, name); err != nil {
			t.Logf("dropping test database %s: %v", name, err)
		}
	})
	return name
}
