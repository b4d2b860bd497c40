package search_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/chapper/chapper/pipelines/report"
	"github.com/chapper/chapper/pipelines/runtime"
	"github.com/chapper/chapper/pipelines/search"
	"github.com/chapper/chapper/pipelines/search/searchtest"
	"github.com/chapper/chapper/proto/topic"
	"github.com/chapper/chapper/services/devstack/devtest"
	searchsrv "github.com/chapper/chapper/services/devstack/search"
)

// benchIndexDocs is the workload of BenchmarkIndexer;
// CHAPPER_SEARCH_INDEXER_DOCS overrides it (a smaller run on a busy
// machine).
var benchIndexDocs = 30_000

func init() {
	if n, err := strconv.Atoi(os.Getenv("CHAPPER_SEARCH_INDEXER_DOCS")); err == nil && n > 0 {
		benchIndexDocs = n
	}
}

// bulkBodies encodes recs as _bulk bodies of at most perBody documents and
// maxBytes bytes each, with the index and id the sink would use.
func bulkBodies(tb testing.TB, cfg search.Config, recs []runtime.Record, perBody, maxBytes int) [][]byte {
	tb.Helper()
	names := search.Names{Prefix: cfg.IndexPrefix}
	var out [][]byte
	var buf bytes.Buffer
	n := 0
	for _, rec := range recs {
		doc, kind, at, err := search.NewDocument(rec, cfg.ShardBits)
		if err != nil {
			tb.Fatal(err)
		}
		meta, _ := json.Marshal(map[string]any{"index": map[string]any{"_index": names.Index(kind, at), "_id": doc.ID}})
		body, _ := json.Marshal(doc)
		if n > 0 && (n == perBody || buf.Len()+len(meta)+len(body)+2 > maxBytes) {
			out = append(out, bytes.Clone(buf.Bytes()))
			buf.Reset()
			n = 0
		}
		buf.Write(meta)
		buf.WriteByte('\n')
		buf.Write(body)
		buf.WriteByte('\n')
		n++
	}
	if n > 0 {
		out = append(out, bytes.Clone(buf.Bytes()))
	}
	return out
}

// rawBulk posts bodies to /_bulk with workers concurrent requests, failing
// tb on any error, and returns how long it took.
func rawBulk(tb testing.TB, url string, bodies [][]byte, workers int) time.Duration {
	tb.Helper()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: workers}}
	defer client.CloseIdleConnections()
	work := make(chan []byte)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	start := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for body := range work {
				if err := postBulk(client, url, body); err != nil {
					mu.Lock()
					firstErr = cmpOr(firstErr, err)
					mu.Unlock()
				}
			}
		}()
	}
	for _, b := range bodies {
		work <- b
	}
	close(work)
	wg.Wait()
	elapsed := time.Since(start)
	if firstErr != nil {
		tb.Fatalf("raw _bulk: %v", firstErr)
	}
	return elapsed
}

func cmpOr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

func postBulk(client *http.Client, url string, body []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url+"/_bulk", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/x-ndjson")
	res, err := client.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	var out struct {
		Errors bool `json:"errors"`
	}
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d: %.300s", res.StatusCode, b)
	}
	if err := json.Unmarshal(b, &out); err != nil {
		return err
	}
	if out.Errors {
		return fmt.Errorf("item errors: %.300s", b)
	}
	return nil
}

