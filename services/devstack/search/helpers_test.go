package search

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// TestMain fails the run if a test leaves a goroutine behind (goleak).
// Goroutines running before the tests (bleve starts its analysis workers
// at init) are not leaks.
func TestMain(m *testing.M) {
	before := goleak.IgnoreCurrent()
	code := m.Run()
	httpClient.CloseIdleConnections()
	if code == 0 {
		// Find retries for about a second; under load a closed index's
		// scorch loops and the HTTP server's connections can take longer
		// to wind down, so keep asking for up to 15 s
		deadline := time.Now().Add(15 * time.Second)
		err := goleak.Find(before)
		for err != nil && time.Now().Before(deadline) {
			err = goleak.Find(before)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "leaked goroutines:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// startServer starts a server on a free port over dir (a fresh temporary
// directory when empty) and stops it when the test ends.
func startServer(t testing.TB, dir string) *Server {
	t.Helper()
	return startServerWith(t, dir, ScorchOptions{})
}

// startServerWith is startServer with the given scorch options (the zero
// value: the ones ScorchEnv picks).
func startServerWith(t testing.TB, dir string, o ScorchOptions) *Server {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	s, err := New(Config{DataDir: dir, Addr: "127.0.0.1:0", Logger: slog.New(slog.DiscardHandler), Scorch: o})
	if err != nil {
		t.Fatalf("starting search server: %v", err)
	}
	if _, err := s.Listen(); err != nil {
		t.Fatalf("listening: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("search server stopped: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("search server did not stop within 30s")
		}
	}
	t.Cleanup(stop)
	return s
}

var httpClient = &http.Client{Timeout: 2 * time.Minute}

// call sends one request and returns the status and body.
func call(t testing.TB, method, url string, body []byte) (int, []byte, http.Header) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatalf("building request: %v", err)
	}
	if len(body) > 0 {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading response of %s %s: %v", method, url, err)
	}
	return resp.StatusCode, b, resp.Header
}

// callJSON sends a request and decodes the JSON response; it fails the test
// unless the status is want.
func callJSON(t testing.TB, method, url string, body any, want int) map[string]any {
	t.Helper()
	var b []byte
	switch x := body.(type) {
	case nil:
	case []byte:
		b = x
	case string:
		b = []byte(x)
	default:
		var err error
		if b, err = json.Marshal(x); err != nil {
			t.Fatalf("encoding request: %v", err)
		}
	}
	status, resp, _ := call(t, method, url, b)
	if status != want {
		t.Fatalf("%s %s: status %d, want %d: %s", method, url, status, want, resp)
	}
	var out map[string]any
	if len(resp) > 0 {
		dec := json.NewDecoder(bytes.NewReader(resp))
		dec.UseNumber()
		if err := dec.Decode(&out); err != nil {
			t.Fatalf("decoding response of %s %s: %v: %s", method, url, err, resp)
		}
	}
	return out
}

// canvassMapping is the shape of Chapper's intentions documents.
const canvassMapping = `{
  "dynamic": "strict",
  "properties": {
    "id": {"type": "keyword"}, "visit_id": {"type": "keyword"}, "elector_id": {"type": "keyword"},
    "option": {"type": "keyword"}, "canvasser_id": {"type": "keyword"}, "kind": {"type": "keyword"},
    "location": {"type": "geo_point"}, "recorded_at": {"type": "date"}, "received_at": {"type": "date"},
    "locality": {"type": "long"}, "chunk": {"type": "long"}, "region": {"type": "long"}, "shard": {"type": "long"}
  }
}`

// genDoc returns the i-th synthetic intention document and its id.
func genDoc(rng *rand.Rand, i int, base time.Time) (string, map[string]any) {
	id := fmt.Sprintf("0190%04x-%04x-7%03x-8%03x-%012x", i>>16&0xffff, i&0xffff, rng.IntN(4096), rng.IntN(4096), rng.Int64N(1<<48))
	lat := 55.8 + rng.Float64()*0.4
	lon := -4.4 + rng.Float64()*1.3
	at := base.Add(-time.Duration(rng.Int64N(int64(60 * 24 * time.Hour))))
	options := []string{"yes", "no", "undecided", "refused"}
	row := int((lat + 90) * 1000)
	col := int((lon + 180) * 1000)
	return id, map[string]any{
		"id":           id,
		"visit_id":     fmt.Sprintf("v-%d", i/2),
		"elector_id":   fmt.Sprintf("e-%d", rng.IntN(200000)),
		"option":       options[rng.IntN(len(options))],
		"canvasser_id": fmt.Sprintf("c-%d", rng.IntN(500)),
		"kind":         "intentions",
		"location":     map[string]float64{"lat": lat, "lon": lon},
		"recorded_at":  at.UTC().Format(time.RFC3339Nano),
		"received_at":  at.Add(time.Duration(rng.IntN(3600)) * time.Second).UTC().Format(time.RFC3339Nano),
		"locality":     row*360000 + col,
		"chunk":        (row/5)*72000 + col/5,
		"region":       (row/100)*3600 + col/100,
		"shard":        ((row/100)*3600 + col/100) & 63,
	}
}

// bulkBody renders docs as a _bulk body indexing into index.
func bulkBody(t testing.TB, index string, ids []string, docs []map[string]any) []byte {
	t.Helper()
	var b bytes.Buffer
	for i, d := range docs {
		fmt.Fprintf(&b, `{"index":{"_index":%q,"_id":%q}}`+"\n", index, ids[i])
		j, err := json.Marshal(d)
		if err != nil {
			t.Fatalf("encoding document: %v", err)
		}
		b.Write(j)
		b.WriteByte('\n')
	}
	return b.Bytes()
}

func newRand() *rand.Rand { return rand.New(rand.NewPCG(7, 11)) }
