package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
	"golang.org/x/term"

	"github.com/chapper/chapper/pipelines/persist"
	"github.com/chapper/chapper/pipelines/replay"
	"github.com/chapper/chapper/pipelines/report"
	"github.com/chapper/chapper/pipelines/runtime"
	"github.com/chapper/chapper/pipelines/search"
	"github.com/chapper/chapper/pipelines/timeline"
	"github.com/chapper/chapper/proto/topic"
)

// sinkNames are the sinks replay and redrive write to.
var sinkNames = []string{"timeline", "persist", "search"}

// storeFlags are serve's store flags of the three sinks (same names,
// defaults and CHAPPER_* variables) and -kafka.brokers.
type storeFlags struct {
	brokers  string
	timeline timeline.Config
	persist  persist.Config
	search   search.Config
}

func (s *storeFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&s.brokers, "kafka.brokers", "localhost:9092", "Comma-separated Kafka bootstrap addresses (beside `make run`: 127.0.0.1:19092).")
	s.timeline.RegisterFlags("timeline", fs)
	s.persist.RegisterFlags("persist", fs)
	s.search.RegisterFlags("search", fs)
}

func (s *storeFlags) brokerList() []string {
	var out []string
	for _, b := range strings.Split(s.brokers, ",") {
		if b = strings.TrimSpace(b); b != "" {
			out = append(out, b)
		}
	}
	return out
}

// open builds the sink named name on its store; close releases it.
func (s *storeFlags) open(ctx context.Context, name string, log *slog.Logger) (sink runtime.Sink, closeFn func(), err error) {
	switch name {
	case "timeline":
		if err := s.timeline.Validate(); err != nil {
			return nil, nil, err
		}
		client := s.timeline.Redis.NewClient()
		sk, err := timeline.New(client, s.timeline)
		if err != nil {
			client.Close()
			return nil, nil, err
		}
		return sk, func() { client.Close() }, nil
	case "persist":
		s.persist.Logger = log
		sk, err := persist.New(ctx, s.persist)
		if err != nil {
			return nil, nil, err
		}
		return sk, sk.Close, nil
	case "search":
		s.search.Logger = log
		sk, err := search.New(ctx, s.search)
		if err != nil {
			return nil, nil, err
		}
		return sk, func() { _ = sk.Close(context.WithoutCancel(ctx)) }, nil
	}
	return nil, nil, fmt.Errorf("-sink: unknown sink %q (want %s)", name, strings.Join(sinkNames, ", "))
}