// BenchmarkIndexer measures documents per second through the sink, in the
// runtime's default batches of 500, against raw _bulk requests of the same
// documents to the same server: 500 per request one at a time (the sink's
// batch shape), and 5 MB bodies two at a time (the server's ceiling); and
// against Bleve batch-indexing the same documents in-process in batches
// of 500 one at a time (the reported baseline). The four take turns chunk
// by chunk, each into indices of its own, so that a change in the
// machine's load touches them alike.
func BenchmarkIndexer(b *testing.B) {
	srv := searchtest.Start(b)
	recs := searchtest.Generate(11, benchIndexDocs).Records()
	const chunk = 5000
	for b.Loop() {
		raw500cfg, cfg, bigcfg := srv.Config(b), srv.Config(b), srv.Config(b)
		sink := searchtest.NewSink(b, cfg)
		searchtest.NewSink(b, raw500cfg) // installs the templates
		searchtest.NewSink(b, bigcfg)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
		bb := newBleveBaseline(b)
		var tRaw500, tSink, tBig, tBleve time.Duration
		runs := []func(part []runtime.Record){
			func(part []runtime.Record) {
				// the sink's batches, one at a time
				took, err := bb.Load(baselineDocs(b, cfg, part), 500, 1)
				if err != nil {
					b.Fatal(err)
				}
				tBleve += took
			},
			func(part []runtime.Record) {
				tRaw500 += rawBulk(b, srv.URL(), bulkBodies(b, raw500cfg, part, 500, 1<<30), 1)
			},
			func(part []runtime.Record) {
				start := time.Now()
				for i := 0; i < len(part); i += 500 {
					if err := sink.Write(ctx, part[i:min(i+500, len(part))]); err != nil {
						b.Fatal(err)
					}
				}
				tSink += time.Since(start)
			},
			func(part []runtime.Record) {
				tBig += rawBulk(b, srv.URL(), bulkBodies(b, bigcfg, part, 1<<30, cfg.FlushBytes), cfg.Workers)
			},
		}
		for i := 0; i < len(recs); i += chunk {
			part := recs[i:min(i+chunk, len(recs))]
			for k := range runs {
				runs[(i/chunk+k)%len(runs)](part)
			}
		}
		cancel()
		for _, c := range []search.Config{raw500cfg, cfg, bigcfg} {
			if got := searchtest.Total(b, c); got != len(recs) {
				b.Fatalf("prefix %s holds %d documents, want %d", c.IndexPrefix, got, len(recs))
			}
		}
		n := float64(len(recs))
		viaSink, raw500, rawBig := n/tSink.Seconds(), n/tRaw500.Seconds(), n/tBig.Seconds()
		if err := bb.Close(); err != nil {
			b.Fatal(err)
		}
		bleveRate := n / tBleve.Seconds()
		b.ReportMetric(viaSink, "docs/s")
		b.ReportMetric(raw500, "raw500-docs/s")
		b.ReportMetric(rawBig, "rawbulk-docs/s")
		b.ReportMetric(bleveRate, "raw-bleve-docs/s")
		fmt.Printf("search indexer: %.0f docs/s through the sink (batches of 500, %d workers) = %.0f%% of raw _bulk with the same batches %.0f docs/s; raw _bulk with %d MB bodies x%d: %.0f docs/s (%d docs each)\n",
			viaSink, cfg.Workers, 100*viaSink/raw500, raw500, cfg.FlushBytes>>20, cfg.Workers, rawBig, len(recs))
		devtest.ReportFigure(b, devtest.Figure{Name: "BenchmarkIndexer/sink-docs-per-s", Value: viaSink, Unit: "docs/s",
			BaselineName: "Bleve batch indexing in-process, same documents, mapping and batches of 500, one at a time",
			Baseline:     bleveRate, Target: ">=20000"})
	}
}

// newBleveBaseline creates the Bleve baseline of BenchmarkIndexer
// (searchsrv.BleveBaseline) with the mapping of every kind's fields.
func newBleveBaseline(tb testing.TB) *searchsrv.BleveBaseline {
	tb.Helper()
	props := map[string]any{}
	for _, k := range []topic.Kind{topic.KindVisits, topic.KindIntentions, topic.KindFollowups} {
		for name, p := range search.Mappings(k)["properties"].(map[string]any) {
			props[name] = p
		}
	}
	mapping, err := json.Marshal(map[string]any{"properties": props})
	if err != nil {
		tb.Fatal(err)
	}
	bb, err := searchsrv.NewBleveBaseline(tb.TempDir(), mapping)
	if err != nil {
		tb.Fatal(err)
	}
	return bb
}

