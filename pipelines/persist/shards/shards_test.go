package shards_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/chapper/chapper/pipelines/persist"
	"github.com/chapper/chapper/pipelines/persist/persisttest"
	"github.com/chapper/chapper/pipelines/persist/router"
	"github.com/chapper/chapper/pipelines/persist/shards"
	"github.com/chapper/chapper/pipelines/runtime"
	"github.com/chapper/chapper/pipelines/shardmap"
	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"github.com/chapper/chapper/proto/locality"
	"github.com/chapper/chapper/proto/topic"
	"github.com/chapper/chapper/services/devstack/devtest"
)

func TestMain(m *testing.M) { devtest.Main(m) }

var t0 = time.Date(2026, 5, 1, 9, 0, 0, 0, time.UTC)

// Edinburgh is in logical shard 24 (the first database of the test map).
var edinburgh = locality.Index(52543256811)

func newTool(t testing.TB, env *persisttest.Env, catchUp int) *shards.Tool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tool, err := shards.New(ctx, shards.Config{RouterURL: env.RouterURL, LockTimeout: 20 * time.Second, CatchUpRows: catchUp})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tool.Close)
	return tool
}

// batchOf returns n records: half in Edinburgh's locality (shard 24), the
// rest anywhere around central Scotland (both databases).
func batchOf(rng *rand.Rand, n int, seq *atomic.Int64) ([]runtime.Record, []proto.Message) {
	recs := make([]runtime.Record, n)
	msgs := make([]proto.Message, n)
	for i := range n {
		loc := &canvassv1.Location{Latitude: 55.9533, Longitude: -3.1883}
		if i%2 == 1 {
			loc = &canvassv1.Location{Latitude: 55.5 + rng.Float64(), Longitude: -4.5 + 2*rng.Float64()}
		}
		ts := timestamppb.New(t0.Add(time.Duration(seq.Add(1)) * time.Millisecond))
		var m proto.Message
		switch i % 3 {
		case 0:
			m = &canvassv1.Visit{Id: uuid.Must(uuid.NewV7()).String(), DwellingId: "d", Address: "a", Location: loc, VisitedAt: ts}
		case 1:
			m = &canvassv1.Intention{Id: uuid.Must(uuid.NewV7()).String(), ElectorId: "e", Option: "Green", Location: loc, RecordedAt: ts}
		default:
			m = &canvassv1.FollowupRequest{Id: uuid.Must(uuid.NewV7()).String(), ElectorId: "e", Issue: "bins", Location: loc, RecordedAt: ts}
		}
		k, _ := topic.KindOf(m)
		recs[i] = runtime.Record{Topic: k.Topic(), Offset: int64(i), Message: m}
		msgs[i] = m
	}
	return recs, msgs
}

// writers runs n persister instances, each writing batches (and now and
// then re-delivering its previous batch) until stop is closed. It returns
// the records whose Write returned nil, and how many batches were written
// while the move ran (between moveStart and moveEnd).
type writers struct {
	mu        sync.Mutex
	written   []proto.Message
	during    int
	moving    atomic.Bool
	batches   atomic.Int64
	errs      []error
	wg        sync.WaitGroup
	stop      chan struct{}
	timeStamp atomic.Int64
}

func startWriters(t *testing.T, env *persisttest.Env, n int) *writers {
	w := &writers{stop: make(chan struct{})}
	for i := range n {
		sink, err := persist.New(context.Background(), persist.Config{RouterURL: env.RouterURL, PoolSize: 2, ShardBits: 6})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(sink.Close)
		w.wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(i), 1))
			var prev []runtime.Record
			for {
				select {
				case <-w.stop:
					return
				default:
				}
				recs, msgs := batchOf(rng, 60, &w.timeStamp)
				if prev != nil && rng.IntN(4) == 0 {
					recs = append(recs, prev...) // a re-delivery
				}
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				during := w.moving.Load()
				err := sink.Write(ctx, recs)
				cancel()
				w.mu.Lock()
				if err != nil {
					w.errs = append(w.errs, err)
				} else {
					w.written = append(w.written, msgs...)
					if during && w.moving.Load() {
						w.during++
					}
					prev = recs[:len(msgs)]
				}
				w.mu.Unlock()
				w.batches.Add(1)
			}
		})
	}
	return w
}

