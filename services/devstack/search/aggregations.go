package search

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"sort"
	"strings"
	"time"
)

var supportedAggs = []string{"terms", "date_histogram", "cardinality", "sum", "avg", "min", "max", "value_count"}

// knownAggs are Elasticsearch aggregation types this server refuses as
// unsupported.
var knownAggs = set("filter", "filters", "range", "date_range", "histogram", "auto_date_histogram",
	"missing", "nested", "reverse_nested", "global", "significant_terms", "significant_text", "rare_terms",
	"multi_terms", "composite", "geohash_grid", "geotile_grid", "geohex_grid", "geo_distance", "geo_bounds",
	"geo_centroid", "top_hits", "top_metrics", "stats", "extended_stats", "percentiles", "percentile_ranks",
	"median_absolute_deviation", "weighted_avg", "scripted_metric", "string_stats", "boxplot", "t_test",
	"rate", "matrix_stats", "adjacency_matrix", "sampler", "diversified_sampler", "random_sampler",
	"variable_width_histogram", "ip_range", "ip_prefix", "children", "parent", "bucket_script",
	"bucket_selector", "bucket_sort", "avg_bucket", "sum_bucket", "max_bucket", "min_bucket",
	"stats_bucket", "extended_stats_bucket", "percentiles_bucket", "cumulative_sum", "cumulative_cardinality",
	"derivative", "moving_fn", "moving_percentiles", "normalize", "serial_diff", "inference",
	"categorize_text", "frequent_item_sets", "time_series", "change_point")

const maxBuckets = 65536

// aggSpec is one parsed aggregation.
type aggSpec struct {
	name  string
	typ   string
	field string
	subs  []*aggSpec
	meta  any // echoed as "meta" in the response

	// terms
	size        int
	minDocCount int64
	order       []aggOrder

	// date_histogram
	calendar byte  // calendar unit (s m h d w M q y), 0 for a fixed interval
	fixed    int64 // fixed interval in ms
	format   string
	tz       *time.Location
	tzOffset int64 // fixed offset in ms when tz has one
	tzFixed  bool
	extMin   any
	extMax   any

	// resolved over the searched indices
	kind    valueKind
	keyFmt  *dateFormats
	extLo   int64
	extHi   int64
	hasExtB bool
}

type aggOrder struct {
	key  string // _count, _key or a metric sub-aggregation's name
	desc bool
}

func (a *aggSpec) isBucket() bool { return a.typ == "terms" || a.typ == "date_histogram" }

// parseAggs parses an "aggs" object; depth 0 is the top level.
func parseAggs(v any, depth int) ([]*aggSpec, *esError) {
	m, ok := v.(map[string]any)
	if !ok {
		return nil, parsingError("[aggs] must be an object")
	}
	var out []*aggSpec
	for _, name := range sortedKeys(m) {
		def, ok := m[name].(map[string]any)
		if !ok {
			return nil, parsingError("aggregation [%s] must be an object", name)
		}
		spec := &aggSpec{name: name}
		var body map[string]any
		var subs any
		for k, v := range def {
			switch k {
			case "aggs", "aggregations":
				subs = v
			case "meta":
				if _, ok := v.(map[string]any); !ok {
					return nil, parsingError("[meta] of aggregation [%s] must be an object", name)
				}
				spec.meta = v
			default:
				if spec.typ != "" {
					return nil, parsingError("Found two aggregation type definitions in [%s]: [%s] and [%s]", name, spec.typ, k)
				}
				spec.typ = k
				b, ok := v.(map[string]any)
				if !ok {
					return nil, parsingError("aggregation [%s] of type [%s] must be an object", name, k)
				}
				body = b
			}
		}
		if spec.typ == "" {
			return nil, parsingError("Missing definition for aggregation [%s]", name)
		}
		if err := spec.parseBody(body); err != nil {
			return nil, err
		}
		if subs != nil {
			if !spec.isBucket() {
				return nil, badRequest("Aggregator [%s] of type [%s] cannot accept sub-aggregations", name, spec.typ)
			}
			if depth >= 1 {
				return nil, unsupported("illegal_argument_exception", fmt.Sprintf("sub-aggregations nested more than one level (under [%s])", name))
			}
			s, err := parseAggs(subs, depth+1)
			if err != nil {
				return nil, err
			}
			spec.subs = s
		}
		for _, o := range spec.order {
			if o.key == "_count" || o.key == "_key" {
				continue
			}
			var sub *aggSpec
			for _, s := range spec.subs {
				if s.name == o.key {
					sub = s
				}
			}
			if sub == nil || sub.isBucket() {
				return nil, newError(http.StatusBadRequest, "aggregation_execution_exception",
					"Invalid aggregation order path [%s]. The provided aggregation [%s] either does not exist, or is a pathway to a single-bucket aggregation", o.key, o.key)
			}
		}
		out = append(out, spec)
	}
	return out, nil
}

