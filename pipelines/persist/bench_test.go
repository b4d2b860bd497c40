package persist

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/segmentio/kafka-go"
	"google.golang.org/protobuf/proto"

	"github.com/chapper/chapper/pipelines/persist/persisttest"
	"github.com/chapper/chapper/pipelines/runtime"
	"github.com/chapper/chapper/pipelines/runtime/sinktest"
	"github.com/chapper/chapper/proto/topic"
	"github.com/chapper/chapper/services/devstack"
	"github.com/chapper/chapper/services/devstack/devtest"
)

// The workload of BenchmarkPersist: benchRecords records (all kinds, around
// three towns, both shard databases), consumed in batches of benchBatch;
// every redeliverEvery-th record is delivered again redeliverLag records
// later in the redelivered stream (5%); the naive loop inserts only
// naiveRecords of them and is extrapolated.
const (
	benchRecords   = 100_000
	benchBatch     = 500
	redeliverEvery = 20
	redeliverLag   = 2_000
	naiveRecords   = 3_000
	benchRounds    = 2
)

// BenchmarkPersist measures the persister (the runtime consuming a filled
// 12-partition topic and the persist sink writing, timed from the first
// write to the last row written) next to raw pgx CopyFrom into the same
// tables, in the same batches, with every row prepared beforehand (not
// idempotent: the floor of what Postgres takes), measured just before each
// figure in every round (the machine's load drifts), best of benchRounds
// rounds each:
//   - fresh-rows-per-s: every row new (target: >= 90% of raw CopyFrom);
//   - redelivered-5pct-rows-per-s: a stream where one record in 20 comes
//     again 2,000 records later (a re-delivery at a new offset), rows
//     offered per second;
//   - replay-beside-rows-per-s: fresh rows while a second persister writes
//     the first half of the same records (a replay overlapping the
//     pipeline's range);
//   - sink-write-fresh-rows-per-s: Sink.Write alone (shard map lock
//     included) on the same batches, one after another, no Kafka: what
//     the runtime adds is the difference to fresh-rows-per-s;
//   - runtime-vs-sink-write-rows-per-s: fresh-rows-per-s with
//     sink-write-fresh-rows-per-s as its baseline, so the ratio is the
//     runtime's share alone.
//
// With CHAPPER_BENCH_PERSIST_ALTERNATIVES=1 it also measures, bare (the
// same batches, no Kafka, no decoding), the alternatives weighed for issue
// 14: the sink's optimistic COPY, the unnest INSERT ... ON CONFLICT DO
// NOTHING alone, each also with 5% of every batch re-delivered from the
// batch before, COPY into a temporary table then INSERT ... SELECT ... ON
// CONFLICT DO NOTHING, and a naive consumer inserting one row per
// statement, autocommit, on a sample. The cluster is durable (fsync and
// synchronous commit on), as in dev mode; every measurement writes into
// fresh databases. Figures go through devtest.ReportFigure.
func BenchmarkPersist(b *testing.B) {
	pg := durablePostgres(b)
	recs := sinktest.Records(77, benchRecords)
	msgs := make([]kafka.Message, len(recs))
	for i, r := range recs {
		msgs[i] = sinktest.Message(b, r)
	}
	fresh := devtest.Kafka(b)
	sinktest.CreateTopicsN(b, fresh.Addr(), 12)
	sinktest.Produce(b, fresh.Addr(), msgs...)
	var again []kafka.Message
	for i, m := range msgs {
		again = append(again, m)
		if i >= redeliverLag && i%redeliverEvery == 0 {
			again = append(again, msgs[i-redeliverLag])
		}
	}
	redelivered := devtest.Kafka(b)
	sinktest.CreateTopicsN(b, redelivered.Addr(), 12)
	sinktest.Produce(b, redelivered.Addr(), again...)
	alternatives := os.Getenv("CHAPPER_BENCH_PERSIST_ALTERNATIVES") == "1"

	// figures by name, each with the raw CopyFrom measured beside it
	type figure struct{ value, raw float64 }
	figs := map[string]*figure{}
	var order []string
	record := func(name string, value, raw float64) {
		f := figs[name]
		if f == nil {
			f = &figure{}
			figs[name] = f
			order = append(order, name)
		}
		f.value, f.raw = max(f.value, value), max(f.raw, raw)
	}
	var replayer float64
	b.ResetTimer()
	for i := range b.N {
		var batches [][]runtime.Record
		for round := range benchRounds {
			group := fmt.Sprintf("bench-%d-%d", i, round)
			rate, bs := benchPipeline(b, pg, fresh.Addr(), group, benchRecords, nil)
			batches = bs
			record("fresh-rows-per-s", rate, benchBare(b, pg, batches, rawCopyFrom, 0))
			raw := benchBare(b, pg, batches, rawCopyFrom, 0)
			sinkWrite := benchSinkWrite(b, pg, batches)
			record("sink-write-fresh-rows-per-s", sinkWrite, raw)
			record("runtime-vs-sink-write-rows-per-s", rate, sinkWrite)
			raw = benchBare(b, pg, batches, rawCopyFrom, 0)
			rate, _ = benchPipeline(b, pg, redelivered.Addr(), group, len(again), nil)
			record("redelivered-5pct-rows-per-s", rate, raw)
			raw = benchBare(b, pg, batches, rawCopyFrom, 0)
			var r float64
			rate, _ = benchPipeline(b, pg, fresh.Addr(), group+"-replay", benchRecords, func(env *persisttest.Env) func() {
				return benchReplay(b, env, batches[:len(batches)/2], &r)
			})
			record("replay-beside-rows-per-s", rate, raw)
			replayer = max(replayer, r)
			if !alternatives {
				continue
			}
			for _, alt := range []struct {
				name      string
				write     writeFunc
				redeliver float64
			}{
				{"bare-optimistic-copy-rows-per-s", optimisticCommit, 0},
				{"bare-optimistic-copy-5pct-rows-per-s", optimisticCommit, 0.05},
				{"bare-unnest-insert-rows-per-s", insertCommit, 0},
				{"bare-unnest-insert-5pct-rows-per-s", insertCommit, 0.05},
				{"bare-copy-temp-insert-rows-per-s", copyTempAll, 0},
			} {
				raw := benchBare(b, pg, batches, rawCopyFrom, 0)
				record(alt.name, benchBare(b, pg, batches, alt.write, alt.redeliver), raw)
			}
		}
		if alternatives {
			record("naive-insert-per-row-rows-per-s", benchNaive(b, pg, recs[:naiveRecords]), benchBare(b, pg, batches, rawCopyFrom, 0))
		}
	}
	b.StopTimer()
	fmt.Printf("BenchmarkPersist: %d records in batches of %d, 2 shard databases on one durable cluster, best of %d rounds; "+
		"the replaying persister wrote %.0f rows/s beside the pipeline\n", benchRecords, benchBatch, benchRounds, replayer)
	const raw = "raw pgx CopyFrom into the tables, same batches, not idempotent"
	for _, name := range order {
		target := ""
		if name == "fresh-rows-per-s" {
			target = "ratio>=0.9"
		}
		baseline := raw
		if name == "runtime-vs-sink-write-rows-per-s" {
			baseline = "Sink.Write alone on the same batches, one after another, no Kafka, same round"
		}
		f := figs[name]
		devtest.ReportFigure(b, devtest.Figure{Name: "BenchmarkPersist/" + name, Value: f.value, Unit: "rows/s",
			BaselineName: baseline, Baseline: f.raw, Target: target})
	}
	fresh0 := figs["fresh-rows-per-s"]
	b.ReportMetric(fresh0.value, "rows/s")
	b.ReportMetric(fresh0.raw, "copyfrom-rows/s")
	b.ReportMetric(fresh0.value/fresh0.raw, "ratio-to-copyfrom")
}

