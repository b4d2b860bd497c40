package query_test

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	goruntime "runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/chapper/chapper/pipelines/runtime"
	"github.com/chapper/chapper/pipelines/runtime/sinktest"
	"github.com/chapper/chapper/pipelines/timeline"
	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"github.com/chapper/chapper/proto/locality"
	"github.com/chapper/chapper/proto/topic"
	"github.com/chapper/chapper/services/devstack/devtest"
	"github.com/chapper/chapper/services/ingest"
	"github.com/chapper/chapper/services/query"
	"github.com/chapper/chapper/services/server"
)

// quietLog keeps end-to-end output to warnings and errors.
var quietLog = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

// stack is the whole read path on real stores: kfake, ingest and query on
// one gRPC server, the timeline pipeline (runtime consumer + sink) into the
// shared redis-server.
type stack struct {
	kafka  string
	group  string
	prefix string
	rdb    *redis.Client
	ingest canvassv1.IngestServiceClient
	query  canvassv1.QueryServiceClient
	conn   *grpc.ClientConn
}

// newStack starts the stack and stops it when tb ends.
func newStack(tb testing.TB) *stack {
	tb.Helper()
	k := devtest.Kafka(tb)
	addr := devtest.Redis(tb).Addr()
	st := &stack{kafka: k.Addr(), group: "chapper-timeline-" + uuid.NewString()[:8], prefix: devtest.KeyPrefix(tb)}

	fs := flag.NewFlagSet("e2e", flag.PanicOnError)
	var icfg ingest.Config
	icfg.RegisterFlags("ingest", fs)
	icfg.Brokers = []string{k.Addr()}
	icfg.ReplicationFactor = 1
	icfg.Logger = quietLog
	isvc, err := ingest.New(icfg)
	if err != nil {
		tb.Fatalf("ingest.New: %v", err)
	}
	qcfg := defaultConfig()
	qcfg.Prefix = st.prefix
	qcfg.Logger = quietLog
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	tb.Cleanup(func() { _ = rdb.Close() })
	st.rdb = rdb
	qsvc, err := query.New(rdb, qcfg)
	if err != nil {
		tb.Fatalf("query.New: %v", err)
	}
	sink, err := timeline.New(rdb, timeline.Config{Prefix: st.prefix})
	if err != nil {
		tb.Fatalf("timeline.New: %v", err)
	}
	// The runtime's flag defaults (batch size, linger), with the consumer
	// group timings of the runtime's tests so that joining takes
	// milliseconds.
	var ccfg runtime.Config
	ccfg.RegisterFlags("timeline", fs)
	fast := sinktest.ConsumerConfig(k.Addr(), st.group)
	ccfg.Brokers, ccfg.GroupID = fast.Brokers, fast.GroupID
	ccfg.SessionTimeout, ccfg.HeartbeatInterval = fast.SessionTimeout, fast.HeartbeatInterval
	ccfg.RebalanceTimeout, ccfg.JoinGroupBackoff = fast.RebalanceTimeout, fast.JoinGroupBackoff
	ccfg.Logger = quietLog
	consumer, err := runtime.New(ccfg, sink)
	if err != nil {
		tb.Fatalf("runtime.New: %v", err)
	}
	srv, err := server.New(server.Config{Addr: "127.0.0.1:0", ShutdownTimeout: 5 * time.Second, CORSOrigins: "*"}, quietLog)
	if err != nil {
		tb.Fatalf("server.New: %v", err)
	}
	isvc.Register(srv.GRPC())
	canvassv1.RegisterQueryServiceServer(srv.GRPC(), qsvc)
	srv.Gate(isvc.WaitReady)

	ctx, cancel := context.WithCancel(context.Background())
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return isvc.Run(gctx) })
	g.Go(func() error { return qsvc.Run(gctx) })
	g.Go(func() error { return srv.Run(gctx) })
	g.Go(func() error {
		// The consumer starts once ingest created the topics.
		if err := isvc.WaitReady(gctx); err != nil {
			return nil
		}
		return consumer.Run(gctx)
	})
	tb.Cleanup(func() {
		cancel()
		if err := g.Wait(); err != nil {
			tb.Errorf("stack stopped with: %v", err)
		}
	})
	select {
	case <-srv.Listening():
	case <-gctx.Done():
		tb.Fatalf("server stopped before listening: %v", g.Wait())
	case <-time.After(30 * time.Second):
		tb.Fatal("server did not listen within 30s")
	}
	eventually(tb, 30*time.Second, "timeline pipeline and query ready", func() error {
		if err := consumer.Ready(); err != nil {
			return err
		}
		return qsvc.Ready()
	})
	conn, err := grpc.NewClient(srv.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = conn.Close() })
	st.conn = conn
	st.ingest = canvassv1.NewIngestServiceClient(conn)
	st.query = canvassv1.NewQueryServiceClient(conn)
	return st
}

