package search_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/chapper/chapper/pipelines/runtime"
	"github.com/chapper/chapper/pipelines/runtime/sinktest"
	"github.com/chapper/chapper/pipelines/search"
	"github.com/chapper/chapper/pipelines/search/searchtest"
	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"github.com/chapper/chapper/proto/topic"
	"github.com/chapper/chapper/services/devstack/devtest"
)

func TestMain(m *testing.M) { devtest.Main(m) }

func timeoutCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// TestSearchable checks that records become documents with the right
// fields, in the index of their kind and month, readable through the alias.
func TestSearchable(t *testing.T) {
	srv := searchtest.Start(t)
	cfg := srv.Config(t)
	data := searchtest.Generate(1, 600)
	searchtest.Index(t, cfg, data.Records())
	names := search.Names{Prefix: cfg.IndexPrefix}

	for _, k := range topic.Kinds {
		want := map[topic.Kind]int{
			topic.KindVisits: len(data.Visits), topic.KindIntentions: len(data.Intentions), topic.KindFollowups: len(data.Followups),
		}[k]
		if got := searchtest.Count(t, cfg, k); got != want {
			t.Errorf("%s alias counts %d documents, want %d", k, got, want)
		}
	}
	for i, rec := range data.Records() {
		if i%37 != 0 {
			continue
		}
		want, kind, at, err := search.NewDocument(rec, cfg.ShardBits)
		if err != nil {
			t.Fatal(err)
		}
		got := searchtest.Get(t, cfg, kind, want.ID)
		if got == nil {
			t.Errorf("%s %s not found through its alias", kind, want.ID)
			continue
		}
		if idx := names.Index(kind, at); got["_index"] != idx {
			t.Errorf("%s is in index %v, want %s", want.ID, got["_index"], idx)
		}
		delete(got, "_index")
		b, _ := json.Marshal(want)
		var wantMap map[string]any
		_ = json.Unmarshal(b, &wantMap)
		gb, _ := json.Marshal(got)
		wb, _ := json.Marshal(wantMap)
		if !bytes.Equal(gb, wb) {
			t.Errorf("document %s\n got %s\nwant %s", want.ID, gb, wb)
		}
		if rec.Header(topic.HeaderReceivedAt) != nil && got["received_at"] == nil {
			t.Errorf("document %s has no received_at", want.ID)
		}
	}
}

// TestRedelivery writes the same records again, in other batches and
// after new ones: no count changes.
func TestRedelivery(t *testing.T) {
	srv := searchtest.Start(t)
	cfg := srv.Config(t)
	cfg.Workers = 2 // batches spread over concurrent requests
	recs := searchtest.Generate(2, 900).Records()
	sink := searchtest.NewSink(t, cfg)
	ctx := timeoutCtx(t)
	write := func(batch []runtime.Record) {
		t.Helper()
		if err := sink.Write(ctx, batch); err != nil {
			t.Fatal(err)
		}
	}
	write(recs[:600])
	write(recs[300:])    // overlaps the first batch
	write(recs[:100])    // again
	write(recs[450:451]) // alone
	if got := searchtest.Total(t, cfg); got != len(recs) {
		t.Fatalf("after re-delivery %d documents, want %d", got, len(recs))
	}
	// A replay from a new sink (a rebuild) changes nothing either.
	searchtest.Index(t, cfg, recs)
	if got := searchtest.Total(t, cfg); got != len(recs) {
		t.Fatalf("after replay %d documents, want %d", got, len(recs))
	}
}

