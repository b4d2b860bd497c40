package runtime

import (
	"context"
	"time"

	"github.com/segmentio/kafka-go"
)

// nextLiveBatch returns the live consumer's next batch from in. Like
// nextBatch it waits for a first message (nil when ctx is done or in is
// closed and empty first) and takes more until the batch holds size
// messages, linger passed, or in is closed; but it returns as soon as the
// batch has caught up: every partition it holds was read up to the
// high-water mark of the fetch its last message came from (kafka-go sets
// Message.HighWaterMark per fetch) and no further message is waiting in
// in. So a batch is written at once when there is nothing more to read, and
// lingers, at most linger, only while records keep arriving. A message
// without a high-water mark (0) counts as behind: its batch lingers as
// before, and so does one whose partition ends in offsets no record fills
// (a transaction marker).
func nextLiveBatch(ctx context.Context, in <-chan kafka.Message, size int, linger time.Duration) []kafka.Message {
	var msgs []kafka.Message
	var c catchUp
	// take adds a received message; false when in is closed.
	take := func(m kafka.Message, ok bool) bool {
		if ok {
			msgs = append(msgs, m)
			c.add(m)
		}
		return ok
	}
	select {
	case m, ok := <-in:
		if !take(m, ok) {
			return nil
		}
	case <-ctx.Done():
		return nil
	}
	t := time.NewTimer(linger)
	defer t.Stop()
	for len(msgs) < size {
		if c.behind == 0 {
			// caught up: take what is already waiting, then go
			select {
			case m, ok := <-in:
				if !take(m, ok) {
					return msgs
				}
				continue
			default:
				return msgs
			}
		}
		select {
		case m, ok := <-in:
			if !take(m, ok) {
				return msgs
			}
		case <-t.C:
			return msgs
		case <-ctx.Done():
			// the batch in hand is still written
			return msgs
		}
	}
	return msgs
}

// catchUp tracks, for the partitions of a batch, whether the batch holds
// every record of the last fetch of each.
type catchUp struct {
	behind int                     // partitions not caught up
	caught map[topicPartition]bool // by partition
}

// add notes m, the newest message of its partition in the batch.
func (c *catchUp) add(m kafka.Message) {
	if c.caught == nil {
		c.caught = map[topicPartition]bool{}
	}
	tp := topicPartition{m.Topic, m.Partition}
	was, known := c.caught[tp]
	now := m.HighWaterMark > 0 && m.Offset+1 >= m.HighWaterMark
	c.caught[tp] = now
	switch {
	case !known && !now, known && was && !now:
		c.behind++
	case known && !was && now:
		c.behind--
	}
}
