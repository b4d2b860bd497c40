package main

import (
	"context"
	"flag"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/chapper/chapper/services/auth"
	"github.com/chapper/chapper/services/devstack/devtest"
	"github.com/chapper/chapper/services/loadgen"
)

// The capacity benchmark's workload: capRecords mixed records through
// ingest (16 clients, Submits of 100, authentication and the shared id
// store on, as in production), then drained by each pipeline in turn.
const (
	capClients = 16
	capBatch   = 100
	// userHZ is the unit of the CPU times in /proc (USER_HZ, 100 on Linux).
	userHZ = 100
)

// capPipelines are the pipelines measured, one at a time.
var capPipelines = []string{"timeline", "persist", "search"}

// capRecords is CHAPPER_CAPACITY_RECORDS or 200,000.
func capRecords(b *testing.B) int {
	return envInt(b, "CHAPPER_CAPACITY_RECORDS", 200_000)
}

// capPartitions is CHAPPER_CAPACITY_PARTITIONS (comma-separated) or 1,2,4.
func capPartitions(b *testing.B) []int {
	v := os.Getenv("CHAPPER_CAPACITY_PARTITIONS")
	if v == "" {
		return []int{1, 2, 4}
	}
	var out []int
	for _, s := range strings.Split(v, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			b.Fatalf("CHAPPER_CAPACITY_PARTITIONS: %q is not a partition count", s)
		}
		out = append(out, n)
	}
	return out
}

func envInt(b *testing.B, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		b.Fatalf("%s: %q is not a positive number", name, v)
	}
	return n
}

// BenchmarkCapacity measures what docs/capacity.md sizes from. For each
// partition count P (1, 2, 4), on a fresh embedded stack whose topics have
// P partitions, it runs ingest as its own `chapper serve` process and
// submits the records, then runs P `chapper serve -target=<p>` processes
// of each pipeline in turn (one consumer group, P members) and drains the
// topics. Per part it reports records/s, the part's own CPU per record
// (records/s per core is its inverse) and the CPU the rest of the machine
// spent per record meanwhile (broker, stores, load generator), read from
// /proc. The scaling figure of each part is its rate next to its rate
// with one partition, measured in the same run. After the one-partition
// run it reports the stores' size per million records: Redis memory,
// Postgres disk (the shard databases) and search disk.
func BenchmarkCapacity(b *testing.B) {
	bin := chapperBin(b)
	n := capRecords(b)
	base := map[string]float64{}
	for _, parts := range capPartitions(b) {
		b.Run(fmt.Sprintf("partitions-%d", parts), func(b *testing.B) {
			for range b.N {
				capacityRun(b, bin, n, parts, base)
			}
		})
	}
}