// TestPoison: records that can never be indexed come back in a
// PermanentError with their reasons, and the rest of the batch is indexed.
func TestPoison(t *testing.T) {
	srv := searchtest.Start(t)
	cfg := srv.Config(t)
	ctx := timeoutCtx(t)
	data := searchtest.Generate(3, 400)

	// An index created by hand with option as a number (an operator's
	// mistake, or an old mapping) rejects every November intention with a
	// word for an option: a per-document mapping error.
	nov := search.Names{Prefix: cfg.IndexPrefix}.Index(topic.KindIntentions, searchtest.DataTo)
	searchtest.CreateIndex(t, cfg, nov, `{"mappings":{"properties":{"option":{"type":"long"}}}}`)

	recs := data.Records()
	wantBad := map[string]string{}
	for _, it := range data.Intentions {
		if at := it.RecordedAt.AsTime(); at.Month() == searchtest.DataTo.Month() {
			wantBad[it.Id] = "option"
		}
	}
	// Records that decode but cannot become a document at all.
	noLocation := &canvassv1.Visit{Id: "0190a0a0-0000-7000-8000-00000000bad1", VisitedAt: timestamppb.Now()}
	noTime := &canvassv1.FollowupRequest{Id: "0190a0a0-0000-7000-8000-00000000bad2", Location: &canvassv1.Location{Latitude: 55.95, Longitude: -3.19}}
	badTime := &canvassv1.Intention{Id: "0190a0a0-0000-7000-8000-00000000bad3", Location: &canvassv1.Location{Latitude: 55.95, Longitude: -3.19},
		RecordedAt: &timestamppb.Timestamp{Seconds: 1 << 40}}
	for i, m := range []proto.Message{noLocation, noTime, badTime} {
		recs = append(recs[:i*50], append([]runtime.Record{searchtest.Record(m, time.Now(), 0)}, recs[i*50:]...)...)
		wantBad[searchtest.IDOf(m)] = "record"
	}
	if len(wantBad) < 10 {
		t.Fatalf("only %d poison records; the test would prove little", len(wantBad))
	}

	sink := searchtest.NewSink(t, cfg)
	err := sink.Write(ctx, recs)
	var perm *runtime.PermanentError
	if !errors.As(err, &perm) {
		t.Fatalf("Write = %v, want a *runtime.PermanentError", err)
	}
	gotBad := map[string]bool{}
	for _, f := range perm.Failures {
		id := searchtest.IDOf(f.Record.Message)
		gotBad[id] = true
		switch wantBad[id] {
		case "":
			t.Errorf("record %s failed but should be indexed: %v", id, f.Reason)
		case "option":
			if !strings.Contains(f.Reason.Error(), "option") || !strings.Contains(f.Reason.Error(), "status 400") {
				t.Errorf("record %s: reason %q does not name the status and the field", id, f.Reason)
			}
		}
	}
	for id := range wantBad {
		if !gotBad[id] {
			t.Errorf("record %s should have failed", id)
		}
	}
	if got, want := searchtest.Total(t, cfg), len(recs)-len(wantBad); got != want {
		t.Errorf("%d documents indexed, want %d", got, want)
	}
}

// fault is a proxy in front of the search server that damages _bulk
// exchanges: the real server cannot be made to answer 429 or 503.
type fault struct {
	name string
	// bulk is called for each _bulk request while the fault is on; it
	// answers by itself (returns true) or lets the request through.
	bulk func(w http.ResponseWriter) bool
	// item, if set, rewrites the first item of every real response while
	// the fault is on.
	item func(item map[string]any)
}

// proxy starts the fault proxy in front of target; the fault is on while
// the returned flag is true (initially).
func proxy(t testing.TB, target string, f fault) (string, *atomic.Bool) {
	t.Helper()
	u, _ := url.Parse(target)
	rp := httputil.NewSingleHostReverseProxy(u)
	var on atomic.Bool
	on.Store(true)
	rp.ModifyResponse = func(res *http.Response) error {
		if f.item == nil || !on.Load() || !strings.HasSuffix(res.Request.URL.Path, "/_bulk") || res.StatusCode != http.StatusOK {
			return nil
		}
		b, err := io.ReadAll(res.Body)
		if err != nil {
			return err
		}
		var body map[string]any
		if err := json.Unmarshal(b, &body); err != nil {
			return err
		}
		items := body["items"].([]any)
		for _, v := range items[0].(map[string]any) {
			f.item(v.(map[string]any))
		}
		body["errors"] = true
		b, _ = json.Marshal(body)
		res.Body = io.NopCloser(bytes.NewReader(b))
		res.ContentLength = int64(len(b))
		res.Header.Del("Content-Length")
		return nil
	}
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/_bulk") {
			if f.bulk != nil && on.Load() && f.bulk(w) {
				return
			}
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(s.Close)
	return s.URL, &on
}

func answer(status int, errType string) func(http.ResponseWriter) bool {
	return func(w http.ResponseWriter) bool {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Elastic-Product", "Elasticsearch")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, `{"error":{"type":"`+errType+`","reason":"injected"},"status":`+strconv.Itoa(status)+`}`)
		return true
	}
}

