package main

import (
	"bufio"
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/compress"

	"github.com/chapper/chapper/services/devstack/devtest"
	"github.com/chapper/chapper/services/loadgen"
)

// The durable-dev benchmark's workload (issue 9): 16 clients, batches of
// 100, mixed kinds: durColdRecords right after start (the cold figure, and
// the warm-up of the others), then durRecords for the throughput figure;
// 7,000 records/s offered for the latency figure.
const (
	durClients     = 16
	durBatch       = 100
	durColdRecords = 50_000
	durRecords     = 200_000
	durRate        = 7000
	durRawTopic    = "bench.raw.v1"
	durLagDeadline = 3 * time.Minute
)

// durPaced is how long the 7,000 records/s phase lasts: 60 s, or
// CHAPPER_BENCH_PACED (a Go duration) for a quicker look.
func durPaced(b *testing.B) time.Duration {
	if v := os.Getenv("CHAPPER_BENCH_PACED"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			b.Fatalf("CHAPPER_BENCH_PACED: %v", err)
		}
		return d
	}
	return time.Minute
}

// durProcess says whether `chapper dev` runs a part as its niced child
// process (the default) or inside itself: the environment variable env
// (CHAPPER_BENCH_SEARCH_PROCESS for -dev.search-process,
// CHAPPER_BENCH_PIPELINES_PROCESS for -dev.pipelines-process) set to
// false. A run with a part inside dev names its figures
// BenchmarkDurableDev/<part>-in-process-<figure>.
func durProcess(b *testing.B, env string) bool {
	v := os.Getenv(env)
	if v == "" {
		return true
	}
	on, err := strconv.ParseBool(v)
	if err != nil {
		b.Fatalf("%s: %v", env, err)
	}
	return on
}