func (a *aggSpec) parseBody(body map[string]any) *esError {
	switch a.typ {
	case "terms", "date_histogram", "cardinality", "sum", "avg", "min", "max", "value_count":
	default:
		if knownAggs[a.typ] {
			return unsupported("illegal_argument_exception", "aggregation type ["+a.typ+"] (aggregation ["+a.name+"])", supportedAggs...)
		}
		return parsingError("Unknown aggregation type [%s] (aggregation [%s])", a.typ, a.name)
	}
	a.size, a.minDocCount = 10, 1
	if a.typ == "date_histogram" {
		a.minDocCount = 0
		a.tz, a.tzFixed = time.UTC, true
	}
	bad := func(k string) *esError {
		return unsupported("illegal_argument_exception", fmt.Sprintf("parameter [%s] of aggregation [%s] of type [%s]", k, a.name, a.typ))
	}
	for k, v := range body {
		switch {
		case k == "field":
			s, ok := v.(string)
			if !ok {
				return parsingError("[field] of aggregation [%s] must be a string", a.name)
			}
			a.field = s
		case k == "script":
			return bad(k)
		case k == "size" && a.typ == "terms":
			n, ok := asInt(v)
			if !ok || n < 1 {
				return badRequest("[size] must be greater than 0. Found [%v] in [%s]", v, a.name)
			}
			a.size = n
		case k == "min_doc_count" && (a.typ == "terms" || a.typ == "date_histogram"):
			n, ok := asInt(v)
			if !ok || n < 0 {
				return badRequest("[min_doc_count] must be greater than or equal to 0. Found [%v] in [%s]", v, a.name)
			}
			if n == 0 && a.typ == "terms" {
				// Elasticsearch would list every term of the field, matched or not
				return bad("min_doc_count: 0")
			}
			a.minDocCount = int64(n)
		case k == "order" && (a.typ == "terms" || a.typ == "date_histogram"):
			o, err := parseAggOrder(v)
			if err != nil {
				return err
			}
			a.order = o
		case (k == "shard_size" || k == "execution_hint" || k == "collect_mode" || k == "shard_min_doc_count") && a.typ == "terms":
		case k == "show_term_doc_count_error" && a.typ == "terms":
			if b, _ := asBool(v); b {
				return bad(k)
			}
		case k == "precision_threshold" && a.typ == "cardinality":
			n, ok := asInt(v)
			if !ok {
				return parsingError("[cardinality] failed to parse field [precision_threshold]")
			}
			if n < 0 {
				e := newError(http.StatusBadRequest, "x_content_parse_exception", "[cardinality] failed to parse field [precision_threshold]")
				e.causedBy = badRequest("[precisionThreshold] must be greater than or equal to 0. Found [%d] in [%s]", n, a.name)
				return e
			}
		case k == "calendar_interval" && a.typ == "date_histogram":
			s, _ := v.(string)
			unit, ok := calendarUnits[s]
			if !ok {
				return badRequest("The supplied interval [%s] could not be parsed as a calendar interval.", s)
			}
			a.calendar = unit
		case k == "fixed_interval" && a.typ == "date_histogram":
			s, _ := v.(string)
			ms, err := parseFixedInterval(s)
			if err != nil {
				return err
			}
			a.fixed = ms
		case k == "format" && a.typ == "date_histogram":
			s, _ := v.(string)
			if _, err := parseDateFormats(s); err != nil {
				return unsupported("illegal_argument_exception", fmt.Sprintf("format [%s] of aggregation [%s]: %v", s, a.name, err))
			}
			a.format = s
		case k == "time_zone" && a.typ == "date_histogram":
			s, _ := v.(string)
			loc, err := parseTimeZone(s)
			if err != nil {
				return badRequest("%v", err)
			}
			a.tz = loc
			a.tzOffset, a.tzFixed = fixedOffset(loc)
		case k == "extended_bounds" && a.typ == "date_histogram":
			eb, ok := v.(map[string]any)
			if !ok {
				return parsingError("[extended_bounds] must be an object")
			}
			for bk, bv := range eb {
				switch bk {
				case "min":
					a.extMin = bv
				case "max":
					a.extMax = bv
				default:
					return parsingError("[extended_bounds] does not support [%s]", bk)
				}
			}
		case k == "keyed" && a.typ == "date_histogram":
			if b, _ := asBool(v); b {
				return bad(k)
			}
		case k == "offset" && a.typ == "date_histogram":
			if s, _ := scalarString(v); s != "0" && s != "+0" && s != "0ms" {
				return bad(k)
			}
		case k == "interval" && a.typ == "date_histogram":
			return badRequest("[interval] on [date_histogram] is not supported: use [fixed_interval] or [calendar_interval]")
		default:
			return bad(k)
		}
	}
	if a.field == "" {
		return badRequest("Required one of fields [field, script], but none were specified (aggregation [%s])", a.name)
	}
	if a.typ == "date_histogram" {
		if a.calendar == 0 && a.fixed == 0 {
			return badRequest("Invalid interval specified, must be non-null and non-empty (aggregation [%s]): set calendar_interval or fixed_interval", a.name)
		}
		if a.calendar != 0 && a.fixed != 0 {
			return badRequest("Cannot use [fixed_interval] with [calendar_interval] configuration option.")
		}
		if a.fixed != 0 && !a.tzFixed {
			return unsupported("illegal_argument_exception", fmt.Sprintf("[fixed_interval] with time_zone [%s] that observes daylight saving (aggregation [%s])", a.tz, a.name))
		}
	}
	return nil
}

