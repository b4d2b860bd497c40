package query

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"google.golang.org/grpc/status"
)

var (
	requestsTotal = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "chapper_query_requests_total",
		Help: "Query requests by method and gRPC status code (a WatchChunk counts when its stream ends).",
	}, []string{"method", "code"})
	cacheHitsTotal = promauto.NewCounter(prometheus.CounterOpts{
		Name: "chapper_query_cache_hits_total",
		Help: "GetChunk pages (and watch snapshots) answered from the in-memory cache.",
	})
	cacheMissesTotal = promauto.NewCounter(prometheus.CounterOpts{
		Name: "chapper_query_cache_misses_total",
		Help: "GetChunk pages (and watch snapshots) not in the cache.",
	})
	singleflightSharedTotal = promauto.NewCounter(prometheus.CounterOpts{
		Name: "chapper_query_singleflight_shared_total",
		Help: "Cache misses answered by another request's Redis round trip.",
	})
	watchersActive = promauto.NewGauge(prometheus.GaugeOpts{
		Name: "chapper_query_watchers",
		Help: "Open WatchChunk streams.",
	})
	watchersDroppedTotal = promauto.NewCounter(prometheus.CounterOpts{
		Name: "chapper_query_watchers_dropped_total",
		Help: "WatchChunk streams ended with RESOURCE_EXHAUSTED because the client fell behind.",
	})
	subscribedChunks = promauto.NewGauge(prometheus.GaugeOpts{
		Name: "chapper_query_subscribed_chunks",
		Help: "Chunks whose news channel this instance is subscribed to.",
	})
	subscriptionsRefusedTotal = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "chapper_query_subscriptions_refused_total",
		Help: "New chunk subscriptions refused, by reason: limit (-query.max-subscriptions) or redis_down.",
	}, []string{"reason"})
	prefixSwitchesTotal = promauto.NewCounter(prometheus.CounterOpts{
		Name: "chapper_query_prefix_switches_total",
		Help: "Times the service followed a switch of the active timeline key prefix.",
	})
	newsTotal = promauto.NewCounter(prometheus.CounterOpts{
		Name: "chapper_query_news_messages_total",
		Help: "News messages received from Redis Pub/Sub.",
	})
	pubsubReconnectsTotal = promauto.NewCounter(prometheus.CounterOpts{
		Name: "chapper_query_pubsub_disconnects_total",
		Help: "Times the Redis Pub/Sub connection was lost.",
	})
	redisRoundTripSeconds = promauto.NewHistogram(prometheus.HistogramOpts{
		Name:    "chapper_query_redis_roundtrip_seconds",
		Help:    "Latency of one pipelined Redis round trip reading a chunk page.",
		Buckets: prometheus.ExponentialBuckets(0.0002, 2, 14),
	})
)

// observeRequest counts a finished request by method and status code.
func observeRequest(method string, err error) {
	requestsTotal.WithLabelValues(method, status.Code(err).String()).Inc()
}
