package query_test

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/chapper/chapper/pipelines/timeline"
	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"github.com/chapper/chapper/proto/locality"
	"github.com/chapper/chapper/services/query"
)

func TestGetChunk(t *testing.T) {
	e := newEnv(t, nil)
	chunk := chunkOf(t, edinburghLat, edinburghLon)
	locs := locality.ChunkLocalities(chunk)
	base := time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)

	v1 := visit(locs[0], base, canvassv1.Outcome_OUTCOME_ANSWERED)
	v2 := visit(locs[0], base.Add(time.Minute), canvassv1.Outcome_OUTCOME_NO_ANSWER)
	v3 := visit(locs[24], base, canvassv1.Outcome_OUTCOME_ANSWERED)
	in := &canvassv1.Intention{
		Id: "0196a1b2-0000-7000-8000-000000000001", VisitId: v1.Id, ElectorId: "e1", Option: "yes",
		Location: pointIn(locs[0]), RecordedAt: timestamppb.New(base.Add(2 * time.Minute)),
	}
	fu := &canvassv1.FollowupRequest{
		Id: "0196a1b2-0000-7000-8000-000000000002", VisitId: v1.Id, ElectorId: "e1", Issue: "bins",
		Method: canvassv1.Method_METHOD_TELEPHONE, Location: pointIn(locs[0]), RecordedAt: timestamppb.New(base.Add(3 * time.Minute)),
	}
	// Outside the chunk: must not show.
	other := visit(locs[0]-5, base, canvassv1.Outcome_OUTCOME_ANSWERED)
	e.write(t, v1, v2, v3, in, fu, other)

	tests := []struct {
		name string
		req  *canvassv1.GetChunkRequest
	}{
		{name: "by location", req: &canvassv1.GetChunkRequest{Location: &canvassv1.Location{Latitude: edinburghLat, Longitude: edinburghLon}}},
		{name: "by location of another locality", req: &canvassv1.GetChunkRequest{Location: pointIn(locs[17])}},
		{name: "by chunk", req: &canvassv1.GetChunkRequest{Chunk: chunk}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := e.qc.GetChunk(ctxT(t, 10*time.Second), tt.req)
			if err != nil {
				t.Fatalf("GetChunk: %v", err)
			}
			if resp.GetChunk() != chunk {
				t.Errorf("chunk = %d, want %d", resp.GetChunk(), chunk)
			}
			if resp.GetNextPageToken() != "" {
				t.Errorf("next_page_token = %q, want none", resp.GetNextPageToken())
			}
			if got := len(resp.GetLocalities()); got != 25 {
				t.Fatalf("%d localities, want 25", got)
			}
			for i, lt := range resp.GetLocalities() {
				if lt.GetLocality() != int64(locs[i]) {
					t.Errorf("locality %d = %d, want %d", i, lt.GetLocality(), locs[i])
				}
			}
			l0 := resp.GetLocalities()[0]
			wantIDs := []string{fu.Id, in.Id, v2.Id, v1.Id} // newest first
			if diff := cmp.Diff(wantIDs, entryIDs(resp)[int64(locs[0])]); diff != "" {
				t.Errorf("locality 0 entries (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff([]string{v3.Id}, entryIDs(resp)[int64(locs[24])]); diff != "" {
				t.Errorf("locality 24 entries (-want +got):\n%s", diff)
			}
			wantCounters := map[string]int64{
				"visits": 2, "visits:answered": 1, "visits:no_answer": 1,
				"intentions": 1, "intentions:yes": 1, "followups": 1, "followups:telephone": 1,
			}
			if diff := cmp.Diff(wantCounters, l0.GetCounters()); diff != "" {
				t.Errorf("locality 0 counters (-want +got):\n%s", diff)
			}
			// Entries carry id, locality, time and the record itself.
			want := &canvassv1.TimelineEntry{
				Id: v2.Id, Locality: int64(locs[0]), Time: v2.VisitedAt,
				Record: &canvassv1.Record{Kind: &canvassv1.Record_Visit{Visit: v2}},
			}
			if diff := cmp.Diff(want, l0.GetEntries()[2], protocmp.Transform()); diff != "" {
				t.Errorf("entry (-want +got):\n%s", diff)
			}
			if n := len(resp.GetLocalities()[12].GetEntries()); n != 0 {
				t.Errorf("empty locality has %d entries", n)
			}
		})
	}
}