var calendarUnits = map[string]byte{
	"1s": 's', "second": 's', "1m": 'm', "minute": 'm', "1h": 'h', "hour": 'h', "1d": 'd', "day": 'd',
	"1w": 'w', "week": 'w', "1M": 'M', "month": 'M', "1q": 'q', "quarter": 'q', "1y": 'y', "year": 'y',
}

func parseFixedInterval(s string) (int64, *esError) {
	units := []struct {
		suffix string
		ms     int64
	}{{"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}, {"d", 86400000}}
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			var n int64
			if _, err := fmt.Sscanf(strings.TrimSuffix(s, u.suffix), "%d", &n); err == nil && n > 0 &&
				fmt.Sprint(n) == strings.TrimSuffix(s, u.suffix) {
				return n * u.ms, nil
			}
			break
		}
	}
	return 0, badRequest("failed to parse setting [date_histogram.fixedInterval] with value [%s] as a time value: unit is missing or unrecognized", s)
}

// fixedOffset reports whether loc has one UTC offset forever.
func fixedOffset(loc *time.Location) (int64, bool) {
	jan := time.Date(2001, 1, 1, 0, 0, 0, 0, loc)
	jul := time.Date(2001, 7, 1, 0, 0, 0, 0, loc)
	_, o1 := jan.Zone()
	_, o2 := jul.Zone()
	if o1 != o2 {
		return 0, false
	}
	// zones whose rules changed over time are not fixed either
	_, o3 := time.Date(1975, 1, 1, 0, 0, 0, 0, loc).Zone()
	_, o4 := time.Date(2030, 1, 1, 0, 0, 0, 0, loc).Zone()
	if o3 != o1 || o4 != o1 {
		return 0, false
	}
	return int64(o1) * 1000, true
}

func parseAggOrder(v any) ([]aggOrder, *esError) {
	var list []any
	switch o := v.(type) {
	case map[string]any:
		list = []any{o}
	case []any:
		list = o
	default:
		return nil, parsingError("[order] must be an object or an array of objects")
	}
	var out []aggOrder
	for _, e := range list {
		m, ok := e.(map[string]any)
		if !ok || len(m) != 1 {
			return nil, parsingError("[order] entries must be objects with one key")
		}
		for k, dir := range m {
			d, _ := dir.(string)
			var desc bool
			switch strings.ToLower(d) {
			case "asc":
			case "desc":
				desc = true
			default:
				return nil, parsingError("Unknown order direction [%v]", dir)
			}
			k = strings.TrimSuffix(k, ".value")
			if strings.ContainsAny(k, ">.[") {
				return nil, unsupported("illegal_argument_exception", "aggregation order path ["+k+"]")
			}
			if k == "_term" {
				k = "_key"
			}
			out = append(out, aggOrder{key: k, desc: desc})
		}
	}
	return out, nil
}

