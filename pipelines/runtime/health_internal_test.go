package runtime

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestDeadLetterLimits(t *testing.T) {
	tp := topicPartition{"canvass.visits.v1", 3}
	other := topicPartition{"canvass.visits.v1", 4}
	// run returns the outcomes of the given pattern ('x' dead, '.' good)
	// from offset on, on tp.
	run := func(tp topicPartition, offset int64, pattern string) []outcome {
		out := make([]outcome, len(pattern))
		for i, ch := range pattern {
			out[i] = outcome{tp: tp, offset: offset + int64(i), dead: ch == 'x'}
		}
		return out
	}
	tests := []struct {
		name     string
		cfg      Config
		batches  [][]outcome
		wantErr  string // substring; "" for no error after the last batch
		errAfter int    // index of the batch expected to fail
	}{
		{name: "consecutive at the limit is fine",
			cfg:     Config{DeadLetterWindow: 10, DeadLetterMaxRatio: 2, DeadLetterMaxConsecutive: 3},
			batches: [][]outcome{run(tp, 0, "xxx.xxx.")}},
		{name: "consecutive past the limit",
			cfg:      Config{DeadLetterWindow: 10, DeadLetterMaxRatio: 2, DeadLetterMaxConsecutive: 3},
			batches:  [][]outcome{run(tp, 0, ".xx"), run(tp, 3, "xx")},
			wantErr:  "partition canvass.visits.v1/3: 4 records in a row dead-lettered, past the dead-letter limit max-consecutive=3",
			errAfter: 1},
		{name: "runs are per partition",
			cfg:     Config{DeadLetterWindow: 10, DeadLetterMaxRatio: 2, DeadLetterMaxConsecutive: 3},
			batches: [][]outcome{append(run(tp, 0, "xxx"), run(other, 0, "xxx")...)}},
		{name: "a re-delivery is not counted twice",
			cfg:     Config{DeadLetterWindow: 10, DeadLetterMaxRatio: 2, DeadLetterMaxConsecutive: 3},
			batches: [][]outcome{run(tp, 0, "xxx"), run(tp, 0, "xxx")}},
		{name: "ratio only over a full window",
			cfg:     Config{DeadLetterWindow: 10, DeadLetterMaxRatio: 0.5, DeadLetterMaxConsecutive: -1},
			batches: [][]outcome{run(tp, 0, "xxxxxxxxx")}},
		{name: "ratio past the limit",
			cfg:      Config{DeadLetterWindow: 10, DeadLetterMaxRatio: 0.5, DeadLetterMaxConsecutive: -1},
			batches:  [][]outcome{run(tp, 0, ".x.x.x.x.x"), run(tp, 10, "x")},
			wantErr:  "partition canvass.visits.v1/3: 6 of the last 10 records dead-lettered, past the dead-letter limit max-ratio=0.5",
			errAfter: 1},
		{name: "the window slides",
			cfg:     Config{DeadLetterWindow: 4, DeadLetterMaxRatio: 0.5, DeadLetterMaxConsecutive: -1},
			batches: [][]outcome{run(tp, 0, "xx.."), run(tp, 4, ".x.x.x")}},
		{name: "limits off",
			cfg:     Config{DeadLetterWindow: 4, DeadLetterMaxRatio: -1, DeadLetterMaxConsecutive: -1},
			batches: [][]outcome{run(tp, 0, "xxxxxxxxxxxxxxxxxxxx")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := newDeadLetterLimits(tt.cfg)
			for i, b := range tt.batches {
				err := l.observe(b)
				switch {
				case tt.wantErr != "" && i == tt.errAfter:
					if err == nil || err.Error() != tt.wantErr {
						t.Errorf("batch %d: observe = %v, want %q", i, err, tt.wantErr)
					}
				case err != nil:
					t.Errorf("batch %d: observe = %v, want nil", i, err)
				}
			}
		})
	}
}

func TestPartitionHealth(t *testing.T) {
	const after = 2 * time.Minute
	t0 := time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)
	a := topicPartition{"canvass.visits.v1", 0}
	b := topicPartition{"canvass.visits.v1", 1}
	p := newPartitionHealth("health-test")
	p.assign(map[topicPartition]int64{a: 10, b: -2}, t0)
	lag := func(tp topicPartition) float64 {
		return testutil.ToFloat64(lagRecords.WithLabelValues("health-test", tp.topic, "0"))
	}

	// Lag alone, with recent commits, is not stuck.
	p.fetched(a, 10, 500)
	if got := lag(a); got != 490 {
		t.Errorf("lag = %v, want 490", got)
	}
	if err := p.stuck(t0.Add(after), after); err != nil {
		t.Errorf("stuck at the limit = %v, want nil", err)
	}
	p.committedAt(a, 200, 500, t0.Add(after))
	if err := p.stuck(t0.Add(2*after), after); err != nil {
		t.Errorf("stuck after a recent commit = %v, want nil", err)
	}
	// No commit for longer than after while lagging: stuck, named.
	err := p.stuck(t0.Add(3*after+time.Second), after)
	if !errors.Is(err, ErrStuck) || !strings.Contains(err.Error(), "canvass.visits.v1/0 (lag 300, no commit for 4m1s)") {
		t.Errorf("stuck = %v, want ErrStuck naming canvass.visits.v1/0", err)
	}
	if err := p.stuck(t0.Add(time.Hour), -1); err != nil {
		t.Errorf("stuck with the check off = %v", err)
	}
	// An idle partition (caught up) is never stuck, however old its commit.
	p.committedAt(a, 500, 500, t0.Add(3*after))
	p.fetched(b, 0, 0)
	if err := p.stuck(t0.Add(24*time.Hour), after); err != nil {
		t.Errorf("stuck while caught up = %v, want nil", err)
	}
	// Commit ages.
	ages := map[topicPartition]time.Duration{}
	p.commitAges(t0.Add(4*after), func(tp topicPartition, age time.Duration) { ages[tp] = age })
	if ages[a] != after || ages[b] != 4*after {
		t.Errorf("commit ages = %v, want %v for a and %v for b", ages, after, 4*after)
	}
	// A partition that moves away loses its lag gauge (DeleteLabelValues
	// reports whether there was one to delete).
	p.assign(map[topicPartition]int64{b: 0}, t0)
	if lagRecords.DeleteLabelValues("health-test", a.topic, "0") {
		t.Errorf("lag gauge of a partition that moved away was kept")
	}
	if !lagRecords.DeleteLabelValues("health-test", b.topic, "1") {
		t.Errorf("lag gauge of a kept partition was deleted")
	}
	p.fetched(b, 0, 7)
	p.releaseAll()
	if lagRecords.DeleteLabelValues("health-test", b.topic, "1") {
		t.Errorf("lag gauge kept after the consumer left its group")
	}
}
