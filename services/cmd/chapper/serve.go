package main

import (
	"context"
	"flag"
	"io"
)

// runServe is `chapper serve`: the targets named by -target against the
// stores the flags point at. Production runs one target per Deployment.
// Authentication is on unless -auth=off; ingest and query refuse to start
// with it on and no key.
func runServe(ctx context.Context, args []string, _, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c common
	c.register(fs, "")
	// On unless turned off; no default key: production names its keys.
	c.auth.RegisterFlags("auth", fs, true, "")
	setups := registerTargetFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	names, err := selectTargets(c.targets)
	if err != nil {
		return err
	}
	log, err := c.log.logger(stderr)
	if err != nil {
		return err
	}
	a, err := newApp(&c, log, stderr)
	if err != nil {
		return err
	}
	log.Info("chapper serve starting", "targets", names, "kafka", a.Brokers, "auth", c.auth.On.String())
	return a.run(ctx, names, setups, nil)
}
