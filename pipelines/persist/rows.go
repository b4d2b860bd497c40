package persist

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/chapper/chapper/pipelines/runtime"
	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"github.com/chapper/chapper/proto/locality"
	"github.com/chapper/chapper/proto/topic"
)

// ErrUnstorable is wrapped by the reason of every record the sink rejects
// before it reaches a database (no location, an id that is not a UUID...).
var ErrUnstorable = errors.New("record cannot be stored")

// row is one record as a row of its kind's table. a, b and c are the
// kind-specific text columns: visits dwelling_id, address, outcome;
// intentions elector_id, option; followups elector_id, issue, method.
type row struct {
	kind      topic.Kind
	rec       int // index in the batch
	shard     int16
	id        pgtype.UUID
	visitID   pgtype.UUID
	replaces  pgtype.UUID // the record this one corrects, if any
	loc       locality.Index
	lat, lon  float64
	canvasser string
	at        pgtype.Timestamptz
	received  pgtype.Timestamptz
	partition int32
	offset    int64
	a, b, c   string
}

// toRow converts a record; an error is the reason it can never be stored.
func toRow(i int, r runtime.Record, bits uint) (row, error) {
	msg := r.Message
	if msg == nil {
		m, err := topic.Decode(r.Topic, r.Value)
		if err != nil {
			return row{}, fmt.Errorf("%w: %v", ErrUnstorable, err)
		}
		msg = m
	}
	meta, ok := topic.MetaOf(msg)
	if !ok {
		return row{}, fmt.Errorf("%w: %T is not a record kind", ErrUnstorable, msg)
	}
	out := row{kind: meta.Kind, rec: i, canvasser: meta.CanvasserID, partition: int32(r.Partition), offset: r.Offset}
	id, err := uuid.Parse(meta.ID)
	if err != nil {
		return row{}, fmt.Errorf("%w: id %q: %v", ErrUnstorable, meta.ID, err)
	}
	out.id = pgtype.UUID{Bytes: id, Valid: true}
	if meta.Location == nil {
		return row{}, fmt.Errorf("%w: location is required", ErrUnstorable)
	}
	out.lat, out.lon = meta.Location.GetLatitude(), meta.Location.GetLongitude()
	out.loc, err = locality.Of(out.lat, out.lon)
	if err != nil {
		return row{}, fmt.Errorf("%w: %v", ErrUnstorable, err)
	}
	out.shard = int16(out.loc.Shard(bits))
	// A record without its time is stored as NULL and refused by the
	// table's NOT NULL: the database decides, like for every other column.
	if ts := topic.TimestampOf(msg); ts != nil {
		out.at = pgtype.Timestamptz{Time: ts.AsTime(), Valid: true}
	}
	if v := r.Header(topic.HeaderReceivedAt); v != nil {
		if t, err := time.Parse(time.RFC3339Nano, string(v)); err == nil {
			out.received = pgtype.Timestamptz{Time: t, Valid: true}
		}
	}
	var replaces string
	switch m := msg.(type) {
	case *canvassv1.Visit:
		out.a, out.b, out.c = m.GetDwellingId(), m.GetAddress(), outcomeName(m.GetOutcome())
		replaces = m.GetReplacesId()
	case *canvassv1.Intention:
		if out.visitID, err = optionalUUID("visit_id", m.GetVisitId()); err != nil {
			return row{}, err
		}
		out.a, out.b = m.GetElectorId(), m.GetOption()
		replaces = m.GetReplacesId()
	case *canvassv1.FollowupRequest:
		if out.visitID, err = optionalUUID("visit_id", m.GetVisitId()); err != nil {
			return row{}, err
		}
		out.a, out.b, out.c = m.GetElectorId(), m.GetIssue(), methodName(m.GetMethod())
		replaces = m.GetReplacesId()
	}
	if out.replaces, err = optionalUUID("replaces_id", replaces); err != nil {
		return row{}, err
	}
	if out.replaces.Valid && out.replaces.Bytes == out.id.Bytes {
		return row{}, fmt.Errorf("%w: replaces_id %q: a record cannot replace itself", ErrUnstorable, replaces)
	}
	return out, nil
}

func optionalUUID(field, s string) (pgtype.UUID, error) {
	if s == "" {
		return pgtype.UUID{}, nil
	}
	id, err := uuid.Parse(s)
	if err != nil {
		return pgtype.UUID{}, fmt.Errorf("%w: %s %q: %v", ErrUnstorable, field, s, err)
	}
	return pgtype.UUID{Bytes: id, Valid: true}, nil
}

// outcomeName and methodName give the enum labels of the tables: the proto
// name in lower case without its prefix. A number the proto does not know
// becomes its digits, which the enum type refuses (a permanent failure).
// The labels of known values are computed once: this runs for every row.
func outcomeName(o canvassv1.Outcome) string {
	if name, ok := outcomeLabels[o]; ok {
		return name
	}
	return enumLabel(o.String(), "OUTCOME_")
}

func methodName(m canvassv1.Method) string {
	if name, ok := methodLabels[m]; ok {
		return name
	}
	return enumLabel(m.String(), "METHOD_")
}

