package main

import (
	"context"
	"flag"
	"fmt"
	"io"

	"github.com/chapper/chapper/pipelines/persist/migrations"
)

// runMigrate is `chapper migrate`: the router database, the shard map (seeded
// from -migrate.shard-map or the built-in dev map when the router holds
// none) and every shard database it names, brought to the latest schema.
// Running it again changes nothing.
func runMigrate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("migrate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var lf logFlags
	lf.register(fs)
	var opts migrations.Options
	opts.RegisterFlags("migrate", fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	log, err := lf.logger(stderr)
	if err != nil {
		return err
	}
	opts.Logger = log
	m, err := migrations.Run(ctx, opts)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "migrated: router and %d shard databases; shard map version %d (%d logical shards)\n",
		len(m.Databases), m.Version, len(m.Shards))
	return nil
}
