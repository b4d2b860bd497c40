package devstack_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/chapper/chapper/services/devstack"
)

// TestKafkaWritesBeforeAck checks the dev broker's default durability
// without killing a process: while the broker still runs (nothing flushed
// at shutdown), a copy of its data directory, which is what a SIGKILL
// leaves behind (the page cache survives the process), holds every
// acknowledged record. A broker that only wrote its files periodically or
// on Close fails here.
func TestKafkaWritesBeforeAck(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := filepath.Join(t.TempDir(), "kafka")
	k, err := devstack.StartKafka(devstack.KafkaConfig{Addr: "127.0.0.1:0", DataDir: dir, Partitions: 3})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k.Close() })
	createTopic(ctx, t, k.Addr(), "t")
	const n = 300
	c := kafkaClient(t, k.Addr(), kgo.ProducerLinger(0))
	for i := range n {
		// many small acknowledged batches: each must be on file at its ack
		if err := c.ProduceSync(ctx, &kgo.Record{Topic: "t", Key: []byte(strconv.Itoa(i % 7)), Value: []byte(strconv.Itoa(i))}).FirstErr(); err != nil {
			t.Fatalf("producing record %d: %v", i, err)
		}
	}
	c.Close()

	crashed := filepath.Join(t.TempDir(), "kafka")
	if err := os.CopyFS(crashed, os.DirFS(dir)); err != nil {
		t.Fatalf("copying the live data directory: %v", err)
	}
	k2, err := devstack.StartKafka(devstack.KafkaConfig{Addr: "127.0.0.1:0", DataDir: crashed, Partitions: 3})
	if err != nil {
		t.Fatalf("starting a broker on the copy: %v", err)
	}
	t.Cleanup(func() { _ = k2.Close() })
	got := consumeAll(ctx, t, k2.Addr(), "t", n)
	seen := map[string]bool{}
	for _, r := range got {
		seen[string(r.Value)] = true
	}
	if len(got) != n || len(seen) != n {
		t.Fatalf("the copy holds %d records (%d distinct), want %d", len(got), len(seen), n)
	}
}