func (w *writers) waitBatches(t *testing.T, n int64) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for start := w.batches.Load(); w.batches.Load() < start+n; {
		if time.Now().After(deadline) {
			t.Fatalf("writers wrote fewer than %d batches in 30s", n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (w *writers) halt() {
	close(w.stop)
	w.wg.Wait()
}

// where returns how many rows with each message's id each database holds.
func where(t testing.TB, env *persisttest.Env, msgs []proto.Message) map[string][]int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ids := map[topic.Kind][]string{}
	out := map[string][]int{}
	for _, m := range msgs {
		meta, _ := topic.MetaOf(m)
		ids[meta.Kind] = append(ids[meta.Kind], meta.ID)
		out[meta.ID] = make([]int, len(env.Shards))
	}
	for i := range env.Shards {
		pool := env.ShardPool(t, i)
		for k, list := range ids {
			rows, err := pool.Query(ctx, fmt.Sprintf("SELECT id::text, count(*) FROM %s WHERE id = ANY ($1::uuid[]) GROUP BY id", k), list)
			if err != nil {
				t.Fatal(err)
			}
			for rows.Next() {
				var id string
				var n int
				if err := rows.Scan(&id, &n); err != nil {
					t.Fatal(err)
				}
				out[id][i] = n
			}
			if rows.Err() != nil {
				t.Fatal(rows.Err())
			}
		}
	}
	return out
}

func TestMoveUnderConcurrentWrites(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	env := persisttest.New(t)
	target := env.AddShard(t)
	tool := newTool(t, env, 100) // small catch-up threshold: several rounds

	w := startWriters(t, env, 2) // two persister instances
	w.waitBatches(t, 20)
	w.moving.Store(true)
	var out bytes.Buffer
	err := tool.Move(ctx, 24, target.Name, &out)
	w.moving.Store(false)
	t.Logf("move output:\n%s", out.String())
	if err != nil {
		w.halt()
		t.Fatalf("Move: %v", err)
	}
	w.waitBatches(t, 20) // writes go on, to the new database
	w.halt()

	if len(w.errs) > 0 {
		t.Errorf("%d writes failed during the move, first: %v", len(w.errs), w.errs[0])
	}
	if w.during == 0 {
		t.Error("no batch was written while the move ran: the test proves nothing")
	}
	m, err := shardmap.Load(ctx, persisttest.Pool(t, env.RouterURL))
	if err != nil {
		t.Fatal(err)
	}
	if m.Version != 2 || m.Shards[24] != target.Name {
		t.Fatalf("map version %d puts shard 24 in %s, want version 2 and %s", m.Version, m.Shards[24], target.Name)
	}
	dbIndex := map[string]int{}
	for i, sh := range env.Shards {
		dbIndex[sh.Name] = i
	}
	bad := 0
	rows := where(t, env, w.written)
	for _, msg := range w.written {
		meta, _ := topic.MetaOf(msg)
		idx, _ := locality.Of(meta.Location.GetLatitude(), meta.Location.GetLongitude())
		want := dbIndex[m.Shards[m.ShardOf(idx)]]
		for i, n := range rows[meta.ID] {
			if (i == want && n != 1) || (i != want && n != 0) {
				if bad < 5 {
					t.Errorf("%s (shard %d): rows per database %v, want one in %d", meta.ID, m.ShardOf(idx), rows[meta.ID], want)
				}
				bad++
				break
			}
		}
	}
	if bad > 0 {
		t.Errorf("%d of %d records not stored exactly once where the new map says", bad, len(w.written))
	}
	if got := env.Total(t); got != len(w.written) {
		t.Errorf("rows = %d, want %d", got, len(w.written))
	}
	for _, tbl := range persisttest.Tables {
		if n := persisttest.Count(t, env.Shards[0].URL, tbl, 24); n != 0 {
			t.Errorf("old database still holds %d %s of shard 24", n, tbl)
		}
	}
	// The router follows the map: Edinburgh's visits read from the target.
	visits, err := router.New(persisttest.Pool(t, env.RouterURL)).VisitsByLocality(ctx, edinburgh, t0.Add(-time.Hour), t0.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	wantVisits := 0
	for _, msg := range w.written {
		if v, ok := msg.(*canvassv1.Visit); ok && v.GetLocation().GetLatitude() == 55.9533 {
			wantVisits++
		}
	}
	if len(visits) != wantVisits {
		t.Errorf("visits_by_locality(Edinburgh) after the move = %d rows, want %d", len(visits), wantVisits)
	}
	for _, want := range []string{"round 1", "final round (writes paused)", "verified", "switched: map version 2", "deleted the old copy"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("move output lacks %q", want)
		}
	}
}

func TestMoveThereAndBack(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	env := persisttest.New(t)
	tool := newTool(t, env, 0)
	sink, err := persist.New(ctx, persist.Config{RouterURL: env.RouterURL, PoolSize: 2, ShardBits: 6})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	var seq atomic.Int64
	rng := rand.New(rand.NewPCG(3, 3))
	var all []proto.Message
	for _, to := range []int{1, 0, 1} { // shard 24 starts in Shards[0]
		recs, msgs := batchOf(rng, 90, &seq)
		if err := sink.Write(ctx, recs); err != nil {
			t.Fatal(err)
		}
		all = append(all, msgs...)
		if err := tool.Move(ctx, 24, env.Shards[to].Name, &bytes.Buffer{}); err != nil {
			t.Fatalf("Move to %s: %v", env.Shards[to].Name, err)
		}
	}
	recs, msgs := batchOf(rng, 90, &seq)
	if err := sink.Write(ctx, recs); err != nil {
		t.Fatal(err)
	}
	all = append(all, msgs...)
	if got := env.Total(t); got != len(all) {
		t.Errorf("rows = %d, want %d", got, len(all))
	}
	for _, tbl := range persisttest.Tables {
		if n := persisttest.Count(t, env.Shards[0].URL, tbl, 24); n != 0 {
			t.Errorf("Shards[0] holds %d %s of shard 24, which moved away", n, tbl)
		}
	}
}

func TestMoveRefuses(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	env := persisttest.New(t)
	tool := newTool(t, env, 0)
	tests := []struct {
		name  string
		shard int
		to    string
		hold  bool // another move holds the move lock
		want  error
	}{
		{name: "same database", shard: 24, to: env.Shards[0].Name, want: shards.ErrSameDatabase},
		{name: "unknown database", shard: 24, to: "nowhere", want: shardmap.ErrNoDatabase},
		{name: "no such shard", shard: 64, to: env.Shards[1].Name, want: shards.ErrNoShard},
		{name: "negative shard", shard: -1, to: env.Shards[1].Name, want: shards.ErrNoShard},
		{name: "move in progress", shard: 24, to: env.Shards[1].Name, hold: true, want: shards.ErrMoveInProgress},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.hold {
				conn, err := persisttest.Pool(t, env.RouterURL).Acquire(ctx)
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Release()
				if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", shardmap.MoveLock); err != nil {
					t.Fatal(err)
				}
				defer conn.Exec(ctx, "SELECT pg_advisory_unlock($1)", shardmap.MoveLock)
			}
			if err := tool.Move(ctx, tt.shard, tt.to, &bytes.Buffer{}); !errors.Is(err, tt.want) {
				t.Errorf("Move = %v, want %v", err, tt.want)
			}
		})
	}
	m, err := shardmap.Load(ctx, persisttest.Pool(t, env.RouterURL))
	if err != nil {
		t.Fatal(err)
	}
	if m.Version != 1 {
		t.Errorf("map version %d after refused moves, want 1", m.Version)
	}
}

