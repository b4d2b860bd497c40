package searchtest

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/chapper/chapper/pipelines/runtime"
	"github.com/chapper/chapper/pipelines/search"
	"github.com/chapper/chapper/proto/topic"
)

// timeout bounds every helper's requests.
const timeout = 2 * time.Minute

// NewSink returns a search sink for cfg, closed at the end of t.
func NewSink(t testing.TB, cfg search.Config) *search.Sink {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	s, err := search.New(ctx, cfg)
	if err != nil {
		t.Fatalf("search.New: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		if err := s.Close(ctx); err != nil {
			t.Errorf("closing search sink: %v", err)
		}
	})
	return s
}

// Index writes recs through a new sink in batches of 500, failing t on any
// error, and refreshes the indices so that everything is searchable.
func Index(t testing.TB, cfg search.Config, recs []runtime.Record) {
	t.Helper()
	s := NewSink(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for i := 0; i < len(recs); i += 500 {
		if err := s.Write(ctx, recs[i:min(i+500, len(recs))]); err != nil {
			t.Fatalf("indexing records %d..: %v", i, err)
		}
	}
	Refresh(t, cfg)
}

// Refresh makes every document of cfg's indices searchable.
func Refresh(t testing.TB, cfg search.Config) {
	t.Helper()
	do(t, cfg, http.MethodPost, "/"+cfg.IndexPrefix+"-*/_refresh", "", nil)
}

// Count returns the number of documents behind kind's alias, after a
// refresh; 0 if the alias does not exist yet.
func Count(t testing.TB, cfg search.Config, k topic.Kind) int {
	t.Helper()
	Refresh(t, cfg)
	var out struct {
		Count int `json:"count"`
	}
	alias := search.Names{Prefix: cfg.IndexPrefix}.Alias(k)
	if status := do(t, cfg, http.MethodGet, "/"+alias+"/_count", "", &out); status == http.StatusNotFound {
		return 0
	}
	return out.Count
}

// CountIndex returns the documents of index (a name or a pattern), read
// directly rather than through an alias, so documents a correction
// replaced count too; 0 if no such index exists.
func CountIndex(t testing.TB, cfg search.Config, index string) int {
	t.Helper()
	Refresh(t, cfg)
	var out struct {
		Count int `json:"count"`
	}
	if status := do(t, cfg, http.MethodGet, "/"+index+"/_count", "", &out); status == http.StatusNotFound {
		return 0
	}
	return out.Count
}

// Total returns the documents behind all three aliases.
func Total(t testing.TB, cfg search.Config) int {
	t.Helper()
	n := 0
	for _, k := range topic.Kinds {
		n += Count(t, cfg, k)
	}
	return n
}

// Get returns the source of document id of kind k read through its alias
// (an ids query, since an alias spans several indices), or nil.
func Get(t testing.TB, cfg search.Config, k topic.Kind, id string) map[string]any {
	t.Helper()
	var out struct {
		Hits struct {
			Hits []struct {
				Index  string         `json:"_index"`
				Source map[string]any `json:"_source"`
			} `json:"hits"`
		} `json:"hits"`
	}
	q, _ := json.Marshal(map[string]any{"query": map[string]any{"ids": map[string]any{"values": []string{id}}}})
	alias := search.Names{Prefix: cfg.IndexPrefix}.Alias(k)
	if status := do(t, cfg, http.MethodPost, "/"+alias+"/_search", string(q), &out); status == http.StatusNotFound {
		return nil
	}
	switch len(out.Hits.Hits) {
	case 0:
		return nil
	case 1:
		h := out.Hits.Hits[0]
		h.Source["_index"] = h.Index
		return h.Source
	}
	t.Fatalf("document %s found %d times behind %s", id, len(out.Hits.Hits), alias)
	return nil
}

// do sends one request to the first address of cfg and decodes a 2xx JSON
// answer into out; it returns the status and fails t on any other status
// but 404.
func do(t testing.TB, cfg search.Config, method, path, body string, out any) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(cfg.Addresses[0], "/")+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	switch {
	case res.StatusCode == http.StatusNotFound:
	case res.StatusCode/100 != 2:
		t.Fatalf("%s %s: %d %s", method, path, res.StatusCode, b)
	case out != nil:
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: decoding %s: %v", method, path, b, err)
		}
	}
	return res.StatusCode
}

// CreateIndex creates index with body (settings and mappings), as an
// operator would by hand.
func CreateIndex(t testing.TB, cfg search.Config, index, body string) {
	t.Helper()
	if status := do(t, cfg, http.MethodPut, "/"+index, body, nil); status/100 != 2 {
		t.Fatalf("creating index %s: status %d", index, status)
	}
}

// DeleteIndex deletes index (a missing one is no error).
func DeleteIndex(t testing.TB, cfg search.Config, index string) {
	t.Helper()
	do(t, cfg, http.MethodDelete, "/"+index, "", nil)
}
