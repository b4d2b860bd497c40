package shardmap

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Advisory lock keys on the router database (advisory locks are scoped to
// one database, so these only have to be unique within the router).
const (
	// WriteLock is held in shared mode by every persister around each batch
	// write and in exclusive mode by a shard move while it switches the map.
	WriteLock int64 = 0x6368617070657201
	// MoveLock is held (session level) by the one shard move allowed at a
	// time.
	MoveLock int64 = 0x6368617070657202
)

// ErrExists is returned when registering a database under a name that is
// already taken by another connection string.
var ErrExists = errors.New("shard database already registered with another connection string")

// Querier is what the store functions need: *pgx.Conn, *pgxpool.Pool and
// pgx.Tx all have it.
type Querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Load reads the current (highest) version of the map from the router
// database, with every registered database. It returns ErrNoMap when the
// map was never seeded.
func Load(ctx context.Context, q Querier) (*Map, error) {
	rows, err := q.Query(ctx, `
		WITH cur AS (SELECT version, bits FROM shard_map_versions ORDER BY version DESC LIMIT 1)
		SELECT cur.version, cur.bits, m.shard, m.database
		FROM cur JOIN shard_map m USING (version)
		ORDER BY m.shard`)
	if err != nil {
		return nil, fmt.Errorf("loading shard map: %w", err)
	}
	m := &Map{}
	for rows.Next() {
		var (
			bits  int16
			shard int32
			db    string
		)
		if err := rows.Scan(&m.Version, &bits, &shard, &db); err != nil {
			return nil, fmt.Errorf("loading shard map: %w", err)
		}
		m.Bits = uint(bits)
		if int(shard) != len(m.Shards) {
			return nil, fmt.Errorf("%w: version %d has no row for shard %d", ErrInvalid, m.Version, len(m.Shards))
		}
		m.Shards = append(m.Shards, db)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("loading shard map: %w", err)
	}
	if m.Version == 0 {
		return nil, ErrNoMap
	}
	dbs, err := Databases(ctx, q)
	if err != nil {
		return nil, err
	}
	m.Databases = dbs
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("loading shard map version %d: %w", m.Version, err)
	}
	return m, nil
}

// Databases returns every registered shard database, sorted by name.
func Databases(ctx context.Context, q Querier) ([]Database, error) {
	rows, err := q.Query(ctx, `SELECT name, conninfo FROM shard_databases ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("listing shard databases: %w", err)
	}
	dbs, err := pgx.CollectRows(rows, pgx.RowToStructByPos[Database])
	if err != nil {
		return nil, fmt.Errorf("listing shard databases: %w", err)
	}
	return dbs, nil
}

// CurrentVersion returns the current map version (0 when never seeded).
func CurrentVersion(ctx context.Context, q Querier) (int64, error) {
	var v int64
	if err := q.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM shard_map_versions`).Scan(&v); err != nil {
		return 0, fmt.Errorf("reading shard map version: %w", err)
	}
	return v, nil
}

// LockShared takes WriteLock in shared mode for the rest of transaction tx
// (waiting while a shard move holds it) and then reads the current map
// version, in one round trip. Writers call it before each batch and keep tx
// open until the batch is written: a shard move cannot switch the map
// meanwhile. The version is read by a second statement, after the lock is
// granted, so that (read committed) it sees a switch made while waiting.
func LockShared(ctx context.Context, tx pgx.Tx) (version int64, err error) {
	b := &pgx.Batch{}
	b.Queue(`SELECT pg_advisory_xact_lock_shared($1)`, WriteLock)
	b.Queue(`SELECT coalesce(max(version), 0) FROM shard_map_versions`).QueryRow(func(r pgx.Row) error {
		return r.Scan(&version)
	})
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return 0, fmt.Errorf("locking the shard map for writing: %w", err)
	}
	return version, nil
}

// BeginShared begins a read-only transaction on conn, takes WriteLock in
// shared mode for the rest of it (waiting while a shard move holds it) and
// reads the current map version, all in one round trip (one simple-protocol
// query string: BEGIN, the lock, the version, each statement with its own
// snapshot, so the version sees a switch made while waiting). It is
// LockShared with the BEGIN folded in; the caller ends the transaction
// (ROLLBACK) to release the lock. On an error the transaction may be open:
// the caller closes or discards the connection.
func BeginShared(ctx context.Context, conn *pgconn.PgConn) (version int64, err error) {
	res, err := conn.Exec(ctx, beginShared).ReadAll()
	if err != nil {
		return 0, fmt.Errorf("locking the shard map for writing: %w", err)
	}
	if len(res) != 3 || len(res[2].Rows) != 1 || len(res[2].Rows[0]) != 1 {
		return 0, fmt.Errorf("locking the shard map for writing: %d results, want 3", len(res))
	}
	if version, err = strconv.ParseInt(string(res[2].Rows[0][0]), 10, 64); err != nil {
		return 0, fmt.Errorf("reading the shard map version: %w", err)
	}
	return version, nil
}

