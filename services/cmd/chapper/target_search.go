package main

import (
	"context"
	"flag"

	"github.com/chapper/chapper/pipelines/runtime"
	"github.com/chapper/chapper/pipelines/search"
)

// The search target: the consumer runtime (group chapper-search) indexing
// every record into Elasticsearch (in dev mode, the embedded search server)
// under monthly indices behind the canvass-<kind> aliases.
func init() {
	registerTarget(target{
		name: "search",
		// In dev mode, batches of 2,000 documents: the embedded server
		// builds a Bleve segment per request and merges them, and at 7,000
		// records/s offered on 2 cores its lag drained 34-37 s after the
		// load with 2,000 against 55-57 s with 500 and 42 s with 5,000
		// (docs/benchmarks.md, "Durable dev").
		dev: map[string]string{"search.batch-size": "2000"},
		flags: func(fs *flag.FlagSet) setupFunc {
			var cfg search.Config
			cfg.RegisterFlags("search", fs)
			var rcfg runtime.Config
			rcfg.RegisterFlags("search", fs)
			return func(ctx context.Context, a *app) error {
				if a.Stack != nil {
					cfg.Addresses = []string{a.Stack.SearchURL()}
				}
				rcfg.Brokers = a.Brokers
				rcfg.Logger = a.Log
				sink, err := search.New(ctx, cfg)
				if err != nil {
					return err
				}
				c, err := runtime.New(rcfg, sink)
				if err != nil {
					return err
				}
				a.Add("search", func(ctx context.Context) error {
					// Close flushes nothing new: Write already waited for
					// every document of each batch.
					defer sink.Close(context.WithoutCancel(ctx))
					return c.Run(ctx)
				}, c.Ready)
				return nil
			}
		},
	})
}
