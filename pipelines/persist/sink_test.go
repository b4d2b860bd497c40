package persist_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/chapper/chapper/pipelines/persist"
	"github.com/chapper/chapper/pipelines/persist/persisttest"
	"github.com/chapper/chapper/pipelines/runtime"
	"github.com/chapper/chapper/pipelines/runtime/sinktest"
	"github.com/chapper/chapper/pipelines/shardmap"
	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"github.com/chapper/chapper/proto/locality"
	"github.com/chapper/chapper/proto/topic"
	"github.com/chapper/chapper/services/devstack/devtest"
)

func TestMain(m *testing.M) { devtest.Main(m) }

const testTimeout = 60 * time.Second

func testContext(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// newSink returns a sink over env, closed when t ends.
func newSink(t testing.TB, env *persisttest.Env) *persist.Sink {
	t.Helper()
	s, err := persist.New(testContext(t), persist.Config{RouterURL: env.RouterURL, PoolSize: 4, ShardBits: 6})
	if err != nil {
		t.Fatalf("persist.New: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

var t0 = time.Date(2026, 5, 2, 9, 0, 0, 0, time.UTC)

func newID() string { return uuid.Must(uuid.NewV7()).String() }

// kinds returns a visit, an intention and a follow-up at lat, lon.
func kinds(lat, lon float64, at time.Time) []proto.Message {
	loc := &canvassv1.Location{Latitude: lat, Longitude: lon}
	ts := timestamppb.New(at)
	return []proto.Message{
		&canvassv1.Visit{Id: newID(), DwellingId: "d-1", Address: "1 High Street", Location: loc,
			CanvasserId: "c-1", VisitedAt: ts, Outcome: canvassv1.Outcome_OUTCOME_ANSWERED},
		&canvassv1.Intention{Id: newID(), VisitId: newID(), ElectorId: "e-1", Option: "Green",
			Location: loc, RecordedAt: ts, CanvasserId: "c-1"},
		&canvassv1.FollowupRequest{Id: newID(), VisitId: newID(), ElectorId: "e-1", Issue: "bins",
			Method: canvassv1.Method_METHOD_EMAIL, Location: loc, RecordedAt: ts, CanvasserId: "c-1"},
	}
}

// records wraps messages as the runtime hands them to a sink, at
// consecutive offsets from first.
func records(first int64, msgs ...proto.Message) []runtime.Record {
	out := make([]runtime.Record, len(msgs))
	for i, m := range msgs {
		k, _ := topic.KindOf(m)
		value, _ := proto.Marshal(m)
		out[i] = runtime.Record{
			Topic: k.Topic(), Partition: 3, Offset: first + int64(i), Value: value, Message: m,
			Headers: []runtime.Header{{Key: topic.HeaderReceivedAt, Value: []byte(t0.Add(time.Hour).Format(time.RFC3339Nano))}},
		}
	}
	return out
}

func idOf(m proto.Message) string {
	meta, _ := topic.MetaOf(m)
	return meta.ID
}

// dbOf returns the index in env.Shards of the database holding m.
func dbOf(t testing.TB, env *persisttest.Env, m proto.Message) int {
	t.Helper()
	meta, _ := topic.MetaOf(m)
	idx, err := locality.Of(meta.Location.GetLatitude(), meta.Location.GetLongitude())
	if err != nil {
		t.Fatal(err)
	}
	name := env.Map.Shards[env.Map.ShardOf(idx)]
	for i, sh := range env.Shards {
		if sh.Name == name {
			return i
		}
	}
	t.Fatalf("no database %s", name)
	return -1
}

// copies returns how many rows with m's id each shard database holds.
func copies(t testing.TB, env *persisttest.Env, m proto.Message) []int {
	t.Helper()
	return copiesOf(t, env, []proto.Message{m})[idOf(m)]
}

// copiesOf returns, per message id, how many rows with that id each shard
// database holds.
func copiesOf(t testing.TB, env *persisttest.Env, msgs []proto.Message) map[string][]int {
	t.Helper()
	ids := map[topic.Kind][]string{}
	out := map[string][]int{}
	for _, m := range msgs {
		k, _ := topic.KindOf(m)
		ids[k] = append(ids[k], idOf(m))
		out[idOf(m)] = make([]int, len(env.Shards))
	}
	for i, sh := range env.Shards {
		pool := env.ShardPool(t, i)
		for k, list := range ids {
			rows, err := pool.Query(testContext(t),
				fmt.Sprintf("SELECT id::text, count(*) FROM %s WHERE id = ANY ($1::uuid[]) GROUP BY id", k), list)
			if err != nil {
				t.Fatalf("counting rows in %s: %v", sh.Name, err)
			}
			for rows.Next() {
				var id string
				var n int
				if err := rows.Scan(&id, &n); err != nil {
					t.Fatal(err)
				}
				out[id][i] = n
			}
			if err := rows.Err(); err != nil {
				t.Fatalf("counting rows in %s: %v", sh.Name, err)
			}
		}
	}
	return out
}

// checkOnce fails t unless each message is stored exactly once, in the
// database its region maps to.
func checkOnce(t testing.TB, env *persisttest.Env, msgs []proto.Message) {
	t.Helper()
	bad := 0
	all := copiesOf(t, env, msgs)
	for _, m := range msgs {
		c := all[idOf(m)]
		want := dbOf(t, env, m)
		for i, n := range c {
			if (i == want && n != 1) || (i != want && n != 0) {
				if bad < 5 {
					t.Errorf("%T %s: rows per database %v, want one in database %d", m, idOf(m), c, want)
				}
				bad++
				break
			}
		}
	}
	if bad > 0 {
		t.Errorf("%d of %d records not stored exactly once", bad, len(msgs))
	}
}

func TestRowsLandInTheirShard(t *testing.T) {
	env := persisttest.New(t)
	sink := newSink(t, env)
	ctx := testContext(t)
	tests := []struct {
		name                    string
		lat, lon                float64
		locality, chunk, region int64
		shard                   int
	}{
		{name: "Edinburgh", lat: 55.9533, lon: -3.1883, locality: 52543256811, chunk: 2101715362, region: 5254168, shard: 24},
		{name: "Glasgow", lat: 55.8642, lon: -4.2518, locality: 52511215748, chunk: 2100419149, region: 5250557, shard: 61},
		{name: "Stirling", lat: 56.1165, lon: -3.9369, locality: 52601936063, chunk: 2104091212, region: 5261360, shard: 48},
		{name: "cell edge", lat: 55.032, lon: -4.0, locality: 52211336000, chunk: 2088467200, region: 5221760, shard: 0},
		{name: "antimeridian west", lat: 0, lon: -180, locality: 32400000000, chunk: 1296000000, region: 3240000, shard: 0},
		{name: "antimeridian east", lat: 0, lon: 179.9999, locality: 32400359999, chunk: 1296071999, region: 3243599, shard: 15},
		{name: "north pole", lat: 90, lon: 0, locality: 64800180000, chunk: 2592036000, region: 6481800, shard: 8},
		{name: "south pole", lat: -90, lon: 0, locality: 180000, chunk: 36000, region: 1800, shard: 8},
	}
	msgs := map[string][]proto.Message{}
	var all []proto.Message
	for _, tt := range tests {
		msgs[tt.name] = kinds(tt.lat, tt.lon, t0)
		all = append(all, msgs[tt.name]...)
	}
	if err := sink.Write(ctx, records(0, all...)); err != nil {
		t.Fatalf("Write: %v", err)
	}
	router := persisttest.Pool(t, env.RouterURL)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := tt.shard / 32 // the test map: 0-31 in Shards[0], 32-63 in Shards[1]
			for _, m := range msgs[tt.name] {
				k, _ := topic.KindOf(m)
				if c := copies(t, env, m); c[want] != 1 || c[1-want] != 0 {
					t.Errorf("%s: rows per database %v, want one in database %d", k, c, want)
				}
				conn, err := pgx.Connect(ctx, env.Shards[want].URL)
				if err != nil {
					t.Fatal(err)
				}
				var shard, loc, chunk, region int64
				err = conn.QueryRow(ctx, fmt.Sprintf("SELECT shard, locality, chunk, region FROM %s WHERE id = $1", k), idOf(m)).
					Scan(&shard, &loc, &chunk, &region)
				conn.Close(context.Background())
				if err != nil {
					t.Fatalf("%s: reading row: %v", k, err)
				}
				if shard != int64(tt.shard) || loc != tt.locality || chunk != tt.chunk || region != tt.region {
					t.Errorf("%s: shard, locality, chunk, region = %d, %d, %d, %d; want %d, %d, %d, %d",
						k, shard, loc, chunk, region, tt.shard, tt.locality, tt.chunk, tt.region)
				}
				// and through the router, routed by locality
				var ids []string
				rows, err := router.Query(ctx, fmt.Sprintf("SELECT id::text FROM %s_by_locality($1, $2, $3)", k),
					tt.locality, t0.Add(-time.Minute), t0.Add(time.Minute))
				if err == nil {
					ids, err = pgx.CollectRows(rows, pgx.RowTo[string])
				}
				if err != nil {
					t.Fatalf("%s_by_locality: %v", k, err)
				}
				if len(ids) != 1 || ids[0] != idOf(m) {
					t.Errorf("%s_by_locality(%d) = %v, want [%s]", k, tt.locality, ids, idOf(m))
				}
			}
		})
	}
}

func TestRedeliveryStoresOnce(t *testing.T) {
	env := persisttest.New(t)
	sink := newSink(t, env)
	ctx := testContext(t)
	var msgs []proto.Message
	for i := range 40 {
		msgs = append(msgs, kinds(55.9+float64(i)*0.01, -3.2-float64(i)*0.05, t0.Add(time.Duration(i)*time.Minute))...)
	}
	batch := records(0, msgs...)
	tests := []struct {
		name  string
		batch []runtime.Record
	}{
		{name: "first delivery", batch: batch},
		{name: "same batch again", batch: batch},
		{name: "again at new offsets", batch: records(1000, msgs...)},
		{name: "duplicates within one batch", batch: append(records(2000, msgs[:30]...), records(3000, msgs[:30]...)...)},
		{name: "half of it", batch: batch[:len(batch)/2]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := sink.Write(ctx, tt.batch); err != nil {
				t.Fatalf("Write: %v", err)
			}
			if got := env.Total(t); got != len(msgs) {
				t.Errorf("rows = %d, want %d", got, len(msgs))
			}
		})
	}
	checkOnce(t, env, msgs)
}

