package search

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"
)

func TestParseDateMath(t *testing.T) {
	now := time.Date(2026, 3, 31, 15, 4, 5, 123e6, time.UTC)
	iso, _ := parseDateFormats("")
	custom, err := parseDateFormats("dd/MM/yyyy||epoch_second")
	if err != nil {
		t.Fatal(err)
	}
	ms := func(s string) int64 {
		tm, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			t.Fatal(err)
		}
		return tm.UnixMilli()
	}
	tests := []struct {
		name    string
		expr    string
		formats *dateFormats
		roundUp bool
		tz      string
		want    int64
		wantErr bool
	}{
		{name: "now", expr: "now", formats: iso, want: now.UnixMilli()},
		{name: "now minus days", expr: "now-7d", formats: iso, want: ms("2026-03-24T15:04:05.123Z")},
		{name: "rounded down", expr: "now-7d/d", formats: iso, want: ms("2026-03-24T00:00:00Z")},
		{name: "rounded up", expr: "now-7d/d", formats: iso, roundUp: true, want: ms("2026-03-24T23:59:59.999Z")},
		{name: "hours and minutes", expr: "now+1h-30m", formats: iso, want: ms("2026-03-31T15:34:05.123Z")},
		{name: "month clamps the day", expr: "now-1M", formats: iso, want: ms("2026-02-28T15:04:05.123Z")},
		{name: "week rounds to Monday", expr: "now/w", formats: iso, want: ms("2026-03-30T00:00:00Z")},
		{name: "month rounding", expr: "now/M", formats: iso, roundUp: true, want: ms("2026-03-31T23:59:59.999Z")},
		{name: "year rounding", expr: "now/y", formats: iso, want: ms("2026-01-01T00:00:00Z")},
		{name: "anchored date", expr: "2024-01-31||+1M/d", formats: iso, want: ms("2024-02-29T00:00:00Z")},
		{name: "date only", expr: "2024-02-03", formats: iso, want: ms("2024-02-03T00:00:00Z")},
		{name: "year and month", expr: "2024-02", formats: iso, want: ms("2024-02-01T00:00:00Z")},
		{name: "fraction and offset", expr: "2024-02-03T10:20:30.5+01:00", formats: iso, want: ms("2024-02-03T09:20:30.500Z")},
		{name: "compact offset", expr: "2024-02-03T10:20:30-0130", formats: iso, want: ms("2024-02-03T11:50:30Z")},
		{name: "nanoseconds are truncated", expr: "2024-02-03T10:20:30.123456789Z", formats: iso, want: ms("2024-02-03T10:20:30.123Z")},
		{name: "epoch millis", expr: "1704067200000", formats: iso, want: 1704067200000},
		{name: "time zone for a zoneless date", expr: "2024-02-03T10:00:00", formats: iso, tz: "+02:00", want: ms("2024-02-03T08:00:00Z")},
		{name: "named time zone", expr: "2024-07-01", formats: iso, tz: "Europe/London", want: ms("2024-06-30T23:00:00Z")},
		{name: "custom pattern", expr: "03/02/2024", formats: custom, want: ms("2024-02-03T00:00:00Z")},
		{name: "epoch seconds", expr: "1704067200", formats: custom, want: 1704067200000},
		{name: "round up fills the time of day", expr: "2024-02-01", formats: iso, roundUp: true, want: ms("2024-02-01T23:59:59.999Z")},
		{name: "round up keeps a missing day at 01", expr: "2024-02", formats: iso, roundUp: true, want: ms("2024-02-01T23:59:59.999Z")},
		{name: "round up fills the fraction", expr: "2024-02-01T10:00:00Z", formats: iso, roundUp: true, want: ms("2024-02-01T10:00:00.999Z")},
		{name: "round up fills minutes", expr: "2024-02-01T10", formats: iso, roundUp: true, want: ms("2024-02-01T10:59:59.999Z")},
		{name: "round up a pattern", expr: "03/02/2024", formats: custom, roundUp: true, want: ms("2024-02-03T23:59:59.999Z")},
		{name: "an anchor is not rounded up", expr: "2024-02-01||+1d", formats: iso, roundUp: true, want: ms("2024-02-02T00:00:00Z")},
		{name: "epoch millis are exact", expr: "1704067200000", formats: iso, roundUp: true, want: 1704067200000},
		{name: "garbage", expr: "yesterday", formats: iso, wantErr: true},
		{name: "bad month", expr: "2024-13-01", formats: iso, wantErr: true},
		{name: "bad day", expr: "2023-02-29", formats: iso, wantErr: true},
		{name: "unknown unit", expr: "now-3x", formats: iso, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			loc, err := parseTimeZone(tc.tz)
			if err != nil {
				t.Fatal(err)
			}
			got, err := parseDateMath(tc.expr, tc.formats, tc.roundUp, loc, now)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("parseDateMath(%q) = %d, want an error", tc.expr, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseDateMath(%q): %v", tc.expr, err)
			}
			if got != tc.want {
				t.Errorf("parseDateMath(%q) = %s, want %s", tc.expr, time.UnixMilli(got).UTC(), time.UnixMilli(tc.want).UTC())
			}
		})
	}
}

