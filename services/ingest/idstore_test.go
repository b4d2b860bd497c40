package ingest

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"github.com/chapper/chapper/proto/topic"
	"github.com/chapper/chapper/services/auth"
	"github.com/chapper/chapper/services/devstack/devtest"
	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// withStore points ingest at the shared id store at addr under prefix.
func withStore(addr, prefix string) func(*Config) {
	return func(c *Config) { c.RedisAddrs, c.RedisPrefix = addr, prefix }
}

// storeSet puts value under id (its text) in the shared id store under
// prefix, as another instance's claim would, with an hour's expiry.
func storeSet(ctx context.Context, rc redis.UniversalClient, prefix, id, value string) error {
	key, field := IDStoreSlot(prefix, uuid.MustParse(id))
	if field == "" {
		return rc.Set(ctx, key, value, time.Hour).Err()
	}
	if err := rc.HSet(ctx, key, field, value).Err(); err != nil {
		return err
	}
	return rc.Expire(ctx, key, time.Hour).Err()
}

// storeHas says whether the shared id store under prefix holds id.
func storeHas(ctx context.Context, rc redis.UniversalClient, prefix, id string) (bool, error) {
	key, field := IDStoreSlot(prefix, uuid.MustParse(id))
	if field == "" {
		n, err := rc.Exists(ctx, key).Result()
		return n == 1, err
	}
	return rc.HExists(ctx, key, field).Result()
}

// storeDel drops id from the shared id store under prefix.
func storeDel(ctx context.Context, rc redis.UniversalClient, prefix, id string) {
	key, field := IDStoreSlot(prefix, uuid.MustParse(id))
	if field == "" {
		rc.Del(ctx, key)
		return
	}
	rc.HDel(ctx, key, field)
}

func submit(t *testing.T, ctx context.Context, r *running, req *canvassv1.SubmitRequest) []*canvassv1.RecordResult {
	t.Helper()
	resp, err := r.client.Submit(ctx, req)
	if err != nil {
		t.Fatalf("Submit: %v", err)
	}
	return resp.GetResults()
}

func wantStatus(t *testing.T, res *canvassv1.RecordResult, want canvassv1.Status, reason string) {
	t.Helper()
	if res.GetStatus() != want || !strings.Contains(res.GetReason(), reason) {
		t.Errorf("result %s = %v %q, want %v with a reason containing %q", res.GetId(), res.GetStatus(), res.GetReason(), want, reason)
	}
}

// TestIDStoreAcrossInstances submits a record to one instance and
// resubmits it to another, which has never seen it in its own memory:
// same content is DUPLICATE, other content CONFLICT naming the fields, and
// another kind with the id CONFLICT too; nothing is produced twice.
func TestIDStoreAcrossInstances(t *testing.T) {
	k := devtest.Kafka(t)
	rd := devtest.Redis(t)
	prefix := devtest.KeyPrefix(t)
	a := startIngest(t, k.Addr(), withStore(rd.Addr(), prefix))
	b := startIngest(t, k.Addr(), withStore(rd.Addr(), prefix))
	ctx := testCtx(t, 60*time.Second)

	v := validVisit(t)
	wantStatus(t, submit(t, ctx, a, &canvassv1.SubmitRequest{Visits: []*canvassv1.Visit{v}})[0], canvassv1.Status_STATUS_ACCEPTED, "")
	wantStatus(t, submit(t, ctx, b, &canvassv1.SubmitRequest{Visits: []*canvassv1.Visit{v}})[0], canvassv1.Status_STATUS_DUPLICATE, "")

	moved := proto.Clone(v).(*canvassv1.Visit)
	moved.Location.Latitude += 0.01
	moved.VisitedAt = timestamppb.New(v.VisitedAt.AsTime().Add(time.Second))
	res := submit(t, ctx, b, &canvassv1.SubmitRequest{Visits: []*canvassv1.Visit{moved}})[0]
	wantStatus(t, res, canvassv1.Status_STATUS_CONFLICT, "differing fields: location, visited_at")
	if !slices.Equal(res.GetConflictingFields(), []string{"location", "visited_at"}) {
		t.Errorf("conflicting_fields = %v, want [location visited_at]", res.GetConflictingFields())
	}
	// The same process that accepted it answers alike from its memory.
	res = submit(t, ctx, a, &canvassv1.SubmitRequest{Visits: []*canvassv1.Visit{moved}})[0]
	if !slices.Equal(res.GetConflictingFields(), []string{"location", "visited_at"}) {
		t.Errorf("conflict from memory: %v", res)
	}

	in := validIntention(t)
	in.Id = v.Id
	wantStatus(t, submit(t, ctx, b, &canvassv1.SubmitRequest{Intentions: []*canvassv1.Intention{in}})[0], canvassv1.Status_STATUS_CONFLICT, "accepted as a visit, not an intention")

	if n := len(readTopic(t, k.Addr(), topic.Visits)); n != 1 {
		t.Errorf("%s holds %d records, want 1", topic.Visits, n)
	}
	if n := len(readTopic(t, k.Addr(), topic.Intentions)); n != 0 {
		t.Errorf("%s holds %d records, want 0", topic.Intentions, n)
	}
	// A restarted instance (fresh memory) still knows.
	c := startIngest(t, k.Addr(), withStore(rd.Addr(), prefix))
	wantStatus(t, submit(t, ctx, c, &canvassv1.SubmitRequest{Visits: []*canvassv1.Visit{v}})[0], canvassv1.Status_STATUS_DUPLICATE, "")
}

