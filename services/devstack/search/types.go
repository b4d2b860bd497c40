package search

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/big"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/blevesearch/bleve/v2/search/query"
)

// ip: an address is held as the hex of its 16-byte IPv6 form (an IPv4
// address IPv4-mapped, as Lucene's InetAddressPoint encodes it), so term
// order is Elasticsearch's order of ip values (sorts, terms keys, ranges).

// parseIP parses an IPv4 or IPv6 literal as Elasticsearch accepts it (no
// zone, no CIDR).
func parseIP(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("'%s' is not an IP string literal.", s)
	}
	return a, nil
}

// ipTerm is the indexed term of an address.
func ipTerm(a netip.Addr) string {
	b := a.As16()
	return hex.EncodeToString(b[:])
}

// ipString renders an indexed term as Elasticsearch prints an ip: dotted
// IPv4 for IPv4-mapped addresses, RFC 5952 for the rest.
func ipString(term string) string {
	var b [16]byte
	if n, err := hex.Decode(b[:], []byte(term)); err != nil || n != 16 {
		return term
	}
	return netip.AddrFrom16(b).Unmap().String()
}

// ipTermFromValue parses a query value (an address) to its term.
func ipTermFromValue(v any) (string, error) {
	s, ok := v.(string)
	if !ok {
		return "", fmt.Errorf("'%v' is not an IP string literal.", v)
	}
	a, err := parseIP(s)
	if err != nil {
		return "", err
	}
	return ipTerm(a), nil
}

// ipPrefixRange returns the first and last term of a CIDR block
// ("192.168.0.0/16", "2001:db8::/32"), as a term query on an ip field
// takes it.
func ipPrefixRange(s string) (lo, hi string, err error) {
	p, err := netip.ParsePrefix(strings.TrimSpace(s))
	if err != nil {
		return "", "", fmt.Errorf("Expected [ip/prefix] but was [%s]", s)
	}
	bits := p.Bits()
	if p.Addr().Is4() {
		bits += 96
	}
	b := p.Addr().As16()
	var first, last [16]byte
	for i := range 16 {
		keep := min(max(bits-8*i, 0), 8)
		mask := byte(0xff << (8 - keep))
		first[i] = b[i] & mask
		last[i] = b[i] | ^mask
	}
	return hex.EncodeToString(first[:]), hex.EncodeToString(last[:]), nil
}

// ipRange matches the addresses from lo to hi (terms, inclusive).
func ipRange(field, lo, hi string) query.Query {
	incl := true
	tr := query.NewTermRangeInclusiveQuery(lo, hi, &incl, &incl)
	tr.SetField(field)
	return tr
}

// compileIPRange is a range query on an ip field: gt, gte, lt, lte take
// addresses.
func (c *compileCtx) compileIPRange(q qRange) (query.Query, *esError) {
	lo, hi := strings.Repeat("0", 32), strings.Repeat("f", 32)
	for _, b := range []struct {
		v            any
		upper, exclu bool
	}{{q.gte, false, false}, {q.gt, false, true}, {q.lte, true, false}, {q.lt, true, true}} {
		if b.v == nil {
			continue
		}
		t, err := ipTermFromValue(b.v)
		if err != nil {
			return nil, queryError("failed to create query: %v", err)
		}
		if b.exclu {
			var ok bool
			if t, ok = stepTerm(t, b.upper); !ok {
				return matchNone(), nil
			}
		}
		if b.upper {
			hi = t
		} else {
			lo = t
		}
	}
	if lo > hi {
		return matchNone(), nil
	}
	return constant(ipRange(q.field, lo, hi), q.boost), nil
}

// stepTerm returns the address term after (down: before) t; ok is false
// past the last (first) address.
func stepTerm(t string, down bool) (string, bool) {
	var b [16]byte
	if _, err := hex.Decode(b[:], []byte(t)); err != nil {
		return "", false
	}
	for i := 15; i >= 0; i-- {
		if down {
			b[i]--
			if b[i] != 0xff {
				return hex.EncodeToString(b[:]), true
			}
		} else {
			b[i]++
			if b[i] != 0 {
				return hex.EncodeToString(b[:]), true
			}
		}
	}
	return "", false
}

// unsigned_long: a value u is held as the int64 u - 2^63 (u with its top
// bit flipped), which keeps the order of unsigned values in the signed
// space the numeric terms and doc values use.

func ulongToSigned(u uint64) int64 { return int64(u ^ 1<<63) }
func signedToULong(n int64) uint64 { return uint64(n) ^ 1<<63 }

// parseULong parses an unsigned_long value: an integer from 0 to 2^64-1,
// or a number whose fraction is truncated, as Elasticsearch does.
// fraction reports that a fraction was dropped; outOfRange a value beyond
// the type (the sign tells which side).
func parseULong(s string) (u uint64, fraction bool, outOfRange int, err error) {
	s = strings.TrimSpace(s)
	if n, perr := strconv.ParseUint(s, 10, 64); perr == nil {
		return n, false, 0, nil
	}
	f, _, perr := big.ParseFloat(s, 10, 256, big.ToZero)
	if perr != nil || f.IsInf() {
		return 0, false, 0, fmt.Errorf("For input string: \"%s\"", s)
	}
	i, acc := f.Int(nil)
	fraction = acc != big.Exact
	if f.Sign() < 0 {
		return 0, fraction, -1, nil
	}
	if !i.IsUint64() {
		return 0, fraction, 1, nil
	}
	return i.Uint64(), fraction, 0, nil
}