func TestGetChunkInvalid(t *testing.T) {
	e := newEnv(t, nil)
	chunk := chunkOf(t, edinburghLat, edinburghLon)
	otherToken := pageToken(t, e, chunk+1)

	tests := []struct {
		name  string
		req   *canvassv1.GetChunkRequest
		field string
	}{
		{name: "neither location nor chunk", req: &canvassv1.GetChunkRequest{}, field: "location"},
		{name: "both", req: &canvassv1.GetChunkRequest{Chunk: chunk, Location: &canvassv1.Location{Latitude: 1, Longitude: 1}}, field: "location"},
		{name: "negative chunk", req: &canvassv1.GetChunkRequest{Chunk: -1}, field: "chunk"},
		{name: "chunk past the north pole", req: &canvassv1.GetChunkRequest{Chunk: query.MaxChunk + 1}, field: "chunk"},
		{name: "latitude out of range", req: &canvassv1.GetChunkRequest{Location: &canvassv1.Location{Latitude: 91, Longitude: 0}}, field: "location"},
		{name: "longitude 180", req: &canvassv1.GetChunkRequest{Location: &canvassv1.Location{Latitude: 0, Longitude: 180}}, field: "location"},
		{name: "negative page size", req: &canvassv1.GetChunkRequest{Chunk: chunk, PageSize: -1}, field: "page_size"},
		{name: "token not base64", req: &canvassv1.GetChunkRequest{Chunk: chunk, PageToken: "!!"}, field: "page_token"},
		{name: "token garbage", req: &canvassv1.GetChunkRequest{Chunk: chunk, PageToken: "AQID"}, field: "page_token"},
		{name: "token of another chunk", req: &canvassv1.GetChunkRequest{Chunk: chunk, PageToken: otherToken}, field: "page_token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := e.qc.GetChunk(ctxT(t, 10*time.Second), tt.req)
			st := status.Convert(err)
			if st.Code() != codes.InvalidArgument {
				t.Fatalf("code = %v (%v), want InvalidArgument", st.Code(), err)
			}
			if err := missing(st.Message(), tt.field+":"); err != nil {
				t.Error(err)
			}
		})
	}

	t.Run("last chunk is valid", func(t *testing.T) {
		resp, err := e.qc.GetChunk(ctxT(t, 10*time.Second), &canvassv1.GetChunkRequest{Chunk: query.MaxChunk})
		if err != nil {
			t.Fatalf("GetChunk(MaxChunk): %v", err)
		}
		if n := len(resp.GetLocalities()); n != 5 {
			t.Errorf("north pole chunk has %d localities, want 5 (one row)", n)
		}
	})
}

// pageToken returns a real next_page_token of chunk, filling one of its
// localities past one page.
func pageToken(t *testing.T, e *env, chunk int64) string {
	t.Helper()
	loc := locality.ChunkLocalities(chunk)[0]
	now := time.Now()
	e.write(t, visit(loc, now, 0), visit(loc, now.Add(time.Second), 0))
	resp, err := e.qc.GetChunk(ctxT(t, 10*time.Second), &canvassv1.GetChunkRequest{Chunk: chunk, PageSize: 1})
	if err != nil || resp.GetNextPageToken() == "" {
		t.Fatalf("getting a page token: %v (token %q)", err, resp.GetNextPageToken())
	}
	return resp.GetNextPageToken()
}

func TestGetChunkPagination(t *testing.T) {
	e := newEnv(t, nil)
	chunk := chunkOf(t, edinburghLat, edinburghLon)
	locs := locality.ChunkLocalities(chunk)
	base := time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)

	// Locality 0: 57 records, many sharing a millisecond (ties are ordered
	// by id). Locality 1: 3 records. Locality 2: exactly one page.
	var msgs []proto.Message
	want := map[int64]int{}
	for i := range 57 {
		msgs = append(msgs, visit(locs[0], base.Add(time.Duration(i/4)*time.Second), canvassv1.Outcome_OUTCOME_ANSWERED))
	}
	for i := range 3 {
		msgs = append(msgs, visit(locs[1], base.Add(time.Duration(i)*time.Second), canvassv1.Outcome_OUTCOME_REFUSED))
	}
	for i := range 5 {
		msgs = append(msgs, visit(locs[2], base.Add(time.Duration(i)*time.Second), canvassv1.Outcome_OUTCOME_REFUSED))
	}
	want[int64(locs[0])], want[int64(locs[1])], want[int64(locs[2])] = 57, 3, 5
	e.write(t, msgs...)

	tests := []struct {
		name     string
		pageSize int32
		// addBetween writes newer records between pages; they belong to
		// the first page of a new walk, not to this one.
		addBetween bool
	}{
		{name: "page size 5", pageSize: 5},
		{name: "page size 1", pageSize: 1},
		{name: "one page", pageSize: 1000},
		// Last: it adds records.
		{name: "page size 7 with writes between pages", pageSize: 7, addBetween: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			seen := map[string]int{}
			type pos struct {
				ms int64
				id string
			}
			last := map[int64]pos{}
			got := map[int64]int{}
			token := ""
			for page := 0; ; page++ {
				if page > 100 {
					t.Fatal("more than 100 pages")
				}
				resp, err := e.qc.GetChunk(ctxT(t, 10*time.Second), &canvassv1.GetChunkRequest{Chunk: chunk, PageSize: tt.pageSize, PageToken: token})
				if err != nil {
					t.Fatalf("page %d: %v", page, err)
				}
				if page == 0 && len(resp.GetLocalities()) != 25 {
					t.Errorf("first page has %d localities, want 25", len(resp.GetLocalities()))
				}
				for _, lt := range resp.GetLocalities() {
					if n := len(lt.GetEntries()); n > int(tt.pageSize) {
						t.Errorf("page %d locality %d: %d entries > page size %d", page, lt.GetLocality(), n, tt.pageSize)
					}
					for _, en := range lt.GetEntries() {
						seen[en.GetId()]++
						got[lt.GetLocality()]++
						p := pos{en.GetTime().AsTime().UnixMilli(), en.GetId()}
						// Strictly older than the previous entry: (time, id) descending.
						if prev, ok := last[lt.GetLocality()]; ok && (p.ms > prev.ms || p.ms == prev.ms && p.id >= prev.id) {
							t.Errorf("locality %d: %v after %v is not older", lt.GetLocality(), p, prev)
						}
						last[lt.GetLocality()] = p
					}
				}
				token = resp.GetNextPageToken()
				if token == "" {
					break
				}
				if tt.addBetween {
					e.write(t, visit(locs[0], base.Add(time.Hour), canvassv1.Outcome_OUTCOME_ANSWERED))
				}
			}
			for id, n := range seen {
				if n != 1 {
					t.Errorf("entry %s seen %d times", id, n)
				}
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("entries per locality (-want +got):\n%s", diff)
			}
		})
	}
}