// TestIDStoreRace submits the same records to two instances at the same
// time, as two devices syncing one queue would: each id is ACCEPTED
// exactly once and is on Kafka exactly once.
func TestIDStoreRace(t *testing.T) {
	k := devtest.Kafka(t)
	rd := devtest.Redis(t)
	prefix := devtest.KeyPrefix(t)
	a := startIngest(t, k.Addr(), withStore(rd.Addr(), prefix))
	b := startIngest(t, k.Addr(), withStore(rd.Addr(), prefix))
	ctx := testCtx(t, 60*time.Second)

	const batches, size = 20, 10
	accepted := map[string]int{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range batches {
		req := &canvassv1.SubmitRequest{}
		for range size {
			req.Visits = append(req.Visits, validVisit(t))
		}
		for _, r := range []*running{a, b} {
			wg.Go(func() {
				resp, err := r.client.Submit(ctx, proto.Clone(req).(*canvassv1.SubmitRequest))
				if err != nil {
					t.Errorf("Submit: %v", err)
					return
				}
				mu.Lock()
				defer mu.Unlock()
				for _, res := range resp.GetResults() {
					switch res.GetStatus() {
					case canvassv1.Status_STATUS_ACCEPTED:
						accepted[res.GetId()]++
					case canvassv1.Status_STATUS_DUPLICATE:
						accepted[res.GetId()] += 0
					default:
						t.Errorf("result %v", res)
					}
				}
			})
		}
	}
	wg.Wait()
	if len(accepted) != batches*size {
		t.Fatalf("%d ids answered, want %d", len(accepted), batches*size)
	}
	for id, n := range accepted {
		if n != 1 {
			t.Errorf("id %s ACCEPTED %d times, want exactly once", id, n)
		}
	}
	if n := len(readTopic(t, k.Addr(), topic.Visits)); n != batches*size {
		t.Errorf("%s holds %d records, want %d", topic.Visits, n, batches*size)
	}
}

// TestIDStoreDown stops the store's redis-server: Submit answers
// UNAVAILABLE and produces nothing rather than guess; once it is back,
// the record is accepted.
func TestIDStoreDown(t *testing.T) {
	k := devtest.Kafka(t)
	rd := devtest.NewRedis(t)
	r := startIngest(t, k.Addr(), withStore(rd.Addr(), "down:"))
	ctx := testCtx(t, 60*time.Second)

	v := validVisit(t)
	wantStatus(t, submit(t, ctx, r, &canvassv1.SubmitRequest{Visits: []*canvassv1.Visit{v}})[0], canvassv1.Status_STATUS_ACCEPTED, "")
	if err := rd.Stop(); err != nil {
		t.Fatal(err)
	}
	w := validVisit(t)
	_, err := r.client.Submit(ctx, &canvassv1.SubmitRequest{Visits: []*canvassv1.Visit{w}})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "id store") {
		t.Fatalf("Submit with the id store down = %v, want UNAVAILABLE naming the id store", err)
	}
	if n := len(readTopic(t, k.Addr(), topic.Visits)); n != 1 {
		t.Errorf("%s holds %d records, want 1 (nothing produced while the store was down)", topic.Visits, n)
	}
	if err := rd.Start(ctx); err != nil {
		t.Fatal(err)
	}
	for {
		resp, err := r.client.Submit(ctx, &canvassv1.SubmitRequest{Visits: []*canvassv1.Visit{w}})
		if err == nil {
			wantStatus(t, resp.GetResults()[0], canvassv1.Status_STATUS_ACCEPTED, "")
			break
		}
		if status.Code(err) != codes.Unavailable || ctx.Err() != nil {
			t.Fatalf("Submit after the store came back: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestIDStoreInFlight covers ids another instance holds: the claim of a
// produce that failed is released (the retry is accepted), a Submit waits
// for an id in flight elsewhere and takes it over once released, and an id
// whose claim never ends gets UNAVAILABLE.
func TestIDStoreInFlight(t *testing.T) {
	k := devtest.Kafka(t)
	rd := devtest.Redis(t)
	prefix := devtest.KeyPrefix(t)
	rc := redis.NewClient(&redis.Options{Addr: rd.Addr()})
	t.Cleanup(func() { _ = rc.Close() })
	ctx := testCtx(t, 90*time.Second)

	t.Run("failed produce is released", func(t *testing.T) {
		k2 := devtest.Kafka(t)
		r := startIngest(t, k2.Addr(), withStore(rd.Addr(), prefix))
		v := validVisit(t)
		_ = k2.Close()
		if _, err := r.client.Submit(ctx, &canvassv1.SubmitRequest{Visits: []*canvassv1.Visit{v}}); status.Code(err) != codes.Unavailable {
			t.Fatalf("Submit with kafka down = %v, want UNAVAILABLE", err)
		}
		if ok, err := storeHas(ctx, rc, prefix, v.Id); err != nil || ok {
			t.Errorf("claim of %s still in the store after its produce failed (held %v, %v)", v.Id, ok, err)
		}
	})

	r := startIngest(t, k.Addr(), withStore(rd.Addr(), prefix))
	t.Run("waits, then takes over a released claim", func(t *testing.T) {
		v := validVisit(t)
		if err := storeSet(ctx, rc, prefix, v.Id, claimValue("other", time.Now(), "x")); err != nil {
			t.Fatal(err)
		}
		go func() {
			time.Sleep(300 * time.Millisecond)
			storeDel(context.Background(), rc, prefix, v.Id)
		}()
		start := time.Now()
		wantStatus(t, submit(t, ctx, r, &canvassv1.SubmitRequest{Visits: []*canvassv1.Visit{v}})[0], canvassv1.Status_STATUS_ACCEPTED, "")
		if d := time.Since(start); d < 250*time.Millisecond {
			t.Errorf("Submit answered after %s, before the other claim was released", d)
		}
	})
	t.Run("claim that never ends", func(t *testing.T) {
		v := validVisit(t)
		if err := storeSet(ctx, rc, prefix, v.Id, claimValue("other", time.Now(), "x")); err != nil {
			t.Fatal(err)
		}
		_, err := r.client.Submit(ctx, &canvassv1.SubmitRequest{Visits: []*canvassv1.Visit{v}})
		if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "still producing") {
			t.Errorf("Submit of an id in flight elsewhere = %v, want UNAVAILABLE", err)
		}
	})
}

// TestCorrections checks replaces_id: a correction of one's own record of
// the same kind is accepted (the replaced record may have been accepted by
// another instance, or sit in the same batch, or be unknown); another kind,
// another canvasser (unless operator), the record's own id or a malformed
// id are REJECTED.
func TestCorrections(t *testing.T) {
	k := devtest.Kafka(t)
	rd := devtest.Redis(t)
	prefix := devtest.KeyPrefix(t)
	opts, is := testAuth(t)
	a := startIngestWith(t, k.Addr(), opts, withStore(rd.Addr(), prefix))
	b := startIngestWith(t, k.Addr(), opts, withStore(rd.Addr(), prefix))
	ctx := testCtx(t, 60*time.Second)
	c1 := withToken(t, ctx, is, "c1", auth.RoleCanvasser, nil)
	c2 := withToken(t, ctx, is, "c2", auth.RoleCanvasser, nil)
	op := withToken(t, ctx, is, "op", auth.RoleOperator, nil)

	orig := validVisit(t)
	orig.CanvasserId = ""
	wantStatus(t, submit(t, c1, a, &canvassv1.SubmitRequest{Visits: []*canvassv1.Visit{orig}})[0], canvassv1.Status_STATUS_ACCEPTED, "")
	fix := func(replaces string) *canvassv1.Visit {
		v := validVisit(t)
		v.CanvasserId, v.ReplacesId, v.Outcome = "", replaces, canvassv1.Outcome_OUTCOME_REFUSED
		return v
	}
	wrongKind := validIntention(t)
	wrongKind.CanvasserId, wrongKind.ReplacesId = "", orig.Id
	self := fix("")
	self.ReplacesId = self.Id
	inBatch := validVisit(t)
	inBatch.CanvasserId = ""

	tests := []struct {
		name   string
		ctx    context.Context
		req    *canvassv1.SubmitRequest
		want   canvassv1.Status
		reason string
	}{
		{"own record, other instance", c1, &canvassv1.SubmitRequest{Visits: []*canvassv1.Visit{fix(strings.ToUpper(orig.Id))}}, canvassv1.Status_STATUS_ACCEPTED, ""},
		{"other kind", c1, &canvassv1.SubmitRequest{Intentions: []*canvassv1.Intention{wrongKind}}, canvassv1.Status_STATUS_REJECTED, "intentions[0].replaces_id: names a visit; an intention can only replace a record of its own kind"},
		{"other canvasser", c2, &canvassv1.SubmitRequest{Visits: []*canvassv1.Visit{fix(orig.Id)}}, canvassv1.Status_STATUS_REJECTED, "visits[0].replaces_id: names a record of another canvasser"},
		{"operator", op, &canvassv1.SubmitRequest{Visits: []*canvassv1.Visit{fix(orig.Id)}}, canvassv1.Status_STATUS_ACCEPTED, ""},
		{"own id", c1, &canvassv1.SubmitRequest{Visits: []*canvassv1.Visit{self}}, canvassv1.Status_STATUS_REJECTED, "visits[0].replaces_id: must not be the record's own id"},
		{"malformed", c1, &canvassv1.SubmitRequest{Visits: []*canvassv1.Visit{fix("v1")}}, canvassv1.Status_STATUS_REJECTED, "visits[0].replaces_id: must be a UUID"},
		{"unknown record", c1, &canvassv1.SubmitRequest{Visits: []*canvassv1.Visit{fix(uuid.NewString())}}, canvassv1.Status_STATUS_ACCEPTED, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			wantStatus(t, submit(t, tc.ctx, b, tc.req)[0], tc.want, tc.reason)
		})
	}
	t.Run("same batch", func(t *testing.T) {
		res := submit(t, c1, b, &canvassv1.SubmitRequest{Visits: []*canvassv1.Visit{inBatch, fix(inBatch.Id)}})
		wantStatus(t, res[0], canvassv1.Status_STATUS_ACCEPTED, "")
		wantStatus(t, res[1], canvassv1.Status_STATUS_ACCEPTED, "")
		res = submit(t, c2, b, &canvassv1.SubmitRequest{Visits: []*canvassv1.Visit{fix(inBatch.Id)}})
		wantStatus(t, res[0], canvassv1.Status_STATUS_REJECTED, "another canvasser")
	})
	// The accepted correction is on Kafka with its replaces_id, canonical.
	found := false
	for _, m := range readTopic(t, k.Addr(), topic.Visits) {
		var v canvassv1.Visit
		_ = proto.Unmarshal(m.Value, &v)
		found = found || v.GetReplacesId() == orig.Id && v.GetCanvasserId() == "c1"
	}
	if !found {
		t.Errorf("no correction of %s by c1 on %s", orig.Id, topic.Visits)
	}
}

// retryDelay returns the RetryInfo delay of a status error.
func retryDelay(err error) time.Duration {
	for _, d := range status.Convert(err).Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			return ri.GetRetryDelay().AsDuration()
		}
	}
	return 0
}