// poison are records that decode but can never be stored, each with the
// SQLSTATE the database refuses it with ("" when the sink refuses it
// before the database).
func poison() []struct {
	name  string
	msg   proto.Message
	state string
} {
	loc := &canvassv1.Location{Latitude: 55.95, Longitude: -3.19}
	ts := timestamppb.New(t0)
	return []struct {
		name  string
		msg   proto.Message
		state string
	}{
		{name: "empty elector (CHECK)", state: "23514",
			msg: &canvassv1.Intention{Id: newID(), ElectorId: "", Option: "Green", Location: loc, RecordedAt: ts}},
		{name: "option too long (CHECK)", state: "23514",
			msg: &canvassv1.Intention{Id: newID(), ElectorId: "e", Option: strings.Repeat("x", 129), Location: loc, RecordedAt: ts}},
		{name: "NUL byte in text", state: "22021",
			msg: &canvassv1.FollowupRequest{Id: newID(), ElectorId: "e\x00vil", Issue: "bins", Location: loc, RecordedAt: ts}},
		{name: "outcome unknown to the schema", state: "22P02",
			msg: &canvassv1.Visit{Id: newID(), DwellingId: "d", Location: loc, VisitedAt: ts, Outcome: canvassv1.Outcome(99)}},
		{name: "no record time (NOT NULL)", state: "23502",
			msg: &canvassv1.Visit{Id: newID(), DwellingId: "d", Location: loc}},
		{name: "no location", msg: &canvassv1.Visit{Id: newID(), DwellingId: "d", VisitedAt: ts}},
		{name: "latitude out of range", msg: &canvassv1.Visit{Id: newID(), DwellingId: "d", VisitedAt: ts,
			Location: &canvassv1.Location{Latitude: 91, Longitude: 0}}},
		{name: "id not a UUID", msg: &canvassv1.Visit{Id: "not-a-uuid", DwellingId: "d", Location: loc, VisitedAt: ts}},
		{name: "visit_id not a UUID", msg: &canvassv1.Intention{Id: newID(), VisitId: "nope", ElectorId: "e", Option: "o",
			Location: loc, RecordedAt: ts}},
	}
}