// runReplay is `chapper replay` and `chapper replay clean`.
func runReplay(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "clean" {
		return runReplayClean(ctx, args[1:], stdout, stderr)
	}
	fs := flag.NewFlagSet("replay", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		lf                  logFlags
		st                  storeFlags
		sinkName, from, to  string
		kinds, since, until string
		bbox                string
		region              int64
		dryRun, resume      bool
		rebuild, deleteOld  bool
		batchSize           int
		linger              time.Duration
		progress            string
	)
	lf.register(fs)
	st.register(fs)
	fs.StringVar(&sinkName, "sink", "", "Sink to replay into: timeline, persist or search (required).")
	fs.StringVar(&from, "from", "beginning", "Start: beginning, an RFC 3339 time (Kafka offsets for times), or <kind>/<partition>:<offset>,... (only the partitions named are read).")
	fs.StringVar(&to, "to", "now", "End (exclusive): now (the high watermarks read at the start), an RFC 3339 time, or offsets as in -from (partitions not named end at now).")
	fs.StringVar(&kinds, "kinds", "visits,intentions,followups", "Comma-separated record kinds to replay.")
	fs.Int64Var(&region, "region", -1, "Only records of this region (0.1° tile index, as `chapper report` takes it); -1 means every region.")
	fs.StringVar(&bbox, "bbox", "", "Only records inside south,west,north,east (degrees), as `chapper report` takes it.")
	fs.StringVar(&since, "since", "", "Only records whose own time (visited_at, recorded_at) is at or after this RFC 3339 time.")
	fs.StringVar(&until, "until", "", "Only records whose own time is before this RFC 3339 time.")
	fs.BoolVar(&dryRun, "dry-run", false, "Count what would be written per kind and partition; write nothing.")
	fs.BoolVar(&resume, "resume", false, "Start each partition at the checkpoint of group chapper-replay-<sink>, where one is past -from.")
	fs.BoolVar(&rebuild, "rebuild", false, "Rebuild the whole topics into a fresh generation while the live pipeline keeps writing, then switch to it (timeline: a new key prefix; search: a new generation of the indices, switched in one POST /_aliases).")
	fs.BoolVar(&deleteOld, "delete-old", false, "With -rebuild, delete the old generation after the switch (else `chapper replay clean` does).")
	fs.IntVar(&batchSize, "batch-size", runtime.DefaultBatchSize, "Most records per sink write (as the live pipeline's -<sink>.batch-size).")
	fs.DurationVar(&linger, "linger", runtime.DefaultLinger, "Longest wait to fill a batch.")
	fs.StringVar(&progress, "progress", "auto", "Progress display: bar, log (a line every 5s), off, or auto (bar on a terminal, log otherwise).")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	log, err := lf.logger(stderr)
	if err != nil {
		return err
	}
	if deleteOld && !rebuild {
		return errors.New("-delete-old goes with -rebuild")
	}
	if rebuild && sinkName == "persist" {
		return fmt.Errorf("chapper replay -rebuild -sink=persist: %w (replay in place without -rebuild: inserts are idempotent)", ErrNotImplemented)
	}
	if rebuild && (dryRun || from != "beginning" || to != "now") {
		return errors.New("-rebuild replays the whole topics into a fresh prefix or generation: it takes neither -dry-run nor -from/-to")
	}
	cfg := replay.Config{Brokers: st.brokerList(), BatchSize: batchSize, Linger: linger, Resume: resume, DryRun: dryRun, Logger: log}
	if region >= 0 {
		cfg.Filter.Region = &region
	}
	if cfg.From, err = replay.ParsePosition(from); err != nil {
		return fmt.Errorf("-from: %w", err)
	}
	toPos, err := replay.ParsePosition(to)
	if err != nil {
		return fmt.Errorf("-to: %w", err)
	}
	cfg.To = &toPos
	for _, k := range strings.Split(kinds, ",") {
		if k = strings.TrimSpace(k); k != "" {
			if topic.Kind(k).Topic() == "" {
				return fmt.Errorf("-kinds: unknown kind %q (want visits, intentions or followups)", k)
			}
			cfg.Kinds = append(cfg.Kinds, topic.Kind(k))
		}
	}
	if bbox != "" {
		if cfg.Filter.Box, err = report.ParseBox(bbox); err != nil {
			return fmt.Errorf("-bbox: %w", err)
		}
	}
	for _, tv := range []struct {
		name, s string
		t       *time.Time
	}{{"since", since, &cfg.Filter.Since}, {"until", until, &cfg.Filter.Until}} {
		if tv.s == "" {
			continue
		}
		if *tv.t, err = time.Parse(time.RFC3339Nano, tv.s); err != nil {
			return fmt.Errorf("-%s: want an RFC 3339 time, got %q", tv.name, tv.s)
		}
	}
	if !slicesContains(sinkNames, sinkName) {
		return fmt.Errorf("-sink: give one of %s, got %q", strings.Join(sinkNames, ", "), sinkName)
	}
	cfg.Group = replay.GroupPrefix + sinkName
	if rebuild && sinkName == "search" {
		return rebuildSearch(ctx, &st, cfg, deleteOld, progress, args, stdout, stderr, log)
	}
	if rebuild {
		return rebuildTimeline(ctx, &st, cfg, deleteOld, progress, args, stdout, stderr, log)
	}
	if !dryRun {
		sink, closeSink, err := st.open(ctx, sinkName, log)
		if err != nil {
			return fmt.Errorf("opening sink %s: %w", sinkName, err)
		}
		defer closeSink()
		cfg.Sink = sink
	}

	show, stopProgress := progressDisplay(ctx, progress, sinkName, stderr, log)
	cfg.Progress = show
	sum, err := replay.Run(ctx, cfg)
	stopProgress()
	printSummary(stdout, sinkName, dryRun, sum)
	if errors.Is(err, replay.ErrInterrupted) {
		fmt.Fprintf(stderr, "stopped after the batch in hand; resume with:\n  %s\n", resumeCommand(args, sum))
	}
	if err != nil {
		return fmt.Errorf("chapper replay -sink=%s: %w", sinkName, err)
	}
	return nil
}

func slicesContains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// resumeCommand is the command line that resumes an interrupted replay:
// the same flags, -resume, and -to as the offsets this run was reading to.
func resumeCommand(args []string, sum *replay.Summary) string {
	out := []string{"chapper", "replay"}
	for _, a := range args {
		name := strings.TrimLeft(strings.SplitN(a, "=", 2)[0], "-")
		if name == "resume" || name == "to" {
			continue
		}
		out = append(out, a)
	}
	to := map[replay.Partition]int64{}
	for p, r := range sum.Ranges {
		to[p] = r.To
	}
	return strings.Join(append(out, "-resume", "-to="+replay.FormatOffsets(to)), " ")
}

