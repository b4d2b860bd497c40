package search

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Workload sizes; CHAPPER_SEARCH_BENCH_DOCS overrides both document counts
// (e.g. 1000000 for the report-latency figures on 1M documents).
var (
	benchDocs      = envInt("CHAPPER_SEARCH_BENCH_DOCS", 50_000)
	benchBatch     = envInt("CHAPPER_SEARCH_BENCH_BATCH", 1000)
	benchWorkers   = 2
	benchQueryDocs = envInt("CHAPPER_SEARCH_BENCH_DOCS", 200_000)
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

type benchData struct {
	ids  []string
	docs []map[string]any
}

func genBenchData(n int) benchData {
	rng := rand.New(rand.NewPCG(1, 2))
	base := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	d := benchData{ids: make([]string, n), docs: make([]map[string]any, n)}
	for i := range n {
		d.ids[i], d.docs[i] = genDoc(rng, i, base)
	}
	return d
}

// loadServer bulk-loads the documents into index over HTTP with
// benchWorkers concurrent requests of benchBatch documents and returns how
// long it took.
func loadServer(b testing.TB, url, index string, d benchData) time.Duration {
	b.Helper()
	bodies := make([][]byte, 0, len(d.docs)/benchBatch+1)
	for i := 0; i < len(d.docs); i += benchBatch {
		end := min(i+benchBatch, len(d.docs))
		bodies = append(bodies, bulkBody(b, index, d.ids[i:end], d.docs[i:end]))
	}
	work := make(chan []byte)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failed error
	start := time.Now()
	for range benchWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for body := range work {
				status, resp, _ := call(b, http.MethodPost, url+"/_bulk", body)
				if status != http.StatusOK || bytesContains(resp, `"errors":true`) {
					mu.Lock()
					failed = fmt.Errorf("bulk status %d: %.300s", status, resp)
					mu.Unlock()
				}
			}
		}()
	}
	for _, body := range bodies {
		work <- body
	}
	close(work)
	wg.Wait()
	if failed != nil {
		b.Fatal(failed)
	}
	return time.Since(start)
}

// processCPU is the process's user and system CPU time so far.
func processCPU(b testing.TB) time.Duration {
	b.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// settle waits until the process is idle (under 2 ms of CPU in 100 ms:
// scorch has persisted and merged what it was given, so the CPU of a
// turn's background merges is counted in that turn, not the next), at
// most 30 s, and returns processCPU.
func settle(b testing.TB) time.Duration {
	b.Helper()
	last := processCPU(b)
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
		now := processCPU(b)
		if now-last < 2*time.Millisecond {
			return now
		}
		last = now
	}
	return last
}

// usPerDoc is cpu divided over n documents, in microseconds.
func usPerDoc(cpu time.Duration, n int) float64 { return float64(cpu.Microseconds()) / float64(n) }

// rate is documents per second of n documents loaded in d.
func rate(n int, d time.Duration) float64 { return float64(n) / d.Seconds() }

func bytesContains(b []byte, s string) bool { return strings.Contains(string(b), s) }

// ReportFigure is devtest.ReportFigure, set by figure_test.go (package
// search_test, since devtest imports this package).
var ReportFigure func(b testing.TB, name, unit string, value float64, baselineName string, baseline float64, target string)

// baselineDocs renders d as the documents of BleveBaseline.
func baselineDocs(b testing.TB, d benchData) []BaselineDoc {
	b.Helper()
	out := make([]BaselineDoc, len(d.docs))
	for i, doc := range d.docs {
		body, err := json.Marshal(doc)
		if err != nil {
			b.Fatal(err)
		}
		out[i] = BaselineDoc{ID: d.ids[i], Body: body}
	}
	return out
}

// BenchmarkBulkIndexing loads benchDocs documents through _bulk over HTTP
// (benchWorkers clients, benchBatch documents a request) and, as the
// baseline, straight into Bleve (BleveBaseline: the same documents,
// mapping and batch size), the two taking turns chunk by chunk so that a
// change in the machine's load touches them alike.
func BenchmarkBulkIndexing(b *testing.B) {
	if testing.Short() {
		b.Skip("starts a search server")
	}
	const chunk = 10_000
	d := genBenchData(benchDocs)
	all := baselineDocs(b, d)
	// the GC as the search child runs it (both sides share this process)
	defer debug.SetGCPercent(debug.SetGCPercent(GCPercent))
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(MemoryLimit))
	for range b.N {
		s := startServer(b, b.TempDir())
		callJSON(b, http.MethodPut, s.URL()+"/_index_template/canvass", `{"index_patterns":["canvass-*"],"template":{"mappings":`+canvassMapping+`}}`, 200)
		bb, err := NewBleveBaseline(b.TempDir(), []byte(canvassMapping))
		if err != nil {
			b.Fatal(err)
		}
		var tServer, tRaw, cpuServer, cpuRaw time.Duration
		for i := 0; i < len(d.docs); i += chunk {
			end := min(i+chunk, len(d.docs))
			for k := range 2 {
				cpu0 := processCPU(b)
				if (i/chunk+k)%2 == 0 {
					tServer += loadServer(b, s.URL(), "canvass-intentions-2026.11", benchData{ids: d.ids[i:end], docs: d.docs[i:end]})
					cpuServer += settle(b) - cpu0
					continue
				}
				took, err := bb.Load(all[i:end], benchBatch, benchWorkers)
				if err != nil {
					b.Fatal(err)
				}
				tRaw += took
				cpuRaw += settle(b) - cpu0
			}
		}
		if err := bb.Close(); err != nil {
			b.Fatal(err)
		}
		server, raw := rate(len(d.docs), tServer), rate(len(d.docs), tRaw)
		b.ReportMetric(server, "docs/s")
		b.ReportMetric(raw, "raw-bleve-docs/s")
		cpuDoc, rawCPUDoc := usPerDoc(cpuServer, len(d.docs)), usPerDoc(cpuRaw, len(d.docs))
		b.ReportMetric(cpuDoc, "cpu-us/doc")
		b.ReportMetric(rawCPUDoc, "raw-bleve-cpu-us/doc")
		if ReportFigure != nil {
			ReportFigure(b, "BenchmarkBulkIndexing/bulk-docs-per-s", "docs/s", server,
				fmt.Sprintf("Bleve batch indexing, same documents, mapping and batches of %d, %d workers", benchBatch, benchWorkers), raw, ">=25000")
			ReportFigure(b, "BenchmarkBulkIndexing/cpu-us-per-doc", "µs", cpuDoc,
				fmt.Sprintf("process CPU of Bleve batch indexing, same documents, batches and scorch options (%s=%q), each side's turns until its merges are done", ScorchEnv, os.Getenv(ScorchEnv)), rawCPUDoc, "")
		}
	}
}

