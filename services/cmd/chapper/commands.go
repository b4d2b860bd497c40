package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/peterbourgon/ff/v3"
)

// ErrNotImplemented is returned by subcommands and targets that later
// issues build.
var ErrNotImplemented = errors.New("not implemented yet")

// command is one subcommand.
type command struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

// commands lists the subcommands in the order usage shows them.
var commands = []command{
	{"dev", "run the embedded stack and every part on this machine (what `make run` runs)", runDev},
	{"serve", "run the parts named by -target against real Kafka, Postgres, Redis and Elasticsearch", runServe},
	{"loadgen", "submit generated records to an ingest endpoint and report throughput and latency", runLoadgen},
	{"migrate", "apply the Postgres migrations to every shard and the router", runMigrate},
	{"shards", "show and move logical Postgres shards (show, add, move, clean)", runShards},
	notYet("replay", "re-read topics from an offset or a time into a sink", "the consumer runtime, issue 4"),
	notYet("deadletter", "inspect and re-drive dead-lettered records", "the consumer runtime, issue 4"),
	{"report", "run a ready-made reporting query against Elasticsearch (intentions, followups, canvassers, unknocked)", runReport},
	{"token", "issue client tokens (issue) and write signing keys (keygen)", runToken},
}

// notYet is a subcommand a later issue builds.
func notYet(name, summary, where string) command {
	return command{name, summary, func(context.Context, []string, io.Writer, io.Writer) error {
		return fmt.Errorf("chapper %s: %w (%s)", name, ErrNotImplemented, where)
	}}
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "Usage: chapper <subcommand> [flags]")
	fmt.Fprintln(w)
	for _, c := range commands {
		fmt.Fprintf(w, "  %-11s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "`chapper <subcommand> -h` lists its flags. Every flag can be set from the")
	fmt.Fprintln(w, "environment: -ingest.batch-limit <-> CHAPPER_INGEST_BATCH_LIMIT (the flag wins).")
}

// envPrefix is the prefix of the environment variables that set flags.
const envPrefix = "CHAPPER"

// parseFlags parses args, then the environment (CHAPPER_<FLAG NAME> with
// dots and dashes as underscores) for every flag not given in args.
func parseFlags(fs *flag.FlagSet, args []string) error {
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: chapper %s [flags]\n\nEvery flag can also be set as %s_<NAME> in the environment, e.g. -ingest.batch-limit as %s.\n\n",
			fs.Name(), envPrefix, envName("ingest.batch-limit"))
		fs.PrintDefaults()
	}
	if err := ff.Parse(fs, args, ff.WithEnvVarPrefix(envPrefix)); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	return nil
}

// envName returns the environment variable that sets flag name.
func envName(name string) string {
	r := strings.NewReplacer("-", "_", ".", "_", "/", "_")
	return envPrefix + "_" + strings.ToUpper(r.Replace(name))
}

// setDefault changes a registered flag's default (help text included)
// without marking it as set, so the environment and the command line still
// override it. Unknown names are ignored: the target may not be built in.
func setDefault(fs *flag.FlagSet, name, value string) error {
	f := fs.Lookup(name)
	if f == nil {
		return nil
	}
	if err := f.Value.Set(value); err != nil {
		return fmt.Errorf("setting default of -%s to %q: %w", name, value, err)
	}
	f.DefValue = value
	return nil
}

// logFlags are the logging flags every long-running subcommand takes.
type logFlags struct {
	level  string
	format string
}

func (l *logFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&l.level, "log.level", "info", "Log level: debug, info, warn or error.")
	fs.StringVar(&l.format, "log.format", "text", "Log format: text or json.")
}

// logger builds the logger the flags describe, writing to w.
func (l *logFlags) logger(w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(l.level)); err != nil {
		return nil, fmt.Errorf("parsing -log.level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch l.format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("unknown -log.format %q (want text or json)", l.format)
}
