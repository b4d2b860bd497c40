package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
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
//
// An acknowledged batch is folded into a compact form (each record's id
// as 16 bytes, its locality's counters, the locality's last ack) and its
// request dropped, so an hour-long soak at 7,000 records/s (25 million
// records) keeps about 20 bytes a record rather than the request's 0.5 KB.
type ledger struct {
	mu      sync.Mutex
	batches []*ledgerBatch // not folded yet
	retry   []*ledgerBatch
	rng     *rand.Rand
	acks    int // acknowledged Submits
	fails   int // failed Submits

	folded int            // records folded into ids
	ids    [3][]uuid.UUID // by kindIndex
	tally  *tally

	// shift, when set, moves every new record north by shift(now)
	// degrees (the soak moves its area over time so that a short
	// timeline TTL expires the localities it left).
	shift func(time.Time) float64

	// keepLatency keeps each acknowledged Submit's latency for
	// takeLatencies (the soak).
	keepLatency bool
	latencies   []time.Duration
}

// kinds of the ledger's ids, in kindIndex order.
var ledgerKinds = [3]string{"visits", "intentions", "followups"}

// foldEvery is how many unfolded batches next lets pile up before it
// folds the acknowledged ones.
const foldEvery = 1000

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
	req     *canvassv1.SubmitRequest
	acked   bool
	ackedAt time.Time // zero when acked is set from outside submit
}

func newLedger(seed uint64) *ledger {
	return &ledger{rng: rand.New(rand.NewPCG(seed, seed)), tally: newTally()}
}

// tally holds, per locality, its last acknowledged record's time and the
// count of each ct field, compactly: one []int32 a locality, slot 0 the
// seconds since epoch of the last ack, slot 1+i the count of fields[i].
type tally struct {
	epoch  time.Time
	fields []string
	index  map[string]int
	locs   map[int64][]int32
}

func newTally() *tally {
	return &tally{epoch: time.Now(), index: map[string]int{}, locs: map[int64][]int32{}}
}

// add counts one record of loc acknowledged at at in fields.
func (c *tally) add(loc int64, at time.Time, fields ...string) {
	v := c.locs[loc]
	for _, f := range fields {
		i, ok := c.index[f]
		if !ok {
			i = len(c.fields)
			c.index[f] = i
			c.fields = append(c.fields, f)
		}
		for len(v) < i+2 {
			v = append(v, 0)
		}
		v[i+1]++
	}
	// whole seconds, rounded down: never later than the ack, so a
	// locality is judged possibly expired no later than it could be
	if s := int32(at.Sub(c.epoch) / time.Second); s > v[0] {
		v[0] = s
	}
	c.locs[loc] = v
}

// counters returns loc's expected ct fields and counts.
func (c *tally) counters(loc int64) map[string]int64 {
	m := map[string]int64{}
	for i, n := range c.locs[loc][1:] {
		if n > 0 {
			m[c.fields[i]] = int64(n)
		}
	}
	return m
}

// lastAck returns when loc's last record was acknowledged (rounded down
// to a second).
func (c *tally) lastAck(loc int64) time.Time {
	return c.epoch.Add(time.Duration(c.locs[loc][0]) * time.Second)
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
	if len(l.batches) >= foldEvery {
		l.fold(false)
	}
	now := time.Now()
	b := &ledgerBatch{req: loadgen.Generate(l.rng, "mixed", n, now)}
	if l.shift != nil {
		moveNorth(b.req, l.shift(now))
	}
	l.batches = append(l.batches, b)
	return b
}

// reserve makes room for n more records' ids at once, so that a long run
// does not hold a grown slice and its copy (twice the ids) at the end.
//
//lint:ignore U1000 used by the soak (soak_test.go, build tag soak)
func (l *ledger) reserve(n int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := range l.ids {
		l.ids[i] = slices.Grow(l.ids[i], n/len(l.ids)+1)
	}
}

// moveNorth adds deg to the latitude of every record of req.
func moveNorth(req *canvassv1.SubmitRequest, deg float64) {
	for _, v := range req.GetVisits() {
		v.Location.Latitude += deg
	}
	for _, r := range req.GetIntentions() {
		r.Location.Latitude += deg
	}
	for _, r := range req.GetFollowups() {
		r.Location.Latitude += deg
	}
}

// fold moves the acknowledged batches into the compact ledger and drops
// their requests; with all set every batch must be acknowledged. The
// caller holds l.mu.
func (l *ledger) fold(all bool) error {
	keep := l.batches[:0]
	for _, b := range l.batches {
		if !b.acked {
			if all {
				return errors.New("a batch was never acknowledged")
			}
			keep = append(keep, b)
			continue
		}
		at := b.ackedAt
		if at.IsZero() {
			at = time.Now() // acknowledged just now (offline phones)
		}
		if err := l.foldBatch(b.req, at); err != nil {
			return err
		}
		b.req = nil
	}
	clear(l.batches[len(keep):])
	l.batches = keep
	return nil
}