// TestGetChunkCursorTrimmed removes the entry a page token points at (as
// the timeline's trim does) before the next page: the walk goes on below it.
func TestGetChunkCursorTrimmed(t *testing.T) {
	e := newEnv(t, nil)
	chunk := chunkOf(t, edinburghLat, edinburghLon)
	loc := locality.ChunkLocalities(chunk)[4]
	base := time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)
	var ids []string // newest first
	var msgs []proto.Message
	for i := range 6 {
		v := visit(loc, base.Add(time.Duration(i)*time.Second), canvassv1.Outcome_OUTCOME_ANSWERED)
		msgs = append(msgs, v)
		ids = append([]string{v.Id}, ids...)
	}
	e.write(t, msgs...)
	first, err := e.qc.GetChunk(ctxT(t, 10*time.Second), &canvassv1.GetChunkRequest{Chunk: chunk, PageSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	if got := entryIDs(first)[int64(loc)]; !slices.Equal(got, ids[:2]) {
		t.Fatalf("first page %v, want %v", got, ids[:2])
	}
	if err := e.rdb.ZRem(ctxT(t, 5*time.Second), timeline.TimelineKey(e.prefix, int64(loc)), ids[1]).Err(); err != nil {
		t.Fatal(err)
	}
	next, err := e.qc.GetChunk(ctxT(t, 10*time.Second), &canvassv1.GetChunkRequest{Chunk: chunk, PageSize: 2, PageToken: first.GetNextPageToken()})
	if err != nil {
		t.Fatal(err)
	}
	if got := entryIDs(next)[int64(loc)]; !slices.Equal(got, ids[2:4]) {
		t.Errorf("page after the trimmed cursor %v, want %v", got, ids[2:4])
	}
	if n := len(next.GetLocalities()); n != 1 {
		t.Errorf("second page lists %d localities, want the 1 with older entries", n)
	}
}

// TestSingleflight sends many identical requests at once while Redis is
// slow: they share one round trip.
func TestSingleflight(t *testing.T) {
	tests := []struct {
		name     string
		cacheTTL time.Duration
		// again is the round trips of one more request right after.
		again int64
	}{
		{name: "cache off", cacheTTL: 0, again: 1},
		{name: "cache on", cacheTTL: 500 * time.Millisecond, again: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, func(c *query.Config) { c.CacheTTL = tt.cacheTTL })
			chunk := chunkOf(t, edinburghLat, edinburghLon)
			e.write(t, visit(locality.ChunkLocalities(chunk)[3], time.Now(), canvassv1.Outcome_OUTCOME_ANSWERED))
			if tt.cacheTTL > 0 {
				// Subscribed and confirmed, and the first answer expired:
				// the burst below misses the cache.
				e.waitSubscribed(t, chunk)
				time.Sleep(tt.cacheTTL)
			}

			const n = 40
			e.delay.Store(int64(500 * time.Millisecond))
			before := e.rounds.Load()
			var wg sync.WaitGroup
			start := make(chan struct{})
			errs := make(chan error, n)
			resps := make(chan *canvassv1.GetChunkResponse, n)
			for range n {
				wg.Go(func() {
					<-start
					resp, err := e.qc.GetChunk(ctxT(t, 10*time.Second), &canvassv1.GetChunkRequest{Chunk: chunk})
					errs <- err
					resps <- resp
				})
			}
			close(start)
			wg.Wait()
			close(errs)
			close(resps)
			for err := range errs {
				if err != nil {
					t.Fatalf("GetChunk: %v", err)
				}
			}
			for resp := range resps {
				if got := len(slices.Concat(entryIDsList(resp)...)); got != 1 {
					t.Errorf("response has %d entries, want 1", got)
				}
			}
			if got := e.rounds.Load() - before; got != 1 {
				t.Errorf("%d concurrent identical requests took %d Redis round trips, want 1", n, got)
			}

			e.delay.Store(0)
			before = e.rounds.Load()
			if _, err := e.qc.GetChunk(ctxT(t, 10*time.Second), &canvassv1.GetChunkRequest{Chunk: chunk}); err != nil {
				t.Fatal(err)
			}
			if got := e.rounds.Load() - before; got != tt.again {
				t.Errorf("one more request: %d round trips, want %d", got, tt.again)
			}
		})
	}
}

