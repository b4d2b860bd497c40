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
