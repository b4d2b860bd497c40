package main

import (
	"context"
	"flag"

	"github.com/chapper/chapper/pipelines/timeline"
	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"github.com/chapper/chapper/services/query"
	"google.golang.org/grpc"
)

// The query target: QueryService (GetChunk, WatchChunk) on the shared gRPC
// server, reading the timelines the timeline target writes. Its Redis
// settings reuse the timeline sink's flag shapes under -query.
func init() {
	registerTarget(target{
		name: "query",
		flags: func(fs *flag.FlagSet) setupFunc {
			var cfg query.Config
			cfg.RegisterFlags("query", fs)
			var redisCfg timeline.RedisConfig
			redisCfg.RegisterFlags("query", fs)
			return func(ctx context.Context, a *app) error {
				if err := a.GRPCAuthReady(); err != nil {
					return err
				}
				if a.Stack != nil {
					redisCfg.Addrs = []string{a.Stack.Redis.Addr()}
				}
				cfg.Logger = a.Log
				if err := cfg.Validate(); err != nil {
					return err
				}
				client := redisCfg.NewClient()
				svc, err := query.New(client, cfg)
				if err != nil {
					client.Close()
					return err
				}
				a.GRPC().Register(func(s grpc.ServiceRegistrar) { canvassv1.RegisterQueryServiceServer(s, svc) })
				// Run closes open watches when ctx ends, so the server's
				// graceful stop does not wait on them.
				a.Add("query", func(ctx context.Context) error {
					defer client.Close()
					return svc.Run(ctx)
				}, svc.Ready)
				return nil
			}
		},
	})
}
