package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"regexp"
	"time"

	"github.com/chapper/chapper/pipelines/deadletter"
	"github.com/chapper/chapper/pipelines/report"
	"github.com/chapper/chapper/pipelines/runtime"
	"github.com/chapper/chapper/proto/topic"
)

// addrRE matches a dead-letter address given as a positional argument.
var addrRE = regexp.MustCompile(`^\d+:\d+$`)

// runDeadletter is `chapper deadletter list|show|redrive`.
func runDeadletter(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	const usage = "chapper deadletter: give list, show <partition>:<offset> or redrive -to=sink|origin [<partition>:<offset> ...] (-h after each lists its flags)"
	if len(args) == 0 {
		return fmt.Errorf("%s", usage)
	}
	sub, args := args[0], args[1:]
	// addresses may come before, between or after the flags
	var addrs, rest []string
	for _, a := range args {
		if addrRE.MatchString(a) {
			addrs = append(addrs, a)
		} else {
			rest = append(rest, a)
		}
	}
	fs := flag.NewFlagSet("deadletter "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		lf                   logFlags
		st                   storeFlags
		dlTopic, sinkName    string
		since, errSubstr, to string
		again, all           bool
	)
	lf.register(fs)
	st.register(fs)
	fs.StringVar(&dlTopic, "dead-letter-topic", topic.DeadLetter, "The dead-letter topic.")
	if sub == "list" || sub == "redrive" {
		fs.StringVar(&sinkName, "sink", "", "Only dead letters of this sink (timeline, persist, search).")
		fs.StringVar(&since, "since", "", "Only dead letters dead-lettered at or after this time: RFC 3339, YYYY-MM-DD or a duration such as -24h.")
		fs.StringVar(&errSubstr, "error", "", "Only dead letters whose error contains this text.")
	}
	switch sub {
	case "list":
		fs.BoolVar(&all, "all", false, "Also list the markers redrive leaves (no record; redrive-of names what was re-driven).")
	case "redrive":
		fs.StringVar(&to, "to", "", "Where to: sink (straight into the sink named by the sink header) or origin (re-produce key and value to the origin topic).")
		fs.BoolVar(&again, "again", false, "Also re-drive dead letters that were re-driven before.")
	case "show":
	default:
		return fmt.Errorf("chapper deadletter: unknown subcommand %q; %s", sub, usage)
	}
	if err := parseFlags(fs, rest); err != nil {
		return err
	}
	log, err := lf.logger(stderr)
	if err != nil {
		return err
	}
	f := deadletter.Filter{Sink: sinkName, Error: errSubstr, Addrs: addrs}
	if since != "" {
		if f.Since, err = report.ParseTime(since, time.Now()); err != nil {
			return fmt.Errorf("-since: %w", err)
		}
	}
	if sub == "show" && len(addrs) != 1 {
		return fmt.Errorf("chapper deadletter show: give one address <partition>:<offset> (as the first column of list), got %d", len(addrs))
	}
	if sub == "redrive" && to != deadletter.ToSink && to != deadletter.ToOrigin {
		return fmt.Errorf("chapper deadletter redrive: -to must be sink or origin, got %q", to)
	}
	letters, err := deadletter.Read(ctx, st.brokerList(), dlTopic)
	if err != nil {
		return err
	}
	switch sub {
	case "list":
		redriven := deadletter.Redriven(letters)
		n := 0
		for _, l := range letters {
			if all && l.IsMarker() {
				fmt.Fprintf(stdout, "%s\t%s\tmarker\tredrive-of=%s\tredrive-to=%s\n", l.Addr(), l.Time.UTC().Format(time.RFC3339),
					l.Header(topic.HeaderRedriveOf), l.Header(topic.HeaderRedriveTo))
				continue
			}
			if f.Match(l) {
				fmt.Fprintln(stdout, deadletter.Line(l, redriven[l.Addr()]))
				n++
			}
		}
		fmt.Fprintf(stderr, "%d dead letters on %s\n", n, dlTopic)
		return nil
	case "show":
		for _, l := range letters {
			if l.Addr() == addrs[0] {
				return deadletter.Show(stdout, dlTopic, l)
			}
		}
		return fmt.Errorf("chapper deadletter show: no record at %s of %s", addrs[0], dlTopic)
	}

	var sel []deadletter.Letter
	for _, l := range letters {
		if f.Match(l) {
			sel = append(sel, l)
		}
	}
	if len(addrs) > 0 && len(sel) != len(addrs) {
		return fmt.Errorf("chapper deadletter redrive: %d of the %d addresses given are dead letters that match the filters", len(sel), len(addrs))
	}
	rd := &deadletter.Redrive{Brokers: st.brokerList(), Topic: dlTopic, To: to, Again: again, Logger: log}
	if to == deadletter.ToSink {
		rd.Sinks = map[string]runtime.Sink{}
		for _, l := range sel {
			name := l.Header(topic.HeaderSink)
			if _, ok := rd.Sinks[name]; ok {
				continue
			}
			sink, closeSink, err := st.open(ctx, name, log)
			if err != nil {
				return fmt.Errorf("opening sink %q named by dead letter %s: %w", name, l.Addr(), err)
			}
			defer closeSink()
			rd.Sinks[name] = sink
		}
	}
	res, err := rd.Run(ctx, letters, sel)
	fmt.Fprintf(stdout, "redrive -to=%s: %d redriven, %d failed again (back on %s with attempt+1), %d skipped (re-driven before; -again re-drives them)\n",
		to, res.Redriven, res.FailedAgain, dlTopic, res.Skipped)
	if err != nil {
		return fmt.Errorf("chapper deadletter redrive: %w", err)
	}
	if res.FailedAgain > 0 {
		return fmt.Errorf("chapper deadletter redrive: %d records failed again", res.FailedAgain)
	}
	return nil
}
