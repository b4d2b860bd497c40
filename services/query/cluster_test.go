package query_test

import (
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"

	"github.com/chapper/chapper/pipelines/timeline"
	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"github.com/chapper/chapper/proto/locality"
	"github.com/chapper/chapper/services/devstack/devtest"
)

// The 25 localities of a chunk hash to slots on every master of a private
// Redis Cluster; GetChunk reads them all, page by page, and a watch gets the
// news the sink's scripts publish on any master.
func TestClusterGetChunk(t *testing.T) {
	rc := timeline.RedisConfig{Addrs: devtest.RedisCluster(t)}
	e := newEnvWith(t, rc.NewClient, "t:", nil)
	cluster, ok := e.rdb.(*redis.ClusterClient)
	if !ok {
		t.Fatalf("NewClient with %d addresses = %T, want a cluster client", len(rc.Addrs), e.rdb)
	}
	chunk := chunkOf(t, edinburghLat, edinburghLon)
	locs := locality.ChunkLocalities(chunk)
	base := time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)

	// Two visits per locality, newest first in want.
	var batch []proto.Message
	want := map[int64][]string{}
	onMaster := map[string]locality.Index{} // a locality on each master
	for i, loc := range locs {
		older := visit(loc, base.Add(time.Duration(i)*time.Second), canvassv1.Outcome_OUTCOME_ANSWERED)
		newer := visit(loc, base.Add(time.Hour+time.Duration(i)*time.Second), canvassv1.Outcome_OUTCOME_NO_ANSWER)
		batch = append(batch, older, newer)
		want[int64(loc)] = []string{newer.Id, older.Id}
		node, err := cluster.MasterForKey(ctxT(t, 5*time.Second), timeline.TimelineKey(e.prefix, int64(loc)))
		if err != nil {
			t.Fatal(err)
		}
		onMaster[node.Options().Addr] = loc
	}
	if len(onMaster) != devtest.ClusterMasters {
		t.Fatalf("the chunk's keys live on %d masters, want all %d", len(onMaster), devtest.ClusterMasters)
	}
	e.write(t, batch...)

	// The whole chunk in one page.
	resp, err := e.qc.GetChunk(ctxT(t, 10*time.Second), &canvassv1.GetChunkRequest{Chunk: chunk})
	if err != nil {
		t.Fatalf("GetChunk: %v", err)
	}
	if got := entryIDs(resp); len(got) != len(locs) || !maps.EqualFunc(got, want, slices.Equal) {
		t.Errorf("entries = %v, want %v", got, want)
	}
	for _, lt := range resp.GetLocalities() {
		if c := lt.GetCounters(); c["visits"] != 2 || c["visits:answered"] != 1 || c["visits:no_answer"] != 1 {
			t.Errorf("locality %d: counters %v, want 2 visits, one answered", lt.GetLocality(), c)
		}
		for _, en := range lt.GetEntries() {
			if en.GetRecord().GetVisit().GetId() != en.GetId() {
				t.Errorf("locality %d: entry %s has body %v", lt.GetLocality(), en.GetId(), en.GetRecord())
			}
		}
	}

	// One entry per locality per page: the second page holds the older ones.
	got := map[int64][]string{}
	req := &canvassv1.GetChunkRequest{Chunk: chunk, PageSize: 1}
	for page := 0; ; page++ {
		if page == 3 {
			t.Fatalf("more than 2 pages of one entry per locality")
		}
		resp, err := e.qc.GetChunk(ctxT(t, 10*time.Second), req)
		if err != nil {
			t.Fatalf("GetChunk page %d: %v", page, err)
		}
		for loc, ids := range entryIDs(resp) {
			got[loc] = append(got[loc], ids...)
		}
		if resp.GetNextPageToken() == "" {
			break
		}
		req.PageToken = resp.GetNextPageToken()
	}
	if !maps.EqualFunc(got, want, slices.Equal) {
		t.Errorf("paged entries = %v, want %v", got, want)
	}

	// The service's one subscription is on one node; news of records
	// materialised on every master reaches the watch.
	w := openWatch(t, e.client, chunk)
	w.snapshot(t)
	for addr, loc := range onMaster {
		v := visit(loc, base.Add(2*time.Hour), canvassv1.Outcome_OUTCOME_MOVED)
		e.write(t, v)
		if got := w.record(t); got.GetId() != v.Id || got.GetLocality() != int64(loc) {
			t.Errorf("watch record %s in %d, want %s in %d (on %s)", got.GetId(), got.GetLocality(), v.Id, loc, addr)
		}
	}
}