// TestTransient: 429 and 5xx, for the request or for one item, make Write
// return a plain error wrapping ErrNotIndexed (the runtime retries the
// batch), and the retry indexes everything once.
func TestTransient(t *testing.T) {
	srv := searchtest.Start(t)
	itemStatus := func(status int, typ string) func(map[string]any) {
		return func(item map[string]any) {
			item["status"] = status
			item["error"] = map[string]any{"type": typ, "reason": "injected"}
		}
	}
	tests := []fault{
		{name: "request 429", bulk: answer(http.StatusTooManyRequests, "es_rejected_execution_exception")},
		{name: "request 503 (the client retries, then gives up)", bulk: answer(http.StatusServiceUnavailable, "unavailable_shards_exception")},
		{name: "request 500", bulk: answer(http.StatusInternalServerError, "exception")},
		{name: "item 429", item: itemStatus(http.StatusTooManyRequests, "es_rejected_execution_exception")},
		{name: "item 503", item: itemStatus(http.StatusServiceUnavailable, "unavailable_shards_exception")},
		{name: "connection dropped", bulk: func(w http.ResponseWriter) bool {
			conn, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				conn.Close()
			}
			return true
		}},
	}
	recs := searchtest.Generate(4, 200).Records()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := srv.Config(t)
			cfg.Workers = 2 // the batch goes out as two concurrent requests
			addr, on := proxy(t, srv.URL(), tt)
			cfg.Addresses = []string{addr}
			sink := searchtest.NewSink(t, cfg)
			ctx := timeoutCtx(t)
			err := sink.Write(ctx, recs)
			var perm *runtime.PermanentError
			if !errors.Is(err, search.ErrNotIndexed) || errors.As(err, &perm) {
				t.Fatalf("Write during the fault = %v, want a transient error wrapping ErrNotIndexed", err)
			}
			on.Store(false)
			if err := sink.Write(ctx, recs); err != nil {
				t.Fatalf("retried Write = %v, want nil", err)
			}
			if got := searchtest.Total(t, cfg); got != len(recs) {
				t.Errorf("%d documents, want %d", got, len(recs))
			}
		})
	}
}

// TestServerDownThenUp runs the runtime consumer with the search sink while
// the search server is stopped and started again on the same data
// directory: Write fails transiently, nothing is committed, and once the
// server is back every record is indexed exactly once.
func TestServerDownThenUp(t *testing.T) {
	srv := searchtest.Start(t)
	cfg := srv.Config(t)
	sink := searchtest.NewSink(t, cfg)
	k := devtest.Kafka(t)
	sinktest.CreateTopics(t, k.Addr())
	data := searchtest.Generate(5, 1000)
	msgs := data.Messages()

	ccfg := sinktest.ConsumerConfig(k.Addr(), topic.GroupSearch)
	c := sinktest.Start(t, ccfg, sink)
	sinktest.ProduceRecords(t, k.Addr(), msgs[:400]...)
	sinktest.WaitCommitted(t, k.Addr(), ccfg.GroupID, time.Minute)

	srv.Stop(t)
	sinktest.ProduceRecords(t, k.Addr(), msgs[400:]...)
	sinktest.Eventually(t, time.Minute, func() error {
		if c.Consumer.Ready() == nil {
			return errors.New("consumer still ready while the search server is down")
		}
		return nil
	})
	srv.Restart(t)
	sinktest.WaitCommitted(t, k.Addr(), ccfg.GroupID, time.Minute)
	if got := searchtest.Total(t, cfg); got != len(msgs) {
		t.Fatalf("%d documents after the server came back, want %d", got, len(msgs))
	}
	for _, m := range msgs[390:420] {
		kind, _ := topic.KindOf(m)
		if searchtest.Get(t, cfg, kind, searchtest.IDOf(m)) == nil {
			t.Errorf("%s %s missing", kind, searchtest.IDOf(m))
		}
	}
}

// TestConformance runs the runtime's sink conformance suite.
func TestConformance(t *testing.T) {
	srv := searchtest.Start(t)
	sinktest.Run(t, sinktest.Harness{
		New: func(t testing.TB) (runtime.Sink, sinktest.Store) {
			cfg := srv.Config(t)
			return searchtest.NewSink(t, cfg), store{cfg}
		},
		// A record that decodes but has no location cannot be indexed.
		Poison: func(i int) proto.Message {
			return &canvassv1.Visit{Id: fmt.Sprintf("poison-%d", i), VisitedAt: timestamppb.Now()}
		},
	})
}

type store struct{ cfg search.Config }

func (s store) Has(t testing.TB, rec proto.Message) bool {
	k, _ := topic.KindOf(rec)
	return searchtest.Get(t, s.cfg, k, searchtest.IDOf(rec)) != nil
}

func (s store) Total(t testing.TB) int { return searchtest.Total(t, s.cfg) }

