package migrations_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/chapper/chapper/pipelines/persist/migrations"
	"github.com/chapper/chapper/pipelines/shardmap"
	"github.com/chapper/chapper/services/devstack/devtest"
)

func TestMain(m *testing.M) { devtest.Main(m) }

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func TestApplyIsIdempotent(t *testing.T) {
	pg := devtest.Postgres(t)
	for _, schema := range []migrations.Schema{migrations.ShardSchema, migrations.RouterSchema} {
		t.Run(string(schema), func(t *testing.T) {
			ctx := testContext(t)
			url := pg.URL(devtest.Database(t, pg, ""))
			first, err := migrations.Apply(ctx, schema, url)
			if err != nil {
				t.Fatal(err)
			}
			if len(first) == 0 {
				t.Fatal("nothing applied to an empty database")
			}
			again, err := migrations.Apply(ctx, schema, url)
			if err != nil || len(again) != 0 {
				t.Errorf("second Apply = %v, %v; want nothing applied", again, err)
			}
			cur, latest, err := migrations.Version(ctx, schema, url)
			if err != nil || cur != latest || cur != first[len(first)-1] {
				t.Errorf("Version = %d, %d, %v; want both %d", cur, latest, err, first[len(first)-1])
			}
		})
	}
}

func TestRunSeedsOnceAndMigratesEveryShard(t *testing.T) {
	pg := devtest.Postgres(t)
	ctx := testContext(t)
	routerURL := pg.URL(devtest.Database(t, pg, ""))
	a, b := devtest.Database(t, pg, ""), devtest.Database(t, pg, "")
	seed, err := shardmap.Parse(strings.NewReader(fmt.Sprintf("bits 6\ndatabase %s\ndatabase %s\nshards 0-31 %[1]s\nshards 32-63 %[2]s\n", a, b)))
	if err != nil {
		t.Fatal(err)
	}
	for run := range 2 {
		m, err := migrations.Run(ctx, migrations.Options{RouterURL: routerURL, Seed: seed})
		if err != nil {
			t.Fatalf("run %d: %v", run, err)
		}
		if m.Version != 1 || m.Shards[0] != a || m.Shards[63] != b {
			t.Errorf("run %d: map version %d, shard 0 in %s, 63 in %s; want 1, %s, %s", run, m.Version, m.Shards[0], m.Shards[63], a, b)
		}
		if d, _ := m.Database(a); !strings.Contains(d.Conninfo, "dbname="+a) || strings.Contains(d.Conninfo, "://") {
			t.Errorf("conninfo of %s = %q, want key=value with dbname=%s", a, d.Conninfo, a)
		}
	}
	for _, db := range []string{a, b} {
		cur, latest, err := migrations.Version(ctx, migrations.ShardSchema, pg.URL(db))
		if err != nil || cur == 0 || cur != latest {
			t.Errorf("shard database %s at version %d of %d (%v), want the latest", db, cur, latest, err)
		}
	}
	// the router answers through PL/Proxy: every shard once, in its database
	pool, err := pgxpool.New(ctx, routerURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	var shards []int32
	if err := pool.QueryRow(ctx, `SELECT chapper_all_shards()`).Scan(&shards); err != nil {
		t.Fatal(err)
	}
	if len(shards) != 64 || shards[63] != 63 {
		t.Errorf("chapper_all_shards() = %v, want 0..63", shards)
	}
	var n int64
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM intentions_by_region('-infinity', 'infinity')`).Scan(&n); err != nil || n != 0 {
		t.Errorf("intentions_by_region on empty shards = %d rows, %v; want 0, nil", n, err)
	}
}

func TestShardMapStore(t *testing.T) {
	pg := devtest.Postgres(t)
	ctx := testContext(t)
	routerURL := pg.URL(devtest.Database(t, pg, ""))
	if _, err := migrations.Apply(ctx, migrations.RouterSchema, routerURL); err != nil {
		t.Fatal(err)
	}
	pool, err := pgxpool.New(ctx, routerURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if _, err := shardmap.Load(ctx, pool); !errors.Is(err, shardmap.ErrNoMap) {
		t.Fatalf("Load on an empty router = %v, want ErrNoMap", err)
	}
	m := shardmap.Default()
	if err := m.Resolve(routerURL); err != nil {
		t.Fatal(err)
	}
	for i, want := range []bool{true, false} {
		seeded, err := shardmap.Seed(ctx, pool, m)
		if err != nil || seeded != want {
			t.Errorf("Seed #%d = %v, %v; want %v", i+1, seeded, err, want)
		}
	}
	tests := []struct {
		name string
		do   func() error
		want error
	}{
		{name: "register the same again", do: func() error {
			return shardmap.AddDatabase(ctx, pool, m.Databases[0])
		}},
		{name: "register a name with another connection", do: func() error {
			return shardmap.AddDatabase(ctx, pool, shardmap.Database{Name: m.Databases[0].Name, Conninfo: "host=elsewhere"})
		}, want: shardmap.ErrExists},
		{name: "publish with other bits", do: func() error {
			other, _ := shardmap.Parse(strings.NewReader("bits 1\ndatabase chapper_shard_0 host=h\nshards 0-1 chapper_shard_0\n"))
			tx, err := pool.Begin(ctx)
			if err != nil {
				return err
			}
			defer tx.Rollback(ctx)
			_, err = shardmap.Publish(ctx, tx, other, "bad")
			return err
		}, want: shardmap.ErrBits},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.do(); !errors.Is(err, tt.want) {
				t.Errorf("got %v, want %v", err, tt.want)
			}
		})
	}
	next := m.Clone()
	next.Shards[5] = "chapper_shard_1"
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	v, err := shardmap.Publish(ctx, tx, next, "test")
	if err != nil || tx.Commit(ctx) != nil {
		t.Fatalf("Publish = %d, %v", v, err)
	}
	got, err := shardmap.Load(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	if got.Version != 2 || v != 2 || !slices.Equal(got.Shards, next.Shards) {
		t.Errorf("Load after Publish: version %d (published %d), shard 5 in %s", got.Version, v, got.Shards[5])
	}
	// PL/Proxy's view follows the versions too
	var pv int32
	if err := pool.QueryRow(ctx, `SELECT plproxy.get_cluster_version('chapper')`).Scan(&pv); err != nil || pv != 2 {
		t.Errorf("get_cluster_version = %d, %v; want 2", pv, err)
	}
	var parts []string
	rows, err := pool.Query(ctx, `SELECT plproxy.get_cluster_partitions('chapper')`)
	if err == nil {
		for rows.Next() {
			var p string
			_ = rows.Scan(&p)
			parts = append(parts, p)
		}
		err = rows.Err()
	}
	if err != nil || len(parts) != 64 || !strings.Contains(parts[5], "dbname=chapper_shard_1") || !strings.Contains(parts[4], "dbname=chapper_shard_0") {
		t.Errorf("get_cluster_partitions = %d partitions (%v), want 64 with shard 5 in chapper_shard_1", len(parts), err)
	}
}
