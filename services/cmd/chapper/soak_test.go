//go:build soak

package main

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"

	"github.com/chapper/chapper/services/devstack"
)

// The soak's knobs: `make soak` runs the hour; `-soak.duration=3m` the
// same in minutes.
var (
	soakDuration = flag.Duration("soak.duration", time.Hour, "How long the soak offers load.")
	soakRate     = flag.Float64("soak.rate", 7000, "Records per second offered.")
	soakFaults   = flag.Duration("soak.fault-every", 4*time.Minute, "Time between injected faults (scaled down for runs under 20m).")
	soakSample   = flag.Duration("soak.sample-every", 5*time.Second, "Time between samples of RSS, goroutines, lag and ack latency.")
	soakOut      = flag.String("soak.out", "", "Directory for soak.txt and soak.png (default var/soak beside go.work).")
	soakTTL      = flag.Duration("soak.timeline-ttl", time.Minute, "Timeline TTL of the soak's timeline process; the load's area moves on every TTL, so Redis holds about two TTLs of records, not the hour's.")
	soakIDTTL    = flag.Duration("soak.id-ttl", 10*time.Minute, "How long the soak's ingest remembers an acknowledged id (a resubmitted batch is retried within it).")
)

// soakBands is how many areas the load moves through (0.3° of latitude
// each, loadgen's span) before it returns to the first, long expired.
const soakBands = 8

// soakSampleRow is one sample of every chapper process and of the load.
type soakSampleRow struct {
	at         time.Duration      // since the load started
	rss        map[string]float64 // MiB per process
	goroutines map[string]float64
	lag        float64 // records, summed over the pipelines
	p99        float64 // ms, Submits acknowledged since the last sample
	records    int
	redisMiB   float64 // redis-server's used_memory
}

