// Package shards is the logic of `chapper shards`: show the shard map with
// row counts, register a database, move a logical shard to another
// database while the persisters keep writing, and clean up rows left behind
// by an interrupted move.
//
// A move copies the shard's rows in rounds while writes go on, then holds
// shardmap.WriteLock exclusively (every persister holds it shared around
// each batch, so this waits for the batches in flight and holds new ones)
// while it copies the last rows, checks the counts and publishes the new map
// version (on the session holding the lock); persisters then re-read the
// map and write to the new database. Then it waits for writes still in
// flight on the old database (a persister whose lock session died), copies
// what they committed, verifies by content that every row of the shard is
// in the new database, and deletes the old copy up to what it verified. Rows are only ever inserted, never
// updated, and every table carries seq, an insertion counter local to its
// database: rows with seq above a mark taken under the lock are exactly the
// rows committed after it.
package shards

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/chapper/chapper/pipelines/persist/migrations"
	"github.com/chapper/chapper/pipelines/shardmap"
)

// Tables are the record tables a move copies.
var Tables = []string{"visits", "intentions", "followups"}

// Errors returned by Move.
var (
	ErrMoveInProgress = errors.New("another shard move or clean-up is in progress")
	ErrSameDatabase   = errors.New("the shard is already in that database")
	ErrNoShard        = errors.New("no such logical shard")
	ErrCountMismatch  = errors.New("row counts differ after copying")
	ErrMissingRows    = errors.New("rows of the old copy are missing in the new one")
	ErrLateRows       = errors.New("rows arrived in the old database after the move verified it")
)

// Config configures the shard tool.
type Config struct {
	// RouterURL is the router database.
	RouterURL string
	// LockTimeout bounds each wait for the write lock (in-flight batches
	// finishing) during a move.
	LockTimeout time.Duration
	// CatchUpRows: a move repeats its unlocked copy rounds while a round
	// copied more rows than this, so the locked final round stays short.
	CatchUpRows int
	// Logger receives warnings; nil means slog.Default().
	Logger *slog.Logger
}

// RegisterFlags registers the tool's flags under prefix: -<prefix>.router-url,
// -<prefix>.lock-timeout and -<prefix>.catch-up-rows.
func (c *Config) RegisterFlags(prefix string, fs *flag.FlagSet) {
	fs.StringVar(&c.RouterURL, prefix+".router-url", "postgres://postgres@127.0.0.1:15432/chapper_router?sslmode=disable",
		"Router database URL.")
	fs.DurationVar(&c.LockTimeout, prefix+".lock-timeout", time.Minute,
		"Longest wait for the persisters' in-flight batches when a move takes the write lock.")
	fs.IntVar(&c.CatchUpRows, prefix+".catch-up-rows", 10000,
		"A move copies without the lock until a round copies fewer rows than this.")
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	if c.RouterURL == "" {
		return errors.New("router database URL not set")
	}
	return nil
}

// Tool runs the shard commands against one router database.
type Tool struct {
	cfg    Config
	log    *slog.Logger
	router *pgxpool.Pool
}