func TestShowAndClean(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	env := persisttest.New(t)
	tool := newTool(t, env, 0)
	sink, err := persist.New(ctx, persist.Config{RouterURL: env.RouterURL, PoolSize: 2, ShardBits: 6})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	var seq atomic.Int64
	recs, _ := batchOf(rand.New(rand.NewPCG(5, 5)), 30, &seq)
	if err := sink.Write(ctx, recs); err != nil {
		t.Fatal(err)
	}
	// a stray copy of one Edinburgh visit in the second database
	_, err = persisttest.Pool(t, env.Shards[1].URL).Exec(ctx, `INSERT INTO visits
		(shard, id, dwelling_id, address, locality, chunk, region, latitude, longitude, canvasser_id, visited_at, outcome)
		VALUES (24, gen_random_uuid(), 'd', 'a', 52543256811, 2101715362, 5254168, 55.9533, -3.1883, '', now(), 'answered')`)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := tool.Show(ctx, &out); err != nil {
		t.Fatal(err)
	}
	show := out.String()
	t.Logf("show:\n%s", show)
	for _, want := range []string{
		"shard map version 1, 64 logical shards (6 bits)",
		env.Shards[0].Name + "  0-31 (32)",
		"stray rows",
		env.Shards[1].Name + " holds visits 1, intentions 0, followups 0 of shard 24",
	} {
		if !strings.Contains(show, want) {
			t.Errorf("show lacks %q", want)
		}
	}
	// shard 24's line: its database and at least Edinburgh's 5 rows per table
	found := false
	for _, line := range strings.Split(show, "\n") {
		f := strings.Fields(line)
		if len(f) == 5 && f[0] == "24" {
			found = true
			if f[1] != env.Shards[0].Name || f[2] < "5" && len(f[2]) == 1 {
				t.Errorf("shard 24's line = %q, want %s and at least 5 visits", line, env.Shards[0].Name)
			}
		}
	}
	if !found {
		t.Error("show lacks shard 24's line")
	}
	out.Reset()
	if err := tool.Clean(ctx, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "deleted 1 stray rows") {
		t.Errorf("clean output = %q, want 1 stray row deleted", out.String())
	}
	out.Reset()
	if err := tool.Show(ctx, &out); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out.String(), "stray rows") {
		t.Errorf("show after clean still lists stray rows:\n%s", out.String())
	}
	if got := env.Total(t); got != 30 {
		t.Errorf("rows = %d after clean, want the 30 written", got)
	}
}