// progressDisplay returns the Progress callback for mode and a function
// that ends the display.
func progressDisplay(ctx context.Context, mode, sinkName string, stderr io.Writer, log *slog.Logger) (func(replay.Progress), func()) {
	if mode == "auto" {
		mode = "log"
		if f, ok := stderr.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			mode = "bar"
		}
	}
	switch mode {
	case "bar":
		p := mpb.NewWithContext(ctx, mpb.WithOutput(stderr), mpb.WithWidth(40), mpb.WithRefreshRate(200*time.Millisecond))
		var bar *mpb.Bar
		return func(pr replay.Progress) {
				if bar == nil {
					bar = p.AddBar(max(pr.Total, 1),
						mpb.PrependDecorators(decor.Name("replay "+sinkName+" "), decor.CountersNoUnit("%d / %d")),
						mpb.AppendDecorators(decor.AverageSpeed(0, " %.0f rec/s"), decor.Name(" ETA "), decor.AverageETA(decor.ET_STYLE_GO)))
				}
				bar.SetCurrent(pr.Done)
			}, func() {
				if bar != nil {
					if !bar.Completed() {
						bar.Abort(false)
					}
				}
				p.Wait()
			}
	case "log":
		var last time.Time
		var lastP replay.Progress
		logIt := func(pr replay.Progress) {
			el := time.Since(pr.Started).Seconds()
			rate := 0.0
			if el > 0 {
				rate = float64(pr.Done) / el
			}
			eta := "-"
			if rate > 0 {
				eta = (time.Duration(float64(pr.Total-pr.Done)/rate) * time.Second).Round(time.Second).String()
			}
			log.Info("replay progress", "sink", sinkName, "done", pr.Done, "total", pr.Total, "rate_per_s", int(rate), "eta", eta)
		}
		return func(pr replay.Progress) {
				lastP = pr
				if time.Since(last) >= 5*time.Second {
					last = time.Now()
					logIt(pr)
				}
			}, func() {
				if lastP.Total > 0 {
					logIt(lastP)
				}
			}
	}
	return nil, func() {}
}

// printSummary prints what a replay did; a dry run adds the counts per
// kind and partition.
func printSummary(w io.Writer, sinkName string, dryRun bool, sum *replay.Summary) {
	if sum == nil {
		return
	}
	verb := "written"
	if dryRun {
		verb = "would write"
	}
	rate := 0.0
	if s := sum.Elapsed.Seconds(); s > 0 {
		rate = float64(sum.Read) / s
	}
	fmt.Fprintf(w, "replay -sink=%s: read %d, %s %d, skipped by filter %d, dead-lettered %d, in %s (%.0f records/s)\n",
		sinkName, sum.Read, verb, sum.Written, sum.Skipped, sum.DeadLettered, sum.Elapsed.Round(time.Millisecond), rate)
	if !dryRun {
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "kind\tpartition\toffsets\twould write")
	for _, p := range replay.Sorted(sum.Ranges) {
		r := sum.Ranges[p]
		if r.Len() == 0 {
			continue
		}
		k, _ := topic.KindOfTopic(p.Topic)
		fmt.Fprintf(tw, "%s\t%d\t%d-%d\t%d\n", k, p.Partition, r.From, r.To, sum.PerPartition[p])
	}
	for _, k := range topic.Kinds {
		fmt.Fprintf(tw, "%s\tall\t\t%d\n", k, sum.PerKind[k])
	}
	tw.Flush()
}

// rebuildTimeline is `chapper replay -sink=timeline -rebuild`.
func rebuildTimeline(ctx context.Context, st *storeFlags, cfg replay.Config, deleteOld bool, progress string, args []string,
	stdout, stderr io.Writer, log *slog.Logger) error {
	if err := st.timeline.Validate(); err != nil {
		return err
	}
	client := st.timeline.Redis.NewClient()
	defer client.Close()
	show, stopProgress := progressDisplay(ctx, progress, "timeline", stderr, log)
	cfg.Progress = show
	next, sum, err := replay.RebuildTimeline(ctx, client, st.timeline, cfg)
	stopProgress()
	printSummary(stdout, "timeline", false, sum)
	if errors.Is(err, replay.ErrInterrupted) {
		fmt.Fprintf(stderr, "stopped after the batch in hand; the live pipeline keeps writing to prefix %q; resume with:\n  %s\n",
			next, strings.Join(append([]string{"chapper", "replay"}, append(withoutFlag(args, "resume"), "-resume")...), " "))
	}
	p, perr := timeline.ReadPrefixes(ctx, client, st.timeline.Prefix)
	if perr == nil && p.Active == next {
		fmt.Fprintf(stdout, "timeline switched to key prefix %q; the old keys stay until `chapper replay clean -sink=timeline`\n", next)
		if deleteOld {
			if cerr := cleanTimeline(ctx, client, st.timeline.Prefix, stdout); cerr != nil {
				return cerr
			}
		}
	}
	if err != nil {
		return fmt.Errorf("chapper replay -sink=timeline -rebuild: %w", err)
	}
	return nil
}