// resolve fixes the value kind of the aggregation's field over the
// searched indices' mappings and checks the aggregation applies to it.
func (a *aggSpec) resolve(mappings []*mapping, indexNames []string) *esError {
	a.kind = kindNone
	var fieldFmt *dateFormats
	for i, m := range mappings {
		f := m.field(a.field)
		if f == nil || f.isObject() {
			continue
		}
		if err := aggFieldUsable(a, f, indexNames[i]); err != nil {
			return err
		}
		k := f.kind()
		if a.kind != kindNone && a.kind != k {
			return badRequest("the field [%s] has different types in the searched indices ([%s] in index [%s]); aggregation [%s] cannot merge them", a.field, f.Type, indexNames[i], a.name)
		}
		a.kind = k
		if k == kindDate && fieldFmt == nil {
			fieldFmt = f.formats
		}
	}
	if a.typ == "date_histogram" && a.kind != kindNone && a.kind != kindDate {
		return badRequest("Field [%s] of type [%s] is not supported for aggregation [date_histogram] by the embedded search server (date fields only)", a.field, kindName(a.kind))
	}
	a.keyFmt = fieldFmt
	if a.format != "" {
		a.keyFmt, _ = parseDateFormats(a.format)
	}
	if a.keyFmt == nil {
		a.keyFmt, _ = parseDateFormats("")
	}
	if a.typ == "date_histogram" && (a.extMin != nil || a.extMax != nil) {
		if a.extMin == nil || a.extMax == nil {
			return unsupported("illegal_argument_exception", "[extended_bounds] with only one of min and max")
		}
		lo, err := parseBound(a.extMin, a.keyFmt)
		if err != nil {
			return err
		}
		hi, err := parseBound(a.extMax, a.keyFmt)
		if err != nil {
			return err
		}
		if lo > hi {
			return badRequest("[extended_bounds.min][%d] cannot be greater than [extended_bounds.max][%d] for histogram aggregation [%s]", lo, hi, a.name)
		}
		a.extLo, a.extHi, a.hasExtB = lo, hi, true
	}
	for _, s := range a.subs {
		if err := s.resolve(mappings, indexNames); err != nil {
			return err
		}
	}
	return nil
}

func parseBound(v any, f *dateFormats) (int64, *esError) {
	s, ok := scalarString(v)
	if !ok {
		return 0, badRequest("[extended_bounds] must be dates")
	}
	ms, err := parseDateMath(s, f, false, time.UTC, time.Now())
	if err != nil {
		if n, perr := (epochFormat{unit: 1}).parse(s, time.UTC, false); perr == nil {
			return n, nil
		}
		return 0, badRequest("[extended_bounds] %v", err)
	}
	return ms, nil
}

func kindName(k valueKind) string {
	switch k {
	case kindString:
		return "keyword"
	case kindLong:
		return "long"
	case kindDouble:
		return "double"
	case kindDate:
		return "date"
	case kindBool:
		return "boolean"
	case kindIP:
		return "ip"
	case kindULong:
		return "unsigned_long"
	case kindDateNanos:
		return "date_nanos"
	}
	return "unmapped"
}

// aggFieldUsable refuses fields Elasticsearch cannot aggregate on.
func aggFieldUsable(a *aggSpec, f *fieldMapping, indexName string) *esError {
	switch f.Type {
	case typeText:
		return badRequest("Fielddata is disabled on [%s] in [%s]. Text fields are not optimised for operations that require per-document field data like aggregations and sorting, so these operations are disabled by default. Please use a keyword field instead.", a.field, indexName)
	case typeGeoPoint:
		return badRequest("Field [%s] of type [geo_point] is not supported for aggregation [%s]", a.field, a.typ)
	}
	if !f.hasDocValues() {
		return badRequest("Can't load fielddata on [%s] because fielddata is unsupported on fields of type [%s]. Use doc values instead.", a.field, f.Type)
	}
	switch a.typ {
	case "sum", "avg", "min", "max":
		if f.Type == typeKeyword || f.Type == typeIP {
			return badRequest("Field [%s] of type [%s] is not supported for aggregation [%s]", a.field, f.Type, a.typ)
		}
	}
	if f.Type == typeDateNanos && a.typ != "cardinality" && a.typ != "value_count" {
		// Elasticsearch aggregates date_nanos in milliseconds
		return unsupported("illegal_argument_exception", fmt.Sprintf("aggregation [%s] on date_nanos field [%s] (supported: cardinality, value_count)", a.typ, a.field))
	}
	return nil
}

// dvField is the bleve field holding a mapped field's doc values.
func dvField(f *fieldMapping, path string) string {
	if f.Type == typeKeyword || f.Type == typeIP {
		return path
	}
	return prefixDV + path
}

// --- collection -----------------------------------------------------------

// aggState accumulates one aggregation over the documents of one index;
// states of several indices merge.
type aggState interface {
	collect(d *docVals)
	merge(other aggState)
}

