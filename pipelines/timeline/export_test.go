package timeline

import (
	"context"
	"time"
)

// PerRecord makes s take the per-record path the sink took before the
// batch script (two script calls per record), so that BenchmarkTimeline
// measures it beside the batch path in the same run. Call it before the
// first Write.
func PerRecord(s *Sink) error {
	s.legacy = true
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return s.load(ctx)
}

// SetClock makes s read the time from now when it decides which
// localities' TTLs are due for a refresh. Call it before the first Write.
func SetClock(s *Sink, now func() time.Time) { s.ttls.now = now }

// TTLRefreshEvery returns how often s refreshes the TTLs of a locality it
// keeps writing to.
func TTLRefreshEvery(s *Sink) time.Duration { return s.ttls.every }