// TestLimits checks the per-canvasser rate limit (a canvasser over it is
// refused with RetryInfo, another is not) and the global in-flight limit
// (a second Submit while one is in progress is refused at once).
func TestLimits(t *testing.T) {
	k := devtest.Kafka(t)
	rd := devtest.Redis(t)
	prefix := devtest.KeyPrefix(t)
	opts, is := testAuth(t)
	r := startIngestWith(t, k.Addr(), opts, withStore(rd.Addr(), prefix), func(c *Config) {
		c.BatchLimit, c.RateBurst, c.RatePerCanvasser, c.MaxInFlight = 10, 10, 1, 1
	})
	ctx := testCtx(t, 60*time.Second)
	c1 := withToken(t, ctx, is, "c1", auth.RoleCanvasser, nil)
	c2 := withToken(t, ctx, is, "c2", auth.RoleCanvasser, nil)
	batch := func(n int) *canvassv1.SubmitRequest {
		req := &canvassv1.SubmitRequest{}
		for range n {
			v := validVisit(t)
			v.CanvasserId = ""
			req.Visits = append(req.Visits, v)
		}
		return req
	}
	submit(t, c1, r, batch(10))
	_, err := r.client.Submit(c1, batch(2))
	if status.Code(err) != codes.ResourceExhausted || retryDelay(err) < time.Second {
		t.Fatalf("Submit over the rate = %v (retry %s), want RESOURCE_EXHAUSTED with RetryInfo >= 1s", err, retryDelay(err))
	}
	submit(t, c2, r, batch(10))

	// Hold the one in-flight slot: a Submit waiting for an id another
	// instance holds.
	rc := redis.NewClient(&redis.Options{Addr: rd.Addr()})
	defer rc.Close()
	held := batch(1)
	if err := storeSet(ctx, rc, prefix, held.Visits[0].Id, claimValue("other", time.Now(), "x")); err != nil {
		t.Fatal(err)
	}
	c3 := withToken(t, ctx, is, "c3", auth.RoleCanvasser, nil)
	done := make(chan error, 1)
	go func() {
		_, err := r.client.Submit(c3, held)
		done <- err
	}()
	for r.svc.limits.inFlight.Load() == 0 {
		select {
		case err := <-done:
			t.Fatalf("holding Submit returned early: %v", err)
		case <-ctx.Done():
			t.Fatal("holding Submit never started")
		case <-time.After(5 * time.Millisecond):
		}
	}
	c4 := withToken(t, ctx, is, "c4", auth.RoleCanvasser, nil)
	_, err = r.client.Submit(c4, batch(1))
	if status.Code(err) != codes.ResourceExhausted || retryDelay(err) <= 0 {
		t.Errorf("Submit over the in-flight limit = %v, want RESOURCE_EXHAUSTED with RetryInfo", err)
	}
	storeDel(ctx, rc, prefix, held.Visits[0].Id)
	if err := <-done; err != nil {
		t.Errorf("holding Submit: %v", err)
	}
}

