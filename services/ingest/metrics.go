package ingest

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Outcome labels of recordsTotal.
const (
	resultAccepted  = "accepted"
	resultDuplicate = "duplicate"
	resultRejected  = "rejected"
	resultConflict  = "conflict"
)

var (
	recordsTotal = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "chapper_ingest_records_total",
		Help: "Records answered by Submit, by kind and result (accepted, duplicate, rejected, conflict).",
	}, []string{"kind", "result"})

	rejectionsTotal = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "chapper_ingest_rejections_total",
		Help: "Rejected records by kind and reason class (the offending field's name, e.g. latitude).",
	}, []string{"kind", "reason"})

	requestsTotal = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "chapper_ingest_requests_total",
		Help: "Submit calls by gRPC status code.",
	}, []string{"code"})

	produceSeconds = promauto.NewHistogram(prometheus.HistogramOpts{
		Name:    "chapper_ingest_produce_seconds",
		Help:    "Time from handing a request's records to the producer to the broker's acknowledgement (or failure).",
		Buckets: []float64{.0005, .001, .002, .005, .01, .02, .05, .1, .25, .5, 1, 2.5, 5, 10},
	})

	produceErrorsTotal = promauto.NewCounter(prometheus.CounterOpts{
		Name: "chapper_ingest_produce_errors_total",
		Help: "Produce calls that failed or timed out (Submit answered UNAVAILABLE).",
	})

	batchRecords = promauto.NewHistogram(prometheus.HistogramOpts{
		Name:    "chapper_ingest_batch_records",
		Help:    "Records per Submit request, all kinds together.",
		Buckets: []float64{0, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000},
	})

	reencodedTotal = promauto.NewCounter(prometheus.CounterOpts{
		Name: "chapper_ingest_reencoded_records_total",
		Help: "Records produced that came over gRPC but not in proto.Marshal's form (a default value written out, a field twice, ...), so ingest encoded them again instead of producing the bytes they came in.",
	})

	dedupWaitsTotal = promauto.NewCounter(prometheus.CounterOpts{
		Name: "chapper_ingest_dedup_waits_total",
		Help: "Records whose id was being produced by a concurrent Submit, so this one waited for its outcome.",
	})
)

var (
	idStoreSeconds = promauto.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "chapper_ingest_idstore_seconds",
		Help:    "Time of one pipelined call to the shared id store (Redis), by operation: claim, ack, release, lookup.",
		Buckets: []float64{.0002, .0005, .001, .002, .005, .01, .02, .05, .1, .25, .5, 1},
	}, []string{"op"})

	idStoreErrorsTotal = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "chapper_ingest_idstore_errors_total",
		Help: "Calls to the shared id store that failed (Submit answered UNAVAILABLE, or, for ack and release, logged), by operation.",
	}, []string{"op"})

	idStoreWaitsTotal = promauto.NewCounter(prometheus.CounterOpts{
		Name: "chapper_ingest_idstore_waits_total",
		Help: "Records whose id another ingest instance was producing, so this one waited for its outcome in the shared id store.",
	})

	limitedTotal = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "chapper_ingest_limited_total",
		Help: "Submits refused with RESOURCE_EXHAUSTED, by limit: rate (per canvasser) or in_flight (global).",
	}, []string{"limit"})
)