// BenchmarkDurableDev runs `chapper dev` as it ships (all five parts, the
// broker writing each batch before the ack without fsync) as a child
// process and measures, in one run: Submit throughput (pre-encoded
// requests, as fast as 16 clients go; first the 50,000 records right after
// start, a cold process, then, once the pipelines caught up, 200,000 for
// the sustained rate), the ack latency at 7,000 records/s
// offered, and how long every pipeline's lag takes to return to 0 after
// that load stops. Each rate and latency is printed next to raw kafka-go
// producers writing the same number of records, in the same batches, to
// the same broker (a topic no pipeline reads), and written to
// var/bench/results.jsonl.
func BenchmarkDurableDev(b *testing.B) {
	chapperBin(b)
	paced := durPaced(b)
	searchProcess := durProcess(b, "CHAPPER_BENCH_SEARCH_PROCESS")
	pipelinesProcess := durProcess(b, "CHAPPER_BENCH_PIPELINES_PROCESS")
	figure, mode := "BenchmarkDurableDev/", ""
	for _, p := range []struct {
		name  string
		child bool
	}{{"search", searchProcess}, {"pipelines", pipelinesProcess}} {
		if p.child {
			mode += p.name + " in a child process at nice 10; "
		} else {
			figure += p.name + "-in-process-"
			mode += p.name + " inside the dev process; "
		}
	}
	mode = strings.TrimSuffix(mode, "; ")
	for range b.N {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		dir := filepath.Join(b.TempDir(), "var")
		killOrphans(b, dir)
		ports := newDevPorts(b)
		dev := newProc(b, "chapper-dev", ports.args(dir, "-dev.search-process="+strconv.FormatBool(searchProcess),
			"-dev.pipelines-process="+strconv.FormatBool(pipelinesProcess))...)
		dev.Start(b)
		waitReady(b, ctx, dev, ports.admin, 3*time.Minute)

		rawTransport := &kafka.Transport{ClientID: "bench-raw"}
		// the transport's pooled connections each hold a goroutine
		defer rawTransport.CloseIdleConnections()
		raw := &kafka.Writer{
			Addr: kafka.TCP(ports.kafka), Topic: durRawTopic, Balancer: &kafka.Murmur2Balancer{}, Transport: rawTransport,
			BatchTimeout: time.Millisecond, BatchSize: 1000, RequiredAcks: kafka.RequireAll,
			Compression: compress.Lz4, AllowAutoTopicCreation: true,
		}
		createRawTopic(b, ports.kafka)
		rng := rand.New(rand.NewPCG(9, 9))

		// throughput: raw first, then Submit, the same number of records;
		// cold (right after start), then sustained
		throughput := func(name string, n int) (float64, loadgen.Result) {
			rawRate, _ := rawProduce(ctx, b, raw, rawMessages(b, rng, n/durBatch), 0)
			reqs, err := loadgen.Encode(rng, "mixed", n, durBatch)
			if err != nil {
				b.Fatal(err)
			}
			res, err := loadgen.Run(ctx, loadgen.Config{Addr: ports.grpc, Records: n, Clients: durClients, BatchSize: durBatch,
				Kind: "mixed", Timeout: 30 * time.Second, Requests: reqs})
			if err != nil {
				b.Fatalf("%s throughput run: %v", name, err)
			}
			if res.Failed > 0 {
				b.Logf("%s throughput run: %d records failed (an overloaded machine): %v", name, res.Failed, res)
			}
			if _, ok := waitLagZero(ctx, ports.admin, durLagDeadline); !ok {
				b.Logf("the pipelines did not catch up with the %s throughput run within %v", name, durLagDeadline)
			}
			return rawRate, res
		}
		rawColdRate, cold := throughput("cold", durColdRecords)
		rawRate, res := throughput("sustained", durRecords)

		// latency at 7,000 records/s: raw for a third of the time, then
		// Submit for the whole time; then the lag after the load stops
		rawPaced := int(paced.Seconds()/3) * durRate
		_, rawLat := rawProduce(ctx, b, raw, rawMessages(b, rng, rawPaced/durBatch), time.Second*durBatch/durRate)
		loadBefore := loadAverage()
		// the CPU of the dev process and its chapper children (ingest, the
		// pipelines, the broker and the search server; not redis-server or
		// Postgres) over the paced load and its drain, per record, and
		// each process's share
		children := devChildren(b, dev)
		if (children["search"] != 0) != searchProcess || (children["pipelines"] != 0) != pipelinesProcess {
			b.Fatalf("chapper dev's child processes are %v; want the search child %t, the pipelines child %t", children, searchProcess, pipelinesProcess)
		}
		devCPUNow := func() map[string]float64 {
			cpu := map[string]float64{"dev": procsCPU(b, []*proc{dev})}
			for name, pid := range children {
				cpu[name] = pidCPU(b, name, pid)
			}
			return cpu
		}
		cpuBefore := devCPUNow()
		lat, err := loadgen.Run(ctx, loadgen.Config{Addr: ports.grpc, Records: int(paced.Seconds()) * durRate, Rate: durRate,
			Clients: durClients, BatchSize: durBatch, Kind: "mixed", Timeout: 30 * time.Second})
		if err != nil {
			b.Fatalf("paced run: %v", err)
		}
		if lat.Failed > 0 {
			b.Logf("paced run: %d records failed (an overloaded machine): %v", lat.Failed, lat)
		}
		stopped := time.Now()
		zero, ok := waitLagZero(ctx, ports.admin, durLagDeadline)
		drained := zero.Sub(stopped)
		cpuAfter := devCPUNow()
		var devCPU float64
		var split []string
		for _, name := range slices.Sorted(maps.Keys(cpuAfter)) {
			us := (cpuAfter[name] - cpuBefore[name]) / float64(max(lat.Accepted, 1)) * 1e6
			devCPU += us
			split = append(split, fmt.Sprintf("%s %.0f", name, us))
		}
		if !ok {
			b.Logf("the pipelines' lag was not 0 within %v of the load's end; reporting %v", durLagDeadline, drained)
		}
		_ = raw.Close()
		cancel()
		if err := dev.Stop(); err != nil {
			b.Errorf("chapper dev did not stop cleanly: %v", err)
		}

		fmt.Printf("BenchmarkDurableDev (%s; busy shared 2-core machine: figures are noisy): throughput cold %v, sustained %v; at %d rec/s for %v: %v; load average %s before the paced phase, %s at the end; CPU µs per record by process: %s\n",
			mode, cold, res, durRate, paced, lat, loadBefore, loadAverage(), strings.Join(split, ", "))
		const rawName = "raw kafka-go produce, same broker, same batches"
		devtest.ReportFigure(b, devtest.Figure{Name: figure + "submit-records-per-s", Value: res.PerSecond(), Unit: "records/s",
			BaselineName: rawName, Baseline: rawRate, Target: ">=20000"})
		devtest.ReportFigure(b, devtest.Figure{Name: figure + "submit-cold-records-per-s", Value: cold.PerSecond(), Unit: "records/s",
			BaselineName: rawName + ", right after start", Baseline: rawColdRate})
		devtest.ReportFigure(b, devtest.Figure{Name: figure + "ack-p50-ms-at-7000", Value: ms(lat.Percentile(50)), Unit: "ms",
			BaselineName: rawName + ", 7,000 records/s", Baseline: ms(pctD(rawLat, 50))})
		devtest.ReportFigure(b, devtest.Figure{Name: figure + "ack-p99-ms-at-7000", Value: ms(lat.Percentile(99)), Unit: "ms",
			BaselineName: rawName + ", 7,000 records/s", Baseline: ms(pctD(rawLat, 99)), Target: "<=50"})
		devtest.ReportFigure(b, devtest.Figure{Name: figure + "lag-zero-after-load-s", Value: drained.Seconds(), Unit: "s",
			BaselineName: "none", Target: "<=5"})
		devtest.ReportFigure(b, devtest.Figure{Name: figure + "dev-cpu-us-per-record-at-7000", Value: devCPU, Unit: "us",
			BaselineName: "none"})
		b.ReportMetric(res.PerSecond(), "submit-records/s")
		b.ReportMetric(rawRate, "raw-records/s")
		b.ReportMetric(ms(lat.Percentile(99)), "ack-p99-ms")
		b.ReportMetric(ms(pctD(rawLat, 99)), "raw-p99-ms")
		b.ReportMetric(drained.Seconds(), "lag-zero-s")
	}
}

