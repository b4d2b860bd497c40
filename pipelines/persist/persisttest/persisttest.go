// Package persisttest sets up sharded Postgres for tests: a router database
// and shard databases, migrated and with a seeded shard map, on the
// devtest clusters. Each test gets fresh databases cloned from migrated
// templates (made once per test binary), so a setup costs a few CREATE
// DATABASE ... TEMPLATE, not a migration.
package persisttest

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/chapper/chapper/pipelines/persist/migrations"
	"github.com/chapper/chapper/pipelines/shardmap"
	"github.com/chapper/chapper/services/devstack"
	"github.com/chapper/chapper/services/devstack/devtest"
)

// Template database names on a cluster, made once per test binary.
const (
	RouterTemplate = "chapper_tmpl_router"
	ShardTemplate  = "chapper_tmpl_shard"
)

var templates struct {
	mu   sync.Mutex
	done map[*devstack.Postgres]error
}

// Templates migrates the template databases on pg once per test binary
// (later calls return at once) and fails t if that failed.
func Templates(t testing.TB, pg *devstack.Postgres) {
	t.Helper()
	templates.mu.Lock()
	defer templates.mu.Unlock()
	if templates.done == nil {
		templates.done = map[*devstack.Postgres]error{}
	}
	err, ok := templates.done[pg]
	if !ok {
		err = makeTemplates(pg)
		templates.done[pg] = err
	}
	if err != nil {
		t.Fatalf("making template databases: %v", err)
	}
}

func makeTemplates(pg *devstack.Postgres) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, tm := range []struct {
		name   string
		schema migrations.Schema
	}{{RouterTemplate, migrations.RouterSchema}, {ShardTemplate, migrations.ShardSchema}} {
		if err := pg.CreateDatabase(ctx, tm.name, ""); err != nil {
			return err
		}
		if _, err := migrations.Apply(ctx, tm.schema, pg.URL(tm.name)); err != nil {
			return err
		}
	}
	return nil
}

// Env is one test's sharded Postgres.
type Env struct {
	// Router is the cluster holding the router database.
	Router *devstack.Postgres
	// RouterURL connects to the router database.
	RouterURL string
	// Shards are the shard databases in map order: Shards[0] holds logical
	// shards 0..31, Shards[1] 32..63 (for the default two).
	Shards []Shard
	// Map is the seeded map (version 1).
	Map *shardmap.Map

	t     testing.TB // the test that made e: owns the pools
	mu    sync.Mutex
	pools map[int]*pgxpool.Pool
}

// ShardPool returns a pool to e.Shards[i], opened on first use and closed
// when the test that made e ends.
func (e *Env) ShardPool(t testing.TB, i int) *pgxpool.Pool {
	t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	if p := e.pools[i]; p != nil {
		return p
	}
	if e.pools == nil {
		e.pools = map[int]*pgxpool.Pool{}
	}
	p := Pool(e.t, e.Shards[i].URL)
	e.pools[i] = p
	return p
}

// Shard is one shard database of an Env.
type Shard struct {
	// Name is the database's name, in the map and on its cluster.
	Name string
	// PG is the cluster holding it.
	PG *devstack.Postgres
	// URL connects to it.
	URL string
}

// New returns a fresh Env on the shared devtest cluster: a router and two
// shard databases, logical shards 0-31 in the first, 32-63 in the second
// (6 shard bits), like the default dev map. It skips under -short.
func New(t testing.TB) *Env {
	t.Helper()
	pg := devtest.Postgres(t)
	return NewOn(t, pg, pg, pg)
}

