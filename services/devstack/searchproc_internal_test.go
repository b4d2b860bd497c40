package devstack

import (
	"testing"
	"time"
)

// TestRestartDelay checks the search child's restart backoff: 100 ms
// first, doubling while the child keeps dying or failing to start, at most
// 5 s, and 100 ms again after a healthy stretch.
func TestRestartDelay(t *testing.T) {
	tests := []struct {
		name      string
		prev, ran time.Duration
		want      time.Duration
	}{
		{name: "first exit", prev: 0, ran: time.Second, want: 100 * time.Millisecond},
		{name: "first exit at once", prev: 0, ran: 0, want: 100 * time.Millisecond},
		{name: "died again soon", prev: 100 * time.Millisecond, ran: 2 * time.Second, want: 200 * time.Millisecond},
		{name: "failed start", prev: 400 * time.Millisecond, ran: 0, want: 800 * time.Millisecond},
		{name: "capped", prev: 3200 * time.Millisecond, ran: 0, want: 5 * time.Second},
		{name: "stays capped", prev: 5 * time.Second, ran: time.Second, want: 5 * time.Second},
		{name: "healthy stretch resets", prev: 5 * time.Second, ran: 30 * time.Second, want: 100 * time.Millisecond},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := restartDelay(tc.prev, tc.ran); got != tc.want {
				t.Errorf("restartDelay(%v, %v) = %v, want %v", tc.prev, tc.ran, got, tc.want)
			}
		})
	}
}
