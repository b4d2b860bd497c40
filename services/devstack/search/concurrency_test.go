package search

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"
)

// TestConcurrentUse runs bulk writers, searches, index creation and
// deletion and alias changes at once (run it with -race), then checks that
// every acknowledged document is there exactly once.
func TestConcurrentUse(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a search server")
	}
	s := startServer(t, "")
	url := s.URL()
	callJSON(t, http.MethodPut, url+"/_index_template/c", `{"index_patterns":["c-*"],"template":{"mappings":`+canvassMapping+`,"aliases":{"c":{}}}}`, 200)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const writers, batches, perBatch = 4, 10, 50
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	report := func(err error) {
		select {
		case errs <- err:
		default:
		}
	}
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := newRand()
			base := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
			for b := range batches {
				ids := make([]string, perBatch)
				docs := make([]map[string]any, perBatch)
				for i := range perBatch {
					_, docs[i] = genDoc(rng, i, base)
					ids[i] = fmt.Sprintf("w%d-b%d-%d", w, b, i)
					// every writer re-sends its previous batch's first id: idempotent
					if b > 0 && i == 0 {
						ids[i] = fmt.Sprintf("w%d-b%d-%d", w, b-1, 0)
					}
				}
				body := bulkBody(t, fmt.Sprintf("c-%d", (w+b)%3), ids, docs)
				status, resp, _ := call(t, http.MethodPost, url+"/_bulk", body)
				if status != 200 || bytesContains(resp, `"errors":true`) {
					report(fmt.Errorf("bulk: %d %.300s", status, resp))
				}
			}
		}()
	}
	stop := make(chan struct{})
	var readers sync.WaitGroup
	for range 2 {
		readers.Add(1)
		go func() {
			defer readers.Done()
			for {
				select {
				case <-stop:
					return
				case <-ctx.Done():
					return
				default:
				}
				status, resp, _ := call(t, http.MethodPost, url+"/c*/_search", []byte(`{"size":5,"sort":[{"recorded_at":"desc"}],"aggs":{"o":{"terms":{"field":"option"},"aggs":{"c":{"cardinality":{"field":"canvasser_id"}}}}}}`))
				if status != 200 {
					report(fmt.Errorf("search: %d %.300s", status, resp))
				}
			}
		}()
	}
	readers.Add(1)
	go func() {
		defer readers.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-ctx.Done():
				return
			default:
			}
			name := fmt.Sprintf("tmp-%d", i%3)
			call(t, http.MethodPut, url+"/"+name, []byte(`{"mappings":{"properties":{"x":{"type":"keyword"}}}}`))
			call(t, http.MethodPost, url+"/_aliases", []byte(`{"actions":[{"add":{"index":"`+name+`","alias":"tmp"}}]}`))
			call(t, http.MethodPut, url+"/"+name+"/_doc/1", []byte(`{"x":"y"}`))
			call(t, http.MethodGet, url+"/tmp/_search", nil)
			call(t, http.MethodDelete, url+"/"+name, nil)
		}
	}()
	wg.Wait()
	close(stop)
	readers.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	out := callJSON(t, http.MethodGet, url+"/c/_count", nil, 200)
	got, _ := out["count"].(json.Number).Int64()
	// each writer's re-sent id lands in a different index than its first
	// write when (w+b)%3 differs, so count distinct (index, id) pairs
	want := map[string]bool{}
	for w := range writers {
		for b := range batches {
			for i := range perBatch {
				id := fmt.Sprintf("w%d-b%d-%d", w, b, i)
				if b > 0 && i == 0 {
					id = fmt.Sprintf("w%d-b%d-%d", w, b-1, 0)
				}
				want[fmt.Sprintf("%d/%s", (w+b)%3, id)] = true
			}
		}
	}
	if got != int64(len(want)) {
		t.Errorf("count = %d, want %d", got, len(want))
	}
}
