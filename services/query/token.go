package query

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
)

// A page token is opaque to clients: base64url (no padding) of
//
//	version byte (1)
//	chunk     uvarint
//	n         uvarint, cursors that follow
//	n × { slot byte (the locality's place in locality.ChunkLocalities),
//	      score varint (ms), id length uvarint, id bytes }
//
// Each cursor is the (score, id) of the last entry a locality returned;
// the next page continues strictly below it. A locality not in the token
// has nothing older and is left out of the next page.

const tokenVersion = 1

// maxTokenID bounds an id in a token; record ids are UUIDs.
const maxTokenID = 64

// errToken is wrapped by every page token decoding error.
var errToken = errors.New("malformed page token")

// cursor is the last entry a locality returned: continue strictly below it.
type cursor struct {
	slot  int
	score int64
	id    string
}

func encodeToken(chunk int64, cs []cursor) string {
	if len(cs) == 0 {
		return ""
	}
	b := make([]byte, 0, 8+len(cs)*48)
	b = append(b, tokenVersion)
	b = binary.AppendUvarint(b, uint64(chunk))
	b = binary.AppendUvarint(b, uint64(len(cs)))
	for _, c := range cs {
		b = append(b, byte(c.slot))
		b = binary.AppendVarint(b, c.score)
		b = binary.AppendUvarint(b, uint64(len(c.id)))
		b = append(b, c.id...)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// decodeToken returns the cursors of token, which must belong to chunk, a
// chunk of slots localities.
func decodeToken(token string, chunk int64, slots int) ([]cursor, error) {
	b, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil {
		return nil, fmt.Errorf("%w: not base64url", errToken)
	}
	if len(b) == 0 || b[0] != tokenVersion {
		return nil, fmt.Errorf("%w: unknown version", errToken)
	}
	b = b[1:]
	uvarint := func() (uint64, bool) {
		v, n := binary.Uvarint(b)
		if n <= 0 {
			return 0, false
		}
		b = b[n:]
		return v, true
	}
	c, ok := uvarint()
	if !ok {
		return nil, fmt.Errorf("%w: truncated", errToken)
	}
	if int64(c) != chunk {
		return nil, fmt.Errorf("%w: it continues chunk %d, not chunk %d", errToken, int64(c), chunk)
	}
	n, ok := uvarint()
	if !ok || n == 0 || n > uint64(slots) {
		return nil, fmt.Errorf("%w: bad cursor count", errToken)
	}
	out := make([]cursor, 0, n)
	used := make([]bool, slots)
	for range n {
		if len(b) == 0 {
			return nil, fmt.Errorf("%w: truncated", errToken)
		}
		slot := int(b[0])
		b = b[1:]
		if slot >= slots || used[slot] {
			return nil, fmt.Errorf("%w: bad locality", errToken)
		}
		used[slot] = true
		score, m := binary.Varint(b)
		if m <= 0 {
			return nil, fmt.Errorf("%w: truncated", errToken)
		}
		b = b[m:]
		l, ok := uvarint()
		if !ok || l == 0 || l > maxTokenID || l > uint64(len(b)) {
			return nil, fmt.Errorf("%w: bad id", errToken)
		}
		out = append(out, cursor{slot: slot, score: score, id: string(b[:l])})
		b = b[l:]
	}
	if len(b) != 0 {
		return nil, fmt.Errorf("%w: trailing bytes", errToken)
	}
	return out, nil
}
