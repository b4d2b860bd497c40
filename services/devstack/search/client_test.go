package search

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/elastic/go-elasticsearch/v8"
	"github.com/elastic/go-elasticsearch/v8/esutil"
)

// TestOfficialClient drives the server with the official go-elasticsearch
// client and its BulkIndexer, as the indexer sink does: the product check,
// template install, bulk indexing with per-item outcomes, search and count.
func TestOfficialClient(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a search server")
	}
	s := startServer(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	es, err := elasticsearch.NewClient(elasticsearch.Config{Addresses: []string{s.URL()}})
	if err != nil {
		t.Fatal(err)
	}
	info, err := es.Info(es.Info.WithContext(ctx))
	if err != nil {
		t.Fatalf("info (product check): %v", err)
	}
	info.Body.Close()
	if info.IsError() {
		t.Fatalf("info: %s", info)
	}

	res, err := es.Indices.PutIndexTemplate("canvass-intentions", strings.NewReader(`{
		"index_patterns": ["canvass-intentions-*"], "priority": 10,
		"template": {"mappings": `+canvassMapping+`, "aliases": {"canvass-intentions": {}}}}`),
		es.Indices.PutIndexTemplate.WithContext(ctx))
	if err != nil || res.IsError() {
		t.Fatalf("put template: %v %s", err, res)
	}
	res.Body.Close()

	var mu sync.Mutex
	failures := map[string]string{}
	succeeded := 0
	bi, err := esutil.NewBulkIndexer(esutil.BulkIndexerConfig{
		Client:        es,
		NumWorkers:    2,
		FlushBytes:    64 << 10,
		FlushInterval: 100 * time.Millisecond,
		Refresh:       "true",
	})
	if err != nil {
		t.Fatal(err)
	}
	rng := newRand()
	base := time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC)
	const n = 2000
	add := func(action, index, id string, doc any) {
		body, err := json.Marshal(doc)
		if err != nil {
			t.Fatal(err)
		}
		err = bi.Add(ctx, esutil.BulkIndexerItem{
			Action:     action,
			Index:      index,
			DocumentID: id,
			Body:       bytes.NewReader(body),
			OnSuccess: func(_ context.Context, _ esutil.BulkIndexerItem, _ esutil.BulkIndexerResponseItem) {
				mu.Lock()
				succeeded++
				mu.Unlock()
			},
			OnFailure: func(_ context.Context, item esutil.BulkIndexerItem, r esutil.BulkIndexerResponseItem, err error) {
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					failures[item.DocumentID] = err.Error()
					return
				}
				failures[item.DocumentID] = fmt.Sprintf("%d %s", r.Status, r.Error.Type)
			},
		})
		if err != nil {
			t.Fatalf("adding to the bulk indexer: %v", err)
		}
	}
	ids := make([]string, n)
	for i := range n {
		id, doc := genDoc(rng, i, base)
		ids[i] = id
		add("index", "canvass-intentions-2026.11", id, doc)
	}
	add("index", "canvass-intentions-2026.11", "bad-field", map[string]any{"id": "bad-field", "colour": "blue"})
	add("index", "canvass-intentions-2026.11", "bad-type", map[string]any{"id": "bad-type", "locality": "abc"})
	add("create", "canvass-intentions-2026.11", ids[0], map[string]any{"id": ids[0]})
	if err := bi.Close(ctx); err != nil {
		t.Fatalf("closing the bulk indexer: %v", err)
	}
	st := bi.Stats()
	want := map[string]string{
		"bad-field": "400 strict_dynamic_mapping_exception",
		"bad-type":  "400 document_parsing_exception",
		ids[0]:      "409 version_conflict_engine_exception",
	}
	if len(failures) != len(want) {
		t.Errorf("failures = %v, want %v", failures, want)
	}
	for id, w := range want {
		if failures[id] != w {
			t.Errorf("failure of %s = %q, want %q", id, failures[id], w)
		}
	}
	if succeeded != n || st.NumFailed != 3 || st.NumAdded != n+3 {
		t.Errorf("succeeded %d, stats %+v; want %d succeeded and 3 failed", succeeded, st, n)
	}

	// search through the alias with the client's request builders
	var query bytes.Buffer
	if err := json.NewEncoder(&query).Encode(map[string]any{
		"size":  0,
		"query": map[string]any{"term": map[string]any{"kind": "intentions"}},
		"aggs": map[string]any{
			"options": map[string]any{"terms": map[string]any{"field": "option"}},
			"days":    map[string]any{"date_histogram": map[string]any{"field": "recorded_at", "calendar_interval": "day"}},
		},
	}); err != nil {
		t.Fatal(err)
	}
	sres, err := es.Search(es.Search.WithContext(ctx), es.Search.WithIndex("canvass-intentions"), es.Search.WithBody(&query), es.Search.WithTrackTotalHits(true))
	if err != nil {
		t.Fatalf("search: %v", err)
	}
	defer sres.Body.Close()
	if sres.IsError() {
		t.Fatalf("search: %s", sres)
	}
	var out struct {
		Hits struct {
			Total struct{ Value int } `json:"total"`
		} `json:"hits"`
		Aggregations struct {
			Options struct {
				Buckets []struct {
					Key      string `json:"key"`
					DocCount int    `json:"doc_count"`
				} `json:"buckets"`
			} `json:"options"`
			Days struct {
				Buckets []struct {
					DocCount int `json:"doc_count"`
				} `json:"buckets"`
			} `json:"days"`
		} `json:"aggregations"`
	}
	if err := json.NewDecoder(sres.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	sumOptions, sumDays := 0, 0
	for _, b := range out.Aggregations.Options.Buckets {
		sumOptions += b.DocCount
	}
	for _, b := range out.Aggregations.Days.Buckets {
		sumDays += b.DocCount
	}
	if out.Hits.Total.Value != n || sumOptions != n || sumDays != n {
		t.Errorf("total %d, option buckets sum %d, day buckets sum %d; want %d each", out.Hits.Total.Value, sumOptions, sumDays, n)
	}

	cres, err := es.Count(es.Count.WithContext(ctx), es.Count.WithIndex("canvass-intentions-*"))
	if err != nil || cres.IsError() {
		t.Fatalf("count: %v %s", err, cres)
	}
	defer cres.Body.Close()
	var cnt struct{ Count int }
	if err := json.NewDecoder(cres.Body).Decode(&cnt); err != nil {
		t.Fatal(err)
	}
	if cnt.Count != n {
		t.Errorf("count = %d, want %d", cnt.Count, n)
	}

	// a missing index is an error the client reports as such
	mres, err := es.Search(es.Search.WithContext(ctx), es.Search.WithIndex("no-such-index"))
	if err != nil {
		t.Fatalf("search of a missing index: %v", err)
	}
	mres.Body.Close()
	if mres.StatusCode != 404 {
		t.Errorf("search of a missing index: status %d, want 404", mres.StatusCode)
	}
}