// submit submits a batch and fails unless every record was accepted or,
// when dupOK, answered duplicate.
func (st *stack) submit(tb testing.TB, req *canvassv1.SubmitRequest, dupOK bool) {
	tb.Helper()
	resp, err := st.ingest.Submit(ctxT(tb, 30*time.Second), req)
	if err != nil {
		tb.Fatalf("Submit: %v", err)
	}
	for _, r := range resp.GetResults() {
		ok := r.GetStatus() == canvassv1.Status_STATUS_ACCEPTED || dupOK && r.GetStatus() == canvassv1.Status_STATUS_DUPLICATE
		if !ok {
			tb.Fatalf("record %s: %v %s", r.GetId(), r.GetStatus(), r.GetReason())
		}
	}
}

// counters returns the counters of every locality of a chunk.
func (st *stack) counters(tb testing.TB, chunk int64) map[int64]map[string]int64 {
	tb.Helper()
	resp, err := st.query.GetChunk(ctxT(tb, 10*time.Second), &canvassv1.GetChunkRequest{Chunk: chunk})
	if err != nil {
		tb.Fatal(err)
	}
	out := map[int64]map[string]int64{}
	for _, lt := range resp.GetLocalities() {
		if len(lt.GetCounters()) > 0 {
			out[lt.GetLocality()] = lt.GetCounters()
		}
	}
	return out
}

// TestEndToEnd submits through ingest and sees the records in an open
// WatchChunk stream and in GetChunk; submitting the batch again, and
// replaying its records onto the topics past ingest, changes no counter.
func TestEndToEnd(t *testing.T) {
	st := newStack(t)
	chunk := chunkOf(t, edinburghLat, edinburghLon)
	locs := locality.ChunkLocalities(chunk)
	w := openWatch(t, st.conn, chunk)
	if n := len(slices.Concat(entryIDsList(w.snapshot(t))...)); n != 0 {
		t.Fatalf("snapshot of a fresh chunk has %d entries", n)
	}

	now := time.Now().Add(-time.Minute)
	req := &canvassv1.SubmitRequest{}
	for i := range 10 {
		req.Visits = append(req.Visits, visit(locs[i*2], now.Add(time.Duration(i)*time.Second), canvassv1.Outcome_OUTCOME_ANSWERED))
	}
	req.Intentions = append(req.Intentions, &canvassv1.Intention{
		Id: uuid.Must(uuid.NewV7()).String(), VisitId: req.Visits[0].Id, ElectorId: "elector-1", Option: "Green",
		Location: pointIn(locs[0]), RecordedAt: timestamppb.New(now), CanvasserId: "canvasser-1",
	})
	req.Followups = append(req.Followups, &canvassv1.FollowupRequest{
		Id: uuid.Must(uuid.NewV7()).String(), VisitId: req.Visits[0].Id, ElectorId: "elector-1", Issue: "bins",
		Method: canvassv1.Method_METHOD_POST, Location: pointIn(locs[0]), RecordedAt: timestamppb.New(now), CanvasserId: "canvasser-1",
	})
	var all []proto.Message
	for _, v := range req.Visits {
		all = append(all, v)
	}
	all = append(all, req.Intentions[0], req.Followups[0])
	want := map[string]bool{}
	for _, m := range all {
		meta, _ := topic.MetaOf(m)
		want[meta.ID] = true
	}
	st.submit(t, req, false)

	// Each record arrives once on the watch.
	got := map[string]int{}
	for len(got) < len(want) {
		r := w.record(t)
		if !want[r.GetId()] {
			t.Fatalf("unexpected record %s", r.GetId())
		}
		got[r.GetId()]++
	}
	// ... and is in GetChunk, with its counters.
	resp, err := st.query.GetChunk(ctxT(t, 10*time.Second), &canvassv1.GetChunkRequest{Location: pointIn(locs[0])})
	if err != nil {
		t.Fatal(err)
	}
	ids := slices.Concat(entryIDsList(resp)...)
	if len(ids) != len(want) {
		t.Errorf("GetChunk has %d entries, want %d", len(ids), len(want))
	}
	for _, id := range ids {
		if !want[id] {
			t.Errorf("GetChunk has unexpected entry %s", id)
		}
	}
	before := st.counters(t, chunk)
	wantL0 := map[string]int64{"visits": 1, "visits:answered": 1, "intentions": 1, "intentions:Green": 1, "followups": 1, "followups:post": 1}
	if !mapsEqual(before[int64(locs[0])], wantL0) {
		t.Errorf("locality 0 counters %v, want %v", before[int64(locs[0])], wantL0)
	}

	// The same batch again: ingest answers duplicate; the same records
	// produced again past ingest (a client retry after ingest forgot them,
	// a replay): the timeline counts nothing twice and publishes nothing.
	st.submit(t, req, true)
	sinktest.ProduceRecords(t, st.kafka, all...)
	sinktest.WaitCommitted(t, st.kafka, st.group, 30*time.Second)
	if after := st.counters(t, chunk); !countersEqual(before, after) {
		t.Errorf("counters changed by duplicates:\n before %v\n after  %v", before, after)
	}
	marker := visit(locs[24], time.Now(), canvassv1.Outcome_OUTCOME_MOVED)
	st.submit(t, &canvassv1.SubmitRequest{Visits: []*canvassv1.Visit{marker}}, false)
	if r := w.record(t); r.GetId() != marker.Id {
		t.Errorf("after the duplicates the watch sent %s, want only the next new record %s", r.GetId(), marker.Id)
	}
}