func TestPoisonRowsFailAlone(t *testing.T) {
	env := persisttest.New(t)
	sink := newSink(t, env)
	ctx := testContext(t)
	for _, tt := range poison() {
		t.Run(tt.name, func(t *testing.T) {
			before := env.Total(t)
			// the poison sits between good rows bound for the same database
			good := append(kinds(55.95, -3.18, t0), kinds(55.96, -3.17, t0)...)
			msgs := append(append(append([]proto.Message{}, good[:3]...), tt.msg), good[3:]...)
			batch := records(100, msgs...)
			for attempt := range 2 { // and again: re-delivery changes nothing
				err := sink.Write(ctx, batch)
				var perm *runtime.PermanentError
				if !errors.As(err, &perm) {
					t.Fatalf("Write = %v, want a *runtime.PermanentError", err)
				}
				if len(perm.Failures) != 1 || perm.Failures[0].Record.Offset != 103 {
					t.Fatalf("failures = %v, want only the poison at offset 103", perm)
				}
				reason := perm.Failures[0].Reason
				var pgErr *pgconn.PgError
				switch {
				case tt.state == "" && !errors.Is(reason, persist.ErrUnstorable):
					t.Errorf("reason = %v, want ErrUnstorable", reason)
				case tt.state != "" && (!errors.As(reason, &pgErr) || pgErr.Code != tt.state):
					t.Errorf("reason = %v, want SQLSTATE %s", reason, tt.state)
				}
				if got := env.Total(t); got != before+len(good) {
					t.Errorf("attempt %d: rows = %d, want %d", attempt, got, before+len(good))
				}
			}
			checkOnce(t, env, good)
		})
	}
}

