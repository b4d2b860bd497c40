// Package persist is the Postgres sink: every record becomes a row of its
// kind's table (visits, intentions, followups) in the shard database that
// holds its logical shard (region mod 2^N, DESIGN.md), through the shard
// map kept in the router database.
//
// Write groups a batch by database and writes each group in one
// transaction with one set-based idempotent insert per table
// (INSERT ... SELECT FROM unnest(...) ON CONFLICT DO NOTHING), databases in
// parallel. It returns nil only when every database committed. A database
// that is down or read-only makes the whole batch fail transiently (the
// runtime retries it; rows already committed elsewhere are skipped as
// duplicates). A row that breaks a constraint forever comes back as a
// runtime.PermanentError failure of that record alone: the group is retried
// row by row behind savepoints to find it.
//
// Around each batch the sink holds shardmap.WriteLock in shared mode on the
// router and re-reads the map when its version changed, so a shard move
// (which takes the lock exclusively to switch the map) is safe with any
// number of persisters. The shard transactions commit only after a check
// that the lock's router session is still alive; a lost session makes the
// batch fail transiently (ErrLockLost) with nothing committed.
//
// A statement a database refuses whatever the data (SQLSTATE class 42 or
// 3F: a missing column or table, no privilege) makes Write return a
// *runtime.FatalError. A correction (a record with replaces_id) also
// writes its replaced id to every database holding shards, in the same
// pass, so that reads anywhere can leave the replaced record out.
package persist

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/chapper/chapper/pipelines/runtime"
	"github.com/chapper/chapper/pipelines/shardmap"
	"github.com/chapper/chapper/proto/topic"
)

// Name is the sink's name in metrics, logs and dead-letter headers.
const Name = "persist"

// connectTimeout bounds connecting to a database, so that an unreachable
// host fails the batch (to be retried) instead of hanging it.
const connectTimeout = 10 * time.Second

// Sink writes records to the shard databases. It is safe for concurrent
// use; concurrent Writes share the connection pools.
type Sink struct {
	cfg    Config
	log    *slog.Logger
	router *pgxpool.Pool

	mu    sync.Mutex
	m     *shardmap.Map
	pools map[string]*pgxpool.Pool // by connection string

	// Test seams (export_test.go): called in Write after every database
	// inserted its rows and before the lock check, and after the lock check
	// and before the commits.
	afterInsert, beforeCommit func()
}

// ErrLockLost is wrapped by the (transient) error of a Write whose router
// session, and with it the shared shard-map lock, died before the shard
// databases committed: nothing was committed, and the retry writes under
// the map current then.
var ErrLockLost = errors.New("shard map lock lost before the shard databases committed")

var _ runtime.Sink = (*Sink)(nil)

// New connects to the router database and loads the shard map. It fails
// when the router cannot be reached, holds no map (run `chapper migrate`)
// or holds one with another shard bit count than cfg.ShardBits. Shard
// databases are connected lazily, on first write.
func New(ctx context.Context, cfg Config) (*Sink, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	pcfg, err := pgxpool.ParseConfig(cfg.RouterURL)
	if err != nil {
		return nil, fmt.Errorf("parsing the router database URL: %w", err)
	}
	pcfg.MaxConns = int32(max(2, cfg.PoolSize))
	pcfg.ConnConfig.ConnectTimeout = connectTimeout
	router, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("connecting to the router database: %w", err)
	}
	s := &Sink{cfg: cfg, log: log, router: router, pools: map[string]*pgxpool.Pool{}}
	m, err := shardmap.Load(ctx, router)
	if err != nil {
		router.Close()
		return nil, fmt.Errorf("loading the shard map: %w", err)
	}
	if err := s.setMap(m); err != nil {
		router.Close()
		return nil, err
	}
	return s, nil
}

// Name returns "persist".
func (s *Sink) Name() string { return Name }

// Map returns the shard map the sink last wrote with.
func (s *Sink) Map() *shardmap.Map {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m
}

// Close closes every connection pool. Write must not be called after.
func (s *Sink) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range s.pools {
		p.Close()
	}
	s.pools = map[string]*pgxpool.Pool{}
	s.router.Close()
}

func (s *Sink) setMap(m *shardmap.Map) error {
	if m.Bits != s.cfg.ShardBits {
		return fmt.Errorf("shard map version %d has %d shard bits, configured %d: %w", m.Version, m.Bits, s.cfg.ShardBits, shardmap.ErrBits)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m != nil && s.m.Version != m.Version {
		s.log.Info("shard map changed", "from", s.m.Version, "to", m.Version)
	}
	s.m = m
	mapVersion.Set(float64(m.Version))
	return nil
}

// pool returns the connection pool of database d, creating it on first use.
func (s *Sink) pool(d shardmap.Database) (*pgxpool.Pool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p := s.pools[d.Conninfo]; p != nil {
		return p, nil
	}
	cfg, err := pgxpool.ParseConfig(d.Conninfo)
	if err != nil {
		return nil, fmt.Errorf("parsing the connection string of shard database %s: %w", d.Name, err)
	}
	cfg.MaxConns = int32(s.cfg.PoolSize)
	cfg.ConnConfig.ConnectTimeout = connectTimeout
	p, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		return nil, fmt.Errorf("connecting to shard database %s: %w", d.Name, err)
	}
	s.pools[d.Conninfo] = p
	return p, nil
}

