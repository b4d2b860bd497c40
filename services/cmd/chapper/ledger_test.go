package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/chapper/chapper/pipelines/timeline"
	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"github.com/chapper/chapper/proto/locality"
	"github.com/chapper/chapper/services/loadgen"
)

// ledger is the phones' side of a crash or fault test: every batch ever
// submitted and whether it was acknowledged. A batch whose Submit failed
// (the server was killed, the broker was down) is submitted again until it
// is acknowledged, as a phone does, so at the end every record is
// acknowledged, and the stores must hold exactly the ledger's records.
type ledger struct {
	mu      sync.Mutex
	batches []*ledgerBatch
	retry   []*ledgerBatch
	rng     *rand.Rand
	acks    int // acknowledged Submits
	fails   int // failed Submits

	// keepLatency keeps each acknowledged Submit's latency for
	// takeLatencies (the soak).
	keepLatency bool
	latencies   []time.Duration
}

// takeLatencies returns the latencies kept since the last call, sorted.
//
//lint:ignore U1000 used by the soak (soak_test.go, build tag soak)
func (l *ledger) takeLatencies() []time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := l.latencies
	l.latencies = nil
	slices.Sort(out)
	return out
}

type ledgerBatch struct {
	req   *canvassv1.SubmitRequest
	acked bool
}

func newLedger(seed uint64) *ledger {
	return &ledger{rng: rand.New(rand.NewPCG(seed, seed))}
}

// next returns a batch to submit: one waiting for a retry, else a new one
// of n mixed records.
func (l *ledger) next(n int) *ledgerBatch {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.retry) > 0 {
		b := l.retry[0]
		l.retry = l.retry[1:]
		return b
	}
	b := &ledgerBatch{req: loadgen.Generate(l.rng, "mixed", n, time.Now())}
	l.batches = append(l.batches, b)
	return b
}

// submit sends b once and records the outcome. A rejected record fails t:
// the generator makes only valid records.
func (l *ledger) submit(ctx context.Context, t testing.TB, c canvassv1.IngestServiceClient, b *ledgerBatch) bool {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	start := time.Now()
	resp, err := c.Submit(cctx, b.req)
	took := time.Since(start)
	l.mu.Lock()
	defer l.mu.Unlock()
	if err == nil {
		for _, r := range resp.GetResults() {
			if s := r.GetStatus(); s != canvassv1.Status_STATUS_ACCEPTED && s != canvassv1.Status_STATUS_DUPLICATE {
				t.Errorf("record %s: %v %s", r.GetId(), s, r.GetReason())
				err = fmt.Errorf("record %s not accepted", r.GetId())
			}
		}
	}
	if err != nil {
		l.fails++
		if !b.acked {
			l.retry = append(l.retry, b)
		}
		return false
	}
	l.acks++
	b.acked = true
	if l.keepLatency {
		l.latencies = append(l.latencies, took)
	}
	return true
}

// loadInterval paces each load client: one batch per interval at most,
// so a test's load stays within what the pipelines index on a busy
// 2-core machine (4 clients of 50 records: 800 records/s).
const loadInterval = 250 * time.Millisecond

// load submits batches of batchSize records from clients goroutines over
// their own connections, each at most one per loadInterval, until ctx is
// done.
func (l *ledger) load(ctx context.Context, t testing.TB, grpcAddr string, clients, batchSize int) {
	l.loadEvery(ctx, t, grpcAddr, clients, batchSize, loadInterval)
}

// loadEvery is load with each client sending at most one batch per
// interval.
func (l *ledger) loadEvery(ctx context.Context, t testing.TB, grpcAddr string, clients, batchSize int, interval time.Duration) {
	var wg sync.WaitGroup
	for range clients {
		conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		c := canvassv1.NewIngestServiceClient(conn)
		wg.Go(func() {
			defer conn.Close()
			tick := time.NewTicker(interval)
			defer tick.Stop()
			for ctx.Err() == nil {
				l.submit(ctx, t, c, l.next(batchSize))
				select {
				case <-ctx.Done():
				case <-tick.C:
				}
			}
		})
	}
	wg.Wait()
}

