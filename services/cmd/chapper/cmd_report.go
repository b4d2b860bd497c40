package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/chapper/chapper/pipelines/report"
	"github.com/chapper/chapper/pipelines/search"
)

// runReport is `chapper report NAME [flags]`: one of the ready-made
// reporting queries against Elasticsearch (or the embedded search server of
// chapper dev), printed as a table.
func runReport(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "" || args[0][0] == '-' {
		var b strings.Builder
		for _, r := range report.Reports {
			fmt.Fprintf(&b, "\n  %-11s %s", r.Name, r.Description)
		}
		return fmt.Errorf("chapper report: give a report name (chapper report NAME -h lists the flags):%s", b.String())
	}
	name := args[0]
	fs := flag.NewFlagSet("report "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg search.Config
	cfg.RegisterFlags("search", fs)
	var p report.Params
	p.RegisterFlags("", fs)
	if err := parseFlags(fs, args[1:]); err != nil {
		return err
	}
	es, err := search.NewClient(cfg)
	if err != nil {
		return err
	}
	p.IndexPrefix = cfg.IndexPrefix
	return report.Run(ctx, es, name, p, stdout)
}