type bucket struct {
	count int64
	subs  []aggState
}

// newAggStates creates states for specs, reading fields through slots
// (slot -1: the field is unmapped in this index).
func newAggStates(specs []*aggSpec, slots map[*aggSpec]int) []aggState {
	out := make([]aggState, len(specs))
	for i, sp := range specs {
		slot := slots[sp]
		switch sp.typ {
		case "terms":
			out[i] = &termsState{spec: sp, slot: slot, slots: slots, str: map[string]*bucket{}, num: map[int64]*bucket{}}
		case "date_histogram":
			out[i] = &histState{spec: sp, slot: slot, slots: slots, buckets: map[int64]*bucket{}}
		case "cardinality":
			out[i] = &cardState{slot: slot, str: map[string]struct{}{}, num: map[int64]struct{}{}}
		default:
			out[i] = &metricState{spec: sp, slot: slot, min: math.Inf(1), max: math.Inf(-1)}
		}
	}
	return out
}

func mergeStates(dst, src []aggState) {
	for i := range dst {
		dst[i].merge(src[i])
	}
}

func collectSubs(subs []aggState, d *docVals) {
	for _, s := range subs {
		s.collect(d)
	}
}

type termsState struct {
	spec  *aggSpec
	slot  int
	slots map[*aggSpec]int
	str   map[string]*bucket
	num   map[int64]*bucket
}

func (t *termsState) collect(d *docVals) {
	if t.slot < 0 {
		return
	}
	sv := &d.slots[t.slot]
	if sv.kind.stringDV() {
		for i := range sv.strs {
			b := d.str(t.slot, i)
			if i > 0 && d.seenStr(t.slot, i) {
				continue
			}
			bk, ok := t.str[string(b)]
			if !ok {
				bk = &bucket{subs: newAggStates(t.spec.subs, t.slots)}
				t.str[string(b)] = bk
			}
			bk.count++
			collectSubs(bk.subs, d)
		}
		return
	}
	for i, n := range sv.nums {
		if i > 0 && seenNum(sv.nums[:i], n) {
			continue
		}
		bk, ok := t.num[n]
		if !ok {
			bk = &bucket{subs: newAggStates(t.spec.subs, t.slots)}
			t.num[n] = bk
		}
		bk.count++
		collectSubs(bk.subs, d)
	}
}

func seenNum(prev []int64, n int64) bool {
	for _, p := range prev {
		if p == n {
			return true
		}
	}
	return false
}

func (t *termsState) merge(other aggState) {
	o := other.(*termsState)
	for k, ob := range o.str {
		if b, ok := t.str[k]; ok {
			b.count += ob.count
			mergeStates(b.subs, ob.subs)
		} else {
			t.str[k] = ob
		}
	}
	for k, ob := range o.num {
		if b, ok := t.num[k]; ok {
			b.count += ob.count
			mergeStates(b.subs, ob.subs)
		} else {
			t.num[k] = ob
		}
	}
}

type histState struct {
	spec    *aggSpec
	slot    int
	slots   map[*aggSpec]int
	buckets map[int64]*bucket
	// the last bucket's range, to skip rounding for clustered values
	lastLo, lastHi int64
	lastKey        int64
	hasLast        bool
	keys           []int64
}

func (h *histState) key(ms int64) int64 {
	if h.hasLast && ms >= h.lastLo && ms < h.lastHi {
		return h.lastKey
	}
	k := h.spec.roundKey(ms)
	h.lastLo, h.lastHi, h.lastKey, h.hasLast = k, h.spec.nextKey(k), k, true
	return k
}

func (h *histState) collect(d *docVals) {
	if h.slot < 0 {
		return
	}
	sv := &d.slots[h.slot]
	h.keys = h.keys[:0]
	for _, ms := range sv.nums {
		k := h.key(ms)
		if seenNum(h.keys, k) {
			continue
		}
		h.keys = append(h.keys, k)
		bk, ok := h.buckets[k]
		if !ok {
			bk = &bucket{subs: newAggStates(h.spec.subs, h.slots)}
			h.buckets[k] = bk
		}
		bk.count++
		collectSubs(bk.subs, d)
	}
}

func (h *histState) merge(other aggState) {
	o := other.(*histState)
	for k, ob := range o.buckets {
		if b, ok := h.buckets[k]; ok {
			b.count += ob.count
			mergeStates(b.subs, ob.subs)
		} else {
			h.buckets[k] = ob
		}
	}
}

const dayMs = 86400000

