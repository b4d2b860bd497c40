package persist_test

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/chapper/chapper/pipelines/persist"
	"github.com/chapper/chapper/pipelines/persist/persisttest"
	"github.com/chapper/chapper/pipelines/persist/shards"
	"github.com/chapper/chapper/pipelines/runtime"
	"github.com/chapper/chapper/pipelines/shardmap"
	"github.com/chapper/chapper/proto/locality"
	"github.com/chapper/chapper/proto/topic"
)

// Edinburgh's records are in logical shard 24, held by the first database
// of the test map.
const edinburghShard = 24

// edinburgh returns n records of every kind in Edinburgh.
func edinburgh(n int) []proto.Message {
	var out []proto.Message
	for i := range n {
		out = append(out, kinds(55.9533, -3.1883, t0.Add(time.Duration(i)*time.Second))...)
	}
	return out
}

// terminateLockHolders ends every router backend that holds the shard map
// write lock in shared mode (the persisters' lock sessions) and waits until
// they are gone. It returns how many it ended.
func terminateLockHolders(t testing.TB, ctx context.Context, env *persisttest.Env) int {
	t.Helper()
	pool := persisttest.Pool(t, env.RouterURL)
	// an advisory lock on a bigint key: classid = high half, objid = low half
	const holders = `SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND mode = 'ShareLock' AND granted
		AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
		AND classid::bigint = ($1::bigint >> 32) AND objid::bigint = ($1::bigint & x'ffffffff'::bigint)`
	rows, err := pool.Query(ctx, `SELECT pid, pg_terminate_backend(pid) FROM (`+holders+`) h`, shardmap.WriteLock)
	if err != nil {
		t.Fatalf("terminating the persister's router backend: %v", err)
	}
	n := 0
	for rows.Next() {
		n++
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("terminating the persister's router backend: %v", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		var left int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM (`+holders+`) h`, shardmap.WriteLock).Scan(&left); err != nil {
			t.Fatal(err)
		}
		if left == 0 {
			return n
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d lock sessions still alive 30s after pg_terminate_backend", left)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitMoveSettled waits until the move has switched the map and then either
// finished or is waiting for a lock in database db (the writes in flight
// there).
func waitMoveSettled(t testing.TB, ctx context.Context, env *persisttest.Env, db string, done <-chan struct{}) {
	t.Helper()
	pool := persisttest.Pool(t, env.RouterURL)
	deadline := time.Now().Add(45 * time.Second)
	for ; time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		select {
		case <-done:
			return
		default:
		}
		v, err := shardmap.CurrentVersion(ctx, pool)
		if err != nil {
			t.Error(err)
			return
		}
		if v == env.Map.Version {
			continue
		}
		var waiting int
		err = pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = $1 AND wait_event_type = 'Lock' AND query ILIKE 'LOCK TABLE%'`, db).Scan(&waiting)
		if err != nil {
			t.Error(err)
			return
		}
		if waiting > 0 {
			return
		}
	}
	t.Error("the move neither finished nor waited for the writes in flight within 45s")
}

// storedOnceUnderCurrentMap fails t unless every message has exactly one
// row, in the database that holds its shard under the current map, and
// none anywhere else.
func storedOnceUnderCurrentMap(t testing.TB, env *persisttest.Env, msgs []proto.Message) {
	t.Helper()
	m, err := shardmap.Load(testContext(t), persisttest.Pool(t, env.RouterURL))
	if err != nil {
		t.Fatal(err)
	}
	all := copiesOf(t, env, msgs)
	bad := 0
	for _, msg := range msgs {
		meta, _ := topic.MetaOf(msg)
		idx, _ := locality.Of(meta.Location.GetLatitude(), meta.Location.GetLongitude())
		owner := m.Shards[m.ShardOf(idx)]
		for i, n := range all[meta.ID] {
			if want := map[bool]int{true: 1}[env.Shards[i].Name == owner]; n != want {
				if bad < 5 {
					t.Errorf("%T %s: rows per database %v, want one in %s only", msg, meta.ID, all[meta.ID], owner)
				}
				bad++
				break
			}
		}
	}
	if bad > 0 {
		t.Errorf("%d of %d acknowledged records not stored exactly once under map version %d", bad, len(msgs), m.Version)
	}
}

// TestMoveWhileLockSessionDies is issue 9's first failure mode: the
// persister's router session (and with it its shared lock) dies while its
// inserts are uncommitted on the old database, and a shard move runs
// meanwhile. Every acknowledged row must be in the shard's database after
// the move, once. Dying before the persister's lock check makes the write
// transient (retried under the new map); dying just after it makes the
// move wait for the commit and copy the late rows before it deletes.
func TestMoveWhileLockSessionDies(t *testing.T) {
	for _, tc := range []struct {
		name string
		// after the check: the write succeeds at once
		afterCheck bool
	}{
		{name: "session dies before the lock check", afterCheck: false},
		{name: "session dies after the lock check", afterCheck: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testContext(t)
			env := persisttest.New(t)
			target := env.AddShard(t)
			sink := newSink(t, env)
			before := edinburgh(20)
			if err := sink.Write(ctx, records(0, before...)); err != nil {
				t.Fatal(err)
			}
			tool, err := shards.New(ctx, shards.Config{RouterURL: env.RouterURL, LockTimeout: 20 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(tool.Close)

			var (
				once    sync.Once
				done    = make(chan struct{})
				moveErr error
				out     bytes.Buffer
				killed  int
			)
			hook := func() {
				once.Do(func() {
					killed = terminateLockHolders(t, ctx, env)
					go func() {
						defer close(done)
						moveErr = tool.Move(ctx, edinburghShard, target.Name, &out)
					}()
					waitMoveSettled(t, ctx, env, env.Shards[0].Name, done)
				})
			}
			if tc.afterCheck {
				sink.SetHooks(nil, hook)
			} else {
				sink.SetHooks(hook, nil)
			}

			batch := edinburgh(10)
			recs := records(100, batch...)
			var errs []error
			for attempt := 0; ; attempt++ {
				err := sink.Write(ctx, recs)
				if err == nil {
					break
				}
				errs = append(errs, err)
				var pe *runtime.PermanentError
				if errors.As(err, &pe) || attempt >= 5 {
					t.Fatalf("write attempts failed: %v", errors.Join(errs...))
				}
			}
			if killed != 1 {
				t.Errorf("terminated %d lock sessions, want 1", killed)
			}
			switch {
			case !tc.afterCheck && (len(errs) == 0 || !errors.Is(errs[0], persist.ErrLockLost)):
				t.Errorf("first write after losing the lock: errors %v, want one wrapping ErrLockLost", errs)
			case tc.afterCheck && len(errs) > 0:
				t.Errorf("write with the lock lost after the check failed first: %v", errs)
			}
			select {
			case <-done:
				t.Logf("move output:\n%s", out.String())
				if moveErr != nil {
					t.Fatalf("move: %v", moveErr)
				}
			case <-ctx.Done():
				t.Fatal("move did not finish")
			}
			storedOnceUnderCurrentMap(t, env, append(before, batch...))
			if n := persisttest.Count(t, env.Shards[0].URL, "visits", edinburghShard); n != 0 {
				t.Errorf("old database still holds %d visits of shard %d", n, edinburghShard)
			}
		})
	}
}
