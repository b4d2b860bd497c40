package main

import (
	"context"
	"flag"

	"github.com/chapper/chapper/pipelines/persist"
	"github.com/chapper/chapper/pipelines/persist/migrations"
	"github.com/chapper/chapper/pipelines/runtime"
)

// The persist target: the consumer runtime (group chapper-persist) writing
// every record to its shard database through the persist sink. In dev mode
// the router and shard databases of the embedded cluster are migrated first
// (and the shard map seeded); under serve run `chapper migrate` beforehand.
func init() {
	registerTarget(target{
		name: "persist",
		flags: func(fs *flag.FlagSet) setupFunc {
			var cfg persist.Config
			cfg.RegisterFlags("persist", fs)
			var rcfg runtime.Config
			rcfg.RegisterFlags("persist", fs)
			return func(ctx context.Context, a *app) error {
				cfg.Logger = a.Log
				rcfg.Brokers = a.Brokers
				rcfg.Logger = a.Log
				if a.Stack != nil {
					cfg.RouterURL = a.Stack.Postgres.URL("chapper_router")
					if _, err := migrations.Run(ctx, migrations.Options{RouterURL: cfg.RouterURL, Logger: a.Log}); err != nil {
						return err
					}
				}
				sink, err := persist.New(ctx, cfg)
				if err != nil {
					return err
				}
				c, err := runtime.New(rcfg, sink)
				if err != nil {
					sink.Close()
					return err
				}
				a.Add("persist", func(ctx context.Context) error {
					defer sink.Close()
					return c.Run(ctx)
				}, c.Ready)
				return nil
			}
		},
	})
}
