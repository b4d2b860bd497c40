package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/chapper/chapper/services/auth"
	"github.com/chapper/chapper/services/loadgen"
)

// runLoadgen is `chapper loadgen`: submit generated records to an ingest
// endpoint and print accepted records per second and latency percentiles.
func runLoadgen(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg loadgen.Config
	cfg.RegisterFlags("loadgen", fs)
	var authCfg auth.Config
	authCfg.RegisterFlags("auth", fs, false, defaultKeysDir)
	tokenTTL := fs.Duration("loadgen.token-ttl", 12*time.Hour, "With -auth: how long each signed token is valid (renewed at half its life).")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if authCfg.On {
		if err := loadgenTokens(&cfg, authCfg, *tokenTTL, stderr); err != nil {
			return err
		}
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

// loadgenTokens makes the load generator sign its own tokens with the
// configured key (ingest with authentication on): one token per simulated
// canvasser in campaign mode; in closed mode, whose records name random
// canvassers, one operator token (an operator may submit for anyone)
// unless -loadgen.token gives one.
func loadgenTokens(cfg *loadgen.Config, ac auth.Config, ttl time.Duration, stderr io.Writer) error {
	keys, err := ac.LoadKeys()
	if err != nil {
		return fmt.Errorf("loading token keys: %w", err)
	}
	is, err := auth.NewIssuer(ac, keys, "")
	if err != nil {
		return fmt.Errorf("-auth: signing tokens needs a key that can sign (-auth.keys-dir=%s or -auth.hs256-keys): %w", ac.KeysDir, err)
	}
	if cfg.Mode == "campaign" {
		tokens, err := loadgen.NewTokens(is, ttl)
		if err != nil {
			return err
		}
		cfg.Campaign.Token = tokens.Token
		fmt.Fprintf(stderr, "signing one token per canvasser with key %s\n", is.KeyID())
		return nil
	}
	if cfg.Token != "" {
		return nil
	}
	if cfg.Token, err = is.Issue("loadgen", auth.RoleOperator, ttl, nil); err != nil {
		return fmt.Errorf("signing the load generator's operator token: %w", err)
	}
	fmt.Fprintf(stderr, "signed an operator token with key %s\n", is.KeyID())
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