func TestDateFormatsPrint(t *testing.T) {
	ms := time.Date(2024, 2, 3, 4, 5, 6, 7e6, time.UTC).UnixMilli()
	tests := []struct {
		name, format, tz, want string
	}{
		{name: "default", want: "2024-02-03T04:05:06.007Z"},
		{name: "default in a zone", tz: "+01:00", want: "2024-02-03T05:05:06.007+01:00"},
		{name: "date", format: "yyyy-MM-dd", want: "2024-02-03"},
		{name: "month", format: "yyyy-MM", want: "2024-02"},
		{name: "millis", format: "yyyy-MM-dd HH:mm:ss.SSS", want: "2024-02-03 04:05:06.007"},
		{name: "epoch", format: "epoch_millis", want: fmt.Sprint(ms)},
		{name: "named", format: "strict_date", want: "2024-02-03"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, err := parseDateFormats(tc.format)
			if err != nil {
				t.Fatal(err)
			}
			loc, _ := parseTimeZone(tc.tz)
			if got := f.format(ms, loc); got != tc.want {
				t.Errorf("format = %q, want %q", got, tc.want)
			}
		})
	}
	for _, bad := range []string{"yyyy-MM-dd G", "week_date", "yyyy'1'"} {
		if _, err := parseDateFormats(bad); err == nil {
			t.Errorf("parseDateFormats(%q) accepted an unsupported format", bad)
		}
	}
}

// TestSplitRange checks that the blocks of every range cover exactly the
// values in it, against brute force on random and edge ranges.
func TestSplitRange(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	edges := []uint64{0, 1, 255, 256, 257, 1 << 32, math.MaxUint64 - 1, math.MaxUint64, 1<<63 - 1, 1 << 63}
	var ranges [][2]uint64
	for _, a := range edges {
		for _, b := range edges {
			if a <= b {
				ranges = append(ranges, [2]uint64{a, b})
			}
		}
	}
	for range 2000 {
		a, b := rng.Uint64(), rng.Uint64()
		if rng.IntN(2) == 0 {
			b = a + uint64(rng.IntN(100000))
		}
		if a > b {
			a, b = b, a
		}
		ranges = append(ranges, [2]uint64{a, b})
	}
	for _, r := range ranges {
		type block struct {
			lo, hi uint64
			shift  uint
		}
		var blocks []block
		splitRange(r[0], r[1], numericStep, func(lo, hi uint64, shift uint) {
			blocks = append(blocks, block{lo, hi, shift})
		})
		in := func(x uint64) int {
			n := 0
			for _, bl := range blocks {
				if x>>bl.shift >= bl.lo>>bl.shift && x>>bl.shift <= bl.hi>>bl.shift {
					n++
				}
			}
			return n
		}
		probes := []uint64{r[0], r[1], r[0] - 1, r[1] + 1, 0, math.MaxUint64}
		for range 50 {
			if span := r[1] - r[0]; span == math.MaxUint64 {
				probes = append(probes, rng.Uint64())
			} else {
				probes = append(probes, r[0]+rng.Uint64N(span+1))
			}
			probes = append(probes, rng.Uint64())
		}
		for _, x := range probes {
			want := 0
			if x >= r[0] && x <= r[1] {
				want = 1
			}
			if got := in(x); got != want {
				t.Fatalf("range [%d, %d]: value %d is in %d blocks, want %d (blocks %v)", r[0], r[1], x, got, want, blocks)
			}
		}
	}
}

func TestEncodeDV(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	vals := []int64{math.MinInt64, -1, 0, 1, math.MaxInt64, sortableFloat(-3), sortableFloat(2.5)}
	for range 1000 {
		vals = append(vals, int64(rng.Uint64()))
	}
	sort.Slice(vals, func(i, j int) bool { return vals[i] < vals[j] })
	var prev []byte
	for _, v := range vals {
		b := encodeDV(v, 0)
		if bytes.IndexByte(b, 0xff) >= 0 {
			t.Fatalf("encodeDV(%d) holds 0xff: %x", v, b)
		}
		if got := decodeDV(b); got != v {
			t.Fatalf("decodeDV(encodeDV(%d)) = %d", v, got)
		}
		if prev != nil && bytes.Compare(prev, b) > 0 {
			t.Fatalf("encodeDV does not keep order at %d", v)
		}
		prev = b
	}
}

