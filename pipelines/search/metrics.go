package search

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

var (
	docsIndexed = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "chapper_search_docs_indexed_total",
		Help: "Documents Elasticsearch acknowledged, by kind.",
	}, []string{"kind"})
	itemErrors = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "chapper_search_item_errors_total",
		Help: "Documents not indexed, by error type (Elasticsearch error type, or transport, invalid_record).",
	}, []string{"type"})
	bulkSeconds = promauto.NewHistogram(prometheus.HistogramOpts{
		Name:    "chapper_search_bulk_seconds",
		Help:    "Latency of one _bulk request.",
		Buckets: prometheus.ExponentialBuckets(0.005, 2, 12),
	})
	writeSeconds = promauto.NewHistogram(prometheus.HistogramOpts{
		Name:    "chapper_search_write_seconds",
		Help:    "Latency of one sink write: every document of the batch acknowledged or failed.",
		Buckets: prometheus.ExponentialBuckets(0.005, 2, 12),
	})
)