// BenchmarkSingleWriter sends _bulk requests of 500 documents one at a
// time (the search sink's shape), taking turns chunk by chunk with and
// without writeBatch's parallel parts, into indices of their own, so
// that the machine's load touches both alike.
func BenchmarkSingleWriter(b *testing.B) {
	if testing.Short() {
		b.Skip("starts a search server")
	}
	const perRequest, chunk = 500, 2500
	d := genBenchData(min(benchDocs, 20_000))
	defer func(was bool) { splitWrites = was }(splitWrites)
	for range b.N {
		s := startServer(b, b.TempDir())
		callJSON(b, http.MethodPut, s.URL()+"/_index_template/canvass", `{"index_patterns":["canvass-*"],"template":{"mappings":`+canvassMapping+`}}`, 200)
		var took [2]time.Duration
		for i := 0; i < len(d.docs); i += chunk {
			for k := range 2 {
				turn := (i/chunk + k) % 2
				splitWrites = turn == 0
				start := time.Now()
				for j := i; j < min(i+chunk, len(d.docs)); j += perRequest {
					end := min(j+perRequest, i+chunk, len(d.docs))
					body := bulkBody(b, fmt.Sprintf("canvass-w%d", turn), d.ids[j:end], d.docs[j:end])
					status, resp, _ := call(b, http.MethodPost, s.URL()+"/_bulk", body)
					if status != http.StatusOK || bytesContains(resp, `"errors":true`) {
						b.Fatalf("bulk status %d: %.300s", status, resp)
					}
				}
				took[turn] += time.Since(start)
			}
		}
		n := float64(len(d.docs))
		split, single := n/took[0].Seconds(), n/took[1].Seconds()
		b.ReportMetric(split, "docs/s")
		b.ReportMetric(single, "unsplit-docs/s")
		if ReportFigure != nil {
			ReportFigure(b, "BenchmarkSingleWriter/bulk-docs-per-s", "docs/s", split,
				fmt.Sprintf("the same requests of %d documents written as one Bleve batch each", perRequest), single, "")
		}
	}
}

// BenchmarkSearchLatency loads benchQueryDocs documents and times report
// style searches (p50 over repeated runs), next to a match_all count.
func BenchmarkSearchLatency(b *testing.B) {
	if testing.Short() {
		b.Skip("starts a search server")
	}
	d := genBenchData(benchQueryDocs)
	for range b.N {
		s := startServer(b, b.TempDir())
		callJSON(b, http.MethodPut, s.URL()+"/_index_template/canvass", `{"index_patterns":["canvass-*"],"template":{"mappings":`+canvassMapping+`,"aliases":{"canvass-intentions":{}}}}`, 200)
		took := loadServer(b, s.URL(), "canvass-intentions-2026.11", d)
		fmt.Printf("loaded %d docs at %.0f docs/s (batches of %d, %d workers)\n", len(d.docs), rate(len(d.docs), took), benchBatch, benchWorkers)
		// the generated documents would otherwise weigh on every garbage
		// collection of the searches below
		d = benchData{ids: d.ids[:0:0], docs: nil}
		runtime.GC()
		queries := []struct{ name, body string }{
			{"count", `{"size":0,"track_total_hits":true}`},
			{"intentions by option per region and day", `{"size":0,"query":{"range":{"recorded_at":{"gte":"2026-10-01"}}},"aggs":{"regions":{"terms":{"field":"region","size":50},"aggs":{"options":{"terms":{"field":"option"}}}},"days":{"date_histogram":{"field":"recorded_at","calendar_interval":"day"},"aggs":{"options":{"terms":{"field":"option"}}}}}}`},
			{"canvasser activity", `{"size":0,"aggs":{"canvassers":{"terms":{"field":"canvasser_id","size":1000},"aggs":{"localities":{"cardinality":{"field":"locality"}}}}}}`},
			{"bbox localities", `{"size":0,"query":{"geo_bounding_box":{"location":{"top_left":{"lat":56.0,"lon":-4.0},"bottom_right":{"lat":55.9,"lon":-3.5}}}},"aggs":{"localities":{"terms":{"field":"locality","size":10000}}}}`},
			{"top 100 newest", `{"size":100,"sort":[{"recorded_at":"desc"},{"id":"asc"}]}`},
		}
		for _, q := range queries {
			var times []time.Duration
			for range 5 {
				start := time.Now()
				callJSON(b, http.MethodPost, s.URL()+"/canvass-intentions/_search", q.body, 200)
				times = append(times, time.Since(start))
			}
			sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
			fmt.Printf("search %-42s p50 %6.1f ms  max %6.1f ms over %d docs\n", q.name, ms(times[len(times)/2]), ms(times[len(times)-1]), benchQueryDocs)
		}
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
