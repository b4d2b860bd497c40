package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/chapper/chapper/pipelines/persist/migrations"
	"github.com/chapper/chapper/services/devstack"
)

// pipelineTargets are the targets `chapper dev` runs in its pipelines
// child process (-dev.pipelines-process): the consumers, whose batches
// would otherwise take the CPU from ingest and the broker in bursts and
// share their garbage collector.
var pipelineTargets = []string{"timeline", "persist", "search"}

// pipelinesLog is the pipelines child's log file inside -dev.dir.
const pipelinesLog = "pipelines.log"

// devPipelines are the flags of the pipelines child.
type devPipelines struct {
	process bool
	nice    int
}

func (p *devPipelines) register(fs *flag.FlagSet) {
	fs.BoolVar(&p.process, "dev.pipelines-process", true, "Run the pipelines (timeline, persist, search) as one child process (`chapper serve`) at -dev.pipelines-nice, so Submit's acknowledgements get the CPU before the pipelines' batches do; false runs them inside this process.")
	fs.IntVar(&p.nice, "dev.pipelines-nice", 10, "Nice value (0-19; higher yields the CPU more) of the pipelines' child process (-dev.pipelines-process).")
}

// validate refuses a nice value out of range while the child is on.
func (p *devPipelines) validate() error {
	if p.process && (p.nice < 0 || p.nice > 19) {
		return fmt.Errorf("-dev.pipelines-nice must be 0 to 19 (raising priority needs privileges), got %d", p.nice)
	}
	return nil
}

// split returns the targets of names to run in this process and those for
// the child.
func (p *devPipelines) split(names []string) (here, child []string) {
	if !p.process {
		return names, nil
	}
	for _, n := range names {
		if slices.Contains(pipelineTargets, n) {
			child = append(child, n)
		} else {
			here = append(here, n)
		}
	}
	return here, child
}

// start runs the child targets as `chapper serve` against the stack:
// its addresses, dev's flag defaults of those targets, and every flag of
// theirs set on dev's command line or in the environment. The persist
// target's databases are migrated first, as dev does in process.
func (p *devPipelines) start(ctx context.Context, fs *flag.FlagSet, c *common, stack *devstack.Stack, dir string, names []string, log *slog.Logger) (*devstack.Child, error) {
	if slices.Contains(names, "persist") {
		if _, err := migrations.Run(ctx, migrations.Options{RouterURL: stack.Postgres.URL("chapper_router"), Logger: log}); err != nil {
			return nil, err
		}
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("finding this executable to run the pipelines: %w", err)
	}
	stackFlags := map[string]string{
		"kafka.brokers":        stack.Kafka.Addr(),
		"timeline.redis-addrs": stack.Redis.Addr(),
		"persist.router-url":   stack.Postgres.URL("chapper_router"),
		"search.addresses":     stack.SearchURL(),
	}
	argv := []string{exe, "serve", "-auth=off", "-target=" + strings.Join(names, ","),
		"-log.level=" + c.log.level, "-log.format=" + c.log.format}
	for k, v := range stackFlags {
		argv = append(argv, "-"+k+"="+v)
	}
	ours := func(name string) bool {
		prefix, _, _ := strings.Cut(name, ".")
		return slices.Contains(names, prefix) && stackFlags[name] == ""
	}
	for _, n := range names {
		for k, v := range targets[n].dev {
			argv = append(argv, "-"+k+"="+v)
		}
	}
	fs.Visit(func(f *flag.Flag) {
		if ours(f.Name) {
			argv = append(argv, "-"+f.Name+"="+f.Value.String())
		}
	})
	return devstack.StartChild(ctx, devstack.ChildConfig{
		Name: "pipelines", Argv: argv, AdminFlag: "-admin.addr",
		Dir: dir, LogPath: filepath.Join(dir, pipelinesLog), Nice: p.nice,
		// the pipelines' drain timeouts (10 s each by default) and a margin
		StopTimeout: time.Minute, Logger: log,
	})
}