// TestSoak runs ingest, timeline, persist and search as `chapper serve`
// processes beside an embedded stack the test owns, offers -soak.rate
// records/s for -soak.duration with a fault every -soak.fault-every (a
// pipeline SIGKILLed, Redis, the search server or the broker restarted),
// samples RSS and goroutines of every chapper process, the lag and the ack
// latency, and ends with a table, a PNG plot over time and a verdict: every
// acknowledged record once in every store, and RSS and goroutines flat
// (within 10% of their level after the warm-up: ten minutes, or a third
// of a shorter run).
func TestSoak(t *testing.T) {
	bin := chapperBin(t)
	dur := *soakDuration
	faultEvery := *soakFaults
	if dur < 20*time.Minute {
		faultEvery = max(dur/6, 15*time.Second)
	}
	warmup := min(10*time.Minute, dur/3)
	ctx, cancel := context.WithTimeout(context.Background(), dur+15*time.Minute)
	defer cancel()
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d; %v at %.0f records/s, a fault every %v, warm-up %v", seed, dur, *soakRate, faultEvery, warmup)
	rng := rand.New(rand.NewPCG(seed, 5))

	stack, err := devstack.StartStack(ctx, devstack.StackConfig{
		Dir: filepath.Join(t.TempDir(), "var"), KafkaAddr: freeAddr(t), PostgresAddr: freeAddr(t),
		RedisAddr: freeAddr(t), SearchAddr: freeAddr(t), Partitions: 12,
	})
	if err != nil {
		t.Fatalf("starting the stack: %v", err)
	}
	t.Cleanup(func() { _ = stack.Close() })
	s := stores{pgURL: stack.Postgres.URL, shardDBs: []string{"chapper_shard_0", "chapper_shard_1"},
		redisAddr: stack.Redis.Addr(), searchURL: stack.SearchURL()}
	if out, err := exec.CommandContext(ctx, bin, "migrate", "-log.level=warn", "-migrate.router-url="+s.pgURL("chapper_router")).CombinedOutput(); err != nil {
		t.Fatalf("chapper migrate: %v\n%s", err, out)
	}
	grpcAddr := freeAddr(t)
	names := []string{"ingest", "timeline", "persist", "search"}
	procs, admins := map[string]*proc{}, map[string]string{}
	for _, n := range names {
		admins[n] = freeAddr(t)
		args := []string{"serve", "-target=" + n, "-log.level=warn", "-admin.addr=" + admins[n],
			"-kafka.brokers=" + stack.Kafka.Addr(), "-grpc.addr=" + grpcAddr, "-ingest.topic-replication-factor=1",
			"-timeline.redis-addrs=" + s.redisAddr, "-persist.router-url=" + s.pgURL("chapper_router"),
			"-search.addresses=" + s.searchURL, "-timeline.ttl=" + soakTTL.String(), "-ingest.id-ttl=" + soakIDTTL.String()}
		if n != "ingest" {
			args = append(args, "-"+n+".session-timeout=6s", "-"+n+".heartbeat-interval=1s", "-"+n+".rebalance-timeout=6s", "-"+n+".max-backoff=1s")
		}
		procs[n] = newProc(t, "chapper-serve-"+n, args...)
		procs[n].Start(t)
	}
	for _, n := range names {
		waitReady(t, ctx, procs[n], admins[n], 3*time.Minute)
	}

	l := newLedger(seed)
	l.keepLatency = true
	// the expected records' ids, plus a tenth for the batches resubmitted
	l.reserve(int(*soakRate * dur.Seconds() * 1.1))
	// the area moves on every TTL: the localities it left expire, so
	// Redis stays bounded over the hour
	loadStart := time.Now()
	l.shift = func(now time.Time) float64 { return 0.3 * float64(int(now.Sub(loadStart)/(*soakTTL))%soakBands) }
	rc := redis.NewClient(&redis.Options{Addr: s.redisAddr})
	defer rc.Close()
	settings := fmt.Sprintf("timeline TTL %v and id-store TTL %v (the soak's, not the defaults); the load's area moves every %v through %d areas, "+
		"so Redis holds about two TTLs of records", *soakTTL, *soakIDTTL, *soakTTL, soakBands)
	t.Log(settings)
	const clients, batch = 8, 100
	interval := time.Duration(float64(time.Second) * clients * batch / *soakRate)
	lctx, stopLoad := context.WithCancel(ctx)
	var loadWG sync.WaitGroup
	loadWG.Go(func() { l.loadEvery(lctx, t, grpcAddr, clients, batch, interval) })

	faults := []struct {
		name string
		do   func() error
	}{
		{"SIGKILL timeline", func() error { procs["timeline"].Kill(); procs["timeline"].Start(t); return nil }},
		{"restart redis", func() error {
			if err := stack.Redis.Stop(); err != nil {
				return err
			}
			return stack.Redis.Start(ctx)
		}},
		{"SIGKILL persist", func() error { procs["persist"].Kill(); procs["persist"].Start(t); return nil }},
		{"restart the search server", func() error {
			if err := stack.StopSearch(); err != nil {
				return err
			}
			return stack.StartSearch()
		}},
		{"SIGKILL search", func() error { procs["search"].Kill(); procs["search"].Start(t); return nil }},
		{"restart the broker", func() error {
			if err := stack.Kafka.Stop(); err != nil {
				return err
			}
			return stack.Kafka.Start(ctx)
		}},
	}
	var rows []soakSampleRow
	var events []string
	start := time.Now()
	sampleT := time.NewTicker(*soakSample)
	defer sampleT.Stop()
	nextFault := start.Add(faultEvery)
	fi := rng.IntN(len(faults))
	for time.Since(start) < dur {
		<-sampleT.C
		row := soakSampleRow{at: time.Since(start), rss: map[string]float64{}, goroutines: map[string]float64{}, records: l.records()}
		for _, n := range names {
			row.rss[n] = procRSS(procs[n])
			row.goroutines[n], _ = metricSum(ctx, admins[n], "go_goroutines")
			if n != "ingest" {
				lag, _ := metricSum(ctx, admins[n], "chapper_pipeline_consumer_lag_records")
				row.lag += lag
			}
		}
		row.p99 = ms(pctD(l.takeLatencies(), 99))
		row.redisMiB = redisUsedMiB(ctx, rc)
		rows = append(rows, row)
		if time.Now().After(nextFault) {
			f := faults[fi%len(faults)]
			fi++
			events = append(events, fmt.Sprintf("%7s  %s", time.Since(start).Round(time.Second), f.name))
			if err := f.do(); err != nil {
				t.Errorf("fault %s: %v", f.name, err)
			}
			nextFault = time.Now().Add(faultEvery)
		}
	}
	stopLoad()
	loadWG.Wait()
	l.settle(ctx, t, grpcAddr, 2*time.Minute)
	out := *soakOut
	if out == "" {
		p, err := resultsDirBesideWork()
		if err != nil {
			t.Fatal(err)
		}
		out = p
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	table, flat := soakReport(rows, names, warmup, events)
	table = settings + "\n" + table
	if err := os.WriteFile(filepath.Join(out, "soak.txt"), []byte(table), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := soakPlot(rows, names, filepath.Join(out, "soak.png")); err != nil {
		t.Errorf("plotting: %v", err)
	}
	fmt.Print(table)
	fmt.Printf("soak: table %s, plot %s\n", filepath.Join(out, "soak.txt"), filepath.Join(out, "soak.png"))
	if !flat {
		t.Errorf("RSS or goroutines grew by more than 10%% after the warm-up (see the table)")
	}
	// The stores are checked after the table and plot are written, so a
	// run whose stores never catch up still leaves its samples.
	want := l.want(t)
	want.ttl = *soakTTL
	verify(t, ctx, s, want, 10*time.Minute)
	for _, n := range names {
		if err := procs[n].Stop(); err != nil {
			t.Errorf("%s did not stop cleanly: %v", n, err)
		}
	}
}

// resultsDirBesideWork returns var/soak beside go.work.
func resultsDirBesideWork() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.work")); err == nil {
			return filepath.Join(dir, "var", "soak"), nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.work above the working directory: give -soak.out")
		}
		dir = parent
	}
}

