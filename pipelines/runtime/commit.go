package runtime

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"
)

// committer commits the offsets of a generation's written batches in the
// background, so the sink writes the next batch while the coordinator
// answers. Batches come in write order, only after their write returned;
// the batches written while a commit was in flight are committed together
// in one request (the last offset of each partition covers the earlier
// ones). Every commit carries the generation that fetched the batches, so
// it is refused once the group moved on without this member. After a
// failed commit nothing more is committed and the generation ends: what
// was not committed is delivered again.
type committer struct {
	c      *Consumer
	gen    *kafka.Generation
	end    context.CancelFunc // ends the generation's consumption
	queue  chan written
	failed atomic.Bool
	done   chan struct{}
}

// written is one batch the sink has written, waiting for its commit.
type written struct {
	last  []kafka.Message // the last message of each partition
	res   batchResult
	start time.Time // when its write began
}

// committerQueue bounds the written batches waiting for a commit: beyond
// it the write loop waits, so a slow coordinator slows the consumer down
// instead of piling up uncommitted batches.
const committerQueue = 4

// startCommitter starts committing with gen; end is called when a commit
// fails. Close waits for every queued batch to be committed.
func (c *Consumer) startCommitter(gen *kafka.Generation, end context.CancelFunc) *committer {
	k := &committer{c: c, gen: gen, end: end, queue: make(chan written, committerQueue), done: make(chan struct{})}
	go k.run()
	return k
}

// add queues the commit of a written batch. It returns false when an
// earlier commit failed: the generation is ending and msgs will be
// delivered again.
func (k *committer) add(msgs []kafka.Message, res batchResult, start time.Time) bool {
	if k.failed.Load() {
		return false
	}
	k.queue <- written{last: lastPerPartition(msgs), res: res, start: start}
	return true
}

// close commits what is queued and returns once it was committed (or
// refused).
func (k *committer) close() {
	close(k.queue)
	<-k.done
}

func (k *committer) run() {
	defer close(k.done)
	for w := range k.queue {
		batch := []written{w}
		// every batch written meanwhile goes in the same request
	more:
		for {
			select {
			case w, ok := <-k.queue:
				if !ok {
					break more
				}
				batch = append(batch, w)
			default:
				break more
			}
		}
		if k.failed.Load() {
			continue
		}
		if !k.commit(batch) {
			k.failed.Store(true)
			k.end()
		}
	}
}

// commit commits batch's offsets in one request and accounts the batches;
// false when the commit failed.
func (k *committer) commit(batch []written) bool {
	offsets := map[string]map[int]int64{}
	records := 0
	for _, w := range batch {
		records += w.res.read
		for _, m := range w.last {
			if offsets[m.Topic] == nil {
				offsets[m.Topic] = map[int]int64{}
			}
			offsets[m.Topic][m.Partition] = max(offsets[m.Topic][m.Partition], m.Offset+1)
		}
	}
	if err := k.gen.CommitOffsets(offsets); err != nil {
		k.c.log.Warn("committing offsets; the batches will be delivered again", "generation", k.gen.ID,
			"batches", len(batch), "records", records, "err", err)
		return false
	}
	now := k.c.now()
	for _, w := range batch {
		k.c.h.account(w.res, w.start)
		for _, m := range w.last {
			k.c.parts.committedAt(topicPartition{m.Topic, m.Partition}, m.Offset+1, m.HighWaterMark, now)
		}
	}
	return true
}