func TestShardBitsMustMatch(t *testing.T) {
	env := persisttest.New(t)
	_, err := persist.New(testContext(t), persist.Config{RouterURL: env.RouterURL, PoolSize: 1, ShardBits: 5})
	if !errors.Is(err, shardmap.ErrBits) {
		t.Errorf("New with 5 shard bits over a 6-bit map = %v, want ErrBits", err)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  persist.Config
		want error
	}{
		{name: "ok", cfg: persist.Config{RouterURL: "postgres://x/y", PoolSize: 1, ShardBits: 6}},
		{name: "no router", cfg: persist.Config{PoolSize: 1, ShardBits: 6}, want: persist.ErrNoRouter},
		{name: "no pool", cfg: persist.Config{RouterURL: "postgres://x/y", ShardBits: 6}, want: persist.ErrBadPoolSize},
		{name: "too many bits", cfg: persist.Config{RouterURL: "postgres://x/y", PoolSize: 1, ShardBits: 13}, want: persist.ErrBadShardBits},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.cfg.Validate(); !errors.Is(err, tt.want) {
				t.Errorf("Validate = %v, want %v", err, tt.want)
			}
		})
	}
}

// spread returns n records of all kinds around the three towns, over both
// shard databases of the test map.
func spread(seed uint64, n int) []proto.Message { return sinktest.Records(seed, n) }