func (l *ledger) foldBatch(req *canvassv1.SubmitRequest, at time.Time) error {
	add := func(kind int, id string, loc *canvassv1.Location, fields ...string) error {
		u, err := uuid.Parse(id)
		if err != nil {
			return err
		}
		l.ids[kind] = append(l.ids[kind], u)
		l.folded++
		idx, err := locality.Of(loc.GetLatitude(), loc.GetLongitude())
		if err != nil {
			return err
		}
		l.tally.add(int64(idx), at, fields...)
		return nil
	}
	for _, v := range req.GetVisits() {
		if err := add(0, v.GetId(), v.GetLocation(), "visits", "visits:"+strings.ToLower(strings.TrimPrefix(v.GetOutcome().String(), "OUTCOME_"))); err != nil {
			return err
		}
	}
	for _, r := range req.GetIntentions() {
		if err := add(1, r.GetId(), r.GetLocation(), "intentions", "intentions:"+r.GetOption()); err != nil {
			return err
		}
	}
	for _, r := range req.GetFollowups() {
		if err := add(2, r.GetId(), r.GetLocation(), "followups", "followups:"+strings.ToLower(strings.TrimPrefix(r.GetMethod().String(), "METHOD_"))); err != nil {
			return err
		}
	}
	return nil
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
	if !b.acked {
		b.acked, b.ackedAt = true, time.Now()
	}
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
	ids   map[string][]uuid.UUID // kind → ids, sorted
	tally *tally                 // per locality: counters, last ack
	// ttl, when set, is the timeline TTL: a locality without an
	// acknowledged record for ttl may have expired from Redis, and its
	// counters are then either absent or right.
	ttl time.Duration
	// absent, with ttl set, is how many possibly expired localities the
	// last checkRedis found without counters (the rest were checked).
	absent *int
}

// want computes what the stores must hold from the acknowledged batches;
// every batch must be acknowledged by then (settle). It hands over the
// ledger's own compact state: call it once, at the end.
func (l *ledger) want(t testing.TB) expected {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.fold(true); err != nil {
		t.Fatal(err)
	}
	e := expected{ids: map[string][]uuid.UUID{}, tally: l.tally, absent: new(int)}
	for i, kind := range ledgerKinds {
		ids := l.ids[i]
		slices.SortFunc(ids, func(a, b uuid.UUID) int { return bytes.Compare(a[:], b[:]) })
		e.ids[kind] = slices.Compact(ids)
	}
	return e
}