// capacityRun is one partition count's run; base holds each part's rate
// at one partition (filled by that run) for the scaling figures.
func capacityRun(b *testing.B, bin string, n, parts int, base map[string]float64) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	dir := filepath.Join(b.TempDir(), "var")
	killOrphans(b, dir)
	ports := newDevPorts(b)
	// The dev process holds the broker, the search server and an idle
	// query service; Postgres and Redis are its children.
	dev := newProc(b, "capacity-dev", ports.args(dir, "-target=query", fmt.Sprintf("-dev.partitions=%d", parts))...)
	dev.Start(b)
	waitReady(b, ctx, dev, ports.admin, 3*time.Minute)
	s := ports.stores()
	if out, err := exec.CommandContext(ctx, bin, "migrate", "-log.level=warn", "-migrate.router-url="+s.pgURL("chapper_router")).CombinedOutput(); err != nil {
		b.Fatalf("chapper migrate: %v\n%s", err, out)
	}

	sizes := []storeSizes{measureSizes(b, ctx, dir, s)}

	// Ingest, with authentication and the shared id store on.
	keysDir := filepath.Join(dir, "auth")
	if _, err := auth.Keygen(keysDir, "cap", auth.AlgES256); err != nil {
		b.Fatal(err)
	}
	token := operatorToken(b, keysDir)
	grpcAddr, ingestAdmin := freeAddr(b), freeAddr(b)
	ing := newProc(b, "capacity-ingest", "serve", "-target=ingest", "-log.level=warn",
		"-grpc.addr="+grpcAddr, "-admin.addr="+ingestAdmin, "-kafka.brokers="+ports.kafka,
		fmt.Sprintf("-ingest.topic-partitions=%d", parts), "-ingest.topic-replication-factor=1", "-ingest.redis-addrs="+ports.redis,
		"-auth=on", "-auth.keys-dir="+keysDir,
		// one operator token sends every record: the limit is checked, never reached
		"-ingest.rate-limit=10000000", "-ingest.rate-burst=10000000")
	ing.Start(b)
	waitReady(b, ctx, ing, ingestAdmin, time.Minute)
	reqs, err := loadgen.Encode(rand.New(rand.NewPCG(uint64(parts), 7)), "mixed", n, capBatch)
	if err != nil {
		b.Fatal(err)
	}
	w := startWindow(b, ing)
	res, err := loadgen.Run(ctx, loadgen.Config{Addr: grpcAddr, Records: n, Clients: capClients,
		BatchSize: capBatch, Kind: "mixed", Timeout: 30 * time.Second, Requests: reqs, Token: token})
	if err != nil {
		b.Fatal(err)
	}
	if res.Failed > 0 || res.Accepted != res.Submitted {
		b.Fatalf("ingest: %d of %d accepted, %d failed: %v", res.Accepted, res.Submitted, res.Failed, res.FirstError)
	}
	reportPart(b, "ingest", parts, w.end(b, res.Accepted), base)
	if err := ing.Stop(); err != nil {
		b.Errorf("ingest did not stop cleanly: %v", err)
	}
	sizes = append(sizes, measureSizes(b, ctx, dir, s))

	for _, p := range capPipelines {
		procs := make([]*proc, parts)
		admins := make([]string, parts)
		for i := range procs {
			admins[i] = freeAddr(b)
			procs[i] = newProc(b, fmt.Sprintf("capacity-%s-%d", p, i), servePipelineArgs(p, admins[i], ports)...)
		}
		for _, pr := range procs {
			pr.Start(b)
		}
		m := drain(b, ctx, procs, admins, res.Accepted)
		reportPart(b, p, parts, m, base)
		for _, pr := range procs {
			if err := pr.Stop(); err != nil {
				b.Errorf("%s did not stop cleanly: %v", p, err)
			}
		}
		sizes = append(sizes, measureSizes(b, ctx, dir, s))
	}
	if parts == 1 {
		// What each step added, per million records: the id store
		// (ingest), the timeline's keys, the shard databases, the indices.
		perM := 1e6 / float64(res.Accepted)
		mb := func(name string, bytes float64) {
			devtest.ReportFigure(b, devtest.Figure{Name: "BenchmarkCapacity/" + name, Value: bytes * perM / 1e6, Unit: "MB"})
		}
		mb("redis-id-store-mb-per-million-records", sizes[1].redis-sizes[0].redis)
		mb("redis-timeline-mb-per-million-records", sizes[2].redis-sizes[1].redis)
		mb("postgres-mb-per-million-records", sizes[3].postgres-sizes[2].postgres)
		mb("search-mb-per-million-documents", sizes[4].search-sizes[3].search)
	}
	if err := dev.Stop(); err != nil {
		b.Errorf("chapper dev did not stop cleanly: %v", err)
	}
}

// partMeasure is what one part did in its measured window.
type partMeasure struct {
	records int
	elapsed time.Duration
	// ownCPU is the part's processes' CPU time, restCPU the machine's
	// busy time beyond it (broker, stores, load generator, the benchmark).
	ownCPU, restCPU float64
}

// window measures CPU from its start: the processes' own and the
// machine's.
type window struct {
	procs   []*proc
	at      time.Time
	own     float64
	machine float64
}

func startWindow(b *testing.B, procs ...*proc) *window {
	w := &window{procs: procs, at: time.Now()}
	w.own, w.machine = procsCPU(b, procs), machineBusy(b)
	return w
}

// end closes the window over records records.
func (w *window) end(b *testing.B, records int) partMeasure {
	own, machine := procsCPU(b, w.procs), machineBusy(b)
	return partMeasure{records: records, elapsed: time.Since(w.at), ownCPU: own - w.own, restCPU: machine - w.machine - (own - w.own)}
}