// loadAverage returns the machine's 1, 5 and 15 minute load averages as
// /proc/loadavg prints them ("?" when unreadable).
func loadAverage() string {
	data, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(data)); err == nil && len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return "?"
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func pctD(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[int(float64(len(sorted)-1)*p/100)]
}

// createRawTopic creates the baseline's topic with 12 partitions, as
// ingest's topics.
func createRawTopic(b *testing.B, addr string) {
	c, err := kafka.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	if err := c.CreateTopics(kafka.TopicConfig{Topic: durRawTopic, NumPartitions: 12, ReplicationFactor: 1}); err != nil {
		b.Fatalf("creating %s: %v", durRawTopic, err)
	}
}

// rawMessages builds n batches of durBatch visits as ingest writes them.
func rawMessages(b *testing.B, rng *rand.Rand, n int) [][]kafka.Message {
	out, err := loadgen.KafkaBatches(rng, n, durBatch)
	if err != nil {
		b.Fatal(err)
	}
	for _, batch := range out {
		for i := range batch {
			batch[i].Topic = "" // the raw writer names its own topic
		}
	}
	return out
}

// rawProduce writes the batches from durClients goroutines, one batch
// every interval (0: as fast as they go), and returns records/s and each
// write's latency from its scheduled start, sorted.
func rawProduce(ctx context.Context, b *testing.B, w *kafka.Writer, batches [][]kafka.Message, interval time.Duration) (float64, []time.Duration) {
	type slot struct {
		msgs  []kafka.Message
		start time.Time
	}
	slots := make(chan slot)
	start := time.Now()
	go func() {
		defer close(slots)
		for i, m := range batches {
			at := time.Now()
			if interval > 0 {
				at = start.Add(time.Duration(i) * interval)
				time.Sleep(time.Until(at))
			}
			select {
			case slots <- slot{m, at}:
			case <-ctx.Done():
				return
			}
		}
	}()
	var mu sync.Mutex
	var lat []time.Duration
	var wg sync.WaitGroup
	records := 0
	for range durClients {
		wg.Go(func() {
			for s := range slots {
				if err := w.WriteMessages(ctx, s.msgs...); err != nil {
					b.Errorf("raw produce: %v", err)
					return
				}
				mu.Lock()
				lat = append(lat, time.Since(s.start))
				records += len(s.msgs)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	slices.Sort(lat)
	return float64(records) / time.Since(start).Seconds(), lat
}

// waitLagZero polls the admin server's metrics until the summed consumer
// lag of every pipeline is 0 and returns when it first was; after timeout
// it returns the time and false.
func waitLagZero(ctx context.Context, admin string, timeout time.Duration) (time.Time, bool) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		lag, n, err := consumerLag(ctx, admin)
		if err == nil && n > 0 && lag == 0 {
			return time.Now(), true
		}
		time.Sleep(100 * time.Millisecond)
	}
	return time.Now(), false
}

// consumerLag sums chapper_pipeline_consumer_lag_records over every
// series; n is the number of series (0 before any fetch).
func consumerLag(ctx context.Context, admin string) (float64, int, error) {
	return metricSeries(ctx, admin, "chapper_pipeline_consumer_lag_records")
}

// metricSeries sums every series of metric on the admin server at admin
// and counts them.
func metricSeries(ctx context.Context, admin, metric string) (float64, int, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+"/metrics", nil)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, 0, err
	}
	defer res.Body.Close()
	var sum float64
	n := 0
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if !strings.HasPrefix(l, metric+"{") && !strings.HasPrefix(l, metric+" ") {
			continue
		}
		f := strings.Fields(l)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			return 0, 0, err
		}
		sum += v
		n++
	}
	return sum, n, sc.Err()
}
