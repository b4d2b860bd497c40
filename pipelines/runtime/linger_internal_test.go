package runtime

import (
	"context"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
)

// The live batch is written as soon as it holds everything fetched, and
// lingers only while a partition it holds has more records on the way. The
// linger is 10 s, so a batch that waited for it would show: no case here
// waits for its linger except the one that must.
func TestNextLiveBatch(t *testing.T) {
	msg := func(partition int, offset, hwm int64) kafka.Message {
		return kafka.Message{Topic: "canvass.visits.v1", Partition: partition, Offset: offset, HighWaterMark: hwm}
	}
	tests := []struct {
		name   string
		queued []kafka.Message // in the channel before the call
		later  []kafka.Message // sent 50 ms into the call
		size   int
		linger time.Duration
		want   int  // messages in the batch
		waits  bool // the batch must wait for the linger
	}{
		{name: "one record, caught up", queued: []kafka.Message{msg(0, 4, 5)}, want: 1},
		{name: "everything waiting is taken", queued: []kafka.Message{msg(0, 4, 5), msg(1, 9, 10), msg(2, 0, 1)}, want: 3},
		{name: "waits for the rest of the fetch", queued: []kafka.Message{msg(0, 3, 5)}, later: []kafka.Message{msg(0, 4, 5)}, want: 2},
		{name: "every partition catches up", queued: []kafka.Message{msg(0, 4, 5), msg(1, 2, 4)},
			later: []kafka.Message{msg(1, 3, 4)}, want: 3},
		{name: "a partition falling behind again", queued: []kafka.Message{msg(0, 4, 5), msg(0, 5, 7)},
			later: []kafka.Message{msg(0, 6, 7)}, want: 3},
		{name: "size bounds a batch that is behind", queued: []kafka.Message{msg(0, 0, 100), msg(0, 1, 100), msg(0, 2, 100)}, size: 2, want: 2},
		{name: "linger bounds a batch that is behind", queued: []kafka.Message{msg(0, 3, 5)}, linger: 100 * time.Millisecond, want: 1, waits: true},
		{name: "no high-water mark lingers", queued: []kafka.Message{msg(0, 3, 0)}, linger: 100 * time.Millisecond, want: 1, waits: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			size, linger := tt.size, tt.linger
			if size == 0 {
				size = 100
			}
			if linger == 0 {
				linger = 10 * time.Second
			}
			in := make(chan kafka.Message, 10)
			for _, m := range tt.queued {
				in <- m
			}
			sent := make(chan struct{})
			defer func() { <-sent }()
			go func() {
				defer close(sent)
				time.Sleep(50 * time.Millisecond)
				for _, m := range tt.later {
					in <- m
				}
			}()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			start := time.Now()
			got := nextLiveBatch(ctx, in, size, linger)
			took := time.Since(start)
			if len(got) != tt.want {
				t.Errorf("batch of %d messages, want %d", len(got), tt.want)
			}
			if tt.waits && took < linger {
				t.Errorf("returned after %v, before the linger of %v", took, linger)
			}
			if !tt.waits && took > 5*time.Second {
				t.Errorf("returned after %v: waited for the linger of %v", took, linger)
			}
		})
	}
}