func withoutFlag(args []string, name string) []string {
	var out []string
	for _, a := range args {
		if strings.TrimLeft(strings.SplitN(a, "=", 2)[0], "-") != name {
			out = append(out, a)
		}
	}
	return out
}

func cleanTimeline(ctx context.Context, client redis.UniversalClient, base string, stdout io.Writer) error {
	dropped, n, err := replay.CleanTimeline(ctx, client, base)
	for _, d := range dropped {
		fmt.Fprintf(stdout, "dropped old timeline key prefix %q\n", d)
	}
	fmt.Fprintf(stdout, "deleted %d old timeline keys\n", n)
	return err
}

// rebuildSearch is `chapper replay -sink=search -rebuild`.
func rebuildSearch(ctx context.Context, st *storeFlags, cfg replay.Config, deleteOld bool, progress string, args []string,
	stdout, stderr io.Writer, log *slog.Logger) error {
	st.search.Logger = log
	show, stopProgress := progressDisplay(ctx, progress, "search", stderr, log)
	cfg.Progress = show
	gen, sum, err := replay.RebuildSearch(ctx, st.search, cfg)
	stopProgress()
	printSummary(stdout, "search", false, sum)
	if errors.Is(err, replay.ErrInterrupted) {
		fmt.Fprintf(stderr, "stopped after the batch in hand; the live pipeline keeps writing to generation %q; resume with:\n  %s\n",
			gen, strings.Join(append([]string{"chapper", "replay"}, append(withoutFlag(args, "resume"), "-resume")...), " "))
	}
	if es, cerr := search.NewClient(st.search); cerr == nil {
		if g, gerr := search.ReadGenerations(ctx, es, st.search.IndexPrefix); gerr == nil && g.Active == gen {
			fmt.Fprintf(stdout, "search aliases switched to generation %q (indices %s); the old generation stays until `chapper replay clean -sink=search`\n",
				gen, search.Names{Prefix: st.search.IndexPrefix, Generation: gen}.Pattern("<kind>"))
			if deleteOld {
				if cerr := cleanSearch(ctx, st.search, stdout); cerr != nil {
					return cerr
				}
			}
		}
	}
	if err != nil {
		return fmt.Errorf("chapper replay -sink=search -rebuild: %w", err)
	}
	return nil
}

func cleanSearch(ctx context.Context, cfg search.Config, stdout io.Writer) error {
	cleaned, err := search.CleanGenerations(ctx, cfg)
	for _, g := range cleaned.Generations {
		name := g
		if name == "" {
			name = "the first generation"
		}
		fmt.Fprintf(stdout, "dropped old search generation %s\n", name)
	}
	fmt.Fprintf(stdout, "deleted %d old search indices\n", len(cleaned.Indices))
	return err
}

// runReplayClean is `chapper replay clean`: it deletes the checkpoint
// groups of the sinks named by -sink (all three by default).
func runReplayClean(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("replay clean", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var st storeFlags
	var lf logFlags
	var sinks string
	lf.register(fs)
	st.register(fs)
	fs.StringVar(&sinks, "sink", strings.Join(sinkNames, ","), "Comma-separated sinks whose replay checkpoints to delete.")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	for _, s := range strings.Split(sinks, ",") {
		s = strings.TrimSpace(s)
		if !slicesContains(sinkNames, s) {
			return fmt.Errorf("-sink: unknown sink %q (want %s)", s, strings.Join(sinkNames, ", "))
		}
		for _, group := range []string{replay.GroupPrefix + s, replay.RebuildGroup(s)} {
			if err := replay.DeleteCheckpoint(ctx, st.brokerList(), group); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "deleted replay checkpoint %s\n", group)
		}
		if s == "search" {
			if err := cleanSearch(ctx, st.search, stdout); err != nil {
				return err
			}
		}
		if s == "timeline" {
			if err := st.timeline.Validate(); err != nil {
				return err
			}
			client := st.timeline.Redis.NewClient()
			err := cleanTimeline(ctx, client, st.timeline.Prefix, stdout)
			client.Close()
			if err != nil {
				return err
			}
		}
	}
	return nil
}