// baselineDocs are the documents the sink would write for recs.
func baselineDocs(tb testing.TB, cfg search.Config, recs []runtime.Record) []searchsrv.BaselineDoc {
	tb.Helper()
	docs := make([]searchsrv.BaselineDoc, 0, len(recs))
	for _, rec := range recs {
		doc, _, _, err := search.NewDocument(rec, cfg.ShardBits)
		if err != nil {
			tb.Fatal(err)
		}
		body, err := json.Marshal(doc)
		if err != nil {
			tb.Fatal(err)
		}
		docs = append(docs, searchsrv.BaselineDoc{ID: doc.ID, Body: body})
	}
	return docs
}

// Report-latency workload: up to benchReportDocs documents, loaded within
// benchLoadBudget, each report run benchReportRuns times.
const (
	benchReportDocs = 1_000_000
	benchLoadBudget = 3 * time.Minute
	benchReportRuns = 30
)

// BenchmarkReports loads up to 1M documents with raw _bulk requests and
// measures the latency of every report (p50, p99) over them.
func BenchmarkReports(b *testing.B) {
	srv := searchtest.Start(b)
	cfg := srv.Config(b)
	searchtest.NewSink(b, cfg)
	loaded := 0
	start := time.Now()
	for seed := uint64(100); loaded < benchReportDocs && time.Since(start) < benchLoadBudget; seed++ {
		recs := searchtest.Generate(seed, min(50_000, benchReportDocs-loaded)).Records()
		bodies := bulkBodies(b, cfg, recs, 1<<30, cfg.FlushBytes)
		rawBulk(b, srv.URL(), bodies, cfg.Workers)
		loaded += len(recs)
	}
	loadTime := time.Since(start)
	searchtest.Refresh(b, cfg)
	if got := searchtest.Total(b, cfg); got != loaded {
		b.Fatalf("loaded %d documents, the server counts %d", loaded, got)
	}
	es, err := search.NewClient(cfg)
	if err != nil {
		b.Fatal(err)
	}
	params := report.Params{
		From: searchtest.PeriodFrom, To: searchtest.PeriodTo, Region: -1, Size: 10, IndexPrefix: cfg.IndexPrefix,
	}
	boxed := params
	boxed.Region = 5254168 // the whole region around the knock box: 10,000 localities
	cases := []struct {
		name string
		p    report.Params
	}{
		{"intentions", params},
		{"followups", params},
		{"canvassers", params},
		{"unknocked", boxed},
	}
	for b.Loop() {
		fmt.Printf("search reports over %d documents (loaded in %s, %.0f docs/s):", loaded, loadTime.Round(time.Second), float64(loaded)/loadTime.Seconds())
		if loaded < benchReportDocs {
			fmt.Printf(" [only %d of %d documents fit the %s load budget]", loaded, benchReportDocs, benchLoadBudget)
		}
		for _, c := range cases {
			var lat []time.Duration
			for range benchReportRuns {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				t0 := time.Now()
				if err := report.Run(ctx, es, c.name, c.p, io.Discard); err != nil {
					cancel()
					b.Fatalf("%s: %v", c.name, err)
				}
				lat = append(lat, time.Since(t0))
				cancel()
			}
			slices.Sort(lat)
			p50 := lat[len(lat)/2]
			p99 := lat[min(len(lat)-1, len(lat)*99/100)]
			b.ReportMetric(float64(p50.Microseconds())/1000, c.name+"-p50-ms")
			b.ReportMetric(float64(p99.Microseconds())/1000, c.name+"-p99-ms")
			fmt.Printf(" %s p50 %s p99 %s;", c.name, p50.Round(time.Millisecond), p99.Round(time.Millisecond))
		}
		fmt.Println()
	}
	b.ReportMetric(float64(loaded), "docs")
}