// Write stores batch: see the package documentation. It returns nil when
// every record is stored, a *runtime.PermanentError listing the records
// that can never be stored (every other record is stored), or another
// error when the batch must be retried whole.
func (s *Sink) Write(ctx context.Context, batch []runtime.Record) error {
	if len(batch) == 0 {
		return nil
	}
	start := time.Now()
	defer func() { writeSeconds.Observe(time.Since(start).Seconds()) }()

	// The shared lock lives as long as this transaction: a shard move
	// cannot switch the map until every database below has committed.
	lock, err := s.router.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted, AccessMode: pgx.ReadOnly})
	if err != nil {
		return fmt.Errorf("locking the shard map: %w", err)
	}
	defer lock.Rollback(context.WithoutCancel(ctx))
	version, err := shardmap.LockShared(ctx, lock)
	if err != nil {
		if isFatal(err) {
			return runtime.Fatal(err)
		}
		return err
	}
	lockWaitSeconds.Observe(time.Since(start).Seconds())
	m := s.Map()
	if version != m.Version {
		if m, err = shardmap.Load(ctx, lock); err != nil {
			if isFatal(err) {
				return runtime.Fatal(fmt.Errorf("reloading the shard map: %w", err))
			}
			return fmt.Errorf("reloading the shard map: %w", err)
		}
		if err := s.setMap(m); err != nil {
			return err
		}
	}

	var failures []runtime.Failure
	groups := map[string][]row{}
	var corrections []row
	for i, rec := range batch {
		r, err := toRow(i, rec, m.Bits)
		if err != nil {
			failures = append(failures, runtime.Failure{Record: rec, Reason: err})
			continue
		}
		db := m.Shards[r.shard]
		groups[db] = append(groups[db], r)
		if r.replaces.Valid {
			corrections = append(corrections, r)
		}
	}
	if len(corrections) > 0 {
		// A correction may replace a record in any shard: every database
		// holding shards learns its replaced id, in this same pass.
		for _, d := range m.Databases {
			if _, ok := groups[d.Name]; !ok && len(m.ShardsOn(d.Name)) > 0 {
				groups[d.Name] = nil
			}
		}
	}

	// Phase one: every database inserts its group in an open transaction.
	preps := make([]*prepared, 0, len(groups))
	var wg sync.WaitGroup
	for name, rows := range groups {
		d, _ := m.Database(name)
		p := &prepared{name: name, rows: len(rows)}
		preps = append(preps, p)
		wg.Go(func() { p.tx, p.counts, p.bad, p.err = s.prepare(ctx, d, rows, corrections) })
	}
	wg.Wait()
	if s.afterInsert != nil {
		s.afterInsert()
	}
	// Phase two: the lock must still be held when the shards commit. The
	// router session may have died since it was granted (idle timeout,
	// terminated backend, TCP reset), and with it the lock: a shard move may
	// then have switched the map and these rows belong elsewhere. Every
	// insert above took its table locks before this check succeeded, so a
	// move that took the write lock after it waits for these commits on the
	// old database (see shards.Move) before it verifies and deletes there.
	if _, err := lock.Exec(ctx, "SELECT 1"); err != nil {
		for _, p := range preps {
			if p.tx != nil {
				_ = p.tx.Rollback(context.WithoutCancel(ctx))
			}
		}
		lockLostTotal.Inc()
		return fmt.Errorf("checking the shard map lock before committing %d records: %w (%w)", len(batch), ErrLockLost, err)
	}
	if s.beforeCommit != nil {
		s.beforeCommit()
	}
	// Phase three: commit. Every database finishes its transaction, even
	// when another failed: what committed need not be written again on the
	// retry.
	for _, p := range preps {
		if p.err != nil {
			continue
		}
		wg.Go(func() {
			if err := p.tx.Commit(ctx); err != nil {
				p.err = err
				return
			}
			countRows(p.counts)
		})
	}
	wg.Wait()
	var (
		errs  []error
		fatal bool
	)
	for _, p := range preps {
		if p.err != nil {
			databaseErrorsTotal.WithLabelValues(p.name).Inc()
			fatal = fatal || isFatal(p.err)
			errs = append(errs, fmt.Errorf("writing %d rows to shard database %s: %w", p.rows, p.name, p.err))
			continue
		}
		for _, b := range p.bad {
			failures = append(failures, runtime.Failure{Record: batch[b.rec], Reason: b.reason})
		}
	}
	if len(errs) > 0 {
		if fatal {
			return runtime.Fatal(errors.Join(errs...))
		}
		return errors.Join(errs...)
	}
	if len(failures) > 0 {
		rejectedTotal.Add(float64(len(failures)))
		slices.SortFunc(failures, func(a, b runtime.Failure) int {
			return cmp.Or(cmp.Compare(a.Record.Topic, b.Record.Topic),
				cmp.Compare(a.Record.Partition, b.Record.Partition), cmp.Compare(a.Record.Offset, b.Record.Offset))
		})
		return &runtime.PermanentError{Failures: failures}
	}
	return nil
}

