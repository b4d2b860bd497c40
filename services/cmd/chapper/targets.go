package main

import (
	"context"
	"flag"
	"fmt"
	"slices"
	"strings"
)

// A target is one part of Chapper that `serve -target=` can run. Each lives
// in its own file (target_ingest.go, ...) and registers itself from init
// with registerTarget, so adding one touches no other file.
type target struct {
	// name is what -target takes.
	name string
	// flags registers the target's configuration flags on fs and returns
	// the function that builds the target once the flags are parsed. It is
	// called for every registered target (the flags exist whether or not
	// the target is selected).
	flags func(fs *flag.FlagSet) setupFunc
	// dev holds flag defaults for `chapper dev` (flag name → value), e.g.
	// one replica per topic on the single embedded broker. The command line
	// and the environment still win.
	dev map[string]string
}

// A setupFunc builds a target into the app: it registers gRPC services on
// a.GRPC(), adds long-running parts with a.Add and may gate the gRPC port
// with a.GRPC().Gate. It must not block: the work happens in the parts' Run.
type setupFunc func(ctx context.Context, a *app) error

// targetOrder is the order targets are set up and listed in; DESIGN.md
// names them. Targets not built yet answer a clear error.
var targetOrder = []string{"ingest", "query", "timeline", "persist", "search"}

var targets = map[string]target{}

// registerTarget adds a target; call it from init.
func registerTarget(t target) {
	if _, dup := targets[t.name]; dup {
		panic("chapper: target registered twice: " + t.name)
	}
	targets[t.name] = t
}

// builtTargets returns the registered targets' names in targetOrder, then
// any others alphabetically.
func builtTargets() []string {
	var names []string
	for _, n := range targetOrder {
		if _, ok := targets[n]; ok {
			names = append(names, n)
		}
	}
	var extra []string
	for n := range targets {
		if !slices.Contains(targetOrder, n) {
			extra = append(extra, n)
		}
	}
	slices.Sort(extra)
	return append(names, extra...)
}

// registerTargetFlags registers every target's flags on fs and returns
// their setup functions by name.
func registerTargetFlags(fs *flag.FlagSet) map[string]setupFunc {
	setups := make(map[string]setupFunc, len(targets))
	for _, n := range builtTargets() {
		setups[n] = targets[n].flags(fs)
	}
	return setups
}

// selectTargets parses a -target value: a comma-separated list of target
// names, or "all" for every built target. It keeps targetOrder and drops
// repeats.
func selectTargets(list string) ([]string, error) {
	built := builtTargets()
	var want []string
	for _, n := range strings.Split(list, ",") {
		n = strings.TrimSpace(n)
		switch {
		case n == "":
			continue
		case n == "all":
			want = append(want, built...)
		case slices.Contains(built, n):
			want = append(want, n)
		default:
			return nil, fmt.Errorf("unknown target %q; built targets: %s", n, strings.Join(built, ", "))
		}
	}
	if len(want) == 0 {
		return nil, fmt.Errorf("no target given: -target takes a comma-separated list of %s, or all", strings.Join(built, ", "))
	}
	var out []string
	for _, n := range built {
		if slices.Contains(want, n) {
			out = append(out, n)
		}
	}
	return out, nil
}