// TestIDStoreCluster runs the shared id store on a real Redis Cluster
// (a batch's keys spread over the nodes): DUPLICATE and CONFLICT across
// two instances.
func TestIDStoreCluster(t *testing.T) {
	k := devtest.Kafka(t)
	addrs := strings.Join(devtest.RedisCluster(t), ",")
	a := startIngest(t, k.Addr(), withStore(addrs, "c:"))
	b := startIngest(t, k.Addr(), withStore(addrs, "c:"))
	ctx := testCtx(t, 60*time.Second)
	req := &canvassv1.SubmitRequest{}
	for range 20 {
		req.Visits = append(req.Visits, validVisit(t))
	}
	for _, res := range submit(t, ctx, a, req) {
		wantStatus(t, res, canvassv1.Status_STATUS_ACCEPTED, "")
	}
	for _, res := range submit(t, ctx, b, req) {
		wantStatus(t, res, canvassv1.Status_STATUS_DUPLICATE, "")
	}
	moved := proto.Clone(req.Visits[3]).(*canvassv1.Visit)
	moved.Outcome = canvassv1.Outcome_OUTCOME_MOVED
	res := submit(t, ctx, b, &canvassv1.SubmitRequest{Visits: []*canvassv1.Visit{moved}})[0]
	if !slices.Equal(res.GetConflictingFields(), []string{"outcome"}) {
		t.Errorf("conflict on the cluster: %v", res)
	}
	if n := len(readTopic(t, k.Addr(), topic.Visits)); n != 20 {
		t.Errorf("%s holds %d records, want 20", topic.Visits, n)
	}
}