// TestItemErrorsNotAboutTheDocument: item errors that concern the cluster,
// not the document (a 403 after an API key lost a privilege, an
// index_not_found_exception where auto-creation is off, an
// illegal_argument_exception about a setting), make Write return a
// *runtime.FatalError and no PermanentError, so nothing is dead-lettered;
// item errors about the document stay permanent. Behind the consumer
// runtime, a stream of 403s leaves the dead-letter topic empty and commits
// nothing. The real server cannot be made to answer these items, so the
// fault proxy rewrites its answers.
func TestItemErrorsNotAboutTheDocument(t *testing.T) {
	srv := searchtest.Start(t)
	item := func(status int, typ, reason string) func(map[string]any) {
		return func(item map[string]any) {
			item["status"] = status
			item["error"] = map[string]any{"type": typ, "reason": reason}
		}
	}
	tests := []struct {
		name      string
		item      func(map[string]any)
		permanent bool
	}{
		{name: "403 security_exception", item: item(http.StatusForbidden, "security_exception",
			"action [indices:data/write/bulk[s]] is unauthorized for API key id [x]")},
		{name: "404 index_not_found_exception", item: item(http.StatusNotFound, "index_not_found_exception", "no such index [canvass-visits-2026.05]")},
		{name: "400 illegal_argument_exception about a setting", item: item(http.StatusBadRequest, "illegal_argument_exception",
			"no write index is defined for alias [canvass-visits]")},
		{name: "400 mapper_parsing_exception", permanent: true, item: item(http.StatusBadRequest, "mapper_parsing_exception", "failed to parse")},
		{name: "400 illegal_argument_exception about a field value", permanent: true, item: item(http.StatusBadRequest, "illegal_argument_exception",
			"field [option] of type [long] cannot parse value [Green]")},
	}
	recs := searchtest.Generate(6, 100).Records()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := srv.Config(t)
			addr, _ := proxy(t, srv.URL(), fault{name: tt.name, item: tt.item})
			cfg.Addresses = []string{addr}
			sink := searchtest.NewSink(t, cfg)
			err := sink.Write(timeoutCtx(t), recs)
			var perm *runtime.PermanentError
			var fatal *runtime.FatalError
			if tt.permanent {
				if !errors.As(err, &perm) || len(perm.Failures) != 1 || errors.As(err, &fatal) {
					t.Fatalf("Write = %v, want a *runtime.PermanentError for one record", err)
				}
				return
			}
			if !errors.As(err, &fatal) || !errors.Is(err, search.ErrNotIndexed) || errors.As(err, &perm) {
				t.Fatalf("Write = %v, want a *runtime.FatalError wrapping ErrNotIndexed", err)
			}
		})
	}

	t.Run("consumer dead-letters nothing", func(t *testing.T) {
		cfg := srv.Config(t)
		addr, on := proxy(t, srv.URL(), fault{item: tests[0].item})
		cfg.Addresses = []string{addr}
		var writes atomic.Int64
		inner := searchtest.NewSink(t, cfg)
		sink := runtime.SinkFunc(inner.Name(), func(ctx context.Context, batch []runtime.Record) error {
			writes.Add(1)
			return inner.Write(ctx, batch)
		})
		k := devtest.Kafka(t)
		sinktest.CreateTopics(t, k.Addr())
		msgs := searchtest.Generate(7, 300).Messages()
		sinktest.ProduceRecords(t, k.Addr(), msgs...)
		ccfg := sinktest.ConsumerConfig(k.Addr(), topic.GroupSearch)
		c := sinktest.Start(t, ccfg, sink)
		// The write met the 403 and the consumer turned fatal (not ready,
		// no more fetches): had the items been dead-lettered, the batch
		// would have been committed.
		sinktest.Eventually(t, time.Minute, func() error {
			if n := writes.Load(); n < 1 {
				return fmt.Errorf("%d writes so far", n)
			}
			if err := c.Consumer.Ready(); err == nil || !strings.Contains(err.Error(), "security_exception") {
				return fmt.Errorf("consumer readiness %v, want the fatal 403", err)
			}
			return nil
		})
		if dl := sinktest.ReadTopic(t, k.Addr(), topic.DeadLetter); len(dl) != 0 {
			t.Fatalf("%d records dead-lettered by an item-level 403, want none", len(dl))
		}
		for tp, off := range sinktest.Committed(t, k.Addr(), ccfg.GroupID) {
			if off > 0 {
				t.Fatalf("%s/%d committed up to %d during the 403s, want nothing", tp.Topic, tp.Partition, off)
			}
		}
		c.Stop(t)
		on.Store(false)
	})
}
