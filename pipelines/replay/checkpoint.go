package replay

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
)

// newClient returns a Kafka client with a connection pool of its own and
// the function that closes the pool. kafka-go's DefaultTransport would keep
// idle connections (and a goroutine each) after the call returned.
func newClient(brokers []string) (*kafka.Client, func()) {
	tr := &kafka.Transport{}
	return &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 10 * time.Second, Transport: tr}, tr.CloseIdleConnections
}

// commit saves next (the next offset per partition) as the committed
// offsets of group, a group that never has members: a simple commit with
// generation -1, which Kafka (and kfake) accept for an empty group.
func commit(ctx context.Context, client *kafka.Client, group string, next map[Partition]int64) error {
	req := &kafka.OffsetCommitRequest{GroupID: group, GenerationID: -1, Topics: map[string][]kafka.OffsetCommit{}}
	for tp, o := range next {
		req.Topics[tp.Topic] = append(req.Topics[tp.Topic], kafka.OffsetCommit{Partition: tp.Partition, Offset: o})
	}
	resp, err := client.OffsetCommit(ctx, req)
	if err != nil {
		return fmt.Errorf("saving the replay checkpoint in group %s: %w", group, err)
	}
	for name, ps := range resp.Topics {
		for _, p := range ps {
			if p.Error != nil {
				return fmt.Errorf("saving the replay checkpoint of %s/%d in group %s: %w", name, p.Partition, group, p.Error)
			}
		}
	}
	return nil
}

// Checkpoint returns the next offset per partition that group saved, for
// the partitions that have one.
func Checkpoint(ctx context.Context, brokers []string, group string, parts []Partition) (map[Partition]int64, error) {
	client, closeClient := newClient(brokers)
	defer closeClient()
	return checkpoint(ctx, client, group, parts)
}

func checkpoint(ctx context.Context, client *kafka.Client, group string, parts []Partition) (map[Partition]int64, error) {
	req := &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{}}
	for _, tp := range parts {
		req.Topics[tp.Topic] = append(req.Topics[tp.Topic], tp.Partition)
	}
	resp, err := client.OffsetFetch(ctx, req)
	if err == nil {
		err = resp.Error
	}
	out := map[Partition]int64{}
	if errors.Is(err, kafka.GroupIdNotFound) {
		return out, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the replay checkpoint of group %s: %w", group, err)
	}
	for name, ps := range resp.Topics {
		for _, p := range ps {
			if p.Error != nil {
				return nil, fmt.Errorf("reading the replay checkpoint of %s/%d in group %s: %w", name, p.Partition, group, p.Error)
			}
			if p.CommittedOffset >= 0 {
				out[Partition{Topic: name, Partition: p.Partition}] = p.CommittedOffset
			}
		}
	}
	return out, nil
}

// DeleteCheckpoint deletes group (a replay's checkpoint). A group that does
// not exist is no error.
func DeleteCheckpoint(ctx context.Context, brokers []string, group string) error {
	client, closeClient := newClient(brokers)
	defer closeClient()
	resp, err := client.DeleteGroups(ctx, &kafka.DeleteGroupsRequest{GroupIDs: []string{group}})
	if err != nil {
		return fmt.Errorf("deleting replay checkpoint group %s: %w", group, err)
	}
	if err := resp.Errors[group]; err != nil && !errors.Is(err, kafka.GroupIdNotFound) {
		return fmt.Errorf("deleting replay checkpoint group %s: %w", group, err)
	}
	return nil
}

// checkpointer commits a replay's checkpoints in the background, one
// commit at a time, so that the next batch's write does not wait for a
// commit's round trips (kafka-go looks the group coordinator up before
// every commit). save hands it the positions a written batch reached;
// positions saved while a commit is in flight go together in the next
// one. A checkpoint may thus lag the written batches by a commit; a crash
// then replays those batches again, which idempotent sinks allow.
type checkpointer struct {
	ctx    context.Context
	client *kafka.Client
	group  string
	wake   chan struct{}
	done   chan struct{}

	mu      sync.Mutex
	pending map[Partition]int64
	err     error
}

// newCheckpointer starts a checkpointer committing to group with client,
// under ctx; close stops it.
func newCheckpointer(ctx context.Context, client *kafka.Client, group string) *checkpointer {
	c := &checkpointer{ctx: ctx, client: client, group: group, wake: make(chan struct{}, 1), done: make(chan struct{})}
	go c.run()
	return c
}

// save queues next (the next offset of the partitions a batch moved) for
// committing; it never blocks on the commit. It must not be called after
// close.
func (c *checkpointer) save(next map[Partition]int64) {
	if len(next) == 0 {
		return
	}
	c.mu.Lock()
	if c.pending == nil {
		c.pending = map[Partition]int64{}
	}
	for tp, o := range next {
		c.pending[tp] = o
	}
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default: // a commit is due already and will take these too
	}
}

func (c *checkpointer) run() {
	defer close(c.done)
	for range c.wake {
		c.mu.Lock()
		next, failed := c.pending, c.err != nil
		c.pending = nil
		c.mu.Unlock()
		if len(next) == 0 || failed {
			continue
		}
		if err := commit(c.ctx, c.client, c.group, next); err != nil {
			c.mu.Lock()
			c.err = err
			c.mu.Unlock()
		}
	}
}

// close commits what was saved and not yet committed, waits for it, and
// returns the first commit error (after which nothing more was committed).
func (c *checkpointer) close() error {
	close(c.wake)
	<-c.done
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}
