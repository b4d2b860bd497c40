package search

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// MetricPrefix begins the name of every metric of the search server.
const MetricPrefix = "chapper_searchserver_"

var (
	metricRequestSeconds = promauto.NewHistogramVec(prometheus.HistogramOpts{
		Name:    MetricPrefix + "request_seconds",
		Help:    "Time to answer a request to the embedded search server, by endpoint and status code.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10),
	}, []string{"endpoint", "code"})
	metricBatchSeconds = promauto.NewHistogram(prometheus.HistogramOpts{
		Name:    MetricPrefix + "batch_seconds",
		Help:    "Time to write one bleve batch (one index's part of a bulk request), persisted.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10),
	})
	metricDocs = promauto.NewCounter(prometheus.CounterOpts{
		Name: MetricPrefix + "documents_written_total",
		Help: "Documents indexed or deleted by the embedded search server.",
	})
)