// New connects to the router database.
func New(ctx context.Context, cfg Config) (*Tool, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.LockTimeout <= 0 {
		cfg.LockTimeout = time.Minute
	}
	if cfg.CatchUpRows <= 0 {
		cfg.CatchUpRows = 10000
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	pool, err := pgxpool.New(ctx, cfg.RouterURL)
	if err != nil {
		return nil, fmt.Errorf("connecting to the router database: %w", err)
	}
	return &Tool{cfg: cfg, log: log, router: pool}, nil
}

// Close closes the router connections.
func (t *Tool) Close() { t.router.Close() }

// counts are row counts per table, in Tables order.
type counts [3]int64

func (c counts) total() int64 { return c[0] + c[1] + c[2] }

func (c counts) String() string {
	return fmt.Sprintf("visits %d, intentions %d, followups %d", c[0], c[1], c[2])
}

// rowCounts returns the rows per logical shard in the database at url.
func rowCounts(ctx context.Context, url string) (map[int]counts, error) {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	out := map[int]counts{}
	for i, tbl := range Tables {
		rows, err := conn.Query(ctx, fmt.Sprintf("SELECT shard, count(*) FROM %s GROUP BY shard", tbl))
		if err != nil {
			return nil, err
		}
		var shard int
		var n int64
		_, err = pgx.ForEachRow(rows, []any{&shard, &n}, func() error {
			c := out[shard]
			c[i] = n
			out[shard] = c
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Show writes the current map version, the databases with the shards they
// hold, and the rows per logical shard per table; rows a database holds for
// a shard it does not own (left by an interrupted move) are listed apart.
func (t *Tool) Show(ctx context.Context, w io.Writer) error {
	m, err := shardmap.Load(ctx, t.router)
	if err != nil {
		return err
	}
	var (
		created time.Time
		note    string
	)
	if err := t.router.QueryRow(ctx, `SELECT created_at, note FROM shard_map_versions WHERE version = $1`, m.Version).
		Scan(&created, &note); err != nil {
		return fmt.Errorf("reading shard map version: %w", err)
	}
	fmt.Fprintf(w, "shard map version %d, %d logical shards (%d bits), published %s: %s\n\n",
		m.Version, len(m.Shards), m.Bits, created.UTC().Format(time.RFC3339), note)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "database\tshards\tconnection")
	for _, d := range m.Databases {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", d.Name, ranges(m.ShardsOn(d.Name)), redact(d.Conninfo))
	}
	tw.Flush()
	fmt.Fprintln(w)

	perDB := map[string]map[int]counts{}
	for _, d := range m.Databases {
		c, err := rowCounts(ctx, d.Conninfo)
		if err != nil {
			fmt.Fprintf(w, "%s: cannot count rows: %v\n", d.Name, err)
			continue
		}
		perDB[d.Name] = c
	}
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "shard\tdatabase\tvisits\tintentions\tfollowups\t")
	var total counts
	for s, name := range m.Shards {
		c := perDB[name][s]
		for i := range c {
			total[i] += c[i]
		}
		fmt.Fprintf(tw, "%d\t%s\t%d\t%d\t%d\t\n", s, name, c[0], c[1], c[2])
	}
	fmt.Fprintf(tw, "all\t\t%d\t%d\t%d\t\n", total[0], total[1], total[2])
	tw.Flush()

	var stray []string
	for _, d := range m.Databases {
		for s, c := range perDB[d.Name] {
			if s >= len(m.Shards) || m.Shards[s] != d.Name {
				stray = append(stray, fmt.Sprintf("  %s holds %s of shard %d (owned by %s)", d.Name, c, s, owner(m, s)))
			}
		}
	}
	if len(stray) > 0 {
		slices.Sort(stray)
		fmt.Fprintf(w, "\nstray rows, not read by the router (an interrupted move; `chapper shards clean` deletes them):\n%s\n",
			strings.Join(stray, "\n"))
	}
	return nil
}

func owner(m *shardmap.Map, s int) string {
	if s < 0 || s >= len(m.Shards) {
		return "no database"
	}
	return m.Shards[s]
}

// ranges renders ascending shard numbers as "0-4,6,8-31 (30)".
func ranges(shards []int) string {
	if len(shards) == 0 {
		return "-"
	}
	var parts []string
	for i := 0; i < len(shards); {
		j := i
		for j+1 < len(shards) && shards[j+1] == shards[j]+1 {
			j++
		}
		if i == j {
			parts = append(parts, fmt.Sprint(shards[i]))
		} else {
			parts = append(parts, fmt.Sprintf("%d-%d", shards[i], shards[j]))
		}
		i = j + 1
	}
	return fmt.Sprintf("%s (%d)", strings.Join(parts, ","), len(shards))
}

// redact hides a password in a key=value connection string.
func redact(conninfo string) string {
	fields := strings.Fields(conninfo)
	for i, f := range fields {
		if strings.HasPrefix(f, "password=") {
			fields[i] = "password=xxxxx"
		}
	}
	return strings.Join(fields, " ")
}

// Add registers database name (conninfo: URL or key=value string, reachable
// from the persisters and from the router's server) as a possible target of
// moves and migrates it to the shard schema.
func (t *Tool) Add(ctx context.Context, name, conninfo string, w io.Writer) error {
	ci, err := shardmap.Conninfo(conninfo)
	if err != nil {
		return err
	}
	applied, err := migrations.Apply(ctx, migrations.ShardSchema, ci)
	if err != nil {
		return err
	}
	if err := shardmap.AddDatabase(ctx, t.router, shardmap.Database{Name: name, Conninfo: ci}); err != nil {
		return err
	}
	fmt.Fprintf(w, "registered shard database %s (migrations applied: %v)\n", name, applied)
	return nil
}

// moveLock takes MoveLock on a dedicated router connection; release frees it.
func (t *Tool) moveLock(ctx context.Context) (release func(), err error) {
	conn, err := t.router.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("connecting to the router database: %w", err)
	}
	var ok bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, shardmap.MoveLock).Scan(&ok); err != nil {
		conn.Release()
		return nil, fmt.Errorf("taking the move lock: %w", err)
	}
	if !ok {
		conn.Release()
		return nil, ErrMoveInProgress
	}
	return func() { unlock(conn, `SELECT pg_advisory_unlock($1)`, shardmap.MoveLock) }, nil
}

// writeLock takes shardmap.WriteLock exclusively on a dedicated router
// connection, waiting at most LockTimeout for the batches in flight. While
// it is held no persister writes.
func (t *Tool) writeLock(ctx context.Context) (conn *pgxpool.Conn, release func(), waited time.Duration, err error) {
	conn, err = t.router.Acquire(ctx)
	if err != nil {
		return nil, nil, 0, fmt.Errorf("connecting to the router database: %w", err)
	}
	start := time.Now()
	lctx, cancel := context.WithTimeout(ctx, t.cfg.LockTimeout)
	defer cancel()
	if _, err := conn.Exec(lctx, `SELECT pg_advisory_lock($1)`, shardmap.WriteLock); err != nil {
		// a cancelled wait may leave the connection in doubt: drop it
		_ = conn.Conn().Close(context.WithoutCancel(ctx))
		conn.Release()
		return nil, nil, 0, fmt.Errorf("taking the write lock (waiting for in-flight batches): %w", err)
	}
	return conn, func() { unlock(conn, `SELECT pg_advisory_unlock($1)`, shardmap.WriteLock) }, time.Since(start), nil
}

// unlock runs an advisory unlock; if that fails, closing the session
// releases the lock anyway.
func unlock(conn *pgxpool.Conn, sql string, key int64) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := conn.Exec(ctx, sql, key); err != nil {
		_ = conn.Conn().Close(ctx)
	}
	conn.Release()
}

