package main

import (
	"context"
	"flag"

	"github.com/chapper/chapper/services/ingest"
)

// The ingest target: IngestService on the shared gRPC server. The gRPC port
// opens only once ingest can take records (every topic exists).
func init() {
	registerTarget(target{
		name: "ingest",
		flags: func(fs *flag.FlagSet) setupFunc {
			var cfg ingest.Config
			cfg.RegisterFlags("ingest", fs)
			return func(_ context.Context, a *app) error {
				if err := a.GRPCAuthReady(); err != nil {
					return err
				}
				cfg.Brokers = a.Brokers
				if a.Stack != nil && cfg.RedisAddrs == "" {
					// dev: the shared id store is the dev Redis kept for
					// it, or the one Redis
					switch {
					case a.Stack.IDs != nil:
						cfg.RedisAddrs = a.Stack.IDs.Addr()
					case a.Stack.Redis != nil:
						cfg.RedisAddrs = a.Stack.Redis.Addr()
					}
				}
				cfg.Logger = a.Log
				svc, err := ingest.New(cfg)
				if err != nil {
					return err
				}
				a.GRPC().Register(svc.Register)
				a.GRPC().Gate(svc.WaitReady)
				a.Add("ingest", svc.Run, svc.Ready)
				return nil
			}
		},
		// dev: the producer lingers 5 ms instead of 1 ms. The broker runs in
		// this process on the same cores as everything else, so fewer,
		// larger produce requests (and the fetches they wake) leave more
		// CPU to the rest: at 7,000 records/s offered, ack p99 168-271 ms
		// against 230-378 ms with 1 ms (docs/benchmarks.md).
		dev: map[string]string{"ingest.topic-replication-factor": "1", "ingest.kafka-batch-timeout": "5ms"},
	})
}
