package persist

import (
	"encoding/binary"
	"math"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/chapper/chapper/proto/topic"
)

// The optimistic COPY sends its rows in PostgreSQL's binary COPY format
// (https://www.postgresql.org/docs/current/sql-copy.html, "Binary Format"),
// encoded here straight from the row's fields for the column types of
// migrations/shard: one buffer per table, one round trip, nothing boxed.
// pgx's CopyFrom encodes the same bytes through its type map, value by
// value from []any, which cost the sink more CPU than the database took
// for the rows (issue 14). A column whose type changes in a migration
// must change here too; the sink tests write every column and read it
// back.

// copySQL is each kind's COPY statement, columns in copyColumns order.
var copySQL = func() map[topic.Kind]string {
	out := map[topic.Kind]string{}
	for k, cols := range copyColumns {
		out[k] = "COPY " + string(k) + " (" + strings.Join(cols, ", ") + ") FROM STDIN BINARY"
	}
	return out
}()

// copyHeader opens a binary COPY stream: the signature, no flags, no
// header extension.
var copyHeader = []byte("PGCOPY\n\377\r\n\000\000\000\000\000\000\000\000\000")

// copyTrailer ends it: a field count of -1.
var copyTrailer = []byte{0xff, 0xff}

// y2k is PostgreSQL's timestamp epoch, 2000-01-01 UTC, in microseconds
// since the Unix epoch.
const y2k = 946_684_800 * 1_000_000

// appendCopyRow appends r as one tuple of copyColumns[r.kind].
func appendCopyRow(b []byte, r row) []byte {
	fields := len(copyColumns[r.kind])
	b = binary.BigEndian.AppendUint16(b, uint16(fields))
	b = appendInt2(b, r.shard)
	b = appendUUID(b, r.id)
	b = appendInt8(b, int64(r.loc))
	b = appendInt8(b, r.loc.Chunk())
	b = appendInt8(b, r.loc.Region())
	b = appendFloat8(b, r.lat)
	b = appendFloat8(b, r.lon)
	b = appendText(b, r.canvasser)
	b = appendTimestamptz(b, r.received)
	b = appendInt4(b, r.partition)
	b = appendInt8(b, r.offset)
	b = appendUUID(b, r.replaces)
	b = appendTimestamptz(b, r.at)
	switch r.kind {
	case topic.KindVisits:
		// outcome is an enum: its binary form is its label
		return appendText(appendText(appendText(b, r.a), r.b), r.c)
	case topic.KindIntentions:
		return appendText(appendText(appendUUID(b, r.visitID), r.a), r.b)
	default:
		return appendText(appendText(appendText(appendUUID(b, r.visitID), r.a), r.b), r.c)
	}
}

func appendNull(b []byte) []byte { return binary.BigEndian.AppendUint32(b, math.MaxUint32) }

func appendInt2(b []byte, v int16) []byte {
	return binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint32(b, 2), uint16(v))
}

func appendInt4(b []byte, v int32) []byte {
	return binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(b, 4), uint32(v))
}

func appendInt8(b []byte, v int64) []byte {
	return binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint32(b, 8), uint64(v))
}

func appendFloat8(b []byte, v float64) []byte {
	return binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint32(b, 8), math.Float64bits(v))
}

func appendText(b []byte, s string) []byte {
	return append(binary.BigEndian.AppendUint32(b, uint32(len(s))), s...)
}

func appendUUID(b []byte, u pgtype.UUID) []byte {
	if !u.Valid {
		return appendNull(b)
	}
	return append(binary.BigEndian.AppendUint32(b, 16), u.Bytes[:]...)
}

// appendTimestamptz appends t as microseconds since 2000-01-01 UTC,
// truncated as PostgreSQL and pgx truncate.
func appendTimestamptz(b []byte, t pgtype.Timestamptz) []byte {
	if !t.Valid {
		return appendNull(b)
	}
	return appendInt8(b, microsSinceY2K(t.Time))
}

func microsSinceY2K(t time.Time) int64 {
	return t.Unix()*1_000_000 + int64(t.Nanosecond())/1000 - y2k
}
