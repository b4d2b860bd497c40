package replay

import (
	"context"
	"testing"
	"time"

	"github.com/chapper/chapper/pipelines/runtime/sinktest"
	"github.com/chapper/chapper/proto/topic"
	"github.com/chapper/chapper/services/devstack/devtest"
)

// TestCheckpointerCommitsTheLastSaved saves positions faster than they can
// be committed: the commits in the background coalesce them, and once
// close returned the group holds the last position saved per partition.
func TestCheckpointerCommitsTheLastSaved(t *testing.T) {
	k := devtest.Kafka(t)
	sinktest.CreateTopics(t, k.Addr())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	client, closeClient := newClient([]string{k.Addr()})
	defer closeClient()
	c := newCheckpointer(ctx, client, "checkpointer-test")
	parts := []Partition{{Topic: topic.Visits, Partition: 0}, {Topic: topic.Intentions, Partition: 3}}
	for i := int64(1); i <= 300; i++ {
		c.save(map[Partition]int64{parts[i%2]: i})
	}
	c.save(nil) // nothing moved: nothing to do
	if err := c.close(); err != nil {
		t.Fatalf("close = %v", err)
	}
	got, err := Checkpoint(ctx, []string{k.Addr()}, "checkpointer-test", parts)
	if err != nil {
		t.Fatal(err)
	}
	want := map[Partition]int64{parts[0]: 300, parts[1]: 299}
	for _, p := range parts {
		if got[p] != want[p] {
			t.Errorf("checkpoint of %s = %d, want %d (the last saved)", p, got[p], want[p])
		}
	}
}