// NewOn is New with the router on router and one shard database on each
// of shards (at least one; the 64 logical shards are split into equal
// contiguous ranges). Shard databases on a cluster other than the shared
// one are migrated directly rather than cloned.
func NewOn(t testing.TB, router *devstack.Postgres, shards ...*devstack.Postgres) *Env {
	t.Helper()
	if len(shards) == 0 || 64%len(shards) != 0 {
		t.Fatalf("persisttest: %d shard databases do not divide 64 shards", len(shards))
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	Templates(t, router)
	e := &Env{Router: router, t: t}
	e.RouterURL = router.URL(devtest.Database(t, router, RouterTemplate))
	m := &shardmap.Map{Bits: shardmap.DefaultBits, Shards: make([]string, 64)}
	per := 64 / len(shards)
	for i, pg := range shards {
		var name string
		if pg == router {
			name = devtest.Database(t, pg, ShardTemplate)
		} else {
			name = devtest.Database(t, pg, "")
			if _, err := migrations.Apply(ctx, migrations.ShardSchema, pg.URL(name)); err != nil {
				t.Fatalf("migrating shard database: %v", err)
			}
		}
		sh := Shard{Name: name, PG: pg, URL: pg.URL(name)}
		e.Shards = append(e.Shards, sh)
		ci, err := shardmap.Conninfo(sh.URL)
		if err != nil {
			t.Fatal(err)
		}
		m.Databases = append(m.Databases, shardmap.Database{Name: name, Conninfo: ci})
		for s := i * per; s < (i+1)*per; s++ {
			m.Shards[s] = name
		}
	}
	pool := Pool(t, e.RouterURL)
	if _, err := shardmap.Seed(ctx, pool, m); err != nil {
		t.Fatalf("seeding shard map: %v", err)
	}
	loaded, err := shardmap.Load(ctx, pool)
	if err != nil {
		t.Fatalf("loading shard map: %v", err)
	}
	e.Map = loaded
	return e
}

// AddShard creates one more migrated shard database on the shared cluster,
// registers it in the router (holding no shards yet) and returns it.
func (e *Env) AddShard(t testing.TB) Shard {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	name := devtest.Database(t, e.Router, ShardTemplate)
	sh := Shard{Name: name, PG: e.Router, URL: e.Router.URL(name)}
	if err := shardmap.AddDatabase(ctx, Pool(t, e.RouterURL), shardmap.Database{Name: name, Conninfo: sh.URL}); err != nil {
		t.Fatalf("registering shard database: %v", err)
	}
	e.Shards = append(e.Shards, sh)
	return sh
}

// Pool opens a small pool to url, closed when t ends.
func Pool(t testing.TB, url string) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 4
	p, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// Count returns the rows of table in the database at url, optionally only
// those of logical shard (shard < 0: all).
func Count(t testing.TB, url, table string, shard int) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("counting rows: %v", err)
	}
	defer conn.Close(context.Background())
	var n int
	q := fmt.Sprintf("SELECT count(*) FROM %s WHERE $1 < 0 OR shard = $1", pgx.Identifier{table}.Sanitize())
	if err := conn.QueryRow(ctx, q, shard).Scan(&n); err != nil {
		t.Fatalf("counting rows of %s: %v", table, err)
	}
	return n
}

// Tables are the record tables of every shard database.
var Tables = []string{"visits", "intentions", "followups"}

// Total returns the rows of every record table over every shard database
// of e, counting only the logical shards each holds under the current map
// (copies left behind by a move do not count).
func (e *Env) Total(t testing.TB) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := shardmap.Load(ctx, Pool(t, e.RouterURL))
	if err != nil {
		t.Fatalf("loading shard map: %v", err)
	}
	total := 0
	for _, sh := range e.Shards {
		shards := m.ShardsOn(sh.Name)
		if len(shards) == 0 {
			continue
		}
		conn, err := pgx.Connect(ctx, sh.URL)
		if err != nil {
			t.Fatalf("counting rows: %v", err)
		}
		var n int
		err = conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM visits WHERE shard = ANY ($1))
			+ (SELECT count(*) FROM intentions WHERE shard = ANY ($1))
			+ (SELECT count(*) FROM followups WHERE shard = ANY ($1))`, shards).Scan(&n)
		conn.Close(context.Background())
		if err != nil {
			t.Fatalf("counting rows in %s: %v", sh.Name, err)
		}
		total += n
	}
	return total
}