// Move moves logical shard to database to (registered with Add, or named in
// the seed file), writing progress to w. It is safe while any number of
// persisters write; they pause only while the last rows are copied and the
// map switched. On an error before the switch the map is unchanged (rows
// already copied to the target are stray rows, ignored by the router and
// replaced by the next move there); after the switch Move only cleans up.
func (t *Tool) Move(ctx context.Context, shard int, to string, w io.Writer) error {
	release, err := t.moveLock(ctx)
	if err != nil {
		return err
	}
	defer release()
	m, err := shardmap.Load(ctx, t.router)
	if err != nil {
		return err
	}
	if shard < 0 || shard >= len(m.Shards) {
		return fmt.Errorf("shard %d: %w (the map has %d)", shard, ErrNoShard, len(m.Shards))
	}
	from := m.Shards[shard]
	if from == to {
		return fmt.Errorf("shard %d in %s: %w", shard, to, ErrSameDatabase)
	}
	src, _ := m.Database(from)
	dst, ok := m.Database(to)
	if !ok {
		return fmt.Errorf("%w: %s (register it with `chapper shards add`)", shardmap.ErrNoDatabase, to)
	}
	start := time.Now()
	fmt.Fprintf(w, "moving shard %d from %s to %s (map version %d)\n", shard, from, to, m.Version)
	if _, err := migrations.Apply(ctx, migrations.ShardSchema, dst.Conninfo); err != nil {
		return err
	}
	sp, err := pgxpool.New(ctx, src.Conninfo)
	if err != nil {
		return fmt.Errorf("connecting to %s: %w", from, err)
	}
	defer sp.Close()
	dp, err := pgxpool.New(ctx, dst.Conninfo)
	if err != nil {
		return fmt.Errorf("connecting to %s: %w", to, err)
	}
	defer dp.Close()
	cp := &copier{src: sp, dst: dp, shard: shard}
	if err := cp.columns(ctx); err != nil {
		return err
	}

	// Rows of this shard in the target are left from an earlier move away
	// or an interrupted one: never read by the router, replaced now.
	if n, err := deleteShard(ctx, dp, shard, counts{-1, -1, -1}); err != nil {
		return fmt.Errorf("deleting stale rows of shard %d in %s: %w", shard, to, err)
	} else if n.total() > 0 {
		fmt.Fprintf(w, "deleted stale rows of shard %d in %s: %s\n", shard, to, n)
	}

	// Copy rounds without the lock: each takes a mark (the highest seq per
	// table, read while no batch is in flight, so every row up to it is
	// committed) and copies the rows between the previous mark and it.
	var mark counts
	for round := 1; ; round++ {
		next, waited, err := t.mark(ctx, sp)
		if err != nil {
			return err
		}
		n, err := cp.copy(ctx, mark, next)
		if err != nil {
			return err
		}
		mark = next
		fmt.Fprintf(w, "round %d: copied %s (waited %s for the write lock)\n", round, n, waited.Round(time.Millisecond))
		if n.total() < int64(t.cfg.CatchUpRows) || round >= 10 {
			break
		}
	}

	// Final round under the lock: nothing is written meanwhile by a
	// persister that still holds its shared lock.
	lockConn, unlockWrites, waited, err := t.writeLock(ctx)
	if err != nil {
		return err
	}
	paused := time.Now()
	var final counts
	version, err := func() (int64, error) {
		defer unlockWrites()
		var err error
		if final, err = readMark(ctx, sp); err != nil {
			return 0, err
		}
		n, err := cp.copy(ctx, mark, final)
		if err != nil {
			return 0, err
		}
		fmt.Fprintf(w, "final round (writes paused): copied %s\n", n)
		if _, err := cp.copyReplaced(ctx); err != nil {
			return 0, err
		}
		cs, err := shardCounts(ctx, sp, shard, final)
		if err != nil {
			return 0, fmt.Errorf("counting rows in %s: %w", from, err)
		}
		cd, err := shardCounts(ctx, dp, shard, counts{-1, -1, -1})
		if err != nil {
			return 0, fmt.Errorf("counting rows in %s: %w", to, err)
		}
		if cs != cd {
			return 0, fmt.Errorf("shard %d: %s has %s, %s has %s: %w; the map is unchanged", shard, from, cs, to, cd, ErrCountMismatch)
		}
		fmt.Fprintf(w, "counted: both databases hold %s\n", cs)
		next := m.Clone()
		next.Shards[shard] = to
		// Published on the session that holds the write lock: if that
		// session died meanwhile (and with it the lock, so persisters may
		// have written under the old map), the switch does not happen.
		tx, err := lockConn.Begin(ctx)
		if err != nil {
			return 0, fmt.Errorf("publishing the new map: %w", err)
		}
		defer tx.Rollback(context.WithoutCancel(ctx))
		v, err := shardmap.Publish(ctx, tx, next, fmt.Sprintf("moved shard %d from %s to %s", shard, from, to))
		if err != nil {
			return 0, err
		}
		if err := tx.Commit(ctx); err != nil {
			return 0, fmt.Errorf("publishing the new map: %w", err)
		}
		return v, nil
	}()
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "switched: map version %d; writes paused %s (plus %s waiting for in-flight batches)\n",
		version, time.Since(paused).Round(time.Millisecond), waited.Round(time.Millisecond))

	// A persister whose router session died while it wrote (idle timeout,
	// terminated backend, TCP reset) lost its shared lock without knowing:
	// its rows may still land in the old database after the final round.
	// It checks its lock after inserting and before committing, so any such
	// transaction already holds its table locks now; a SHARE lock on the
	// tables waits for every one of them to end. Then the rows that came
	// after the final mark are copied, and every row of the shard in the old
	// database is looked up in the new one before anything is deleted.
	if err := barrier(ctx, sp, t.cfg.LockTimeout); err != nil {
		return fmt.Errorf("waiting for writes in flight on %s: %w; the old copy is kept (`chapper shards clean` deletes it)", from, err)
	}
	upto, err := readMark(ctx, sp)
	if err != nil {
		return err
	}
	late, err := cp.copy(ctx, final, upto)
	if err != nil {
		return fmt.Errorf("%w; the old copy is kept", err)
	}
	if late.total() > 0 {
		fmt.Fprintf(w, "copied rows committed after the final round (writers that lost their lock): %s\n", late)
	}
	if _, err := cp.copyReplaced(ctx); err != nil {
		return fmt.Errorf("%w; the old copy is kept", err)
	}
	checked, err := cp.verify(ctx, upto)
	if err != nil {
		return fmt.Errorf("shard %d: %w; the old copy in %s is kept", shard, err, from)
	}
	fmt.Fprintf(w, "verified: every row of shard %d in %s is in %s (%s)\n", shard, from, to, checked)
	n, err := deleteShard(ctx, sp, shard, upto)
	if err != nil {
		return fmt.Errorf("deleting the old copy of shard %d in %s: %w (`chapper shards clean` retries)", shard, from, err)
	}
	fmt.Fprintf(w, "deleted the old copy in %s: %s\n", from, n)
	left, err := shardCounts(ctx, sp, shard, counts{-1, -1, -1})
	if err != nil {
		return fmt.Errorf("counting rows left in %s: %w", from, err)
	}
	if left.total() > 0 {
		return fmt.Errorf("shard %d: %s holds %s written after the verification: %w; kept as stray rows (a writer outside the lock?)",
			shard, from, left, ErrLateRows)
	}
	fmt.Fprintf(w, "done in %s\n", time.Since(start).Round(time.Millisecond))
	return nil
}

