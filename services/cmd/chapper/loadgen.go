package main

import (
	"context"
	"flag"
	"fmt"
	"io"

	"github.com/chapper/chapper/services/loadgen"
)

// runLoadgen is `chapper loadgen`: submit generated records to an ingest
// endpoint and print accepted records per second and latency percentiles.
func runLoadgen(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg loadgen.Config
	cfg.RegisterFlags("loadgen", fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	res, err := loadgen.Run(ctx, cfg)
	if err != nil {
		return fmt.Errorf("generating load on %s: %w", cfg.Addr, err)
	}
	fmt.Fprintln(stdout, res)
	if res.Failed > 0 {
		return fmt.Errorf("%d of %d records failed: %w", res.Failed, res.Submitted, res.FirstError)
	}
	return nil
}