// TestIDStoreBatchSteps drives the id store's steps directly on a
// standalone Redis and on a Redis Cluster (a pipeline per node): a claim
// takes new ids, answers in flight for another owner's claim and claimed
// again for the owner's own (a retried call), release drops only the
// owner's claims, ack makes them acked with their stamps and the id TTL.
// A flushed script cache (a restarted redis-server) is loaded again. Each
// runs with random ids (a key each), time-ordered ids of one minute (one
// hash) and a mix over several hashes.
func TestIDStoreBatchSteps(t *testing.T) {
	layouts := []struct {
		name string
		ids  func() []uuid.UUID
	}{
		{"random", func() []uuid.UUID { return []uuid.UUID{uuid.New(), uuid.New(), uuid.New()} }}, // a key each
		{"one minute", func() []uuid.UUID { return []uuid.UUID{v7At(t, time.Now()), v7At(t, time.Now()), v7At(t, time.Now())} }},
		{"mixed", func() []uuid.UUID {
			return []uuid.UUID{v7At(t, time.Now()), uuid.New(), v7At(t, time.Now().Add(-time.Hour))}
		}},
	}
	for _, tc := range []struct {
		name       string
		addrs      func(testing.TB) []string
		standalone bool
	}{
		{name: "standalone", addrs: func(t testing.TB) []string { return []string{devtest.Redis(t).Addr()} }, standalone: true},
		{name: "cluster", addrs: devtest.RedisCluster},
	} {
		client := redis.NewUniversalClient(&redis.UniversalOptions{Addrs: tc.addrs(t)})
		t.Cleanup(func() { _ = client.Close() })
		for _, layout := range layouts {
			t.Run(tc.name+"/"+layout.name, func(t *testing.T) {
				s := newIDStore(client, "steps:"+newID(t)+":", time.Hour, time.Minute)
				ctx := testCtx(t, 30*time.Second)
				if tc.standalone {
					if err := client.ScriptFlush(ctx).Err(); err != nil {
						t.Fatal(err)
					}
				}
				ids := layout.ids()
				stamps := []string{"s0", "s1", "s2"}
				states := func(as []idAnswer) []claimState {
					out := make([]claimState, len(as))
					for k, a := range as {
						out[k] = a.state
					}
					return out
				}
				mustClaim := func(owner string, ids []uuid.UUID, stamps []string, want ...claimState) []idAnswer {
					t.Helper()
					as, err := s.claim(ctx, owner, ids, stamps)
					if err != nil {
						t.Fatalf("claim as %s: %v", owner, err)
					}
					if got := states(as); !slices.Equal(got, want) {
						t.Fatalf("claim as %s: states %v, want %v", owner, got, want)
					}
					return as
				}
				mustClaim("a", ids[:2], stamps[:2], claimed, claimed)
				mustClaim("a", ids[:2], stamps[:2], claimed, claimed) // own claims: a retried call
				as := mustClaim("b", ids, []string{"x0", "x1", "x2"}, inFlight, inFlight, claimed)
				if as[0].stamp != "s0" {
					t.Errorf("an in-flight claim's stamp = %q, want s0", as[0].stamp)
				}
				// b may not release a's claim; a releases ids[1] and acks ids[0].
				if err := s.release(ctx, "b", ids[:1]); err != nil {
					t.Fatal(err)
				}
				if err := s.release(ctx, "a", ids[1:2]); err != nil {
					t.Fatal(err)
				}
				if err := s.ack(ctx, ids[:1], stamps[:1]); err != nil {
					t.Fatal(err)
				}
				got, err := s.lookup(ctx, ids)
				if err != nil {
					t.Fatal(err)
				}
				if st := states(got); !slices.Equal(st, []claimState{acked, unknown, inFlight}) || got[0].stamp != "s0" || got[2].stamp != "x2" {
					t.Errorf("lookup after release and ack: %+v", got)
				}
				as = mustClaim("c", ids, []string{"y0", "y1", "y2"}, acked, claimed, inFlight)
				if as[0].stamp != "s0" {
					t.Errorf("an acked id's stamp = %q, want s0", as[0].stamp)
				}
				// b's mark acknowledges every id b claimed (ids[2]), with b's stamp.
				if err := s.markDone(ctx, "b"); err != nil {
					t.Fatal(err)
				}
				as = mustClaim("d", ids[2:], []string{"z2"}, acked)
				if as[0].stamp != "x2" {
					t.Errorf("a marked claim's stamp = %q, want x2", as[0].stamp)
				}
				if got, err = s.lookup(ctx, ids[2:]); err != nil || got[0].state != acked {
					t.Errorf("lookup of a marked claim: %+v, %v", got, err)
				}
				for _, id := range ids {
					ttl, err := client.PTTL(ctx, s.slot(id)).Result()
					if err != nil || ttl < time.Hour-time.Minute || ttl > time.Hour+time.Minute {
						t.Errorf("%s: TTL = %v (%v), want the id TTL", id, ttl, err)
					}
				}
				// A claim older than the claim TTL whose owner left no mark is
				// stale: the next claim takes it over, once.
				old := layout.ids()[0]
				if err := storeSet(ctx, client, s.prefix, old.String(), claimValue("dead", time.Now().Add(-2*time.Minute), "o")); err != nil {
					t.Fatal(err)
				}
				if got, err = s.lookup(ctx, []uuid.UUID{old}); err != nil || got[0].state != unknown {
					t.Errorf("lookup of a stale claim: %+v, %v, want unknown", got, err)
				}
				mustClaim("e", []uuid.UUID{old}, []string{"e0"}, claimed)
				mustClaim("f", []uuid.UUID{old}, []string{"f0"}, inFlight)
			})
		}
	}
}