// barrier waits, at most timeout, until every transaction that is writing
// to the record tables of the database behind pool has ended: a SHARE lock
// conflicts with the ROW EXCLUSIVE lock every insert holds until it
// commits. Writers queue behind it only while it waits.
func barrier(ctx context.Context, pool *pgxpool.Pool, timeout time.Duration) error {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if _, err := tx.Exec(ctx, fmt.Sprintf("SET LOCAL lock_timeout = %d", max(1, timeout.Milliseconds()))); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, "LOCK TABLE "+strings.Join(Tables, ", ")+" IN SHARE MODE"); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// readMark returns the highest seq per table of the database behind pool.
func readMark(ctx context.Context, pool *pgxpool.Pool) (counts, error) {
	var c counts
	err := pool.QueryRow(ctx, `SELECT (SELECT coalesce(max(seq), 0) FROM visits),
		(SELECT coalesce(max(seq), 0) FROM intentions), (SELECT coalesce(max(seq), 0) FROM followups)`).Scan(&c[0], &c[1], &c[2])
	if err != nil {
		return counts{}, fmt.Errorf("reading the copy mark: %w", err)
	}
	return c, nil
}

// mark reads the highest seq per table of the source database while holding
// the write lock (briefly: only in-flight batches are waited for).
func (t *Tool) mark(ctx context.Context, src *pgxpool.Pool) (counts, time.Duration, error) {
	_, unlockWrites, waited, err := t.writeLock(ctx)
	if err != nil {
		return counts{}, 0, err
	}
	defer unlockWrites()
	c, err := readMark(ctx, src)
	return c, waited, err
}