func mapsEqual(a, b map[string]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func countersEqual(a, b map[int64]map[string]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if !mapsEqual(v, b[k]) {
			return false
		}
	}
	return true
}

// Freshness benchmark parameters.
const (
	freshTarget   = 7000             // records per second offered (issue 14)
	freshDuration = 10 * time.Second // of offered load
	freshBatch    = 35               // records per Submit (a phone's buffered batch)
	freshChunks   = 8                // watched chunks the records fall in
)

// freshRate is the rate offered: freshTarget, or CHAPPER_BENCH_FRESH_RATE
// for a look at a loaded machine below saturation; the figures name it.
var freshRate = func() int {
	if r, err := strconv.Atoi(os.Getenv("CHAPPER_BENCH_FRESH_RATE")); err == nil && r > 0 {
		return r
	}
	return freshTarget
}()

// freshTrace is CHAPPER_BENCH_FRESH_TRACE: a file to which BenchmarkFreshness
// writes every record's times (a look at where the tail is), and the ask to
// print redis-server's commands per record.
var freshTrace = os.Getenv("CHAPPER_BENCH_FRESH_TRACE")

// BenchmarkFreshness measures end-to-end freshness: from the moment a
// Submit is due to the moment its record arrives in an open WatchChunk
// stream, at 7,000 records/s offered (open loop: Submits are issued on a
// schedule, not after the previous answer). The baseline is raw Redis
// PUBLISH → subscriber receive latency at the same rate, in the same run.
// Target (issue 14): p99 ≤ 25 ms, which the timeline consumer meets only
// by writing a caught-up batch at once instead of lingering 50 ms.
func BenchmarkFreshness(b *testing.B) {
	st := newStack(b)
	base := chunkOf(b, edinburghLat, edinburghLon)
	var locs []locality.Index
	var watches []*watch
	for i := range freshChunks {
		chunk := base + int64(i)
		locs = append(locs, locality.ChunkLocalities(chunk)...)
		w := openWatch(b, st.conn, chunk)
		w.snapshot(b)
		watches = append(watches, w)
	}

	for b.Loop() {
		if freshTrace != "" {
			if err := st.rdb.ConfigResetStat(context.Background()).Err(); err != nil {
				b.Fatal(err)
			}
		}
		run := runFreshness(b, st, locs, watches)
		if freshTrace != "" {
			printCommandStats(b, st.rdb, run.e2e.n)
		}
		raw := runRawPublish(b, st.rdb)
		b.ReportMetric(run.e2e.p50, "p50-ms")
		b.ReportMetric(run.e2e.p99, "p99-ms")
		b.ReportMetric(run.e2e.rate, "rec/s")
		b.ReportMetric(raw.p50, "raw-p50-ms")
		b.ReportMetric(raw.p99, "raw-p99-ms")
		fmt.Printf("freshness: submit → WatchChunk p50 %.1f ms, p99 %.1f ms, max %.1f ms at %.0f rec/s offered (%d records); raw redis PUBLISH → receive at the same rate p50 %.2f ms, p99 %.2f ms\n",
			run.e2e.p50, run.e2e.p99, run.e2e.max, run.e2e.rate, run.e2e.n, raw.p50, raw.p99)
		fmt.Printf("freshness stages (p50/p99 ms): Submit acknowledged %.1f/%.1f; due → news published by the timeline pipeline %.1f/%.1f; news → WatchChunk (query service + gRPC) %.2f/%.2f\n",
			run.ack.p50, run.ack.p99, run.news.p50, run.news.p99, run.query.p50, run.query.p99)
		fmt.Printf("freshness and the collector: %.2f%% of records over 25 ms; %d GC cycles of this process (load generator, ingest, broker, timeline pipeline, query service and watchers) in the %.1f s from the first Submit to the last record watched\n",
			run.over25, run.gcCycles, run.gcSpan.Seconds())
		target := ""
		if freshRate == freshTarget {
			target = "<=25"
		}
		devtest.ReportFigure(b, devtest.Figure{Name: fmt.Sprintf("BenchmarkFreshness/p99-ms-at-%d", freshRate), Value: run.e2e.p99, Unit: "ms",
			BaselineName: "raw redis PUBLISH → receive p99, same rate", Baseline: raw.p99, Target: target})
		devtest.ReportFigure(b, devtest.Figure{Name: fmt.Sprintf("BenchmarkFreshness/p50-ms-at-%d", freshRate), Value: run.e2e.p50, Unit: "ms",
			BaselineName: "raw redis PUBLISH → receive p50, same rate", Baseline: raw.p50})
	}
}