// roundKey returns the start of the bucket holding ms.
func (a *aggSpec) roundKey(ms int64) int64 {
	if a.fixed > 0 {
		return floorDiv(ms+a.tzOffset, a.fixed)*a.fixed - a.tzOffset
	}
	if a.tzFixed {
		var unit int64
		switch a.calendar {
		case 's':
			unit = 1000
		case 'm':
			unit = 60000
		case 'h':
			unit = 3600000
		case 'd':
			unit = dayMs
		case 'w':
			// 1970-01-01 was a Thursday; weeks start on Monday
			return floorDiv(ms+a.tzOffset+3*dayMs, 7*dayMs)*7*dayMs - 3*dayMs - a.tzOffset
		}
		if unit > 0 {
			return floorDiv(ms+a.tzOffset, unit)*unit - a.tzOffset
		}
	}
	t, _ := roundDown(time.UnixMilli(ms).In(a.tz), a.calendar)
	return t.UnixMilli()
}

// nextKey returns the start of the bucket after the one starting at key.
func (a *aggSpec) nextKey(key int64) int64 {
	if a.fixed > 0 {
		return key + a.fixed
	}
	t, _ := addUnit(time.UnixMilli(key).In(a.tz), a.calendar, 1)
	// re-round: a day after a DST change may not start at key+24h
	n := a.roundKey(t.UnixMilli())
	if n <= key {
		t, _ = addUnit(t, a.calendar, 1)
		n = a.roundKey(t.UnixMilli())
	}
	return n
}

type cardState struct {
	slot int
	str  map[string]struct{}
	num  map[int64]struct{}
}

func (c *cardState) collect(d *docVals) {
	if c.slot < 0 {
		return
	}
	sv := &d.slots[c.slot]
	if sv.kind.stringDV() {
		for i := range sv.strs {
			b := d.str(c.slot, i)
			if _, ok := c.str[string(b)]; !ok {
				c.str[string(b)] = struct{}{}
			}
		}
		return
	}
	for _, n := range sv.nums {
		c.num[n] = struct{}{}
	}
}

func (c *cardState) merge(other aggState) {
	o := other.(*cardState)
	for k := range o.str {
		c.str[k] = struct{}{}
	}
	for k := range o.num {
		c.num[k] = struct{}{}
	}
}

func (c *cardState) value() int64 { return int64(len(c.str) + len(c.num)) }

type metricState struct {
	spec     *aggSpec
	slot     int
	count    int64
	sum, cmp float64 // Kahan summation, as Elasticsearch sums
	min, max float64
}

func (m *metricState) add(v float64) {
	m.count++
	m.kahan(v)
	if v < m.min {
		m.min = v
	}
	if v > m.max {
		m.max = v
	}
}

func (m *metricState) kahan(v float64) {
	y := v - m.cmp
	t := m.sum + y
	m.cmp = (t - m.sum) - y
	m.sum = t
}

func (m *metricState) collect(d *docVals) {
	if m.slot < 0 {
		return
	}
	sv := &d.slots[m.slot]
	if sv.kind.stringDV() {
		m.count += int64(len(sv.strs))
		return
	}
	for _, n := range sv.nums {
		switch sv.kind {
		case kindDouble:
			m.add(floatFromSortable(n))
		case kindULong:
			// Elasticsearch converts unsigned_long values to doubles
			m.add(float64(signedToULong(n)))
		default:
			m.add(float64(n))
		}
	}
}

func (m *metricState) merge(other aggState) {
	o := other.(*metricState)
	m.count += o.count
	m.kahan(o.sum)
	m.kahan(-o.cmp)
	if o.min < m.min {
		m.min = o.min
	}
	if o.max > m.max {
		m.max = o.max
	}
}

// metricValue is the single value of a metric aggregation, for rendering
// and for ordering terms buckets by it (NaN when there is none).
func metricValue(sp *aggSpec, st aggState) float64 {
	switch s := st.(type) {
	case *cardState:
		return float64(s.value())
	case *metricState:
		switch sp.typ {
		case "sum":
			return s.sum
		case "value_count":
			return float64(s.count)
		case "avg":
			if s.count == 0 {
				return math.NaN()
			}
			return s.sum / float64(s.count)
		case "min":
			if s.count == 0 {
				return math.NaN()
			}
			return s.min
		case "max":
			if s.count == 0 {
				return math.NaN()
			}
			return s.max
		}
	}
	return math.NaN()
}

// --- rendering --------------------------------------------------------------

// bucketBudget counts buckets across a response against search.max_buckets.
type bucketBudget struct{ n int }