// procRSS returns p's resident set in MiB (0 when it is not running).
func procRSS(p *proc) float64 {
	p.mu.Lock()
	cmd := p.cmd
	p.mu.Unlock()
	if cmd == nil || p.Exited() {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			f := strings.Fields(rest)
			kb, _ := strconv.ParseFloat(f[0], 64)
			return kb / 1024
		}
	}
	return 0
}

// redisUsedMiB returns redis-server's used_memory in MiB (0 while it is
// down, as during its restart fault).
func redisUsedMiB(ctx context.Context, c *redis.Client) float64 {
	info, err := c.InfoMap(ctx, "memory").Result()
	if err != nil {
		return 0
	}
	v, _ := strconv.ParseFloat(info["Memory"]["used_memory"], 64)
	return v / (1 << 20)
}

// metricSum sums the series of metric on the admin server at admin.
func metricSum(ctx context.Context, admin, metric string) (float64, error) {
	v, _, err := metricSeries(ctx, admin, metric)
	return v, err
}

// soakReport renders the samples as a table (a row a minute, or every
// sample for short runs), the faults and the verdict on RSS and
// goroutines, and reports whether both stayed flat.
func soakReport(rows []soakSampleRow, names []string, warmup time.Duration, events []string) (string, bool) {
	var b strings.Builder
	fmt.Fprintf(&b, "%8s %9s %8s %8s %9s", "time", "records", "lag", "p99 ms", "redis MiB")
	for _, n := range names {
		fmt.Fprintf(&b, " %10s %6s", n+" MiB", "gor")
	}
	b.WriteString("\n")
	step := max(1, len(rows)/40)
	for i, r := range rows {
		if i%step != 0 && i != len(rows)-1 {
			continue
		}
		fmt.Fprintf(&b, "%8s %9d %8.0f %8.1f %9.1f", r.at.Round(time.Second), r.records, r.lag, r.p99, r.redisMiB)
		for _, n := range names {
			fmt.Fprintf(&b, " %10.1f %6.0f", r.rss[n], r.goroutines[n])
		}
		b.WriteString("\n")
	}
	b.WriteString("faults:\n")
	for _, e := range events {
		b.WriteString("  " + e + "\n")
	}
	flat := true
	for _, n := range names {
		for _, what := range []string{"RSS", "goroutines"} {
			get := func(r soakSampleRow) float64 {
				if what == "RSS" {
					return r.rss[n]
				}
				return r.goroutines[n]
			}
			// The level is the median of the minute after the warm-up;
			// later, each minute's median must stay within 10% of it. A
			// single sample taken while a restarted process reconnects
			// (goroutines of fresh connections) is not growth; a leak
			// raises the medians minute after minute.
			var level []float64
			minutes := map[int][]float64{}
			peak := 0.0
			for _, r := range rows {
				v := get(r)
				switch {
				case r.at >= warmup && r.at < warmup+time.Minute:
					level = append(level, v)
				case r.at >= warmup+time.Minute:
					m := int((r.at - warmup) / time.Minute)
					minutes[m] = append(minutes[m], v)
					peak = max(peak, v)
				}
			}
			if len(level) == 0 {
				fmt.Fprintf(&b, "%s %s: not enough samples after the warm-up\n", n, what)
				continue
			}
			base := median(level)
			highest := 0.0
			for _, vs := range minutes {
				highest = max(highest, median(vs))
			}
			ok := highest <= base*1.1
			flat = flat && ok
			fmt.Fprintf(&b, "%s %s: level %.1f after the warm-up, highest minute median %.1f later (peak sample %.1f): %s\n",
				n, what, base, highest, peak, map[bool]string{true: "flat", false: "GREW"}[ok])
		}
	}
	return b.String(), flat
}

