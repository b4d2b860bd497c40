package devstack_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chapper/chapper/services/devstack"
)

// crashDirEnv tells the re-executed test binary to run the stack in a
// directory until it is killed; crashFsyncEnv=1 turns the broker's
// per-batch fsync on.
const (
	crashDirEnv   = "DEVSTACK_CRASH_DIR"
	crashFsyncEnv = "DEVSTACK_CRASH_FSYNC"
)

// crashRecords is how many records the crashed run acknowledges.
const crashRecords = 100

// TestCrashChild is the run that gets SIGKILLed: it starts the stack,
// writes to every store, says READY and waits to be killed.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashDirEnv)
	if dir == "" {
		t.Skip("run by TestStackRecoversAfterSIGKILL")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg := crashConfig(dir)
	cfg.KafkaFsync = os.Getenv(crashFsyncEnv) == "1"
	s, err := devstack.StartStack(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	createTopic(ctx, t, s.Kafka.Addr(), "canvass.visits.v1")
	for i := range crashRecords {
		produce(ctx, t, s.Kafka.Addr(), "canvass.visits.v1", strconv.Itoa(i), "v"+strconv.Itoa(i))
	}
	execSQL(ctx, t, s.Postgres, "chapper_shard_1", "CREATE TABLE marks (n int); INSERT INTO marks VALUES (1)")
	redisSet(ctx, t, s.Redis.Addr(), "k", "v")
	fmt.Println("READY")
	<-ctx.Done()
}

func crashConfig(dir string) devstack.StackConfig {
	return devstack.StackConfig{Dir: dir, KafkaAddr: "127.0.0.1:0", PostgresAddr: "127.0.0.1:0", RedisAddr: "127.0.0.1:0", SearchAddr: "127.0.0.1:0", Partitions: 12}
}

// TestStackRecoversAfterSIGKILL kills a stack that acknowledged records
// and wrote to every store, starts it again on the same directory and finds
// everything, with the broker's default (written before the ack, no fsync)
// and with -dev.kafka-fsync.
func TestStackRecoversAfterSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("starts postgres and redis-server in a child process")
	}
	for _, fsync := range []bool{false, true} {
		t.Run("fsync="+strconv.FormatBool(fsync), func(t *testing.T) { testStackRecovers(t, fsync) })
	}
}

func testStackRecovers(t *testing.T, fsync bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := filepath.Join(t.TempDir(), "var")
	child := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestCrashChild$", "-test.v")
	child.Env = append(os.Environ(), crashDirEnv+"="+dir)
	if fsync {
		child.Env = append(child.Env, crashFsyncEnv+"=1")
	}
	child.Stderr = os.Stderr
	out, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	ready := false
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) == "READY" {
			ready = true
			break
		}
	}
	if !ready {
		_ = child.Wait()
		t.Fatal("the crashing run never became ready")
	}
	if err := child.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = child.Wait()

	s, err := devstack.StartStack(ctx, crashConfig(dir))
	if err != nil {
		t.Fatalf("starting after the crash: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	got := consumeAll(ctx, t, s.Kafka.Addr(), "canvass.visits.v1", crashRecords)
	if len(got) != crashRecords {
		t.Errorf("%d records after the crash, want %d", len(got), crashRecords)
	}
	if n, err := count(ctx, s.Postgres, "chapper_shard_1"); err != nil || n != 1 {
		t.Errorf("postgres after the crash: %d rows, err %v; want 1", n, err)
	}
	if v, err := redisGet(ctx, s.Redis.Addr(), "k"); err != nil || v != "v" {
		t.Errorf("redis after the crash: GET k = %q, %v; want v", v, err)
	}
}