var (
	outcomeLabels = labels(canvassv1.Outcome_name, "OUTCOME_", func(v int32) canvassv1.Outcome { return canvassv1.Outcome(v) })
	methodLabels  = labels(canvassv1.Method_name, "METHOD_", func(v int32) canvassv1.Method { return canvassv1.Method(v) })
)

func labels[E comparable](names map[int32]string, prefix string, of func(int32) E) map[E]string {
	out := make(map[E]string, len(names))
	for v, name := range names {
		out[of(v)] = enumLabel(name, prefix)
	}
	return out
}

func enumLabel(name, prefix string) string {
	return strings.ToLower(strings.TrimPrefix(name, prefix))
}

// Insert statements: one set-based, idempotent INSERT per table, the rows
// as parallel arrays (unnest). They are the fallback of the optimistic
// binary COPY (copyColumns), for a batch that holds a row stored already,
// and the whole path for a database whose recent batches did. Measured
// against COPY into a temporary table followed by INSERT ... SELECT ... ON
// CONFLICT DO NOTHING (see the benchmark): the unnest form pipelines the
// three tables in one round trip and was faster for batches of hundreds.
const (
	insertVisits = `INSERT INTO visits (shard, id, locality, chunk, region, latitude, longitude, canvasser_id,
		received_at, kafka_partition, kafka_offset, replaces_id, visited_at, dwelling_id, address, outcome)
	SELECT s, i, l, c, r, la, lo, cv, ra, p, o, rp, t, x1, x2, x3::visit_outcome
	FROM unnest($1::smallint[], $2::uuid[], $3::bigint[], $4::bigint[], $5::bigint[], $6::float8[], $7::float8[],
		$8::text[], $9::timestamptz[], $10::integer[], $11::bigint[], $12::uuid[], $13::timestamptz[], $14::text[], $15::text[],
		$16::text[])
		AS u(s, i, l, c, r, la, lo, cv, ra, p, o, rp, t, x1, x2, x3)
	ON CONFLICT (shard, id) DO NOTHING`
	insertIntentions = `INSERT INTO intentions (shard, id, locality, chunk, region, latitude, longitude, canvasser_id,
		received_at, kafka_partition, kafka_offset, replaces_id, recorded_at, visit_id, elector_id, option)
	SELECT s, i, l, c, r, la, lo, cv, ra, p, o, rp, t, v, x1, x2
	FROM unnest($1::smallint[], $2::uuid[], $3::bigint[], $4::bigint[], $5::bigint[], $6::float8[], $7::float8[],
		$8::text[], $9::timestamptz[], $10::integer[], $11::bigint[], $12::uuid[], $13::timestamptz[], $14::uuid[], $15::text[],
		$16::text[])
		AS u(s, i, l, c, r, la, lo, cv, ra, p, o, rp, t, v, x1, x2)
	ON CONFLICT (shard, id) DO NOTHING`
	insertFollowups = `INSERT INTO followups (shard, id, locality, chunk, region, latitude, longitude, canvasser_id,
		received_at, kafka_partition, kafka_offset, replaces_id, recorded_at, visit_id, elector_id, issue, method)
	SELECT s, i, l, c, r, la, lo, cv, ra, p, o, rp, t, v, x1, x2, x3::followup_method
	FROM unnest($1::smallint[], $2::uuid[], $3::bigint[], $4::bigint[], $5::bigint[], $6::float8[], $7::float8[],
		$8::text[], $9::timestamptz[], $10::integer[], $11::bigint[], $12::uuid[], $13::timestamptz[], $14::uuid[], $15::text[],
		$16::text[], $17::text[])
		AS u(s, i, l, c, r, la, lo, cv, ra, p, o, rp, t, v, x1, x2, x3)
	ON CONFLICT (shard, id) DO NOTHING`
	// insertReplaced records corrections' replaced ids; every database
	// holding shards gets every correction (see shard migration 00002).
	insertReplaced = `INSERT INTO replaced (kind, id, by_id, by_received)
	SELECT k, i, b, r FROM unnest($1::text[], $2::uuid[], $3::uuid[], $4::timestamptz[]) AS u(k, i, b, r)
	ON CONFLICT DO NOTHING`
)

// statement returns the insert of kind k with rows (all of kind k) as its
// arguments.
func statement(k topic.Kind, rows []row) (string, []any) {
	n := len(rows)
	var (
		shard     = make([]int16, n)
		id        = make([]pgtype.UUID, n)
		loc       = make([]int64, n)
		chunk     = make([]int64, n)
		region    = make([]int64, n)
		lat       = make([]float64, n)
		lon       = make([]float64, n)
		canvasser = make([]string, n)
		received  = make([]pgtype.Timestamptz, n)
		partition = make([]int32, n)
		offset    = make([]int64, n)
		replaces  = make([]pgtype.UUID, n)
		at        = make([]pgtype.Timestamptz, n)
		visitID   = make([]pgtype.UUID, n)
		a         = make([]string, n)
		b         = make([]string, n)
		c         = make([]string, n)
	)
	for i, r := range rows {
		shard[i], id[i], loc[i] = r.shard, r.id, int64(r.loc)
		chunk[i], region[i] = r.loc.Chunk(), r.loc.Region()
		lat[i], lon[i], canvasser[i] = r.lat, r.lon, r.canvasser
		received[i], partition[i], offset[i], at[i] = r.received, r.partition, r.offset, r.at
		visitID[i], a[i], b[i], c[i] = r.visitID, r.a, r.b, r.c
		replaces[i] = r.replaces
	}
	common := []any{shard, id, loc, chunk, region, lat, lon, canvasser, received, partition, offset, replaces, at}
	switch k {
	case topic.KindVisits:
		return insertVisits, append(common, a, b, c)
	case topic.KindIntentions:
		return insertIntentions, append(common, visitID, a, b)
	default:
		return insertFollowups, append(common, visitID, a, b, c)
	}
}