// has reports whether id is one of kind's expected ids and its index.
func (e expected) has(kind string, id uuid.UUID) (int, bool) {
	return slices.BinarySearchFunc(e.ids[kind], id, func(a, b uuid.UUID) int { return bytes.Compare(a[:], b[:]) })
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
			if e.ttl > 0 {
				t.Logf("every one of %d acknowledged records is once in Postgres and search; of its %d localities %d were quiet for the timeline TTL %v, "+
					"%d had expired from Redis (no counters) and the counters of the other %d equal their acknowledged records",
					e.total(), len(e.tally.locs), e.expiredLocalities(), e.ttl, *e.absent, len(e.tally.locs)-*e.absent)
			} else {
				t.Logf("every one of %d acknowledged records is once in Postgres, Redis and search", e.total())
			}
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
// databases, and no other row. Rows are streamed and counted against the
// sorted ids, so it holds a byte per expected record, not a map.
func checkPostgres(ctx context.Context, s stores, e expected) []string {
	seen := map[string][]uint8{}
	for kind, ids := range e.ids {
		seen[kind] = make([]uint8, len(ids))
	}
	var out []string
	strangers := 0
	for _, db := range s.shardDBs {
		conn, err := pgx.Connect(ctx, s.pgURL(db))
		if err != nil {
			return []string{fmt.Sprintf("postgres %s: %v", db, err)}
		}
		for kind := range e.ids {
			rows, err := conn.Query(ctx, "SELECT id FROM "+kind)
			if err != nil {
				out = append(out, fmt.Sprintf("postgres %s %s: %v", db, kind, err))
				continue
			}
			for rows.Next() {
				var id uuid.UUID
				if err := rows.Scan(&id); err != nil {
					out = append(out, err.Error())
					break
				}
				if i, ok := e.has(kind, id); ok {
					seen[kind][i] = min(seen[kind][i]+1, 255)
				} else {
					strangers++
				}
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
		for i, n := range seen[kind] {
			switch {
			case n == 0:
				missing++
			case n > 1 && len(out) < 20:
				out = append(out, fmt.Sprintf("postgres: %s %s stored %d times", kind, ids[i], n))
			}
		}
	}
	if missing > 0 {
		out = append(out, fmt.Sprintf("postgres: %d acknowledged records missing", missing))
	}
	if strangers > 0 {
		out = append(out, fmt.Sprintf("postgres: %d rows never submitted", strangers))
	}
	return out
}

// checkRedis: each locality's counters equal the number of its distinct
// acknowledged records of each kind (and field). With e.ttl set, a
// locality quiet for longer than the TTL may have expired: its counters
// must then be absent or right.
func checkRedis(ctx context.Context, s stores, e expected) []string {
	c := redis.NewClient(&redis.Options{Addr: s.redisAddr})
	defer c.Close()
	locs := make([]int64, 0, len(e.tally.locs))
	for loc := range e.tally.locs {
		locs = append(locs, loc)
	}
	slices.Sort(locs)
	var out []string
	off := 0
	*e.absent = 0
	const chunk = 10_000
	for start := 0; start < len(locs); start += chunk {
		part := locs[start:min(start+chunk, len(locs))]
		pipe := c.Pipeline()
		cmds := make([]*redis.MapStringStringCmd, len(part))
		for i, loc := range part {
			cmds[i] = pipe.HGetAll(ctx, timeline.CountersKey("", loc))
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return []string{fmt.Sprintf("redis: %v", err)}
		}
		for i, loc := range part {
			got := cmds[i].Val()
			if len(got) == 0 && e.mayHaveExpired(loc) {
				*e.absent++
				continue
			}
			want := e.tally.counters(loc)
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
	}
	if off > 5 {
		out = append(out, fmt.Sprintf("redis: %d localities' counters differ in all", off))
	}
	return out
}

// mayHaveExpired reports whether loc's timeline keys may be gone: a TTL is
// set and loc's last acknowledged record is older than it (the keys expire
// a TTL after the pipeline wrote the last record, which is after its ack).
func (e expected) mayHaveExpired(loc int64) bool {
	return e.ttl > 0 && time.Since(e.tally.lastAck(loc)) >= e.ttl
}

// expiredLocalities counts the localities of e that may have expired.
func (e expected) expiredLocalities() int {
	n := 0
	for loc := range e.tally.locs {
		if e.mayHaveExpired(loc) {
			n++
		}
	}
	return n
}

// checkSearch: each alias holds as many documents as acknowledged records
// of its kind, and each of those ids once (asked in chunks of ids).
func checkSearch(ctx context.Context, s stores, e expected) []string {
	var out []string
	for kind, ids := range e.ids {
		all, err := searchCount(ctx, s.searchURL, "canvass-"+kind, `{"query":{"match_all":{}}}`)
		if err != nil {
			out = append(out, fmt.Sprintf("search %s: %v", kind, err))
			continue
		}
		ours := 0
		const chunk = 5000
		for start := 0; start < len(ids) && err == nil; start += chunk {
			var q strings.Builder
			q.WriteString(`{"query":{"ids":{"values":[`)
			for i, id := range ids[start:min(start+chunk, len(ids))] {
				if i > 0 {
					q.WriteByte(',')
				}
				fmt.Fprintf(&q, "%q", id.String())
			}
			q.WriteString(`]}}}`)
			var n int
			n, err = searchCount(ctx, s.searchURL, "canvass-"+kind, q.String())
			ours += n
		}
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
	n := l.folded
	for _, b := range l.batches {
		n += len(b.req.GetVisits()) + len(b.req.GetIntentions()) + len(b.req.GetFollowups())
	}
	return n
}

// TestLedgerFolds checks the compact ledger: acknowledged batches drop
// their requests as new ones are made, and what want returns still
// names every record once and counts each in its locality.
func TestLedgerFolds(t *testing.T) {
	l := newLedger(1)
	var made []*ledgerBatch
	reqs := map[*ledgerBatch]*canvassv1.SubmitRequest{}
	for i := range 2 * foldEvery {
		b := l.next(30)
		reqs[b] = b.req
		made = append(made, b)
		if i%2 == 0 {
			b.acked, b.ackedAt = true, time.Now()
		}
	}
	dropped := 0
	for _, b := range made {
		if b.req == nil {
			dropped++
		}
	}
	if dropped < foldEvery/2 {
		t.Errorf("%d of %d acknowledged batches dropped their request; want at least %d", dropped, foldEvery, foldEvery/2)
	}
	if got, want := l.records(), 2*foldEvery*30; got != want {
		t.Errorf("records() = %d, want %d", got, want)
	}
	l.mu.Lock()
	err := l.fold(true)
	l.mu.Unlock()
	if err == nil {
		t.Errorf("fold(true) with unacknowledged batches: no error")
	}
	for _, b := range made {
		b.acked = true
	}
	e := l.want(t)
	if e.total() != 2*foldEvery*30 {
		t.Errorf("want holds %d records, want %d", e.total(), 2*foldEvery*30)
	}
	counted := int64(0)
	for loc := range e.tally.locs {
		m := e.tally.counters(loc)
		counted += m["visits"] + m["intentions"] + m["followups"]
	}
	if counted != int64(e.total()) {
		t.Errorf("counters add up to %d, want %d", counted, e.total())
	}
	for _, req := range reqs {
		for _, v := range req.GetVisits() {
			if _, ok := e.has("visits", uuid.MustParse(v.GetId())); !ok {
				t.Fatalf("visit %s missing from want", v.GetId())
			}
		}
	}
}
