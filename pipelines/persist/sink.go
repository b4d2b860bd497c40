// Package persist is the Postgres sink: every record becomes a row of its
// kind's table (visits, intentions, followups) in the shard database that
// holds its logical shard (region mod 2^N, DESIGN.md), through the shard
// map kept in the router database.
//
// Write groups a batch by database and writes each group in one
// transaction, databases in parallel: first an optimistic binary COPY
// straight into each table (as fast as a plain COPY when every row is
// new); when a row is stored already (a unique violation: a re-delivery, a
// replay) the transaction rolls back to a savepoint taken at BEGIN and
// writes the group with one set-based idempotent insert per table
// (INSERT ... SELECT FROM unnest(...) ON CONFLICT DO NOTHING), which that
// database's next batches then use straight away for a while. It returns
// nil only when every database committed. A database
// that is down or read-only makes the whole batch fail transiently (the
// runtime retries it; rows already committed elsewhere are skipped as
// duplicates). A row that breaks a constraint forever comes back as a
// runtime.PermanentError failure of that record alone: the group is retried
// row by row behind savepoints to find it.
//
// Around each batch the sink holds shardmap.WriteLock in shared mode on the
// router and re-reads the map when its version changed, so a shard move
// (which takes the lock exclusively to switch the map) is safe with any
// number of persisters. Each shard transaction commits only after a check,
// made after its inserts, that the lock's router session is still alive; a
// lost session makes the batch fail transiently (ErrLockLost) with the
// databases not yet committed rolled back.
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
	"sync/atomic"
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

	mu       sync.Mutex
	m        *shardmap.Map
	pools    map[string]*pgxpool.Pool // by connection string
	skipCopy map[string]int           // batches left in a database's COPY backoff, by name

	unlocking sync.WaitGroup // lock sessions being released (unlock)

	// Test seams (export_test.go): called in Write for every database,
	// after it inserted its rows and before its lock check, and after its
	// lock check and before its commit.
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
	s := &Sink{cfg: cfg, log: log, router: router, pools: map[string]*pgxpool.Pool{}, skipCopy: map[string]int{}}
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
	s.unlocking.Wait()
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

	// The rows are converted while the lock's round trip is under way: a
	// row's shard depends on the shard bit count only, which every map the
	// sink accepts shares (setMap).
	var (
		rows     []row
		failures []runtime.Failure
	)
	converted := make(chan struct{})
	go func() {
		defer close(converted)
		rows, failures = toRows(batch, s.cfg.ShardBits)
	}()
	// The shared lock lives as long as this session's transaction: a shard
	// move cannot switch the map until every database below has committed.
	lock, version, err := s.lockShared(ctx)
	lockWait := time.Since(start)
	<-converted
	if err != nil {
		if isFatal(err) {
			return runtime.Fatal(err)
		}
		return err
	}
	defer s.unlock(lock)
	lockWaitSeconds.Observe(lockWait.Seconds())
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

	sizes := map[string]int{}
	for _, r := range rows {
		sizes[m.Shards[r.shard]]++
	}
	groups := make(map[string][]row, len(sizes))
	for db, n := range sizes {
		groups[db] = make([]row, 0, n)
	}
	var corrections []row
	for _, r := range rows {
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

	// Every database, in parallel: insert its group in a transaction, check
	// that the lock is still held, commit. The router session may have died
	// since the lock was granted (idle timeout, terminated backend, TCP
	// reset), and with it the lock: a shard move may then have switched the
	// map and these rows belong elsewhere. A database's inserts took their
	// table locks before its check succeeded, so a move that took the write
	// lock after that check waits for this commit on the old database (see
	// shards.Move) before it verifies and deletes there. A database commits
	// as soon as its own check passed, whatever the others do: a database
	// transaction never waits for another of the same batch, so two
	// persisters writing overlapping rows into two databases cannot wait for
	// each other across databases (a deadlock Postgres could not see), and
	// what committed need not be written again on the retry.
	lk := &lockCheck{lock: lock}
	preps := make([]*prepared, 0, len(groups))
	var wg sync.WaitGroup
	for name, rows := range groups {
		d, _ := m.Database(name)
		p := &prepared{name: name, rows: len(rows)}
		preps = append(preps, p)
		wg.Go(func() { s.writeDatabase(ctx, lk, p, d, rows, corrections) })
	}
	wg.Wait()
	if lk.err != nil {
		lockLostTotal.Inc()
	}
	var (
		errs  []error
		fatal bool
	)
	for _, p := range preps {
		if p.err != nil {
			if !errors.Is(p.err, ErrLockLost) {
				databaseErrorsTotal.WithLabelValues(p.name).Inc()
			}
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

// toRows converts batch's records to rows, with the records that can never
// be stored.
func toRows(batch []runtime.Record, bits uint) ([]row, []runtime.Failure) {
	rows := make([]row, 0, len(batch))
	var failures []runtime.Failure
	for i, rec := range batch {
		r, err := toRow(i, rec, bits)
		if err != nil {
			failures = append(failures, runtime.Failure{Record: rec, Reason: err})
			continue
		}
		rows = append(rows, r)
	}
	return rows, failures
}

// lockShared acquires a router session and takes the shared shard map
// lock on it in a transaction (shardmap.BeginShared: one round trip),
// returning the map version current once the lock was granted.
func (s *Sink) lockShared(ctx context.Context) (*pgxpool.Conn, int64, error) {
	conn, err := s.router.Acquire(ctx)
	if err != nil {
		return nil, 0, fmt.Errorf("locking the shard map: %w", err)
	}
	version, err := shardmap.BeginShared(ctx, conn.Conn().PgConn())
	if err != nil {
		// not idle: the pool closes the session, and with it its transaction
		conn.Release()
		return nil, 0, err
	}
	return conn, version, nil
}

// unlock ends the lock session's transaction, releasing the shared lock,
// without making the batch wait for it: the shards have committed or
// rolled back by then, and a lock held a little longer only delays a shard
// move. Close waits for it.
func (s *Sink) unlock(conn *pgxpool.Conn) {
	s.unlocking.Go(func() {
		ctx, cancel := context.WithTimeout(context.Background(), connectTimeout)
		defer cancel()
		_, _ = conn.Exec(ctx, "ROLLBACK")
		conn.Release() // closed instead when the ROLLBACK failed
	})
}

// prepared is one database's share of a batch and how writing it went.
type prepared struct {
	name string
	rows int
	bad  []rejection // rows the database refused for good
	err  error       // nil when committed
}

// writeDatabase writes p, database d's share of a batch: inserts, lock
// check, commit.
func (s *Sink) writeDatabase(ctx context.Context, lk *lockCheck, p *prepared, d shardmap.Database, rows, corrections []row) {
	tx, counts, bad, err := s.prepare(ctx, d, rows, corrections)
	if err != nil {
		p.err = err
		return
	}
	if s.afterInsert != nil {
		s.afterInsert()
	}
	if err := lk.check(ctx); err != nil {
		_ = tx.Rollback(context.WithoutCancel(ctx))
		p.err = fmt.Errorf("checking the shard map lock before committing: %w (%w)", ErrLockLost, err)
		return
	}
	if s.beforeCommit != nil {
		s.beforeCommit()
	}
	if err := tx.Commit(ctx); err != nil {
		p.err = err
		return
	}
	countRows(counts)
	p.bad = bad
}

// lockCheck checks a batch's router session (and with it its shared shard
// map lock) for every database about to commit. One check covers every
// database that had finished inserting when it started, so databases
// finishing together share one round trip.
type lockCheck struct {
	lock   *pgxpool.Conn
	issued atomic.Int64 // tickets: one per database done inserting

	mu      sync.Mutex
	checked int64 // every ticket up to this one is covered
	err     error // the first failed check: the lock is lost for good
}

// check returns nil when the lock is held now, after the caller's inserts.
func (c *lockCheck) check(ctx context.Context) error {
	ticket := c.issued.Add(1)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return c.err
	}
	if ticket <= c.checked {
		return nil
	}
	upTo := c.issued.Load()
	if _, err := c.lock.Exec(ctx, "SELECT 1"); err != nil {
		c.err = err
		return err
	}
	c.checked = upTo
	return nil
}

// rejection is a row the database refused for good.
type rejection struct {
	rec    int
	reason error
}

// copyBackoff is how many batches in a row a database is written with
// INSERT ... ON CONFLICT DO NOTHING straight away after its optimistic
// COPY met a row stored already: a stream carrying re-deliveries (a
// consumer restart, a replay beside the pipeline) then pays one failed COPY
// per copyBackoff batches, not one per batch.
const copyBackoff = 16

// Savepoint statements of the optimistic COPY: the savepoint is taken in
// the same round trip as BEGIN, so the fast path costs what a plain COPY
// does.
const (
	beginCopy    = "BEGIN; SAVEPOINT persist_copy"
	rollbackCopy = "ROLLBACK TO SAVEPOINT persist_copy"
)

// copyFirst reports whether database name's next batch tries the
// optimistic COPY, counting down its backoff.
func (s *Sink) copyFirst(name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.skipCopy[name] > 0 {
		s.skipCopy[name]--
		return false
	}
	return true
}

// copyConflict starts database name's backoff.
func (s *Sink) copyConflict(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.skipCopy[name] = copyBackoff
}

// prepare inserts rows, and the replaced ids of the batch's corrections,
// into database d in one transaction and returns it open, ready to commit.
// It first binary-COPYs the rows straight into the tables (as fast as a
// plain COPY); when a row is stored already (unique violation) it rolls
// back to the savepoint taken at BEGIN and inserts the batch idempotently
// in the same transaction. When the database refuses some rows' data it
// inserts the rest, row by row, and returns the refused ones.
func (s *Sink) prepare(ctx context.Context, d shardmap.Database, rows, corrections []row) (pgx.Tx, []count, []rejection, error) {
	pool, err := s.pool(d)
	if err != nil {
		return nil, nil, nil, err
	}
	var (
		tx     pgx.Tx
		counts []count
	)
	if s.copyFirst(d.Name) {
		tx, counts, err = s.copyAll(ctx, d.Name, pool, rows, corrections)
	} else {
		batchesTotal.WithLabelValues("insert").Inc()
		tx, counts, err = insertAll(ctx, pool, rows, corrections)
	}
	if err == nil || !isDataError(err) {
		return tx, counts, nil, err
	}
	batchesTotal.WithLabelValues("row_by_row").Inc()
	s.log.Debug("shard database refused a batch; writing it row by row", "database", d.Name, "rows", len(rows), "err", err)
	return insertEach(ctx, pool, rows, corrections)
}

// copyAll is prepare's optimistic path: BEGIN and a savepoint, the
// replaced ids, one binary COPY per table; on a unique violation, back to
// the savepoint and the idempotent inserts. It returns the transaction
// open, or an error with the transaction rolled back.
func (s *Sink) copyAll(ctx context.Context, name string, pool *pgxpool.Pool, rows, corrections []row) (_ pgx.Tx, _ []count, err error) {
	tx, err := pool.BeginTx(ctx, pgx.TxOptions{BeginQuery: beginCopy})
	if err != nil {
		return nil, nil, err
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback(context.WithoutCancel(ctx))
		}
	}()
	counts, err := copyRows(ctx, tx, rows)
	if err == nil && len(corrections) > 0 {
		b := &pgx.Batch{}
		queueReplaced(b, corrections)
		err = tx.SendBatch(ctx, b).Close()
	}
	if err == nil {
		batchesTotal.WithLabelValues("copy").Inc()
		return tx, counts, nil
	}
	if !isUniqueViolation(err) {
		return nil, nil, err
	}
	// A row stored already: a re-delivery, a replay, another persister.
	s.copyConflict(name)
	batchesTotal.WithLabelValues("copy_then_insert").Inc()
	if _, err := tx.Exec(ctx, rollbackCopy); err != nil {
		return nil, nil, err
	}
	if counts, err = insertIn(ctx, tx, rows, corrections); err != nil {
		return nil, nil, err
	}
	return tx, counts, nil
}

// insertAll inserts rows and corrections' replaced ids in one transaction
// and returns it open.
func insertAll(ctx context.Context, pool *pgxpool.Pool, rows, corrections []row) (pgx.Tx, []count, error) {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return nil, nil, err
	}
	counts, err := insertIn(ctx, tx, rows, corrections)
	if err != nil {
		_ = tx.Rollback(context.WithoutCancel(ctx))
		return nil, nil, err
	}
	return tx, counts, nil
}

// insertIn inserts rows and corrections' replaced ids in tx, one insert per
// table, all in one round trip.
func insertIn(ctx context.Context, tx pgx.Tx, rows, corrections []row) ([]count, error) {
	var counts []count
	b := &pgx.Batch{}
	queueReplaced(b, corrections)
	queueInserts(b, rows, func(k topic.Kind, n, inserted int) { counts = append(counts, count{k, n, inserted}) })
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return nil, err
	}
	return counts, nil
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

// isUniqueViolation reports whether err is SQLSTATE 23505 (a row with the
// same primary key is stored already).
func isUniqueViolation(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "23505"
}
