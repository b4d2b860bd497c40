package main

import (
	"context"
	"flag"

	"github.com/chapper/chapper/pipelines/runtime"
	"github.com/chapper/chapper/pipelines/timeline"
)

// The timeline target: the consumer runtime (group chapper-timeline)
// materialising every record into its locality's Redis timeline, counters
// and news channel.
func init() {
	registerTarget(target{
		name: "timeline",
		flags: func(fs *flag.FlagSet) setupFunc {
			var cfg timeline.Config
			cfg.RegisterFlags("timeline", fs)
			var rcfg runtime.Config
			rcfg.RegisterFlags("timeline", fs)
			return func(ctx context.Context, a *app) error {
				if a.Stack != nil {
					cfg.Redis.Addrs = []string{a.Stack.Redis.Addr()}
				}
				if err := cfg.Validate(); err != nil {
					return err
				}
				rcfg.Brokers = a.Brokers
				rcfg.Logger = a.Log
				client := cfg.Redis.NewClient()
				sink, err := timeline.New(client, cfg)
				if err != nil {
					client.Close()
					return err
				}
				c, err := runtime.New(rcfg, sink)
				if err != nil {
					client.Close()
					return err
				}
				a.Add("timeline", func(ctx context.Context) error {
					defer client.Close()
					return c.Run(ctx)
				}, c.Ready)
				return nil
			}
		},
	})
}