var beginShared = fmt.Sprintf(`BEGIN ISOLATION LEVEL READ COMMITTED READ ONLY; SELECT pg_advisory_xact_lock_shared(%d); `+
	`SELECT coalesce(max(version), 0) FROM shard_map_versions`, WriteLock)

// AddDatabase registers a database that can hold shards. Registering the
// same name and connection string again does nothing; another connection
// string under a taken name is ErrExists.
func AddDatabase(ctx context.Context, q Querier, d Database) error {
	ci, err := Conninfo(d.Conninfo)
	if err != nil {
		return fmt.Errorf("registering shard database %s: %w", d.Name, err)
	}
	var got string
	err = q.QueryRow(ctx, `
		WITH ins AS (
			INSERT INTO shard_databases (name, conninfo) VALUES ($1, $2)
			ON CONFLICT (name) DO NOTHING RETURNING conninfo)
		SELECT conninfo FROM ins
		UNION ALL SELECT conninfo FROM shard_databases WHERE name = $1
		LIMIT 1`, d.Name, ci).Scan(&got)
	if err != nil {
		return fmt.Errorf("registering shard database %s: %w", d.Name, err)
	}
	if got != ci {
		return fmt.Errorf("registering shard database %s: %w", d.Name, ErrExists)
	}
	return nil
}

// Publish registers m's databases and stores m as a new version (the
// current one plus one), returning that version. Run it in a transaction:
// readers see the whole new version or none of it. m.Version is ignored.
func Publish(ctx context.Context, tx pgx.Tx, m *Map, note string) (int64, error) {
	if err := m.Validate(); err != nil {
		return 0, err
	}
	var prevBits *int16
	err := tx.QueryRow(ctx, `SELECT bits FROM shard_map_versions ORDER BY version DESC LIMIT 1`).Scan(&prevBits)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return 0, fmt.Errorf("publishing shard map: %w", err)
	}
	if prevBits != nil && uint(*prevBits) != m.Bits {
		return 0, fmt.Errorf("publishing a map of %d bits over one of %d: %w", m.Bits, *prevBits, ErrBits)
	}
	for _, d := range m.Databases {
		if err := AddDatabase(ctx, tx, d); err != nil {
			return 0, err
		}
	}
	var v int64
	err = tx.QueryRow(ctx, `
		INSERT INTO shard_map_versions (version, bits, note)
		SELECT coalesce(max(version), 0) + 1, $1, $2 FROM shard_map_versions
		RETURNING version`, int16(m.Bits), note).Scan(&v)
	if err != nil {
		return 0, fmt.Errorf("publishing shard map: %w", err)
	}
	shards := make([]int32, len(m.Shards))
	for i := range shards {
		shards[i] = int32(i)
	}
	_, err = tx.Exec(ctx, `
		INSERT INTO shard_map (version, shard, database)
		SELECT $1, s, d FROM unnest($2::int[], $3::text[]) AS u(s, d)`, v, shards, m.Shards)
	if err != nil {
		return 0, fmt.Errorf("publishing shard map version %d: %w", v, err)
	}
	return v, nil
}

// Seed publishes m as version 1 when the router holds no map yet and
// reports whether it did. Concurrent seeds are serialised; the first wins.
func Seed(ctx context.Context, db interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}, m *Map) (seeded bool, err error) {
	tx, err := db.Begin(ctx)
	if err != nil {
		return false, fmt.Errorf("seeding shard map: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if _, err := tx.Exec(ctx, `LOCK TABLE shard_map_versions IN EXCLUSIVE MODE`); err != nil {
		return false, fmt.Errorf("seeding shard map: %w", err)
	}
	v, err := CurrentVersion(ctx, tx)
	if err != nil || v > 0 {
		return false, err
	}
	if _, err := Publish(ctx, tx, m, "seeded from shard map file"); err != nil {
		return false, err
	}
	if err := tx.Commit(ctx); err != nil {
		return false, fmt.Errorf("seeding shard map: %w", err)
	}
	return true, nil
}
