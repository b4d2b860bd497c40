package server

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"google.golang.org/grpc/status"
)

var (
	callsTotal = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "chapper_grpc_calls_total",
		Help: "gRPC and gRPC-web calls handled, by method and status code.",
	}, []string{"method", "code"})

	callSeconds = promauto.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "chapper_grpc_call_seconds",
		Help:    "Handling time of gRPC and gRPC-web calls, by method (streams: their whole life).",
		Buckets: []float64{.0005, .001, .002, .005, .01, .02, .05, .1, .25, .5, 1, 2.5, 5, 10},
	}, []string{"method"})
)

// observe records one finished call. Method names come from registered
// services only, so the label set is bounded.
func observe(method string, err error, start time.Time) {
	callsTotal.WithLabelValues(method, status.Code(err).String()).Inc()
	callSeconds.WithLabelValues(method).Observe(time.Since(start).Seconds())
}

var corsRefusedTotal = promauto.NewCounter(prometheus.CounterOpts{
	Name: "chapper_grpc_cors_refused_total",
	Help: "gRPC-web requests and CORS preflights refused because their Origin is not in -grpc.cors-origins.",
})