// soakPlot draws RSS, goroutines, lag, p99 and Redis's memory over time
// into one PNG.
func soakPlot(rows []soakSampleRow, names []string, path string) error {
	mk := func(title, y string, series map[string]func(soakSampleRow) float64, order []string) (*plot.Plot, error) {
		p := plot.New()
		p.Title.Text, p.X.Label.Text, p.Y.Label.Text = title, "minutes", y
		var vs []any
		for _, name := range order {
			pts := make(plotter.XYs, len(rows))
			for i, r := range rows {
				pts[i] = plotter.XY{X: r.at.Minutes(), Y: series[name](r)}
			}
			vs = append(vs, name, pts)
		}
		return p, plotutil.AddLines(p, vs...)
	}
	rss, gor := map[string]func(soakSampleRow) float64{}, map[string]func(soakSampleRow) float64{}
	for _, n := range names {
		rss[n] = func(r soakSampleRow) float64 { return r.rss[n] }
		gor[n] = func(r soakSampleRow) float64 { return r.goroutines[n] }
	}
	p1, err := mk("RSS of each chapper process", "MiB", rss, names)
	if err != nil {
		return err
	}
	p2, err := mk("goroutines", "goroutines", gor, names)
	if err != nil {
		return err
	}
	p3, err := mk("consumer lag (all pipelines)", "records", map[string]func(soakSampleRow) float64{"lag": func(r soakSampleRow) float64 { return r.lag }}, []string{"lag"})
	if err != nil {
		return err
	}
	p4, err := mk("ack latency p99 per sample", "ms", map[string]func(soakSampleRow) float64{"p99": func(r soakSampleRow) float64 { return r.p99 }}, []string{"p99"})
	if err != nil {
		return err
	}
	p5, err := mk("redis-server used_memory", "MiB", map[string]func(soakSampleRow) float64{"redis": func(r soakSampleRow) float64 { return r.redisMiB }}, []string{"redis"})
	if err != nil {
		return err
	}
	img := vgimg.New(vg.Points(900), vg.Points(1500))
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 5, Cols: 1}
	canvases := plot.Align([][]*plot.Plot{{p1}, {p2}, {p3}, {p4}, {p5}}, tiles, dc)
	for i, p := range []*plot.Plot{p1, p2, p3, p4, p5} {
		p.Draw(canvases[i][0])
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		return err
	}
	return f.Close()
}

// median is the middle of vs (sorted in place).
func median(vs []float64) float64 {
	slices.Sort(vs)
	return vs[len(vs)/2]
}