// queueReplaced queues the insert of the replaced ids of corrections (rows
// with replaces set) on b; nothing when there is none.
func queueReplaced(b *pgx.Batch, corrections []row) {
	if len(corrections) == 0 {
		return
	}
	n := len(corrections)
	kind, id, by := make([]string, n), make([]pgtype.UUID, n), make([]pgtype.UUID, n)
	received := make([]pgtype.Timestamptz, n)
	for i, r := range corrections {
		kind[i], id[i], by[i], received[i] = string(r.kind), r.replaces, r.id, r.received
		if !r.received.Valid {
			received[i] = pgtype.Timestamptz{InfinityModifier: pgtype.NegativeInfinity, Valid: true}
		}
	}
	b.Queue(insertReplaced, kind, id, by, received)
}

// queueInserts queues one insert per kind present in rows on b; done is
// called with each kind's inserted row count.
func queueInserts(b *pgx.Batch, rows []row, done func(k topic.Kind, n, inserted int)) {
	kinds := byKind(rows)
	for _, k := range topic.Kinds {
		rs := kinds[k]
		if len(rs) == 0 {
			continue
		}
		sql, args := statement(k, rs)
		b.Queue(sql, args...).Exec(func(tag pgconn.CommandTag) error {
			if done != nil {
				done(k, len(rs), int(tag.RowsAffected()))
			}
			return nil
		})
	}
}

// copyColumns are the columns the optimistic binary COPY writes per table,
// in the order of appendCopyRow.
var copyColumns = map[topic.Kind][]string{
	topic.KindVisits: {"shard", "id", "locality", "chunk", "region", "latitude", "longitude", "canvasser_id",
		"received_at", "kafka_partition", "kafka_offset", "replaces_id", "visited_at", "dwelling_id", "address", "outcome"},
	topic.KindIntentions: {"shard", "id", "locality", "chunk", "region", "latitude", "longitude", "canvasser_id",
		"received_at", "kafka_partition", "kafka_offset", "replaces_id", "recorded_at", "visit_id", "elector_id", "option"},
	topic.KindFollowups: {"shard", "id", "locality", "chunk", "region", "latitude", "longitude", "canvasser_id",
		"received_at", "kafka_partition", "kafka_offset", "replaces_id", "recorded_at", "visit_id", "elector_id", "issue", "method"},
}

// byKind sorts rows in place by kind, each kind's rows in primary key
// order (shard, id), and returns each kind's run of them (no copies): two
// writers inserting overlapping rows into one database then meet them in
// the same order, so one waits for the other instead of both waiting for
// each other (a deadlock Postgres would break by failing one of them).
func byKind(rows []row) map[topic.Kind][]row {
	slices.SortFunc(rows, func(a, b row) int {
		return cmp.Or(cmp.Compare(a.kind, b.kind), cmp.Compare(a.shard, b.shard), bytes.Compare(a.id.Bytes[:], b.id.Bytes[:]))
	})
	out := make(map[topic.Kind][]row, len(topic.Kinds))
	for start := 0; start < len(rows); {
		end := start + 1
		for end < len(rows) && rows[end].kind == rows[start].kind {
			end++
		}
		out[rows[start].kind] = rows[start:end:end]
		start = end
	}
	return out
}

// copyRows binary-COPYs rows straight into their tables, in tx, one COPY
// per kind present: no idempotence of its own. A row stored already fails
// it with a unique violation (SQLSTATE 23505), and tx with it; the caller
// then writes the batch again with queueInserts. It returns each kind's
// row count.
func copyRows(ctx context.Context, tx pgx.Tx, rows []row) ([]count, error) {
	kinds := byKind(rows)
	counts := make([]count, 0, len(kinds))
	for _, k := range topic.Kinds {
		rs := kinds[k]
		if len(rs) == 0 {
			continue
		}
		buf := append(make([]byte, 0, 256*len(rs)), copyHeader...)
		for _, r := range rs {
			buf = appendCopyRow(buf, r)
		}
		buf = append(buf, copyTrailer...)
		if _, err := tx.Conn().PgConn().CopyFrom(ctx, bytes.NewReader(buf), copySQL[k]); err != nil {
			return nil, fmt.Errorf("copying %d rows into %s: %w", len(rs), k, err)
		}
		counts = append(counts, count{k, len(rs), len(rs)})
	}
	return counts, nil
}
