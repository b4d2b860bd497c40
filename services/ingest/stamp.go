package ingest

import (
	"encoding/binary"
	"fmt"
	"strings"

	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"github.com/chapper/chapper/proto/topic"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// A stamp is what the id stores keep with each acknowledged id: the
// record's kind, its canvasser (to check who may correct it) and one 64-bit
// FNV-1a hash per field of the record (0 when unset), so that a resubmission
// is told to be the same record (DUPLICATE) or names the fields that differ
// (CONFLICT). Layout: kind byte, uvarint length and bytes of canvasser_id,
// then 8 bytes per field number 2..N (the id itself, field 1, is the key).
//
// The hashes are taken over each field's protobuf encoding as ingest
// produces it (deterministic: canvass.v1 has no maps), so equal content
// gives equal stamps whichever instance took it.

// kindByte is each kind's first stamp byte.
var kindByte = map[topic.Kind]byte{topic.KindVisits: 'v', topic.KindIntentions: 'i', topic.KindFollowups: 'f'}

// kindOfByte is the kind of a stamp byte.
var kindOfByte = map[byte]topic.Kind{'v': topic.KindVisits, 'i': topic.KindIntentions, 'f': topic.KindFollowups}

// descriptors holds each kind's message descriptor, for field names.
var descriptors = map[topic.Kind]protoreflect.MessageDescriptor{
	topic.KindVisits:     (&canvassv1.Visit{}).ProtoReflect().Descriptor(),
	topic.KindIntentions: (&canvassv1.Intention{}).ProtoReflect().Descriptor(),
	topic.KindFollowups:  (&canvassv1.FollowupRequest{}).ProtoReflect().Descriptor(),
}

// singular names each kind's record, with its article, for reasons.
var singular = map[topic.Kind]string{topic.KindVisits: "a visit", topic.KindIntentions: "an intention", topic.KindFollowups: "a follow-up request"}

// maxField returns the highest field number of kind's message.
func maxField(kind topic.Kind) int {
	fields := descriptors[kind].Fields()
	n := 0
	for i := range fields.Len() {
		n = max(n, int(fields.Get(i).Number()))
	}
	return n
}

var maxFields = map[topic.Kind]int{
	topic.KindVisits:     maxField(topic.KindVisits),
	topic.KindIntentions: maxField(topic.KindIntentions),
	topic.KindFollowups:  maxField(topic.KindFollowups),
}

// makeStamp returns the stamp of a record of kind by canvasser, encoded as
// encoded (its protobuf bytes).
func makeStamp(kind topic.Kind, canvasser string, encoded []byte) (string, error) {
	n := maxFields[kind]
	// Built on the stack when it fits: the string is the one allocation.
	var room [256]byte
	out := room[:0]
	if need := 1 + binary.MaxVarintLen64 + len(canvasser) + 8*(n-1); need > len(room) {
		out = make([]byte, 0, need)
	}
	out = append(out, kindByte[kind])
	out = binary.AppendUvarint(out, uint64(len(canvasser)))
	out = append(out, canvasser...)
	var fixed [32]uint64 // no allocation for up to 31 fields
	hashes := fixed[:]
	if n+1 > len(fixed) {
		hashes = make([]uint64, n+1)
	}
	for b := encoded; len(b) > 0; {
		num, _, size := protowire.ConsumeField(b)
		if size < 0 {
			return "", fmt.Errorf("reading the encoded record (%s): %w", singular[kind], protowire.ParseError(size))
		}
		if int(num) <= n {
			// Fields repeat never in canvass.v1 records; if one did, the
			// mix keeps every occurrence in the hash.
			hashes[num] = hashes[num]*31 + fnv64a(b[:size])
		}
		b = b[size:]
	}
	for num := 2; num <= n; num++ {
		out = binary.BigEndian.AppendUint64(out, hashes[num])
	}
	return string(out), nil
}

// fnv64a is the 64-bit FNV-1a hash of b, as hash/fnv's New64a computes it,
// without its allocation (the hash.Hash escapes).
func fnv64a(b []byte) uint64 {
	const (
		offset64 = 14695981039346656037
		prime64  = 1099511628211
	)
	h := uint64(offset64)
	for _, c := range b {
		h ^= uint64(c)
		h *= prime64
	}
	return h
}

// stampInfo is a parsed stamp.
type stampInfo struct {
	kind      topic.Kind
	canvasser string
	hashes    string // 8 bytes per field number from 2
}

// parseStamp reads a stamp; false when it is not one (a store holding
// something else under the key).
func parseStamp(s string) (stampInfo, bool) {
	if len(s) < 2 {
		return stampInfo{}, false
	}
	kind, ok := kindOfByte[s[0]]
	if !ok {
		return stampInfo{}, false
	}
	l, n := binary.Uvarint([]byte(s[1:min(len(s), 1+binary.MaxVarintLen64)]))
	if n <= 0 || uint64(len(s)-1-n) < l {
		return stampInfo{}, false
	}
	rest := s[1+n:]
	return stampInfo{kind: kind, canvasser: rest[:l], hashes: rest[l:]}, true
}

// compareStamps compares a submitted record's stamp with the stamp its id
// was acknowledged with. same means a DUPLICATE; otherwise reason and
// fields (proto names of the fields that differ) explain the CONFLICT.
func compareStamps(mine, theirs string) (same bool, reason string, fields []string) {
	if mine == theirs {
		return true, "", nil
	}
	m, ok1 := parseStamp(mine)
	o, ok2 := parseStamp(theirs)
	if !ok1 || !ok2 {
		return false, "id was already accepted with other content", nil
	}
	if m.kind != o.kind {
		return false, fmt.Sprintf("id was already accepted as %s, not %s", singular[o.kind], singular[m.kind]), nil
	}
	fd := descriptors[m.kind].Fields()
	for i := 0; i+8 <= len(m.hashes) && i+8 <= len(o.hashes); i += 8 {
		if m.hashes[i:i+8] != o.hashes[i:i+8] {
			if f := fd.ByNumber(protoreflect.FieldNumber(2 + i/8)); f != nil {
				fields = append(fields, string(f.Name()))
			}
		}
	}
	if len(fields) == 0 {
		return false, "id was already accepted with other content", nil
	}
	return false, "id was already accepted with other content; differing fields: " + strings.Join(fields, ", "), fields
}