func entryIDsList(resp *canvassv1.GetChunkResponse) [][]string {
	var out [][]string
	for _, ids := range entryIDs(resp) {
		out = append(out, ids)
	}
	return out
}

// TestCacheDroppedOnNews caches answers for a minute: only the chunk's
// news can make a new record visible.
func TestCacheDroppedOnNews(t *testing.T) {
	e := newEnv(t, nil)
	e.svc.SetCacheTTL(time.Minute)
	chunk := chunkOf(t, edinburghLat, edinburghLon)
	locs := locality.ChunkLocalities(chunk)
	e.write(t, visit(locs[3], time.Now(), canvassv1.Outcome_OUTCOME_ANSWERED))
	get := func() *canvassv1.GetChunkResponse {
		t.Helper()
		resp, err := e.qc.GetChunk(ctxT(t, 10*time.Second), &canvassv1.GetChunkRequest{Chunk: chunk})
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}

	// The first request subscribes to the chunk's news; once Redis
	// confirmed, answers are cached: a request costs no round trip.
	eventually(t, 5*time.Second, "answers cached", func() error {
		get()
		before := e.rounds.Load()
		get()
		if n := e.rounds.Load() - before; n != 0 {
			return fmt.Errorf("%d round trips for a repeated request", n)
		}
		return nil
	})
	// The cache is per chunk: another chunk's news leaves it alone.
	e.write(t, visit(locs[3]-5, time.Now(), canvassv1.Outcome_OUTCOME_ANSWERED))
	time.Sleep(100 * time.Millisecond)
	before := e.rounds.Load()
	get()
	if n := e.rounds.Load() - before; n != 0 {
		t.Errorf("news of another chunk dropped the cache (%d round trips)", n)
	}

	v := visit(locs[7], time.Now(), canvassv1.Outcome_OUTCOME_ANSWERED)
	e.write(t, v)
	start := time.Now()
	eventually(t, 5*time.Second, "new record visible", func() error {
		if ids := entryIDs(get())[int64(locs[7])]; !slices.Contains(ids, v.Id) {
			return fmt.Errorf("locality %d has %v", locs[7], ids)
		}
		return nil
	})
	t.Logf("new record visible %v after its write", time.Since(start))
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*query.Config)
		want   error
	}{
		{name: "defaults", mutate: func(*query.Config) {}},
		{name: "page size 0", mutate: func(c *query.Config) { c.PageSize = 0 }, want: query.ErrPageSize},
		{name: "page size over max", mutate: func(c *query.Config) { c.PageSize = 1001 }, want: query.ErrPageSize},
		{name: "cache ttl over 500ms", mutate: func(c *query.Config) { c.CacheTTL = 501 * time.Millisecond }, want: query.ErrCacheTTL},
		{name: "cache off", mutate: func(c *query.Config) { c.CacheTTL = 0 }},
		{name: "watch buffer 0", mutate: func(c *query.Config) { c.WatchBuffer = 0 }, want: query.ErrWatchBuffer},
		{name: "idle 0", mutate: func(c *query.Config) { c.SubscriptionIdle = 0 }, want: query.ErrIdle},
		{name: "max subscriptions 0", mutate: func(c *query.Config) { c.MaxSubscriptions = 0 }, want: query.ErrMaxSubs},
		{name: "prefix with a hash tag", mutate: func(c *query.Config) { c.Prefix = "a{b}:" }, want: query.ErrPrefix},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := defaultConfig()
			tt.mutate(&c)
			if err := c.Validate(); !errors.Is(err, tt.want) {
				t.Errorf("Validate() = %v, want %v", err, tt.want)
			}
		})
	}
}