// settle submits every batch not yet acknowledged until each is, failing t
// after timeout.
func (l *ledger) settle(ctx context.Context, t testing.TB, grpcAddr string, timeout time.Duration) {
	t.Helper()
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := canvassv1.NewIngestServiceClient(conn)
	deadline := time.Now().Add(timeout)
	for {
		l.mu.Lock()
		pending := l.retry
		l.retry = nil
		l.mu.Unlock()
		if len(pending) == 0 {
			return
		}
		for _, b := range pending {
			if !l.submit(ctx, t, c, b) {
				time.Sleep(100 * time.Millisecond)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d batches still not acknowledged after %v", len(l.retry), timeout)
		}
	}
}

// stores are the addresses the verification reads.
type stores struct {
	pgURL     func(db string) string
	shardDBs  []string
	redisAddr string
	searchURL string
}

// expected is what the stores must hold: the ledger's records, each once.
type expected struct {
	ids      map[string]map[string]bool // kind → ids
	counters map[int64]map[string]int64 // locality → ct field → count
}

// want computes what the stores must hold from the acknowledged batches;
// every batch must be acknowledged by then (settle).
func (l *ledger) want(t testing.TB) expected {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	e := expected{ids: map[string]map[string]bool{"visits": {}, "intentions": {}, "followups": {}}, counters: map[int64]map[string]int64{}}
	count := func(loc *canvassv1.Location, fields ...string) {
		idx, err := locality.Of(loc.GetLatitude(), loc.GetLongitude())
		if err != nil {
			t.Fatal(err)
		}
		m := e.counters[int64(idx)]
		if m == nil {
			m = map[string]int64{}
			e.counters[int64(idx)] = m
		}
		for _, f := range fields {
			m[f]++
		}
	}
	for _, b := range l.batches {
		if !b.acked {
			t.Fatalf("a batch was never acknowledged")
		}
		for _, v := range b.req.GetVisits() {
			e.ids["visits"][v.GetId()] = true
			count(v.GetLocation(), "visits", "visits:"+strings.ToLower(strings.TrimPrefix(v.GetOutcome().String(), "OUTCOME_")))
		}
		for _, r := range b.req.GetIntentions() {
			e.ids["intentions"][r.GetId()] = true
			count(r.GetLocation(), "intentions", "intentions:"+r.GetOption())
		}
		for _, r := range b.req.GetFollowups() {
			e.ids["followups"][r.GetId()] = true
			count(r.GetLocation(), "followups", "followups:"+strings.ToLower(strings.TrimPrefix(r.GetMethod().String(), "METHOD_")))
		}
	}
	return e
}

// total returns the number of records e expects.
func (e expected) total() int {
	n := 0
	for _, ids := range e.ids {
		n += len(ids)
	}
	return n
}

// verify waits until the stores hold as many records as e (cheap counts,
// polled), then checks that each holds exactly e (every record once in
// Postgres, counted once in Redis, once in search), failing t with the
// differences after timeout.
func verify(t testing.TB, ctx context.Context, s stores, e expected, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var problems []string
	for {
		problems = checkTotals(ctx, s, e)
		if len(problems) == 0 {
			for _, check := range []func(context.Context, stores, expected) []string{checkPostgres, checkRedis, checkSearch} {
				problems = append(problems, check(ctx, s, e)...)
			}
		}
		if len(problems) == 0 {
			t.Logf("every one of %d acknowledged records is once in Postgres, Redis and search", e.total())
			return
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			if len(problems) > 20 {
				problems = append(problems[:20], fmt.Sprintf("... and %d more", len(problems)-20))
			}
			t.Fatalf("after %v the stores still differ from the %d acknowledged records:\n%s", timeout, e.total(), strings.Join(problems, "\n"))
		}
		time.Sleep(time.Second)
	}
}

// checkTotals compares the number of rows and documents of each kind with
// e, cheaply, while the pipelines catch up.
func checkTotals(ctx context.Context, s stores, e expected) []string {
	var out []string
	for kind, ids := range e.ids {
		rows := 0
		for _, db := range s.shardDBs {
			conn, err := pgx.Connect(ctx, s.pgURL(db))
			if err != nil {
				return []string{fmt.Sprintf("postgres %s: %v", db, err)}
			}
			var n int
			err = conn.QueryRow(ctx, "SELECT count(*) FROM "+kind).Scan(&n)
			conn.Close(ctx)
			if err != nil {
				return []string{fmt.Sprintf("postgres %s %s: %v", db, kind, err)}
			}
			rows += n
		}
		docs, err := searchCount(ctx, s.searchURL, "canvass-"+kind, `{"query":{"match_all":{}}}`)
		if err != nil {
			return []string{fmt.Sprintf("search %s: %v", kind, err)}
		}
		if rows != len(ids) || docs != len(ids) {
			out = append(out, fmt.Sprintf("%s: %d rows in postgres, %d documents in search; want %d", kind, rows, docs, len(ids)))
		}
	}
	return out
}

// checkPostgres: every acknowledged id in exactly one row over all shard
// databases, and no other row.
func checkPostgres(ctx context.Context, s stores, e expected) []string {
	seen := map[string]int{}
	var out []string
	for _, db := range s.shardDBs {
		conn, err := pgx.Connect(ctx, s.pgURL(db))
		if err != nil {
			return []string{fmt.Sprintf("postgres %s: %v", db, err)}
		}
		for kind := range e.ids {
			rows, err := conn.Query(ctx, "SELECT id::text FROM "+kind)
			if err != nil {
				out = append(out, fmt.Sprintf("postgres %s %s: %v", db, kind, err))
				continue
			}
			for rows.Next() {
				var id string
				if err := rows.Scan(&id); err != nil {
					out = append(out, err.Error())
					break
				}
				seen[kind+"/"+id]++
			}
			rows.Close()
		}
		conn.Close(ctx)
	}
	if len(out) > 0 {
		return out
	}
	missing := 0
	for kind, ids := range e.ids {
		for id := range ids {
			switch n := seen[kind+"/"+id]; n {
			case 1:
			case 0:
				missing++
			default:
				out = append(out, fmt.Sprintf("postgres: %s %s stored %d times", kind, id, n))
			}
			delete(seen, kind+"/"+id)
		}
	}
	if missing > 0 {
		out = append(out, fmt.Sprintf("postgres: %d acknowledged records missing", missing))
	}
	if len(seen) > 0 {
		out = append(out, fmt.Sprintf("postgres: %d rows never submitted", len(seen)))
	}
	return out
}

// checkRedis: each locality's counters equal the number of its distinct
// acknowledged records of each kind (and field).
func checkRedis(ctx context.Context, s stores, e expected) []string {
	c := redis.NewClient(&redis.Options{Addr: s.redisAddr})
	defer c.Close()
	locs := make([]int64, 0, len(e.counters))
	for loc := range e.counters {
		locs = append(locs, loc)
	}
	slices.Sort(locs)
	pipe := c.Pipeline()
	cmds := make([]*redis.MapStringStringCmd, len(locs))
	for i, loc := range locs {
		cmds[i] = pipe.HGetAll(ctx, timeline.CountersKey("", loc))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return []string{fmt.Sprintf("redis: %v", err)}
	}
	var out []string
	off := 0
	for i, loc := range locs {
		got := cmds[i].Val()
		want := e.counters[loc]
		bad := len(got) != len(want)
		for f, n := range want {
			if got[f] != fmt.Sprint(n) {
				bad = true
			}
		}
		if bad {
			off++
			if off <= 5 {
				out = append(out, fmt.Sprintf("redis: locality %d counters %v, want %v", loc, got, want))
			}
		}
	}
	if off > 5 {
		out = append(out, fmt.Sprintf("redis: %d localities' counters differ in all", off))
	}
	return out
}

// checkSearch: each alias holds as many documents as acknowledged records
// of its kind, and each of those ids once.
func checkSearch(ctx context.Context, s stores, e expected) []string {
	var out []string
	for kind, ids := range e.ids {
		all, err := searchCount(ctx, s.searchURL, "canvass-"+kind, `{"query":{"match_all":{}}}`)
		if err != nil {
			out = append(out, fmt.Sprintf("search %s: %v", kind, err))
			continue
		}
		list := make([]string, 0, len(ids))
		for id := range ids {
			list = append(list, fmt.Sprintf("%q", id))
		}
		sort.Strings(list)
		ours, err := searchCount(ctx, s.searchURL, "canvass-"+kind, `{"query":{"ids":{"values":[`+strings.Join(list, ",")+`]}}}`)
		if err != nil {
			out = append(out, fmt.Sprintf("search %s: %v", kind, err))
			continue
		}
		if all != len(ids) || ours != len(ids) {
			out = append(out, fmt.Sprintf("search: canvass-%s holds %d documents, %d of them acknowledged ids; want %d", kind, all, ours, len(ids)))
		}
	}
	return out
}

// searchCount runs a _count with body on index.
func searchCount(ctx context.Context, base, index, body string) (int, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+"/"+index+"/_count", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer res.Body.Close()
	var r struct {
		Count int `json:"count"`
	}
	if res.StatusCode == http.StatusNotFound {
		return 0, nil // no document indexed yet
	}
	if err := decodeJSON(res, &r); err != nil {
		return 0, err
	}
	return r.Count, nil
}

// clone deep-copies a request (a batch resubmitted by another goroutine
// must not share its messages with one being marshalled).
func clone(r *canvassv1.SubmitRequest) *canvassv1.SubmitRequest {
	return proto.Clone(r).(*canvassv1.SubmitRequest)
}

// decodeJSON decodes a JSON response, naming the status on failure.
func decodeJSON(res *http.Response, v any) error {
	b, err := io.ReadAll(res.Body)
	if err != nil {
		return err
	}
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", res.Status, b)
	}
	return json.Unmarshal(b, v)
}

// acked returns how many Submits were acknowledged so far.
func (l *ledger) acked() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.acks
}

// records returns how many records were generated so far.
func (l *ledger) records() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, b := range l.batches {
		n += len(b.req.GetVisits()) + len(b.req.GetIntentions()) + len(b.req.GetFollowups())
	}
	return n
}