func TestShardDatabaseDownMidStream(t *testing.T) {
	shared := devtest.Postgres(t)
	private := devtest.NewPostgres(t)
	env := persisttest.NewOn(t, shared, shared, private)
	sink := newSink(t, env)
	k := devtest.Kafka(t)
	sinktest.CreateTopics(t, k.Addr())
	cfg := sinktest.ConsumerConfig(k.Addr(), topic.GroupPersist)
	c := sinktest.Start(t, cfg, sink)

	first := spread(11, 300)
	sinktest.ProduceRecords(t, k.Addr(), first...)
	sinktest.WaitCommitted(t, k.Addr(), cfg.GroupID, testTimeout)

	if err := private.Stop(); err != nil {
		t.Fatal(err)
	}
	second := spread(12, 300)
	sinktest.ProduceRecords(t, k.Addr(), second...)
	// The batches touching the stopped database fail and are retried: the
	// consumer reports not ready, and nothing past them is committed.
	sinktest.Eventually(t, testTimeout, func() error {
		if c.Consumer.Ready() == nil {
			return errors.New("consumer still ready while a shard database is down")
		}
		return nil
	})
	end := sinktest.EndOffsets(t, k.Addr())
	committed := sinktest.Committed(t, k.Addr(), cfg.GroupID)
	behind := false
	for tp, off := range end {
		if committed[tp] < off {
			behind = true
		}
	}
	if !behind {
		t.Fatal("every offset committed while a shard database was down")
	}

	if err := private.Start(testContext(t)); err != nil {
		t.Fatal(err)
	}
	sinktest.WaitCommitted(t, k.Addr(), cfg.GroupID, testTimeout)
	all := append(first, second...)
	if got := env.Total(t); got != len(all) {
		t.Errorf("rows = %d, want %d", got, len(all))
	}
	checkOnce(t, env, all)
	if dead := sinktest.ReadTopic(t, k.Addr(), topic.DeadLetter); len(dead) > 0 {
		t.Errorf("%d records dead-lettered while a database was down, want none", len(dead))
	}
}

func TestReadOnlyDatabaseIsTransient(t *testing.T) {
	env := persisttest.New(t)
	sink := newSink(t, env)
	ctx := testContext(t)
	admin := persisttest.Pool(t, env.Router.URL("postgres"))
	ro := env.Shards[1].Name
	setReadOnly := func(on bool) {
		t.Helper()
		q := "ALTER DATABASE " + pgx.Identifier{ro}.Sanitize() + " SET default_transaction_read_only = " + strconv.FormatBool(on)
		if _, err := admin.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
		// sessions read the setting when they start
		if _, err := admin.Exec(ctx, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", ro); err != nil {
			t.Fatal(err)
		}
	}
	msgs := spread(21, 200)
	batch := records(0, msgs...)
	setReadOnly(true)
	sawReadOnly := false
	for range 3 { // the first write may only find its pooled connections closed
		err := sink.Write(ctx, batch)
		var (
			perm  *runtime.PermanentError
			fatal *runtime.FatalError
		)
		if err == nil || errors.As(err, &perm) || errors.As(err, &fatal) {
			t.Fatalf("Write to a read-only database = %v, want a transient error", err)
		}
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "25006" {
			sawReadOnly = true
			break
		}
	}
	if !sawReadOnly {
		t.Error("never saw read_only_sql_transaction (25006)")
	}
	setReadOnly(false)
	var err error
	for range 3 {
		if err = sink.Write(ctx, batch); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("Write after the database turned writable: %v", err)
	}
	if got := env.Total(t); got != len(msgs) {
		t.Errorf("rows = %d, want %d", got, len(msgs))
	}
}

