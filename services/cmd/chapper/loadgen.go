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
	if cfg.Mode == "campaign" {
		return runCampaign(ctx, cfg, stdout, stderr)
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

// runCampaign is `chapper loadgen -loadgen.mode=campaign`.
func runCampaign(ctx context.Context, cfg loadgen.Config, stdout, stderr io.Writer) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "campaign: %d canvassers, %.0f records/s offered for %v against %s\n",
		cfg.Campaign.Canvassers, cfg.Campaign.OfferedRate(), cfg.Campaign.Duration, cfg.Addr)
	res, err := loadgen.RunCampaign(ctx, cfg.Addr, cfg.Timeout, cfg.Campaign)
	if res != nil {
		if werr := res.WriteTable(stdout); werr != nil {
			return werr
		}
		if cfg.Campaign.Plot != "" && err == nil {
			fmt.Fprintf(stderr, "plot written to %s\n", cfg.Campaign.Plot)
		}
	}
	if err != nil {
		return fmt.Errorf("running the campaign against %s: %w", cfg.Addr, err)
	}
	if res.Failed > 0 || res.RetryWrong > 0 {
		return fmt.Errorf("%d records failed and %d resent records were not answered DUPLICATE (first error: %v)", res.Failed, res.RetryWrong, res.FirstError)
	}
	return nil
}
