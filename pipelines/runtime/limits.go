package runtime

import (
	"fmt"
	"sync"
)

// deadLetterLimits counts dead letters per partition over a sliding window
// of its latest records, as Sentry Arroyo's DlqLimit does, and says when a
// partition went past a limit. It is safe for concurrent use.
type deadLetterLimits struct {
	window      int
	maxRatio    float64 // off unless in (0, 1)
	maxInARow   int     // off when negative
	mu          sync.Mutex
	byPartition map[topicPartition]*dlqWindow
}

// dlqWindow is one partition's window: a ring of outcomes (true = dead
// letter), how many of them are dead letters, the current run of dead
// letters, and the next offset not yet counted (re-delivered records are
// not counted twice).
type dlqWindow struct {
	ring    []bool
	n, next int
	dead    int
	inARow  int
	counted int64 // offsets below it were counted
}

// topicPartition names a partition.
type topicPartition struct {
	topic     string
	partition int
}

func (tp topicPartition) String() string { return fmt.Sprintf("%s/%d", tp.topic, tp.partition) }

func newDeadLetterLimits(cfg Config) *deadLetterLimits {
	return &deadLetterLimits{
		window:      max(cfg.DeadLetterWindow, 1),
		maxRatio:    cfg.DeadLetterMaxRatio,
		maxInARow:   cfg.DeadLetterMaxConsecutive,
		byPartition: map[topicPartition]*dlqWindow{},
	}
}

// outcome is one record of a batch as the limits see it.
type outcome struct {
	tp     topicPartition
	offset int64
	dead   bool
}

// observe counts a batch's outcomes, in offset order per partition, and
// returns an error naming the first partition and limit passed, or nil.
// Records at offsets already counted (a re-delivery) are skipped.
func (l *deadLetterLimits) observe(outcomes []outcome) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	var exceeded error
	for _, o := range outcomes {
		w := l.byPartition[o.tp]
		if w == nil {
			w = &dlqWindow{ring: make([]bool, l.window)}
			l.byPartition[o.tp] = w
		}
		if o.offset < w.counted {
			continue
		}
		w.counted = o.offset + 1
		if w.n == len(w.ring) {
			if w.ring[w.next] {
				w.dead--
			}
		} else {
			w.n++
		}
		w.ring[w.next] = o.dead
		w.next = (w.next + 1) % len(w.ring)
		if o.dead {
			w.dead++
			w.inARow++
		} else {
			w.inARow = 0
		}
		if exceeded != nil {
			continue
		}
		switch {
		case l.maxInARow >= 0 && w.inARow > l.maxInARow:
			exceeded = fmt.Errorf("partition %s: %d records in a row dead-lettered, past the dead-letter limit max-consecutive=%d",
				o.tp, w.inARow, l.maxInARow)
		case l.maxRatio > 0 && l.maxRatio < 1 && w.n == len(w.ring) && float64(w.dead) > l.maxRatio*float64(w.n):
			exceeded = fmt.Errorf("partition %s: %d of the last %d records dead-lettered, past the dead-letter limit max-ratio=%g",
				o.tp, w.dead, w.n, l.maxRatio)
		}
	}
	return exceeded
}