// prepared is one database's share of a batch, inserted in tx and not yet
// committed.
type prepared struct {
	name   string
	rows   int
	tx     pgx.Tx // open when err is nil
	counts []count
	bad    []rejection
	err    error
}

// rejection is a row the database refused for good.
type rejection struct {
	rec    int
	reason error
}

// prepare inserts rows, and the replaced ids of the batch's corrections,
// into database d in one transaction and returns it open, ready to commit.
// When the database refuses some rows' data it inserts the rest, row by
// row, and returns the refused ones.
func (s *Sink) prepare(ctx context.Context, d shardmap.Database, rows, corrections []row) (pgx.Tx, []count, []rejection, error) {
	pool, err := s.pool(d)
	if err != nil {
		return nil, nil, nil, err
	}
	tx, counts, err := insertAll(ctx, pool, rows, corrections)
	if err == nil || !isDataError(err) {
		return tx, counts, nil, err
	}
	s.log.Debug("shard database refused a batch; writing it row by row", "database", d.Name, "rows", len(rows), "err", err)
	return insertEach(ctx, pool, rows, corrections)
}

// insertAll inserts rows and corrections' replaced ids in one transaction
// (begin and one insert per table go out together) and returns it open.
func insertAll(ctx context.Context, pool *pgxpool.Pool, rows, corrections []row) (pgx.Tx, []count, error) {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return nil, nil, err
	}
	var counts []count
	b := &pgx.Batch{}
	queueReplaced(b, corrections)
	queueInserts(b, rows, func(k topic.Kind, n, inserted int) { counts = append(counts, count{k, n, inserted}) })
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		_ = tx.Rollback(context.WithoutCancel(ctx))
		return nil, nil, err
	}
	return tx, counts, nil
}

// insertEach inserts rows one at a time behind savepoints, in one
// transaction that it returns open, with the rows the database refused for
// good.
func insertEach(ctx context.Context, pool *pgxpool.Pool, rows, corrections []row) (_ pgx.Tx, _ []count, _ []rejection, err error) {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return nil, nil, nil, err
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback(context.WithoutCancel(ctx))
		}
	}()
	if len(corrections) > 0 {
		b := &pgx.Batch{}
		queueReplaced(b, corrections)
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return nil, nil, nil, err
		}
	}
	var (
		counts []count
		bad    []rejection
	)
	for _, r := range rows {
		b := &pgx.Batch{}
		b.Queue("SAVEPOINT persist_row")
		var c []count
		queueInserts(b, []row{r}, func(k topic.Kind, n, inserted int) { c = append(c, count{k, n, inserted}) })
		b.Queue("RELEASE SAVEPOINT persist_row")
		err := tx.SendBatch(ctx, b).Close()
		if err == nil {
			counts = append(counts, c...)
			continue
		}
		if !isDataError(err) {
			return nil, nil, nil, err
		}
		bad = append(bad, rejection{r.rec, fmt.Errorf("inserting into %s: %w", r.kind, err)})
		// simple protocol: an aborted transaction refuses to parse anything
		// but its way out
		if _, err := tx.Exec(ctx, "ROLLBACK TO SAVEPOINT persist_row; RELEASE SAVEPOINT persist_row"); err != nil {
			return nil, nil, nil, err
		}
	}
	return tx, counts, bad, nil
}

type count struct {
	kind        topic.Kind
	n, inserted int
}

func countRows(counts []count) {
	for _, c := range counts {
		rowsTotal.WithLabelValues(string(c.kind), "inserted").Add(float64(c.inserted))
		rowsTotal.WithLabelValues(string(c.kind), "duplicate").Add(float64(c.n - c.inserted))
	}
}

// isFatal reports whether err is one no retry can help: the database
// refuses the statement itself, not the data (SQLSTATE class 42, syntax
// error or access rule violation: an undefined table or column after a
// missed migration, insufficient privilege; class 3F, an invalid schema).
// The deployment must be fixed; the consumer stops rather than retry for
// ever or dead-letter a healthy stream.
func isFatal(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || len(pgErr.Code) != 5 {
		return false
	}
	class := pgErr.Code[:2]
	return class == "42" || class == "3F"
}

// isDataError reports whether err is the database refusing the data itself
// (SQLSTATE class 22 data exception or 23 integrity constraint violation),
// which no retry will change. Anything else (connection lost, 08xxx; shut
// down, 57Pxx; read-only, 25006; ...) is transient.
func isDataError(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || len(pgErr.Code) != 5 {
		return false
	}
	class := pgErr.Code[:2]
	return class == "22" || class == "23"
}
