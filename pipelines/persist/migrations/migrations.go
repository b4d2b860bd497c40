// Package migrations holds the versioned SQL schema of Chapper's Postgres
// databases, embedded in the binary, and applies it with goose: the shard
// schema (tables visits, intentions, followups) to every shard database,
// the router schema (the shard map, PL/Proxy and the router functions) to
// the router database. Applying is idempotent: a database already at the
// latest version is left as it is, so `chapper migrate` and dev mode run it
// at every start. Concurrent runs against one database are serialised by a
// goose advisory lock.
package migrations

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log/slog"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"

	"github.com/chapper/chapper/pipelines/shardmap"
)

//go:embed shard/*.sql router/*.sql
var files embed.FS

// Schema names one of the two schemas.
type Schema string

// The schemas.
const (
	// ShardSchema is applied to every shard database.
	ShardSchema Schema = "shard"
	// RouterSchema is applied to the router database.
	RouterSchema Schema = "router"
)

// Apply migrates the database at url (a URL or key=value connection string)
// to the latest version of schema and returns the versions it applied
// (none when it was up to date).
func Apply(ctx context.Context, schema Schema, url string) (applied []int64, err error) {
	fsys, err := fs.Sub(files, string(schema))
	if err != nil {
		return nil, err
	}
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("migrating %s database: %w", schema, err)
	}
	db := stdlib.OpenDB(*cfg)
	defer db.Close()
	p, err := newProvider(db, fsys)
	if err != nil {
		return nil, fmt.Errorf("migrating %s database %s: %w", schema, cfg.Database, err)
	}
	results, err := p.Up(ctx)
	if err != nil {
		return nil, fmt.Errorf("migrating %s database %s: %w", schema, cfg.Database, err)
	}
	for _, r := range results {
		applied = append(applied, r.Source.Version)
	}
	return applied, nil
}

// Version returns the schema version of the database at url and the latest
// version this binary knows.
func Version(ctx context.Context, schema Schema, url string) (current, latest int64, err error) {
	fsys, err := fs.Sub(files, string(schema))
	if err != nil {
		return 0, 0, err
	}
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return 0, 0, fmt.Errorf("reading %s schema version: %w", schema, err)
	}
	db := stdlib.OpenDB(*cfg)
	defer db.Close()
	p, err := newProvider(db, fsys)
	if err != nil {
		return 0, 0, fmt.Errorf("reading %s schema version of %s: %w", schema, cfg.Database, err)
	}
	current, latest, err = p.GetVersions(ctx)
	if err != nil {
		return 0, 0, fmt.Errorf("reading %s schema version of %s: %w", schema, cfg.Database, err)
	}
	return current, latest, nil
}

func newProvider(db *sql.DB, fsys fs.FS) (*goose.Provider, error) {
	// poll the migration lock every second for up to 5 minutes
	locker, err := lock.NewPostgresSessionLocker(lock.WithLockTimeout(1, 300))
	if err != nil {
		return nil, err
	}
	return goose.NewProvider(goose.DialectPostgres, db, fsys,
		goose.WithSessionLocker(locker), goose.WithDisableGlobalRegistry(true))
}

// Options configure Run.
type Options struct {
	// RouterURL is the router database (URL or key=value string).
	RouterURL string
	// ShardMapFile is the shard map file (shardmap.Parse) seeding an empty
	// router; "" means Seed, or the embedded default dev map.
	ShardMapFile string
	// Seed is the shard map published as version 1 when the router holds
	// none and ShardMapFile is empty; nil means shardmap.Default().
	// Databases without a connection string are resolved against RouterURL.
	Seed *shardmap.Map
	// Logger receives progress; nil means slog.Default().
	Logger *slog.Logger
}

// RegisterFlags registers -<prefix>.router-url and -<prefix>.shard-map.
func (o *Options) RegisterFlags(prefix string, fs *flag.FlagSet) {
	fs.StringVar(&o.RouterURL, prefix+".router-url", "postgres://postgres@127.0.0.1:15432/chapper_router?sslmode=disable",
		"Router database URL; the shard databases are found through its shard map.")
	fs.StringVar(&o.ShardMapFile, prefix+".shard-map", "",
		"Shard map file seeding an empty router (default: the built-in dev map, shards 0-31 in chapper_shard_0 and 32-63 in chapper_shard_1 on the router's server).")
}

// Validate checks the options.
func (o *Options) Validate() error {
	if o.RouterURL == "" {
		return ErrNoRouter
	}
	return nil
}

// ErrNoRouter is returned by Validate when no router database is set.
var ErrNoRouter = errors.New("router database URL not set")

// Run migrates everything, idempotently: the router database, then seeds
// the shard map if the router holds none, then every shard database
// registered in the router (those holding shards and targets of moves).
// It returns the map it left in place.
func Run(ctx context.Context, opts Options) (*shardmap.Map, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	applied, err := Apply(ctx, RouterSchema, opts.RouterURL)
	if err != nil {
		return nil, err
	}
	if len(applied) > 0 {
		log.Info("router database migrated", "versions", applied)
	}
	pool, err := pgxpool.New(ctx, opts.RouterURL)
	if err != nil {
		return nil, fmt.Errorf("connecting to the router database: %w", err)
	}
	defer pool.Close()
	if _, err := shardmap.Load(ctx, pool); errors.Is(err, shardmap.ErrNoMap) {
		seed := opts.Seed
		switch {
		case opts.ShardMapFile != "":
			if seed, err = shardmap.ParseFile(opts.ShardMapFile); err != nil {
				return nil, err
			}
		case seed == nil:
			seed = shardmap.Default()
		}
		seed = seed.Clone()
		if err := seed.Resolve(opts.RouterURL); err != nil {
			return nil, err
		}
		seeded, err := shardmap.Seed(ctx, pool, seed)
		if err != nil {
			return nil, err
		}
		if seeded {
			log.Info("shard map seeded", "bits", seed.Bits, "databases", len(seed.Databases))
		}
	} else if err != nil {
		return nil, err
	}
	m, err := shardmap.Load(ctx, pool)
	if err != nil {
		return nil, err
	}
	for _, d := range m.Databases {
		applied, err := Apply(ctx, ShardSchema, d.Conninfo)
		if err != nil {
			return nil, fmt.Errorf("shard database %s: %w", d.Name, err)
		}
		if len(applied) > 0 {
			log.Info("shard database migrated", "database", d.Name, "versions", applied)
		}
	}
	return m, nil
}