// TestIDStoreSlot checks where ids are kept: time-ordered ids (v7, v1)
// of one minute share a hash named by that minute, whichever instance or
// moment computes it, their fields the ids' 16 bytes; other ids have a
// key of their own named by their text.
func TestIDStoreSlot(t *testing.T) {
	s := &idStore{prefix: "p:"}
	at := time.Date(2026, 12, 2, 18, 30, 0, 0, time.UTC)
	minute := strconv.FormatInt(at.UnixMilli()/60000, 36)
	for range 100 {
		a, b := v7At(t, at), v7At(t, at.Add(59*time.Second+999*time.Millisecond))
		if got, want := s.slot(a), "p:t:{"+minute+"}"; got != want || s.slot(b) != want {
			t.Fatalf("buckets of %s, %s = %q, %q, want %q", a, b, got, s.slot(b), want)
		}
		if next := s.slot(v7At(t, at.Add(time.Minute))); next == s.slot(a) {
			t.Fatalf("the next minute's id shares the hash %q", next)
		}
		id := uuid.New()
		if got, want := s.slot(id), "p:k:{"+id.String()+"}"; got != want {
			t.Fatalf("bucket of a random id = %q, want %q", got, want)
		}
		if key, field := IDStoreSlot("p:", id); key != s.slot(id) || field != "" {
			t.Fatalf("IDStoreSlot of a random id = %q, %q, want its own key", key, field)
		}
		if key, field := IDStoreSlot("p:", a); key != s.slot(a) || field != string(a[:]) {
			t.Fatalf("IDStoreSlot of a v7 id = %q, %q, want its hash and bytes", key, field)
		}
	}
	v1, err := uuid.NewUUID()
	if err != nil {
		t.Fatal(err)
	}
	sec, _ := v1.Time().UnixTime()
	if got, want := s.slot(v1), "p:t:{"+strconv.FormatInt(sec/60, 36)+"}"; got != want {
		t.Errorf("bucket of a v1 id = %q, want %q", got, want)
	}
	if got := floorDiv(-1, 60000); got != -1 {
		t.Errorf("floorDiv(-1, 60000) = %d, want -1 (times before 1970)", got)
	}
}

