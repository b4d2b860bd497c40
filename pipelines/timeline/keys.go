package timeline

import "strconv"

// The Redis keys of one locality (DESIGN.md, Storage/Redis). Every key of a
// locality carries the hash tag {<locality>}, so a locality's keys share one
// Redis Cluster slot and one script call may touch them all.

// TimelineKey returns the sorted set of a locality's newest records:
// member = record id, score = the record's own time in milliseconds.
func TimelineKey(prefix string, loc int64) string { return localityKey(prefix, "tl:{", loc) }

// SeenKey returns the set of every record id counted for a locality. It is
// never trimmed, so a replay of a record trimmed off the timeline is still
// recognised.
func SeenKey(prefix string, loc int64) string { return localityKey(prefix, "seen:{", loc) }

// CountersKey returns the hash of a locality's counters: visits,
// visits:<outcome>, intentions, intentions:<option>, followups,
// followups:<method>.
func CountersKey(prefix string, loc int64) string { return localityKey(prefix, "ct:{", loc) }

// RecordsKey returns the hash of record id → protobuf bytes of a
// canvassv1.Record for every record on the locality's timeline.
func RecordsKey(prefix string, loc int64) string { return localityKey(prefix, "rec:{", loc) }

// NewsChannel returns the Pub/Sub channel on which every newly counted record
// of a chunk is published, as the protobuf bytes of a canvassv1.TimelineEntry.
// A channel is not a key: Redis Cluster forwards publishes to every node.
func NewsChannel(prefix string, chunk int64) string { return localityKey(prefix, "news:{", chunk) }

// ReplacedKey returns the hash of every record id of a locality that a
// correction replaced (id → "1"): such an id is seen but not counted, and
// not on the timeline.
func ReplacedKey(prefix string, loc int64) string { return localityKey(prefix, "rp:{", loc) }

// IDKey returns the id record of one record id of one kind ("visits",
// "intentions", "followups"): a hash with the locality the id was counted in
// (l), its kind:value counter field (f) and r = "1" once a correction
// replaced it. It is the one place a record and its correction meet when
// they sit in different localities (and slots).
func IDKey(prefix, kind, id string) string {
	return prefix + "id:" + kind + ":{" + id + "}"
}

func localityKey(prefix, kind string, n int64) string {
	b := make([]byte, 0, len(prefix)+len(kind)+21)
	b = append(b, prefix...)
	b = append(b, kind...)
	b = strconv.AppendInt(b, n, 10)
	b = append(b, '}')
	return string(b)
}
