package main

import (
	"context"
	"flag"
	"io"

	"github.com/chapper/chapper/services/devstack"
)

// hiddenCommands are subcommands usage does not list: what chapper runs
// as its own child processes.
var hiddenCommands = []command{
	{devstack.SearchServerCommand, "run the embedded search server alone (the child process of `chapper dev -dev.search-process`)", runSearchServer},
}

// runSearchServer is `chapper search-server`: the embedded search server
// alone, serving -search-server.data-dir on -search-server.addr (and its
// Prometheus metrics on -search-server.metrics-addr when set) until
// SIGTERM. `chapper dev` runs it as a child at a lower CPU priority
// (-dev.search-process, -dev.search-nice), gathers its metrics into dev's
// /metrics and restarts it when it dies; it logs to stderr, which dev mode
// sends to <dev.dir>/search/search.log.
func runSearchServer(ctx context.Context, args []string, _, stderr io.Writer) error {
	fs := flag.NewFlagSet(devstack.SearchServerCommand, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg devstack.SearchChildConfig
	cfg.RegisterFlags(devstack.SearchServerCommand, fs)
	var lf logFlags
	lf.register(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	log, err := lf.logger(stderr)
	if err != nil {
		return err
	}
	cfg.Logger = log
	return devstack.ServeSearch(ctx, cfg)
}