// TestIDStoreExpiry checks the hashes' expiry on a real Redis: an id is
// kept at least the id TTL after its last write whatever its own time (an
// id of a phone whose clock is a year behind is not dropped at once), and
// a write never shortens a hash's expiry.
func TestIDStoreExpiry(t *testing.T) {
	client := redis.NewClient(&redis.Options{Addr: devtest.Redis(t).Addr()})
	t.Cleanup(func() { _ = client.Close() })
	ctx := testCtx(t, 30*time.Second)
	s := newIDStore(client, "expiry:"+newID(t)+":", time.Hour, time.Minute)
	yearAgo := time.Now().AddDate(-1, 0, 0)
	old, other := v7At(t, yearAgo), v7At(t, yearAgo) // one hash
	if _, err := s.claim(ctx, "a", []uuid.UUID{old}, []string{"s"}); err != nil {
		t.Fatal(err)
	}
	if ttl, err := client.PTTL(ctx, s.slot(old)).Result(); err != nil || ttl < 59*time.Minute || ttl > 61*time.Minute {
		t.Errorf("a year-old id's hash expires in %v (%v), want the id TTL", ttl, err)
	}
	// An instance whose clock is a day ahead writes first; then one on
	// time writes to the same hash: the later expiry stays.
	ahead := newIDStore(client, s.prefix, time.Hour, time.Minute)
	ahead.now = func() time.Time { return time.Now().Add(24 * time.Hour) }
	if err := ahead.ack(ctx, []uuid.UUID{old}, []string{"s"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.claim(ctx, "b", []uuid.UUID{other}, []string{"t"}); err != nil {
		t.Fatal(err)
	}
	if ttl, err := client.PTTL(ctx, s.slot(old)).Result(); err != nil || ttl < 24*time.Hour {
		t.Errorf("hash expires in %v (%v) after a write on time, want the day-ahead expiry kept", ttl, err)
	}
}

// v7At returns a version 7 id made at time at: its first 48 bits are at
// in Unix milliseconds, the rest random.
func v7At(t testing.TB, at time.Time) uuid.UUID {
	t.Helper()
	id, err := uuid.NewV7()
	if err != nil {
		t.Fatal(err)
	}
	ms := uint64(at.UnixMilli())
	for i := range 6 {
		id[i] = byte(ms >> (40 - 8*i))
	}
	return id
}

// TestIDStoreAckOnShutdown checks that the shared store's ack, which
// Submit no longer waits for, has landed when the service stopped: Run
// returns only after the acks in progress, so an accepted id is never left
// as a claim that would expire.
func TestIDStoreAckOnShutdown(t *testing.T) {
	k := devtest.Kafka(t)
	rd := devtest.Redis(t)
	cfg := testConfig(k.Addr())
	withStore(rd.Addr(), "shutdown:"+newID(t)+":")(&cfg)
	svc, stop := runService(t, cfg)
	if err := svc.WaitReady(testCtx(t, 30*time.Second)); err != nil {
		t.Fatal(err)
	}
	req := &canvassv1.SubmitRequest{}
	for range 50 {
		req.Visits = append(req.Visits, validVisit(t))
	}
	resp, err := svc.Submit(testCtx(t, 30*time.Second), req)
	if err != nil {
		t.Fatal(err)
	}
	if err := stop(); err != nil { // at once: the acks may still be in progress
		t.Fatalf("Run: %v", err)
	}
	client := redis.NewClient(&redis.Options{Addr: rd.Addr()})
	defer client.Close()
	for i, res := range resp.GetResults() {
		wantStatus(t, res, canvassv1.Status_STATUS_ACCEPTED, "")
		s := newIDStore(client, svc.store.prefix, time.Hour, time.Minute)
		got, err := s.lookup(testCtx(t, 10*time.Second), []uuid.UUID{uuid.MustParse(req.Visits[i].GetId())})
		if err != nil || got[0].state != acked {
			t.Fatalf("after shutdown the store holds %+v (%v) for an accepted id, want it acknowledged", got, err)
		}
	}
}