// drain waits until the pipeline's processes have written want records in
// all and their lag is 0. The window opens at the first tenth of the
// records, once the group's members have joined and divided the
// partitions, and closes at the last.
func drain(b *testing.B, ctx context.Context, procs []*proc, admins []string, want int) partMeasure {
	deadline := time.Now().Add(15 * time.Minute)
	var w *window
	opened := 0
	for time.Now().Before(deadline) && ctx.Err() == nil {
		done, lag, series := 0, 0.0, 0
		for _, a := range admins {
			v, _, err := metricSeries(ctx, a, "chapper_pipeline_records_total")
			if err == nil {
				done += int(v)
			}
			l, n, err := consumerLag(ctx, a)
			if err == nil {
				lag += l
				series += n
			}
		}
		if w == nil && done >= want/10 {
			w, opened = startWindow(b, procs...), done
		}
		if w != nil && done >= want && series > 0 && lag == 0 {
			return w.end(b, done-opened)
		}
		for _, p := range procs {
			if p.Exited() {
				b.Fatalf("%s exited while draining", p.name)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	b.Fatalf("the pipeline did not write %d records with lag 0 within 15 minutes", want)
	return partMeasure{}
}

// reportPart reports part's rate (next to its one-partition rate), its
// own CPU per record and the rest of the machine's.
func reportPart(b *testing.B, part string, parts int, m partMeasure, base map[string]float64) {
	rate := float64(m.records) / m.elapsed.Seconds()
	name := fmt.Sprintf("BenchmarkCapacity/partitions-%d/%s-", parts, part)
	if parts == 1 {
		base[part] = rate
	}
	devtest.ReportFigure(b, devtest.Figure{Name: name + "records-per-s", Value: rate, Unit: "records/s",
		BaselineName: part + " with 1 partition and 1 process, same run", Baseline: base[part]})
	devtest.ReportFigure(b, devtest.Figure{Name: name + "cpu-us-per-record", Value: m.ownCPU / float64(m.records) * 1e6, Unit: "µs"})
	devtest.ReportFigure(b, devtest.Figure{Name: name + "rest-cpu-us-per-record", Value: m.restCPU / float64(m.records) * 1e6, Unit: "µs"})
	b.Logf("%s with %d partitions: %d records in %v, %.0f records/s; own CPU %.1fs (%.2f cores), rest of the machine %.1fs",
		part, parts, m.records, m.elapsed.Round(time.Millisecond), rate, m.ownCPU, m.ownCPU/m.elapsed.Seconds(), m.restCPU)
}

// storeSizes are the stores' sizes in bytes at one moment: Redis's
// used_memory, the shard databases on disk and the search data directory.
type storeSizes struct{ redis, postgres, search float64 }

func measureSizes(b *testing.B, ctx context.Context, dir string, s stores) storeSizes {
	var out storeSizes
	rc := redis.NewClient(&redis.Options{Addr: s.redisAddr})
	defer rc.Close()
	info, err := rc.InfoMap(ctx, "memory").Result()
	if err != nil {
		b.Fatalf("redis INFO memory: %v", err)
	}
	if out.redis, err = strconv.ParseFloat(info["Memory"]["used_memory"], 64); err != nil {
		b.Fatalf("redis used_memory %q: %v", info["Memory"]["used_memory"], err)
	}
	for _, db := range s.shardDBs {
		conn, err := pgx.Connect(ctx, s.pgURL(db))
		if err != nil {
			b.Fatal(err)
		}
		var size int64
		err = conn.QueryRow(ctx, "SELECT pg_database_size(current_database())").Scan(&size)
		conn.Close(ctx)
		if err != nil {
			b.Fatalf("size of %s: %v", db, err)
		}
		out.postgres += float64(size)
	}
	out.search = dirSize(b, filepath.Join(dir, "search"))
	return out
}

// dirSize sums the sizes of the regular files under dir.
func dirSize(b *testing.B, dir string) float64 {
	var total int64
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			info, err := d.Info()
			if err != nil {
				return err
			}
			total += info.Size()
		}
		return nil
	})
	if err != nil {
		b.Fatalf("size of %s: %v", dir, err)
	}
	return float64(total)
}

// procsCPU sums the user and system CPU seconds of the running processes.
func procsCPU(b *testing.B, procs []*proc) float64 {
	var sum float64
	for _, p := range procs {
		p.mu.Lock()
		pid := p.cmd.Process.Pid
		p.mu.Unlock()
		sum += pidCPU(b, p.name, pid)
	}
	return sum
}

// pidCPU returns the CPU seconds (user and system) process pid used.
func pidCPU(b *testing.B, name string, pid int) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatalf("CPU of %s: %v", name, err)
	}
	// Fields after the command name, which is in parentheses and may
	// hold spaces: state is field 3, utime 14 and stime 15.
	f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+1:]))
	var sum float64
	for _, i := range []int{11, 12} {
		v, err := strconv.ParseFloat(f[i], 64)
		if err != nil {
			b.Fatalf("/proc/%d/stat: %v", pid, err)
		}
		sum += v / userHZ
	}
	return sum
}

// machineBusy is the machine's busy CPU seconds since boot, all cores
// (/proc/stat: every column of the cpu line but idle and iowait).
func machineBusy(b *testing.B) float64 {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		b.Fatal(err)
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		b.Fatalf("/proc/stat starts %q", line)
	}
	var busy float64
	for i, s := range f[1:8] {
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			b.Fatalf("/proc/stat: %v", err)
		}
		busy += v / userHZ
	}
	return busy
}

// operatorToken signs an operator token (it may submit records naming any
// canvasser, as the generated ones do) with the key in keysDir.
func operatorToken(b *testing.B, keysDir string) string {
	var ac auth.Config
	ac.RegisterFlags("auth", flag.NewFlagSet("cap", flag.PanicOnError), true, keysDir)
	keys, err := ac.LoadKeys()
	if err != nil {
		b.Fatal(err)
	}
	is, err := auth.NewIssuer(ac, keys, "")
	if err != nil {
		b.Fatal(err)
	}
	tok, err := is.Issue("capacity", auth.RoleOperator, time.Hour, nil)
	if err != nil {
		b.Fatal(err)
	}
	return tok
}