func TestMinimumShouldMatch(t *testing.T) {
	tests := []struct {
		spec string
		n    int
		want int
	}{
		{"2", 3, 2}, {"-1", 3, 2}, {"75%", 4, 3}, {"66%", 3, 1}, {"-25%", 4, 3}, {"100%", 3, 3}, {"-5", 3, 0},
	}
	for _, tc := range tests {
		t.Run(tc.spec, func(t *testing.T) {
			got, err := msmValue(tc.spec, tc.n)
			if err != nil || got != tc.want {
				t.Errorf("msmValue(%q, %d) = %d, %v; want %d", tc.spec, tc.n, got, err, tc.want)
			}
		})
	}
	if _, err := msmValue("3<90%", 5); err == nil {
		t.Error("combined minimum_should_match accepted")
	}
}

// TestMatchJSON checks the conformance matcher itself can fail.
func TestMatchJSON(t *testing.T) {
	dec := func(s string) any {
		d := json.NewDecoder(strings.NewReader(s))
		d.UseNumber()
		var v any
		if err := d.Decode(&v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	tests := []struct {
		name, want, got string
		ok              bool
	}{
		{name: "subset", want: `{"a": 1}`, got: `{"a": 1.0, "b": 2}`, ok: true},
		{name: "value differs", want: `{"a": 1}`, got: `{"a": 2}`},
		{name: "missing key", want: `{"a": 1}`, got: `{"b": 1}`},
		{name: "array length", want: `[1, 2]`, got: `[1, 2, 3]`},
		{name: "array order", want: `[1, 2]`, got: `[2, 1]`},
		{name: "unordered", want: `{"$unordered": [1, 2]}`, got: `[2, 1]`, ok: true},
		{name: "unordered differs", want: `{"$unordered": [1, 2]}`, got: `[2, 2]`},
		{name: "absent", want: `{"a": {"$absent": true}}`, got: `{"a": null}`},
		{name: "absent ok", want: `{"a": {"$absent": true}}`, got: `{}`, ok: true},
		{name: "oneOf", want: `{"$oneOf": ["x", "y"]}`, got: `"y"`, ok: true},
		{name: "oneOf differs", want: `{"$oneOf": ["x", "y"]}`, got: `"z"`},
		{name: "contains", want: `{"$contains": "ell"}`, got: `"hello"`, ok: true},
		{name: "len", want: `{"$len": 2, "a": 1}`, got: `{"a": 1, "b": 2, "c": 3}`},
		{name: "null", want: `null`, got: `0`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			problems := matchJSON("$", dec(tc.want), dec(tc.got))
			if (len(problems) == 0) != tc.ok {
				t.Errorf("matchJSON(%s, %s) = %v, want ok=%v", tc.want, tc.got, problems, tc.ok)
			}
		})
	}
}

func TestFilterPath(t *testing.T) {
	in := []byte(`{"took":1,"hits":{"total":{"value":2},"hits":[{"_id":"a","_source":{"x":1}},{"_id":"b","_source":{"x":2}}]},"aggregations":{"t":{"buckets":[]}}}`)
	tests := []struct {
		name, paths, want string
	}{
		{name: "leaf in arrays", paths: "hits.hits._id", want: `{"hits":{"hits":[{"_id":"a"},{"_id":"b"}]}}`},
		{name: "two paths", paths: "took,hits.total", want: `{"hits":{"total":{"value":2}},"took":1}`},
		{name: "wildcard", paths: "aggregations.*.buckets", want: `{"aggregations":{"t":{"buckets":[]}}}`},
		{name: "double wildcard", paths: "**.value", want: `{"hits":{"total":{"value":2}}}`},
		{name: "exclusion", paths: "-hits,-aggregations", want: `{"took":1}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := filterPath(in, strings.Split(tc.paths, ","))
			if string(got) != tc.want {
				t.Errorf("filterPath(%s) = %s, want %s", tc.paths, got, tc.want)
			}
		})
	}
}

// TestRangesAgainstBruteForce indexes random numbers and dates and checks
// range, term and sort results against answers computed here.
func TestRangesAgainstBruteForce(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a search server")
	}
	s := startServer(t, "")
	callJSON(t, http.MethodPut, s.URL()+"/r", `{"mappings":{"dynamic":"strict","properties":{
		"l":{"type":"long"},"d":{"type":"double"},"t":{"type":"date"},"i":{"type":"integer"}}}}`, 200)
	rng := rand.New(rand.NewPCG(9, 9))
	const n = 3000
	type doc struct {
		L int64
		D float64
		T int64
		I int32
	}
	docs := make([]doc, n)
	var body bytes.Buffer
	for i := range docs {
		d := doc{L: int64(rng.Uint64()), D: (rng.Float64() - 0.5) * math.Pow(10, float64(rng.IntN(30)-10)), T: 1_600_000_000_000 + rng.Int64N(200_000_000_000), I: int32(rng.IntN(2000) - 1000)}
		if i%10 == 0 {
			d.L = int64(rng.IntN(50) - 25) // some small and repeated values
		}
		docs[i] = d
		fmt.Fprintf(&body, `{"index":{"_id":"%d"}}`+"\n"+`{"l":%d,"d":%v,"t":%d,"i":%d}`+"\n", i, d.L, strconvFloat(d.D), d.T, d.I)
	}
	resp := callJSON(t, http.MethodPost, s.URL()+"/r/_bulk?refresh=true", body.Bytes(), 200)
	if resp["errors"] != false {
		t.Fatalf("bulk errors: %v", resp)
	}
	count := func(q string) int64 {
		t.Helper()
		out := callJSON(t, http.MethodPost, s.URL()+"/r/_count", `{"query":`+q+`}`, 200)
		c, _ := out["count"].(json.Number).Int64()
		return c
	}
	for i := range 60 {
		a, b := docs[rng.IntN(n)], docs[rng.IntN(n)]
		var want int64
		// long, inclusive and exclusive bounds
		lo, hi := min(a.L, b.L), max(a.L, b.L)
		for _, d := range docs {
			if d.L > lo && d.L <= hi {
				want++
			}
		}
		if got := count(fmt.Sprintf(`{"range":{"l":{"gt":%d,"lte":%d}}}`, lo, hi)); got != want {
			t.Errorf("long range (%d, %d]: %d, want %d", lo, hi, got, want)
		}
		// double
		dlo, dhi := math.Min(a.D, b.D), math.Max(a.D, b.D)
		want = 0
		for _, d := range docs {
			if d.D >= dlo && d.D < dhi {
				want++
			}
		}
		if got := count(fmt.Sprintf(`{"range":{"d":{"gte":%s,"lt":%s}}}`, strconvFloat(dlo), strconvFloat(dhi))); got != want {
			t.Errorf("double range [%v, %v): %d, want %d", dlo, dhi, got, want)
		}
		// dates as epoch millis
		tlo, thi := min(a.T, b.T), max(a.T, b.T)
		want = 0
		for _, d := range docs {
			if d.T >= tlo && d.T <= thi {
				want++
			}
		}
		if got := count(fmt.Sprintf(`{"range":{"t":{"gte":%d,"lte":%d}}}`, tlo, thi)); got != want {
			t.Errorf("date range [%d, %d]: %d, want %d", tlo, thi, got, want)
		}
		// one-sided integer range and a term
		want = 0
		for _, d := range docs {
			if d.I < a.I {
				want++
			}
		}
		if got := count(fmt.Sprintf(`{"range":{"i":{"lt":%d}}}`, a.I)); got != want {
			t.Errorf("integer range < %d: %d, want %d", a.I, got, want)
		}
		want = 0
		for _, d := range docs {
			if d.L == a.L {
				want++
			}
		}
		if got := count(fmt.Sprintf(`{"term":{"l":%d}}`, a.L)); got != want {
			t.Errorf("term l=%d: %d, want %d", a.L, got, want)
		}
		if i == 0 {
			if got := count(`{"exists":{"field":"d"}}`); got != n {
				t.Errorf("exists d: %d, want %d", got, n)
			}
		}
	}
	// sorting by a double, descending, matches sorting here
	out := callJSON(t, http.MethodPost, s.URL()+"/r/_search", `{"size":50,"sort":[{"d":"desc"}],"_source":false}`, 200)
	sorted := append([]doc(nil), docs...)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].D > sorted[j].D })
	hits := out["hits"].(map[string]any)["hits"].([]any)
	for i, h := range hits {
		v, _ := h.(map[string]any)["sort"].([]any)[0].(json.Number).Float64()
		if v != sorted[i].D {
			t.Fatalf("hit %d sorts on %v, want %v", i, v, sorted[i].D)
		}
	}
	// sum of the longs as a double, like Elasticsearch
	aggs := callJSON(t, http.MethodPost, s.URL()+"/r/_search", `{"size":0,"aggs":{"s":{"sum":{"field":"i"}},"m":{"max":{"field":"t"}}}}`, 200)
	var sum float64
	var maxT int64 = math.MinInt64
	for _, d := range docs {
		sum += float64(d.I)
		maxT = max(maxT, d.T)
	}
	gotSum, _ := aggs["aggregations"].(map[string]any)["s"].(map[string]any)["value"].(json.Number).Float64()
	gotMax, _ := aggs["aggregations"].(map[string]any)["m"].(map[string]any)["value"].(json.Number).Float64()
	if gotSum != sum || int64(gotMax) != maxT {
		t.Errorf("sum %v max %v, want %v %v", gotSum, gotMax, sum, maxT)
	}
}

func strconvFloat(f float64) string {
	b, _ := json.Marshal(f)
	return string(b)
}