func (b *bucketBudget) take(n int) *esError {
	b.n += n
	if b.n > maxBuckets {
		return newError(http.StatusBadRequest, "too_many_buckets_exception",
			"Trying to create too many buckets. Must be less than or equal to: [%d] but was [%d]. This limit can be set by changing the [search.max_buckets] cluster level setting.", maxBuckets, b.n)
	}
	return nil
}

func renderAggs(specs []*aggSpec, states []aggState, budget *bucketBudget) (obj, *esError) {
	out := make(obj, 0, len(specs))
	for i, sp := range specs {
		v, err := renderAgg(sp, states[i], budget)
		if err != nil {
			return nil, err
		}
		if sp.meta != nil {
			v = append(obj{{"meta", sp.meta}}, v...)
		}
		out = append(out, kv{sp.name, v})
	}
	return out, nil
}

func renderAgg(sp *aggSpec, st aggState, budget *bucketBudget) (obj, *esError) {
	switch s := st.(type) {
	case *termsState:
		return renderTerms(sp, s, budget)
	case *histState:
		return renderHist(sp, s, budget)
	case *cardState:
		return obj{{"value", s.value()}}, nil
	case *metricState:
		v := metricValue(sp, s)
		if sp.typ == "value_count" {
			return obj{{"value", s.count}}, nil
		}
		if math.IsNaN(v) {
			return obj{{"value", nil}}, nil
		}
		o := obj{{"value", v}}
		if sp.kind == kindDate && sp.typ != "sum" {
			o = append(o, kv{"value_as_string", sp.keyFmt.format(int64(v), time.UTC)})
		}
		return o, nil
	}
	return nil, badRequest("cannot render aggregation %s", sp.name)
}

type renderBucket struct {
	str   string
	num   int64
	count int64
	subs  []aggState
}

func (sp *aggSpec) compareKeys(a, b *renderBucket) int {
	switch sp.kind {
	case kindString, kindIP:
		return strings.Compare(a.str, b.str)
	case kindDouble:
		return cmpFloat(floatFromSortable(a.num), floatFromSortable(b.num))
	}
	switch {
	case a.num < b.num:
		return -1
	case a.num > b.num:
		return 1
	}
	return 0
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	case a == b:
		return 0
	case math.IsNaN(a) && !math.IsNaN(b):
		return 1
	case !math.IsNaN(a) && math.IsNaN(b):
		return -1
	}
	return 0
}

func (sp *aggSpec) orderBuckets(list []*renderBucket, defaultOrder []aggOrder) {
	order := sp.order
	if len(order) == 0 {
		order = defaultOrder
	}
	subIndex := map[string]int{}
	for i, s := range sp.subs {
		subIndex[s.name] = i
	}
	sort.SliceStable(list, func(i, j int) bool {
		a, b := list[i], list[j]
		for _, o := range order {
			var c int
			switch o.key {
			case "_count":
				switch {
				case a.count < b.count:
					c = -1
				case a.count > b.count:
					c = 1
				}
			case "_key":
				c = sp.compareKeys(a, b)
			default:
				k := subIndex[o.key]
				c = cmpFloat(metricValue(sp.subs[k], a.subs[k]), metricValue(sp.subs[k], b.subs[k]))
			}
			if o.desc {
				c = -c
			}
			if c != 0 {
				return c < 0
			}
		}
		// ties: key ascending
		return sp.compareKeys(a, b) < 0
	})
}

func (sp *aggSpec) renderKey(o obj, b *renderBucket) obj {
	switch sp.kind {
	case kindString:
		return append(o, kv{"key", b.str})
	case kindIP:
		return append(o, kv{"key", ipString(b.str)})
	case kindULong:
		// a number, no key_as_string (Elasticsearch's LongTerms with the
		// unsigned_long format)
		return append(o, kv{"key", signedToULong(b.num)})
	case kindDouble:
		return append(o, kv{"key", floatFromSortable(b.num)})
	case kindDate:
		return append(o, kv{"key", b.num}, kv{"key_as_string", sp.keyFmt.format(b.num, time.UTC)})
	case kindBool:
		s := "false"
		if b.num == 1 {
			s = "true"
		}
		return append(o, kv{"key", b.num}, kv{"key_as_string", s})
	}
	return append(o, kv{"key", b.num})
}