// TestSchemaErrorsAreFatal: a statement the database refuses whatever the
// data (SQLSTATE class 42: a dropped column or table after a missed
// migration, a revoked privilege) is a *runtime.FatalError, never a dead
// letter and never retried for ever; once the schema is repaired the same
// batch is stored.
func TestSchemaErrorsAreFatal(t *testing.T) {
	for _, tc := range []struct {
		name, breakSQL, repairSQL, code string
	}{
		{name: "undefined column", code: "42703",
			breakSQL:  "ALTER TABLE intentions RENAME COLUMN option TO option_gone",
			repairSQL: "ALTER TABLE intentions RENAME COLUMN option_gone TO option"},
		{name: "undefined table", code: "42P01",
			breakSQL:  "ALTER TABLE followups RENAME TO followups_gone",
			repairSQL: "ALTER TABLE followups_gone RENAME TO followups"},
		{name: "insufficient privilege", code: "42501",
			breakSQL:  "REVOKE INSERT ON visits FROM chapper_test_writer",
			repairSQL: "GRANT INSERT ON visits TO chapper_test_writer"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testContext(t)
			env := persisttest.New(t)
			broken := env.ShardPool(t, 1)
			if tc.code == "42501" {
				asWriter(t, ctx, env, 1)
			}
			sink := newSink(t, env)
			msgs := spread(31, 120)
			batch := records(0, msgs...)
			if _, err := broken.Exec(ctx, tc.breakSQL); err != nil {
				t.Fatal(err)
			}
			err := sink.Write(ctx, batch)
			var (
				fatal *runtime.FatalError
				pgErr *pgconn.PgError
			)
			if !errors.As(err, &fatal) {
				t.Fatalf("Write = %v, want a *runtime.FatalError", err)
			}
			if !errors.As(err, &pgErr) || pgErr.Code != tc.code {
				t.Errorf("Write = %v, want SQLSTATE %s inside", err, tc.code)
			}
			if _, err := broken.Exec(ctx, tc.repairSQL); err != nil {
				t.Fatal(err)
			}
			if err := sink.Write(ctx, batch); err != nil {
				t.Fatalf("Write after the repair: %v", err)
			}
			if got := env.Total(t); got != len(msgs) {
				t.Errorf("rows = %d, want %d", got, len(msgs))
			}
		})
	}
}

// asWriter points shard database i of env at a login role
// chapper_test_writer that may only select and insert, as a production
// persister's role would.
func asWriter(t testing.TB, ctx context.Context, env *persisttest.Env, i int) {
	t.Helper()
	admin := env.ShardPool(t, i)
	for _, q := range []string{
		`DO $$ BEGIN CREATE ROLE chapper_test_writer LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$`,
		`GRANT SELECT, INSERT ON visits, intentions, followups TO chapper_test_writer`,
	} {
		if _, err := admin.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	u, err := url.Parse(env.Shards[i].URL)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.User("chapper_test_writer")
	ci, err := shardmap.Conninfo(u.String())
	if err != nil {
		t.Fatal(err)
	}
	router := persisttest.Pool(t, env.RouterURL)
	if _, err := router.Exec(ctx, `UPDATE shard_databases SET conninfo = $1 WHERE name = $2`, ci, env.Shards[i].Name); err != nil {
		t.Fatal(err)
	}
}

// store reads a test Env back for the conformance suite.
type store struct{ env *persisttest.Env }

func (s store) Has(t testing.TB, m proto.Message) bool {
	t.Helper()
	return copies(t, s.env, m)[dbOf(t, s.env, m)] == 1
}

func (s store) Total(t testing.TB) int { return s.env.Total(t) }

func TestConformance(t *testing.T) {
	sinktest.Run(t, sinktest.Harness{
		New: func(t testing.TB) (runtime.Sink, sinktest.Store) {
			env := persisttest.New(t)
			return newSink(t, env), store{env}
		},
		Poison: func(i int) proto.Message {
			p := poison()
			return p[i%5].msg // the ones the database refuses
		},
	})
}