// latencies summarises one run, in milliseconds.
type latencies struct {
	p50, p99, max float64
	rate          float64
	n             int
}

func summarise(tb testing.TB, d []time.Duration, elapsed time.Duration) latencies {
	tb.Helper()
	if len(d) == 0 {
		tb.Fatal("no samples")
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	q := func(p float64) float64 { return ms(d[min(len(d)-1, int(p*float64(len(d))))]) }
	return latencies{p50: q(0.50), p99: q(0.99), max: ms(d[len(d)-1]), rate: float64(len(d)) / elapsed.Seconds(), n: len(d)}
}

// freshness is one run's latencies: due → watch (e2e), Submit call, due →
// news seen by a plain subscriber, and news → watch; and, since the tail
// follows the collector of this one process (docs/benchmarks.md), its GC
// cycles from the first Submit to the last record watched and the share
// of records slower than the target.
type freshness struct {
	e2e, ack, news, query latencies
	gcCycles              uint32
	gcSpan                time.Duration
	over25                float64 // percent of records, due → watch > 25 ms
}

// runFreshness offers freshRate records/s for freshDuration and measures
// when each record reaches a watch, and on the way when its news is
// published (a plain PSUBSCRIBE beside the query service).
func runFreshness(tb testing.TB, st *stack, locs []locality.Index, watches []*watch) freshness {
	tb.Helper()
	total := int(float64(freshRate) * freshDuration.Seconds())
	batches := total / freshBatch
	interval := time.Duration(float64(time.Second) * freshBatch / float64(freshRate))

	type times struct{ due, news, watch time.Time }
	var mu sync.Mutex
	seen := make(map[string]*times, total)
	watched := 0
	allWatched := make(chan struct{})
	note := func(id string, set func(*times)) {
		mu.Lock()
		defer mu.Unlock()
		t := seen[id]
		if t == nil {
			t = &times{}
			seen[id] = t
		}
		set(t)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	news := st.rdb.PSubscribe(ctx, st.prefix+"news:*")
	if _, err := news.Receive(ctx); err != nil {
		_ = news.Close()
		tb.Fatal(err)
	}
	var wg sync.WaitGroup
	// Closing the subscription ends its blocked receive.
	stop := func() {
		cancel()
		_ = news.Close()
		wg.Wait()
	}
	defer stop()
	wg.Go(func() {
		for {
			m, err := news.ReceiveMessage(ctx)
			if err != nil {
				return
			}
			now := time.Now()
			var e canvassv1.TimelineEntry
			if proto.Unmarshal([]byte(m.Payload), &e) == nil {
				note(e.GetId(), func(t *times) { t.news = now })
			}
		}
	})
	for _, w := range watches {
		wg.Go(func() {
			for {
				select {
				case <-ctx.Done():
					return
				case err := <-w.err:
					tb.Errorf("watch ended: %v", err)
					return
				case ev := <-w.events:
					now := time.Now()
					if r := ev.GetRecord(); r != nil {
						note(r.GetId(), func(t *times) {
							if t.watch.IsZero() {
								t.watch = now
								if watched++; watched == batches*freshBatch {
									close(allWatched)
								}
							}
						})
					}
				}
			}
		})
	}

	var failed atomic.Int64
	var submits sync.WaitGroup
	sem := make(chan struct{}, 256)
	acks := make([]time.Duration, batches)
	var gc0, gc1 goruntime.MemStats
	goruntime.ReadMemStats(&gc0)
	start := time.Now()
	recordTime := time.Now().Add(-time.Hour)
	for i := range batches {
		at := start.Add(time.Duration(i) * interval)
		time.Sleep(time.Until(at))
		req := &canvassv1.SubmitRequest{}
		for j := range freshBatch {
			n := i*freshBatch + j
			v := visit(locs[n%len(locs)], recordTime.Add(time.Duration(n)*time.Millisecond), canvassv1.Outcome_OUTCOME_ANSWERED)
			req.Visits = append(req.Visits, v)
			note(v.Id, func(t *times) { t.due = at })
		}
		sem <- struct{}{}
		submits.Go(func() {
			defer func() { <-sem }()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if _, err := st.ingest.Submit(ctx, req); err != nil {
				failed.Add(1)
			}
			acks[i] = time.Since(at)
		})
	}
	offered := time.Since(start)
	submits.Wait()
	if n := failed.Load(); n > 0 {
		tb.Errorf("%d of %d Submits failed", n, batches)
	}
	select {
	case <-allWatched:
	case <-time.After(30 * time.Second):
		mu.Lock()
		tb.Errorf("only %d of %d records reached a watch within 30s of the last Submit", watched, batches*freshBatch)
		mu.Unlock()
	}
	goruntime.ReadMemStats(&gc1)
	gcSpan := time.Since(start)
	stop()

	if freshTrace != "" {
		var sb strings.Builder
		sb.WriteString("due_ms\tnews_ms\twatch_ms\n")
		for _, t := range seen {
			if !t.due.IsZero() && !t.news.IsZero() && !t.watch.IsZero() {
				fmt.Fprintf(&sb, "%.1f\t%.2f\t%.2f\n", ms(t.due.Sub(start)), ms(t.news.Sub(t.due)), ms(t.watch.Sub(t.due)))
			}
		}
		if err := os.WriteFile(freshTrace, []byte(sb.String()), 0o644); err != nil {
			tb.Error(err)
		}
	}
	var e2e, toNews, toWatch []time.Duration
	slow := 0
	for _, t := range seen {
		if t.due.IsZero() || t.watch.IsZero() {
			continue
		}
		e2e = append(e2e, t.watch.Sub(t.due))
		if t.watch.Sub(t.due) > 25*time.Millisecond {
			slow++
		}
		if !t.news.IsZero() {
			toNews = append(toNews, t.news.Sub(t.due))
			toWatch = append(toWatch, t.watch.Sub(t.news))
		}
	}
	return freshness{
		e2e:      summarise(tb, e2e, offered),
		ack:      summarise(tb, acks, offered),
		news:     summarise(tb, toNews, offered),
		query:    summarise(tb, toWatch, offered),
		gcCycles: gc1.NumGC - gc0.NumGC,
		gcSpan:   gcSpan,
		over25:   100 * float64(slow) / float64(max(len(e2e), 1)),
	}
}

// ms is d in milliseconds.
func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// printCommandStats prints redis-server's calls and microseconds per record
// of each command since the last CONFIG RESETSTAT (the timeline script's
// EVALSHA, and the commands it ran inside).
func printCommandStats(tb testing.TB, rdb redis.UniversalClient, records int) {
	tb.Helper()
	info, err := rdb.Info(context.Background(), "commandstats").Result()
	if err != nil {
		tb.Fatal(err)
	}
	type stat struct {
		cmd         string
		calls, usec float64
	}
	var stats []stat
	for line := range strings.Lines(info) {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		cmd, found := strings.CutPrefix(name, "cmdstat_")
		if !ok || !found {
			continue
		}
		st := stat{cmd: cmd}
		for field := range strings.SplitSeq(rest, ",") {
			k, v, _ := strings.Cut(field, "=")
			switch k {
			case "calls":
				st.calls, _ = strconv.ParseFloat(v, 64)
			case "usec":
				st.usec, _ = strconv.ParseFloat(v, 64)
			}
		}
		if st.calls >= float64(records)/1000 {
			stats = append(stats, st)
		}
	}
	slices.SortFunc(stats, func(a, b stat) int { return cmp.Compare(b.usec, a.usec) })
	fmt.Printf("redis-server per record (%d records; EVALSHA includes the commands it ran):", records)
	for _, st := range stats {
		fmt.Printf(" %s %.2f calls %.2f µs;", st.cmd, st.calls/float64(records), st.usec/float64(records))
	}
	fmt.Println()
}

// runRawPublish publishes freshRate messages/s for freshDuration on one
// channel with a subscriber, the way the timeline sink publishes (one
// PUBLISH per record, pipelined in batches of the same size as above), and
// returns the due-time → receive latencies.
func runRawPublish(tb testing.TB, rdb *redis.Client) latencies {
	tb.Helper()
	ctx := ctxT(tb, time.Minute)
	channel := "bench:raw:" + uuid.NewString()
	sub := rdb.Subscribe(ctx, channel)
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		tb.Fatal(err)
	}
	msgs := sub.Channel(redis.WithChannelSize(100000))
	payload, _ := proto.Marshal(&canvassv1.TimelineEntry{Id: uuid.NewString(), Locality: 1, Time: timestamppb.Now(),
		Record: &canvassv1.Record{Kind: &canvassv1.Record_Visit{Visit: visit(1, time.Now(), 1)}}})

	total := int(float64(freshRate) * freshDuration.Seconds())
	batches := total / freshBatch
	interval := time.Duration(float64(time.Second) * freshBatch / float64(freshRate))
	start := time.Now()
	samples := make([]time.Duration, 0, total)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for len(samples) < batches*freshBatch {
			select {
			case m := <-msgs:
				// The message names its batch; its due time is computed.
				i, _ := strconv.Atoi(m.Payload[:8])
				samples = append(samples, time.Since(start.Add(time.Duration(i)*interval)))
			case <-time.After(30 * time.Second):
				tb.Errorf("raw publish: %d of %d messages received", len(samples), batches*freshBatch)
				return
			}
		}
	}()
	var pubs sync.WaitGroup
	for i := range batches {
		time.Sleep(time.Until(start.Add(time.Duration(i) * interval)))
		body := fmt.Sprintf("%08d", i) + string(payload)
		pubs.Go(func() {
			pipe := rdb.Pipeline()
			for range freshBatch {
				pipe.Publish(ctx, channel, body)
			}
			if _, err := pipe.Exec(ctx); err != nil {
				tb.Errorf("publishing: %v", err)
			}
		})
	}
	offered := time.Since(start)
	pubs.Wait()
	<-done
	return summarise(tb, samples, offered)
}