// ulongBound converts a range bound on an unsigned_long field to an
// inclusive bound in the signed space, as Elasticsearch's
// parseLowerRangeTerm and parseUpperRangeTerm do: fractions round inwards,
// bounds beyond the type clamp to it or select nothing.
func ulongBound(v any, upper, inclusive bool) (int64, bool, *esError) {
	s, ok := scalarString(v)
	if !ok {
		return 0, false, queryError("failed to create query: For input string: \"%s\"", compactJSON(v))
	}
	u, frac, out, err := parseULong(s)
	if err != nil {
		return 0, false, queryError("failed to create query: %v", err)
	}
	switch {
	case out < 0 && upper:
		return 0, true, nil
	case out < 0:
		return math.MinInt64, false, nil
	case out > 0 && upper:
		return math.MaxInt64, false, nil
	case out > 0:
		return 0, true, nil
	}
	if neg := strings.HasPrefix(strings.TrimSpace(s), "-"); !upper && (neg || u == 0 && !frac) {
		// a lower bound at or below 0: Elasticsearch clamps it to 0,
		// included, except a JSON integer 0 with gt, which it steps to 1
		if _, isNum := v.(json.Number); isNum && !neg && !inclusive {
			return ulongToSigned(1), false, nil
		}
		return math.MinInt64, false, nil
	}
	n := ulongToSigned(u)
	if frac {
		// u is the truncated value: an upper bound stays on it, a lower
		// one moves past it
		if upper {
			return n, false, nil
		}
		inclusive = false
	}
	return adjustBound(n, upper, inclusive)
}

// date_nanos: nanoseconds since the epoch in an int64, so from
// 1970-01-01T00:00:00Z to 2262-04-11T23:47:16.854775807Z.

// defaultDateNanosFormat is the default format of a date_nanos field.
const defaultDateNanosFormat = "strict_date_optional_time_nanos||epoch_millis"

// nanosFormats checks that a date_nanos field's format is one the server
// parses to the nanosecond: the ISO formats and epoch_millis.
func nanosFormats(raw string) error {
	for _, part := range strings.Split(raw, "||") {
		switch strings.TrimSpace(part) {
		case "strict_date_optional_time", "date_optional_time", "strict_date_optional_time_nanos", "date_optional_time_nanos", "epoch_millis":
		default:
			return fmt.Errorf("format [%s] on a date_nanos field (supported: strict_date_optional_time_nanos, strict_date_optional_time, epoch_millis)", part)
		}
	}
	return nil
}

var errNanosRange = errors.New("out of the date_nanos range")

// parseNanos parses a date_nanos value in the field's formats (ISO dates
// to the nanosecond, epoch_millis with up to 6 fraction digits). roundUp
// fills missing components as for a gt/lte bound.
func (f *dateFormats) parseNanos(s string, loc *time.Location, roundUp bool) (int64, error) {
	for _, p := range f.list {
		switch p.(type) {
		case isoFormat:
			t, err := isoTime(s, loc, roundUp)
			if err != nil {
				continue
			}
			return nanosOf(t, s)
		case epochFormat:
			n, ok := epochMillisNanos(s)
			if !ok {
				continue
			}
			if n < 0 {
				return 0, fmt.Errorf("date[%s] is before the epoch in 1970 and cannot be stored in nanosecond resolution", s)
			}
			return n, nil
		}
	}
	return 0, fmt.Errorf("failed to parse date field [%s] with format [%s]", s, f.raw)
}

const nsPerMs = int64(time.Millisecond)

var maxNanos = time.Unix(0, math.MaxInt64).UTC()

func nanosOf(t time.Time, s string) (int64, error) {
	if t.Before(time.Unix(0, 0)) {
		return 0, fmt.Errorf("date[%s] is before the epoch in 1970 and cannot be stored in nanosecond resolution", s)
	}
	if t.After(maxNanos) {
		return 0, fmt.Errorf("date[%s] is after 2262-04-11T23:47:16.854775807 and cannot be stored in nanosecond resolution", s)
	}
	return t.UnixNano(), nil
}

// epochMillisNanos reads "1700000000123" or "1700000000123.456789" as
// nanoseconds.
func epochMillisNanos(s string) (int64, bool) {
	s = strings.TrimSpace(s)
	whole, frac, _ := strings.Cut(s, ".")
	ms, err := strconv.ParseInt(whole, 10, 64)
	if err != nil || len(frac) > 6 || ms > math.MaxInt64/nsPerMs || ms < math.MinInt64/nsPerMs {
		return 0, false
	}
	var sub int64
	for i := range 6 {
		sub *= 10
		if i < len(frac) {
			c := frac[i]
			if c < '0' || c > '9' {
				return 0, false
			}
			sub += int64(c - '0')
		}
	}
	if strings.HasPrefix(whole, "-") {
		if ms*nsPerMs < math.MinInt64+sub {
			return 0, false
		}
		return ms*nsPerMs - sub, true
	}
	if ms*nsPerMs > math.MaxInt64-sub {
		return 0, false
	}
	return ms*nsPerMs + sub, true
}
