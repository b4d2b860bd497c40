package persist

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

var (
	writeSeconds = promauto.NewHistogram(prometheus.HistogramOpts{
		Name:    "chapper_persist_write_seconds",
		Help:    "Time to write one batch to every shard database it touches, shard map lock included.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
	})
	lockWaitSeconds = promauto.NewHistogram(prometheus.HistogramOpts{
		Name:    "chapper_persist_lock_wait_seconds",
		Help:    "Time a batch waited for the shard map lock (long while a shard move switches the map).",
		Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
	})
	rowsTotal = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "chapper_persist_rows_total",
		Help: "Rows written per table: inserted, or duplicate (already stored, skipped by ON CONFLICT DO NOTHING).",
	}, []string{"table", "result"})
	batchesTotal = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "chapper_persist_database_batches_total",
		Help: "A batch's share of one shard database, by how it was written: copy (binary COPY, all rows new), copy_then_insert (COPY met a stored row; INSERT ... ON CONFLICT DO NOTHING after), insert (straight to the INSERT, in the backoff after such a batch), row_by_row (the database refused some rows' data).",
	}, []string{"path"})
	rejectedTotal = promauto.NewCounter(prometheus.CounterOpts{
		Name: "chapper_persist_rejected_records_total",
		Help: "Records that can never be stored (returned as permanent failures, dead-lettered by the runtime).",
	})
	databaseErrorsTotal = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "chapper_persist_database_errors_total",
		Help: "Write errors per shard database (down, read-only, a missing column...); the batch is retried unless the error is fatal.",
	}, []string{"database"})
	lockLostTotal = promauto.NewCounter(prometheus.CounterOpts{
		Name: "chapper_persist_lock_lost_total",
		Help: "Batches whose router session (and shared shard map lock) died before the shards committed; rolled back and retried.",
	})
	mapVersion = promauto.NewGauge(prometheus.GaugeOpts{
		Name: "chapper_persist_shard_map_version",
		Help: "Version of the shard map the persister writes with.",
	})
)