func renderBuckets(sp *aggSpec, list []*renderBucket, budget *bucketBudget, keyFirst func(o obj, b *renderBucket) obj) ([]any, *esError) {
	if err := budget.take(len(list)); err != nil {
		return nil, err
	}
	out := make([]any, 0, len(list))
	for _, b := range list {
		o := keyFirst(obj{}, b)
		o = append(o, kv{"doc_count", b.count})
		if len(sp.subs) > 0 {
			subs := b.subs
			if subs == nil {
				subs = newAggStates(sp.subs, map[*aggSpec]int{})
				for i := range subs {
					setUnmapped(subs[i])
				}
			}
			so, err := renderAggs(sp.subs, subs, budget)
			if err != nil {
				return nil, err
			}
			o = append(o, so...)
		}
		out = append(out, o)
	}
	return out, nil
}

// setUnmapped marks a state created only for rendering an empty bucket.
func setUnmapped(st aggState) {
	switch s := st.(type) {
	case *termsState:
		s.slot = -1
	case *histState:
		s.slot = -1
	case *cardState:
		s.slot = -1
	case *metricState:
		s.slot = -1
	}
}

func renderTerms(sp *aggSpec, s *termsState, budget *bucketBudget) (obj, *esError) {
	list := make([]*renderBucket, 0, len(s.str)+len(s.num))
	for k, b := range s.str {
		if b.count >= sp.minDocCount {
			list = append(list, &renderBucket{str: k, count: b.count, subs: b.subs})
		}
	}
	for k, b := range s.num {
		if b.count >= sp.minDocCount {
			list = append(list, &renderBucket{num: k, count: b.count, subs: b.subs})
		}
	}
	sp.orderBuckets(list, []aggOrder{{key: "_count", desc: true}})
	var other int64
	if len(list) > sp.size {
		for _, b := range list[sp.size:] {
			other += b.count
		}
		list = list[:sp.size]
	}
	buckets, err := renderBuckets(sp, list, budget, sp.renderKey)
	if err != nil {
		return nil, err
	}
	return obj{{"doc_count_error_upper_bound", 0}, {"sum_other_doc_count", other}, {"buckets", buckets}}, nil
}

func renderHist(sp *aggSpec, s *histState, budget *bucketBudget) (obj, *esError) {
	var list []*renderBucket
	if sp.minDocCount == 0 && (len(s.buckets) > 0 || sp.hasExtB) {
		// every bucket from the first to the last, and over the extended
		// bounds, empty ones included
		lo, hi := int64(math.MaxInt64), int64(math.MinInt64)
		for k := range s.buckets {
			lo, hi = min(lo, k), max(hi, k)
		}
		if sp.hasExtB {
			lo, hi = min(lo, sp.roundKey(sp.extLo)), max(hi, sp.roundKey(sp.extHi))
		}
		if est := estimateBuckets(sp, lo, hi); est+budget.n > maxBuckets {
			return nil, budget.take(est)
		}
		for k := lo; k <= hi; k = sp.nextKey(k) {
			b := s.buckets[k]
			rb := &renderBucket{num: k}
			if b != nil {
				rb.count, rb.subs = b.count, b.subs
			}
			list = append(list, rb)
			if len(list)+budget.n > maxBuckets {
				return nil, budget.take(len(list))
			}
		}
	} else {
		for k, b := range s.buckets {
			if b.count >= sp.minDocCount {
				list = append(list, &renderBucket{num: k, count: b.count, subs: b.subs})
			}
		}
	}
	sp.orderBuckets(list, []aggOrder{{key: "_key"}})
	buckets, err := renderBuckets(sp, list, budget, func(o obj, b *renderBucket) obj {
		return append(o, kv{"key_as_string", sp.keyFmt.format(b.num, sp.tz)}, kv{"key", b.num})
	})
	if err != nil {
		return nil, err
	}
	return obj{{"buckets", buckets}}, nil
}

func estimateBuckets(sp *aggSpec, lo, hi int64) int {
	if hi < lo {
		return 0
	}
	width := sp.fixed
	if width == 0 {
		switch sp.calendar {
		case 's':
			width = 1000
		case 'm':
			width = 60000
		case 'h':
			width = 3600000
		case 'd':
			width = dayMs
		case 'w':
			width = 7 * dayMs
		case 'M':
			width = 28 * dayMs
		case 'q':
			width = 89 * dayMs
		case 'y':
			width = 365 * dayMs
		}
	}
	n := (hi-lo)/width + 1
	if n > math.MaxInt32 {
		return math.MaxInt32
	}
	return int(n)
}

// rawJSON is used to splice stored _source bytes into a response.
type rawJSON []byte

// MarshalJSON returns the bytes as they are.
func (r rawJSON) MarshalJSON() ([]byte, error) {
	if len(bytes.TrimSpace(r)) == 0 {
		return []byte("null"), nil
	}
	return json.RawMessage(r).MarshalJSON()
}