// shardCounts counts the rows of shard per table, only those with seq up
// to upto[i] (upto[i] < 0: all).
func shardCounts(ctx context.Context, pool *pgxpool.Pool, shard int, upto counts) (counts, error) {
	var c counts
	err := pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM visits WHERE shard = $1 AND ($2 < 0 OR seq <= $2)),
		(SELECT count(*) FROM intentions WHERE shard = $1 AND ($3 < 0 OR seq <= $3)),
		(SELECT count(*) FROM followups WHERE shard = $1 AND ($4 < 0 OR seq <= $4))`, shard, upto[0], upto[1], upto[2]).
		Scan(&c[0], &c[1], &c[2])
	return c, err
}

// deleteShard deletes the rows of shard, per table only those with seq up
// to upto[i] (upto[i] < 0: all).
func deleteShard(ctx context.Context, pool *pgxpool.Pool, shard int, upto counts) (counts, error) {
	var c counts
	for i, tbl := range Tables {
		tag, err := pool.Exec(ctx, fmt.Sprintf("DELETE FROM %s WHERE shard = $1 AND ($2 < 0 OR seq <= $2)", tbl), shard, upto[i])
		if err != nil {
			return c, err
		}
		c[i] = tag.RowsAffected()
	}
	return c, nil
}

// copier copies one logical shard's rows between two databases.
type copier struct {
	src, dst *pgxpool.Pool
	shard    int
	cols     [3]string // per table: the columns copied (all but seq)
}

// columns reads the copied columns of each table from the source and
// checks the target has the same.
func (c *copier) columns(ctx context.Context) error {
	q := `SELECT string_agg(quote_ident(column_name), ', ' ORDER BY ordinal_position)
		FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = $1 AND column_name <> 'seq'`
	for i, tbl := range Tables {
		var s, d string
		if err := c.src.QueryRow(ctx, q, tbl).Scan(&s); err != nil {
			return fmt.Errorf("reading the columns of %s: %w", tbl, err)
		}
		if err := c.dst.QueryRow(ctx, q, tbl).Scan(&d); err != nil {
			return fmt.Errorf("reading the columns of %s: %w", tbl, err)
		}
		if s != d {
			return fmt.Errorf("table %s differs between the databases (%s / %s): migrate both", tbl, s, d)
		}
		c.cols[i] = s
	}
	return nil
}

// copy copies the shard's rows with from[i] < seq <= to[i] (to[i] < 0: no
// upper bound) of every table, each table in one transaction on the target:
// COPY out of the source, COPY into a temporary table, then an idempotent
// INSERT ... SELECT ... ON CONFLICT DO NOTHING.
func (c *copier) copy(ctx context.Context, from, to counts) (counts, error) {
	var n counts
	for i, tbl := range Tables {
		where := fmt.Sprintf("shard = %d AND seq > %d", c.shard, from[i])
		if to[i] >= 0 {
			if to[i] <= from[i] {
				continue
			}
			where += fmt.Sprintf(" AND seq <= %d", to[i])
		}
		copied, err := c.copyTable(ctx, tbl, c.cols[i], where)
		if err != nil {
			return n, fmt.Errorf("copying %s of shard %d: %w", tbl, c.shard, err)
		}
		n[i] = copied
	}
	return n, nil
}

func (c *copier) copyTable(ctx context.Context, tbl, cols, where string) (int64, error) {
	sconn, err := c.src.Acquire(ctx)
	if err != nil {
		return 0, err
	}
	defer sconn.Release()
	dconn, err := c.dst.Acquire(ctx)
	if err != nil {
		return 0, err
	}
	defer dconn.Release()
	tx, err := dconn.Begin(ctx)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	tmp := "move_" + tbl
	// the columns' types without their constraints
	if _, err := tx.Exec(ctx, fmt.Sprintf("CREATE TEMP TABLE %s ON COMMIT DROP AS SELECT %s FROM %s WITH NO DATA", tmp, cols, tbl)); err != nil {
		return 0, err
	}
	if _, err := pipe(ctx, sconn, tx, fmt.Sprintf("COPY (SELECT %s FROM %s WHERE %s) TO STDOUT (FORMAT binary)", cols, tbl, where),
		fmt.Sprintf("COPY %s (%s) FROM STDIN (FORMAT binary)", tmp, cols)); err != nil {
		return 0, err
	}
	tag, err := tx.Exec(ctx, fmt.Sprintf("INSERT INTO %s (%s) SELECT %s FROM %s ON CONFLICT DO NOTHING", tbl, cols, cols, tmp))
	if err != nil {
		return 0, err
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, err
	}
	return tag.RowsAffected(), nil
}

// Clean deletes stray rows: rows a database holds for a logical shard the
// current map assigns elsewhere (left by an interrupted move). It takes the
// move lock, so it never races a move.
func (t *Tool) Clean(ctx context.Context, w io.Writer) error {
	release, err := t.moveLock(ctx)
	if err != nil {
		return err
	}
	defer release()
	m, err := shardmap.Load(ctx, t.router)
	if err != nil {
		return err
	}
	total := int64(0)
	for _, d := range m.Databases {
		cs, err := rowCounts(ctx, d.Conninfo)
		if err != nil {
			return fmt.Errorf("counting rows in %s: %w", d.Name, err)
		}
		var stray []int
		for s := range cs {
			if s >= len(m.Shards) || m.Shards[s] != d.Name {
				stray = append(stray, s)
			}
		}
		if len(stray) == 0 {
			continue
		}
		slices.Sort(stray)
		pool, err := pgxpool.New(ctx, d.Conninfo)
		if err != nil {
			return fmt.Errorf("connecting to %s: %w", d.Name, err)
		}
		for _, s := range stray {
			n, err := deleteShard(ctx, pool, s, counts{-1, -1, -1})
			if err != nil {
				pool.Close()
				return fmt.Errorf("deleting stray rows of shard %d in %s: %w", s, d.Name, err)
			}
			total += n.total()
			fmt.Fprintf(w, "%s: deleted stray rows of shard %d: %s\n", d.Name, s, n)
		}
		pool.Close()
	}
	fmt.Fprintf(w, "deleted %d stray rows\n", total)
	return nil
}

// copyReplaced copies the replaced ids of corrections (every database
// holding shards has all of them) from the source to the target, which
// may not have held any shard before.
func (c *copier) copyReplaced(ctx context.Context) (int64, error) {
	n, err := c.copyTable(ctx, "replaced", "kind, id, by_id, by_received", "true")
	if err != nil {
		return 0, fmt.Errorf("copying the replaced ids of corrections: %w", err)
	}
	return n, nil
}

// verify checks by content that every row of the shard in the source with
// seq up to upto[i] is in the target: the ids are streamed into a temporary
// table on the target and looked up there. It returns the rows checked, or
// an error wrapping ErrMissingRows naming some missing ids.
func (c *copier) verify(ctx context.Context, upto counts) (counts, error) {
	var n counts
	for i, tbl := range Tables {
		checked, missing, err := c.verifyTable(ctx, tbl, fmt.Sprintf("shard = %d AND seq <= %d", c.shard, upto[i]))
		if err != nil {
			return n, fmt.Errorf("verifying %s of shard %d: %w", tbl, c.shard, err)
		}
		if len(missing) > 0 {
			return n, fmt.Errorf("%s: %w, e.g. %s", tbl, ErrMissingRows, strings.Join(missing, ", "))
		}
		n[i] = checked
	}
	return n, nil
}

func (c *copier) verifyTable(ctx context.Context, tbl, where string) (checked int64, missing []string, err error) {
	sconn, err := c.src.Acquire(ctx)
	if err != nil {
		return 0, nil, err
	}
	defer sconn.Release()
	dconn, err := c.dst.Acquire(ctx)
	if err != nil {
		return 0, nil, err
	}
	defer dconn.Release()
	tx, err := dconn.Begin(ctx)
	if err != nil {
		return 0, nil, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	tmp := "verify_" + tbl
	if _, err := tx.Exec(ctx, fmt.Sprintf("CREATE TEMP TABLE %s (id uuid) ON COMMIT DROP", tmp)); err != nil {
		return 0, nil, err
	}
	tag, err := pipe(ctx, sconn, tx, fmt.Sprintf("COPY (SELECT id FROM %s WHERE %s) TO STDOUT (FORMAT binary)", tbl, where),
		fmt.Sprintf("COPY %s (id) FROM STDIN (FORMAT binary)", tmp))
	if err != nil {
		return 0, nil, err
	}
	rows, err := tx.Query(ctx, fmt.Sprintf(`SELECT v.id::text FROM %s v
		WHERE NOT EXISTS (SELECT 1 FROM %s t WHERE t.shard = %d AND t.id = v.id) LIMIT 5`, tmp, tbl, c.shard))
	if err != nil {
		return 0, nil, err
	}
	missing, err = pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return 0, nil, err
	}
	return tag, missing, nil
}

// pipe streams the output of copyOut on src into copyIn on tx and returns
// the rows copied.
func pipe(ctx context.Context, src *pgxpool.Conn, tx pgx.Tx, copyOut, copyIn string) (int64, error) {
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		_, err := src.Conn().PgConn().CopyTo(ctx, pw, copyOut)
		pw.CloseWithError(err)
		done <- err
	}()
	tag, err := tx.Conn().PgConn().CopyFrom(ctx, pr, copyIn)
	pr.CloseWithError(err) // unblocks the writer side if CopyFrom stopped early
	if cerr := <-done; cerr != nil {
		return 0, cerr
	}
	if err != nil {
		return 0, err
	}
	return tag.RowsAffected(), nil
}
