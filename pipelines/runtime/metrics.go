package runtime

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Metrics of every consumer, labelled with the sink's name.
var (
	recordsTotal = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "chapper_pipeline_records_total",
		Help: "Records written by the sink and committed.",
	}, []string{"sink"})
	batchesTotal = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "chapper_pipeline_batches_total",
		Help: "Batches written and committed.",
	}, []string{"sink"})
	batchSeconds = promauto.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "chapper_pipeline_batch_seconds",
		Help:    "Time from a full batch to its commit: decode, write (with retries), dead-letter, commit.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
	}, []string{"sink"})
	lagRecords = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Name: "chapper_pipeline_consumer_lag_records",
		Help: "Records on a partition after the last committed batch, from the high-water mark seen at fetch.",
	}, []string{"sink", "topic", "partition"})
	deadLetterTotal = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "chapper_pipeline_dead_letter_records_total",
		Help: "Records sent to the dead-letter topic (undecodable or rejected permanently by the sink).",
	}, []string{"sink"})
	fatalGauge = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Name: "chapper_pipeline_fatal",
		Help: "1 once the consumer stopped on a fatal error (it fetches and commits nothing more until restarted), else 0.",
	}, []string{"sink"})
	sinkErrorsTotal = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "chapper_pipeline_sink_errors_total",
		Help: "Transient sink write errors (each one retried).",
	}, []string{"sink"})
)
