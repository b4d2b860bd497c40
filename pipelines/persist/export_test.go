package persist

import (
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/chapper/chapper/proto/topic"
)

// SetHooks installs the test seams of Write, called for every shard
// database of a batch (concurrently for several): afterInsert once the
// database holds its rows uncommitted, before its lock check; beforeCommit
// after its lock check, before its commit. Either may be nil.
func (s *Sink) SetHooks(afterInsert, beforeCommit func()) {
	s.afterInsert, s.beforeCommit = afterInsert, beforeCommit
}

// CopyBackoff is copyBackoff.
const CopyBackoff = copyBackoff

// Paths returns chapper_persist_database_batches_total by path.
func Paths() map[string]float64 {
	out := map[string]float64{}
	for _, p := range []string{"copy", "copy_then_insert", "insert", "row_by_row"} {
		out[p] = testutil.ToFloat64(batchesTotal.WithLabelValues(p))
	}
	return out
}

// Rows returns chapper_persist_rows_total summed over the tables: rows
// inserted and rows found stored already.
func Rows() (inserted, duplicate float64) {
	for _, k := range topic.Kinds {
		inserted += testutil.ToFloat64(rowsTotal.WithLabelValues(string(k), "inserted"))
		duplicate += testutil.ToFloat64(rowsTotal.WithLabelValues(string(k), "duplicate"))
	}
	return inserted, duplicate
}
