package devstack_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chapper/chapper/services/devstack"
	"github.com/chapper/chapper/services/devstack/devtest"
)

// startRedis starts a private redis-server in dir and closes it when t
// ends.
func startRedis(ctx context.Context, t *testing.T, dir string) *devstack.Redis {
	t.Helper()
	r, err := devstack.StartRedis(ctx, devstack.RedisConfig{DataDir: dir, Addr: "127.0.0.1:0", DieWithParent: true})
	if err != nil {
		t.Fatalf("starting redis-server: %v", err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("closing redis-server: %v", err)
		}
	})
	return r
}

func redisGet(ctx context.Context, addr, key string) (string, error) {
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	defer c.Close()
	return c.Get(ctx, key).Result()
}

func redisSet(ctx context.Context, t *testing.T, addr, key, val string) {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr})
	defer c.Close()
	if err := c.Set(ctx, key, val, 0).Err(); err != nil {
		t.Fatalf("SET %s: %v", key, err)
	}
}

func TestRedisStopStartKeepsData(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r := devtest.NewRedis(t)
	addr := r.Addr()
	redisSet(ctx, t, addr, "k", "v")
	if err := r.Stop(); err != nil {
		t.Fatalf("stopping: %v", err)
	}
	if answers(addr) {
		t.Fatal("a stopped server answered")
	}
	if _, err := os.Stat(filepath.Join(r.DataDir(), "appendonlydir")); err != nil {
		t.Errorf("no append-only file: %v", err)
	}
	if err := r.Start(ctx); err != nil {
		t.Fatalf("starting again: %v", err)
	}
	if r.Addr() != addr {
		t.Errorf("address changed across a restart: %s, then %s", addr, r.Addr())
	}
	if got, err := redisGet(ctx, addr, "k"); err != nil || got != "v" {
		t.Fatalf("after restart GET k = %q, %v; want v", got, err)
	}
	if err := r.Start(ctx); err != nil {
		t.Fatalf("starting a running server: %v", err)
	}
}

func TestRedisRecovery(t *testing.T) {
	if testing.Short() {
		t.Skip("starts redis-server")
	}
	tests := []struct {
		name  string
		crash func(t *testing.T, r *devstack.Redis)
	}{
		{
			name:  "left running by a crashed run",
			crash: func(*testing.T, *devstack.Redis) {},
		},
		{
			// The append-only file is written before the reply; only the
			// fsync is deferred, which a process crash does not need.
			name: "killed",
			crash: func(t *testing.T, r *devstack.Redis) {
				pid := redisPid(t, r)
				kill(t, pid, syscall.SIGKILL)
				waitExit(t, pid)
			},
		},
		{
			name: "stale pidfile naming a live unrelated process",
			crash: func(t *testing.T, r *devstack.Redis) {
				if err := r.Stop(); err != nil {
					t.Fatal(err)
				}
				writeFile(t, filepath.Join(r.DataDir(), "redis.pid"), strconv.Itoa(os.Getpid())+"\n")
			},
		},
		{
			name: "stale pidfile of a dead process",
			crash: func(t *testing.T, r *devstack.Redis) {
				if err := r.Stop(); err != nil {
					t.Fatal(err)
				}
				writeFile(t, filepath.Join(r.DataDir(), "redis.pid"), strconv.Itoa(deadPid(t))+"\n")
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			dir := filepath.Join(t.TempDir(), "redis")
			first := startRedis(ctx, t, dir)
			redisSet(ctx, t, first.Addr(), "k", "v")
			tc.crash(t, first)

			second := startRedis(ctx, t, dir)
			if got, err := redisGet(ctx, second.Addr(), "k"); err != nil || got != "v" {
				t.Fatalf("after recovery GET k = %q, %v; want v", got, err)
			}
			if second.Addr() != first.Addr() {
				if answers(first.Addr()) {
					t.Error("the first server still answers after the second took over")
				}
			}
		})
	}
}

// answers reports whether something accepts connections on addr.
func answers(addr string) bool {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	conn.Close()
	return true
}

func redisPid(t *testing.T, r *devstack.Redis) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(r.DataDir(), "redis.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(string(trimNL(b)))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

func trimNL(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