// durablePostgres starts a private cluster with fsync on, stopped when b ends.
func durablePostgres(b *testing.B) *devstack.Postgres {
	b.Helper()
	if testing.Short() {
		b.Skip("starts postgres")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pg, err := devstack.StartPostgres(ctx, devstack.PostgresConfig{
		DataDir: filepath.Join(b.TempDir(), "pg"), Addr: "127.0.0.1:0", DieWithParent: true,
	})
	if err != nil {
		b.Fatalf("starting postgres: %v", err)
	}
	b.Cleanup(func() { _ = pg.Close() })
	return pg
}

func benchSink(b *testing.B, env *persisttest.Env) *Sink {
	b.Helper()
	s, err := New(context.Background(), Config{RouterURL: env.RouterURL, PoolSize: 4, ShardBits: 6})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(s.Close)
	return s
}

// benchPipeline consumes the n messages of the broker at addr with the
// runtime and the persist sink at production batch settings, into fresh
// databases, and returns rows/s and the batches. beside, if set, is
// started just before the pipeline and returns a wait for its end.
func benchPipeline(b *testing.B, pg *devstack.Postgres, addr, group string, n int, beside func(*persisttest.Env) func()) (float64, [][]runtime.Record) {
	env := persisttest.NewOn(b, pg, pg, pg)
	s := benchSink(b, env)
	cfg := sinktest.ConsumerConfig(addr, group)
	cfg.BatchSize = benchBatch
	cfg.Linger = 50 * time.Millisecond
	wait := func() {}
	if beside != nil {
		wait = beside(env)
	}
	rate, batches := sinktest.MeasurePipeline(b, cfg, s, int64(n))
	wait()
	if got := env.Total(b); got != benchRecords {
		b.Fatalf("%d rows stored, want %d", got, benchRecords)
	}
	return rate, batches
}

// benchSinkWrite writes the batches with a Sink into fresh databases, one
// after another, and returns rows/s.
func benchSinkWrite(b *testing.B, pg *devstack.Postgres, batches [][]runtime.Record) float64 {
	env := persisttest.NewOn(b, pg, pg, pg)
	s := benchSink(b, env)
	ctx := context.Background()
	start, rows := time.Now(), 0
	for _, batch := range batches {
		if err := s.Write(ctx, batch); err != nil {
			b.Fatal(err)
		}
		rows += len(batch)
	}
	rate := float64(rows) / time.Since(start).Seconds()
	if got := env.Total(b); got != benchRecords {
		b.Fatalf("%d rows stored, want %d", got, benchRecords)
	}
	return rate
}

// benchReplay starts a second persister writing batches into env, as a
// replay beside the pipeline would, retrying a batch that fails
// transiently; it returns a wait for its end, which sets *rate (rows/s).
func benchReplay(b *testing.B, env *persisttest.Env, batches [][]runtime.Record, rate *float64) func() {
	s := benchSink(b, env)
	done := make(chan error, 1)
	go func() {
		ctx := context.Background()
		start, rows := time.Now(), 0
		for _, batch := range batches {
			var err error
			for range 5 {
				if err = s.Write(ctx, batch); err == nil {
					break
				}
			}
			if err != nil {
				done <- fmt.Errorf("replaying a batch of %d: %w", len(batch), err)
				return
			}
			rows += len(batch)
		}
		*rate = float64(rows) / time.Since(start).Seconds()
		done <- nil
	}()
	return func() {
		if err := <-done; err != nil {
			b.Fatal(err)
		}
	}
}

// writeFunc writes rows of one database in one transaction.
type writeFunc func(ctx context.Context, pool *pgxpool.Pool, rows []row) error

// optimisticCommit is the sink's optimistic COPY (with its fallback and
// backoff) and commit, without the lock check.
func optimisticCommit(ctx context.Context, pool *pgxpool.Pool, rows []row) error {
	s := benchSinks.get(pool)
	if !s.copyFirst("bench") {
		return insertCommit(ctx, pool, rows)
	}
	tx, _, err := s.copyAll(ctx, "bench", pool, rows, nil)
	if err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// benchSinks gives each bare pool its own Sink state (the COPY backoff).
var benchSinks = sinkStates{m: map[*pgxpool.Pool]*Sink{}}

type sinkStates struct {
	mu sync.Mutex
	m  map[*pgxpool.Pool]*Sink
}

func (s *sinkStates) get(p *pgxpool.Pool) *Sink {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m[p] == nil {
		s.m[p] = &Sink{skipCopy: map[string]int{}}
	}
	return s.m[p]
}

// insertCommit is the unnest insert and commit, without the lock check.
func insertCommit(ctx context.Context, pool *pgxpool.Pool, rows []row) error {
	tx, _, err := insertAll(ctx, pool, rows, nil)
	if err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// benchBare writes the batches into fresh databases with write: each batch
// grouped by database, databases in parallel, batches one after another, as
// the sink does, with every row prepared beforehand.
//
// With redeliver > 0, that fraction of each group's rows is appended again
// to the next batch's group of the same database (records re-delivered);
// the rate counts every row offered.
func benchBare(b *testing.B, pg *devstack.Postgres, batches [][]runtime.Record, write writeFunc, redeliver float64) float64 {
	env := persisttest.NewOn(b, pg, pg, pg)
	m := env.Map
	pools := map[string]*pgxpool.Pool{}
	for _, d := range m.Databases {
		cfg, err := pgxpool.ParseConfig(d.Conninfo)
		if err != nil {
			b.Fatal(err)
		}
		cfg.MaxConns = 4
		cfg.AfterConnect = registerEnums
		p, err := pgxpool.NewWithConfig(context.Background(), cfg)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(p.Close)
		pools[d.Name] = p
	}
	groups := make([]map[string][]row, len(batches))
	for i, batch := range batches {
		groups[i] = map[string][]row{}
		for j, rec := range batch {
			r, err := toRow(j, rec, m.Bits)
			if err != nil {
				b.Fatal(err)
			}
			db := m.Shards[r.shard]
			groups[i][db] = append(groups[i][db], r)
		}
	}
	offered := benchRecords
	if redeliver > 0 {
		for i := len(groups) - 1; i > 0; i-- {
			for db, rows := range groups[i-1] {
				again := rows[:int(float64(len(rows))*redeliver)]
				groups[i][db] = append(groups[i][db], again...)
				offered += len(again)
			}
		}
	}
	ctx := context.Background()
	start := time.Now()
	for _, g := range groups {
		var wg sync.WaitGroup
		errs := make(chan error, len(g))
		for db, rows := range g {
			wg.Go(func() {
				if err := write(ctx, pools[db], rows); err != nil {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		if err := <-errs; err != nil {
			b.Fatal(err)
		}
	}
	elapsed := time.Since(start)
	if got := env.Total(b); got != benchRecords {
		b.Fatalf("%d rows stored, want %d", got, benchRecords)
	}
	return float64(offered) / elapsed.Seconds()
}

// copyValues returns r's values in the order of copyColumns[r.kind], for
// pgx's CopyFrom (the raw baseline) and the alternatives.
func copyValues(r row) []any {
	v := []any{r.shard, r.id, int64(r.loc), r.loc.Chunk(), r.loc.Region(), r.lat, r.lon, r.canvasser,
		r.received, r.partition, r.offset, r.replaces, r.at}
	switch r.kind {
	case topic.KindVisits:
		return append(v, r.a, r.b, r.c)
	case topic.KindIntentions:
		return append(v, r.visitID, r.a, r.b)
	default:
		return append(v, r.visitID, r.a, r.b, r.c)
	}
}

// copyValuesByKind gives rows' COPY values by kind.
func copyValuesByKind(rows []row) map[topic.Kind][][]any {
	out := map[topic.Kind][][]any{}
	for _, r := range rows {
		out[r.kind] = append(out[r.kind], copyValues(r))
	}
	return out
}

// copyTempAll is the alternative idempotent insert: COPY into a temporary
// table, then INSERT ... SELECT ... ON CONFLICT DO NOTHING, per table, in
// one transaction.
func copyTempAll(ctx context.Context, pool *pgxpool.Pool, rows []row) error {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	for k, vals := range copyValuesByKind(rows) {
		tmp := "in_" + string(k)
		cols := copyColumns[k]
		if _, err := tx.Exec(ctx, fmt.Sprintf(
			"CREATE TEMP TABLE IF NOT EXISTS %s ON COMMIT DELETE ROWS AS SELECT %s FROM %s WITH NO DATA",
			tmp, joinCols(cols), k)); err != nil {
			return err
		}
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{tmp}, cols, pgx.CopyFromRows(vals)); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, fmt.Sprintf("INSERT INTO %s (%s) SELECT %[2]s FROM %s ON CONFLICT (shard, id) DO NOTHING",
			k, joinCols(cols), tmp)); err != nil {
			return err
		}
	}
	return tx.Commit(ctx)
}

// rawCopyFrom copies straight into the tables: no idempotence at all.
func rawCopyFrom(ctx context.Context, pool *pgxpool.Pool, rows []row) error {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	for k, vals := range copyValuesByKind(rows) {
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{string(k)}, copyColumns[k], pgx.CopyFromRows(vals)); err != nil {
			return err
		}
	}
	return tx.Commit(ctx)
}

func joinCols(cols []string) string { return strings.Join(cols, ", ") }

// benchNaive inserts one row per statement, each its own transaction, one
// after another: what a first consumer usually does.
func benchNaive(b *testing.B, pg *devstack.Postgres, recs []proto.Message) float64 {
	env := persisttest.NewOn(b, pg, pg, pg)
	m := env.Map
	pools := map[string]*pgxpool.Pool{}
	for _, d := range m.Databases {
		p, err := pgxpool.New(context.Background(), d.Conninfo)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(p.Close)
		pools[d.Name] = p
	}
	rows := make([]row, len(recs))
	for i, msg := range recs {
		k, _ := topic.KindOf(msg)
		r, err := toRow(i, runtime.Record{Topic: k.Topic(), Message: msg}, m.Bits)
		if err != nil {
			b.Fatal(err)
		}
		rows[i] = r
	}
	ctx := context.Background()
	start := time.Now()
	for _, r := range rows {
		cols := copyColumns[r.kind]
		vals := copyValues(r)
		ph := ""
		for i := range cols {
			if i > 0 {
				ph += ", "
			}
			ph += fmt.Sprintf("$%d", i+1)
			if cols[i] == "outcome" {
				ph += "::text::visit_outcome"
			}
			if cols[i] == "method" {
				ph += "::text::followup_method"
			}
		}
		sql := fmt.Sprintf("INSERT INTO %s (%s) VALUES (%s) ON CONFLICT (shard, id) DO NOTHING", r.kind, joinCols(cols), ph)
		if _, err := pools[m.Shards[r.shard]].Exec(ctx, sql, vals...); err != nil {
			b.Fatal(err)
		}
	}
	return float64(len(rows)) / time.Since(start).Seconds()
}

// registerEnums lets pgx encode the enum columns (outcome, method) for
// the raw baseline's binary CopyFrom; it runs on every new connection of
// the benchmark's own pools (the sink encodes its COPY itself).
func registerEnums(ctx context.Context, conn *pgx.Conn) error {
	for _, name := range []string{"visit_outcome", "followup_method"} {
		t, err := conn.LoadType(ctx, name)
		if err != nil {
			return fmt.Errorf("loading enum type %s: %w", name, err)
		}
		conn.TypeMap().RegisterType(t)
	}
	return nil
}
