package search

import (
	"bytes"
	"container/heap"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	bsearch "github.com/blevesearch/bleve/v2/search"
	"github.com/blevesearch/bleve/v2/search/query"
	index "github.com/blevesearch/bleve_index_api"
)

// handleSearch answers GET/POST /_search and /<index>/_search.
func (s *Server) handleSearch(req *request) *esError {
	sr, err := parseSearchRequest(req.obj, req.params)
	if err != nil {
		return err
	}
	e, done, err := s.runSearch(req, sr)
	if err != nil {
		return err
	}
	defer done()
	out, err := e.respond(time.Since(req.start))
	if err != nil {
		return err
	}
	req.ok(out)
	return nil
}

// handleCount answers GET/POST /_count and /<index>/_count.
func (s *Server) handleCount(req *request) *esError {
	sr := &searchRequest{query: qMatchAll{boost: 1}, sort: []*sortSpec{{field: "_doc"}}, trackTotal: -1}
	for k, v := range req.obj {
		if k != "query" {
			return parsingError("request does not support [%s]", k)
		}
		var err *esError
		if sr.query, err = parseQuery(v); err != nil {
			return err
		}
	}
	e, done, err := s.runSearch(req, sr)
	if err != nil {
		return err
	}
	defer done()
	var total int64
	for _, run := range e.runs {
		total += run.total
	}
	n := len(e.indices)
	req.ok(obj{{"count", total}, {"_shards", obj{{"total", n}, {"successful", n}, {"skipped", 0}, {"failed", 0}}}})
	return nil
}

// runSearch resolves the request's index expression, holds its indices
// open and executes sr over them, for _search and _count alike. The
// caller calls done once it has read the results.
func (s *Server) runSearch(req *request, sr *searchRequest) (e *searchExec, done func(), err *esError) {
	list, release, err := s.open(req.arg("index"), req.resolveOpts())
	if err != nil {
		return nil, nil, err
	}
	filters, err := s.aliasFilters(req.arg("index"), list)
	if err != nil {
		release()
		return nil, nil, err
	}
	e = &searchExec{s: s, req: sr, indices: list, now: time.Now(), aliasFilters: filters}
	done = func() {
		e.close()
		release()
	}
	if err := e.prepare(); err != nil {
		done()
		return nil, nil, err
	}
	if err := e.execute(req.ctx); err != nil {
		done()
		return nil, nil, err
	}
	return e, done, nil
}

// sortClass says how a sort key is compared.
type sortClass uint8

const (
	sortScore  sortClass = iota // _score
	sortDoc                     // _doc
	sortID                      // _id
	sortString                  // keyword
	sortNumber                  // long, date, boolean, double (sortable int64)
)

type sortSpec struct {
	field        string
	desc         bool
	missingFirst bool
	mode         string // "", "min", "max"
	unmappedType string

	class   sortClass
	kind    valueKind
	intSort bool // integer, short or byte: Lucene sorts them as int

	format   string       // the sort's "format" (date fields): sort values rendered in it
	fmt      *dateFormats // parsed format
	fieldFmt *dateFormats // the field's mapping format, for search_after strings
}

// sortVal is one sort key of a hit.
type sortVal struct {
	n       int64
	f       float64
	s       string
	missing bool // keyword and _id only; numbers use sentinels as Elasticsearch does
}

func (sp *sortSpec) cmp(a, b *sortVal) int {
	var c int
	switch sp.class {
	case sortScore:
		c = cmpFloat(a.f, b.f)
	case sortString, sortID:
		if a.missing || b.missing {
			switch {
			case a.missing && b.missing:
				return 0
			case a.missing == sp.missingFirst:
				return -1
			}
			return 1
		}
		c = strings.Compare(a.s, b.s)
	default:
		switch {
		case a.n < b.n:
			c = -1
		case a.n > b.n:
			c = 1
		}
	}
	if sp.desc {
		c = -c
	}
	return c
}

// missingNumber is the sort value of a document without a value: the
// extreme that puts it last (or first), as Elasticsearch renders it.
func (sp *sortSpec) missingNumber() int64 {
	high := !sp.desc
	if sp.missingFirst {
		high = !high
	}
	// Elasticsearch's missing values are those of the Lucene sort type:
	// int for integer, short and byte; float/double infinities; else long
	switch {
	case sp.kind == kindDouble && high:
		return sortableFloat(math.Inf(1))
	case sp.kind == kindDouble:
		return sortableFloat(math.Inf(-1))
	case sp.intSort && high:
		return math.MaxInt32
	case sp.intSort:
		return math.MinInt32
	case high:
		return math.MaxInt64
	}
	return math.MinInt64
}

func (sp *sortSpec) render(v *sortVal) any {
	switch sp.class {
	case sortScore:
		return v.f
	case sortDoc:
		return v.n
	case sortID, sortString:
		if v.missing {
			return nil
		}
		if sp.kind == kindIP {
			return ipString(v.s)
		}
		return v.s
	}
	if sp.kind == kindULong {
		// the shifted value back as an unsigned number; a missing value
		// is Lucene's long extreme shifted back too (2^64-1 or 0), as
		// Elasticsearch's unsigned_long format renders it
		return signedToULong(v.n)
	}
	if sp.fmt != nil {
		return sp.fmt.format(v.n, time.UTC)
	}
	if sp.kind == kindDouble {
		f := floatFromSortable(v.n)
		if math.IsInf(f, 0) {
			// Elasticsearch's JSON writes non-finite numbers as strings
			if f > 0 {
				return "Infinity"
			}
			return "-Infinity"
		}
		return f
	}
	return v.n
}

// sourceFilter is the _source parameter.
type sourceFilter struct {
	disabled           bool
	includes, excludes []string
}

type searchRequest struct {
	query        qnode
	from, size   int
	sort         []*sortSpec
	explicitSort bool
	searchAfter  []any
	trackTotal   int64 // -1: exact, 0: off, n: count exactly up to n
	aggs         []*aggSpec
	source       sourceFilter
	trackScores  bool
	totalAsInt   bool
}

// searchParams are the URL parameters _search accepts.
var searchParams = []string{"from", "size", "sort", "track_total_hits", "_source", "_source_includes", "_source_excludes",
	"timeout", "ignore_unavailable", "allow_no_indices", "expand_wildcards", "rest_total_hits_as_int", "typed_keys",
	"search_type", "request_cache", "preference", "batched_reduce_size", "ccs_minimize_roundtrips",
	"pre_filter_shard_size", "max_concurrent_shard_requests", "allow_partial_search_results", "track_scores",
	"ignore_throttled", "q", "routing", "scroll", "version", "seq_no_primary_term", "stored_fields", "docvalue_fields",
	"explain", "terminate_after", "stats", "suggest_field", "analyzer", "default_operator", "df", "lenient",
	"analyze_wildcard", "include_named_queries_score", "force_synthetic_source"}

func parseSearchRequest(body map[string]any, params url.Values) (*searchRequest, *esError) {
	req := &searchRequest{query: qMatchAll{boost: 1}, size: 10, trackTotal: 10000}
	trackTotalSet := false
	trackTotalZero := false // track_total_hits: 0, which is not "disabled"
	for k, v := range body {
		var err *esError
		switch k {
		case "query":
			req.query, err = parseQuery(v)
		case "from":
			n, ok := asInt(v)
			if !ok || n < 0 {
				return nil, badRequest("[from] parameter cannot be negative, found [%v]", v)
			}
			req.from = n
		case "size":
			n, ok := asInt(v)
			if !ok || n < 0 {
				return nil, badRequest("[size] parameter cannot be negative, found [%v]", v)
			}
			req.size = n
		case "sort":
			req.sort, err = parseSort(v)
			req.explicitSort = true
		case "search_after":
			l, ok := v.([]any)
			if !ok {
				return nil, parsingError("[search_after] must be an array")
			}
			req.searchAfter = l
		case "track_total_hits":
			req.trackTotal, err = parseTrackTotal(v)
			trackTotalSet = true
			if n, ok := asInt(v); ok && n == 0 {
				trackTotalZero = true
			}
		case "aggs", "aggregations":
			req.aggs, err = parseAggs(v, 0)
		case "_source":
			req.source, err = parseSourceParam(v)
		case "track_scores":
			req.trackScores, _ = asBool(v)
		case "timeout", "stats", "profile":
			if k == "profile" {
				if b, _ := asBool(v); b {
					return nil, unsupported("illegal_argument_exception", "search parameter [profile: true]")
				}
			}
		case "explain", "version", "seq_no_primary_term":
			if b, _ := asBool(v); b {
				return nil, unsupported("illegal_argument_exception", "search parameter ["+k+": true]")
			}
		default:
			return nil, unsupported("illegal_argument_exception", "search request parameter ["+k+"]",
				"query", "from", "size", "sort", "search_after", "track_total_hits", "aggs", "_source", "track_scores", "timeout")
		}
		if err != nil {
			return nil, err
		}
	}
	for k, vals := range params {
		v := vals[0]
		var err *esError
		switch k {
		case "from", "size":
			n, perr := strconv.Atoi(v)
			if perr != nil || n < 0 {
				return nil, badRequest("[%s] parameter cannot be negative, found [%s]", k, v)
			}
			if k == "from" {
				req.from = n
			} else {
				req.size = n
			}
		case "sort":
			var list []any
			for _, part := range strings.Split(v, ",") {
				f, dir, found := strings.Cut(part, ":")
				if found {
					list = append(list, map[string]any{f: dir})
				} else {
					list = append(list, f)
				}
			}
			req.sort, err = parseSort(list)
			req.explicitSort = true
		case "track_total_hits":
			if n, perr := strconv.Atoi(v); perr == nil {
				req.trackTotal, err = parseTrackTotal(json.Number(strconv.Itoa(n)))
				trackTotalZero = n == 0
			} else {
				req.trackTotal, err = parseTrackTotal(v == "true" || v == "")
			}
			trackTotalSet = true
		case "_source":
			switch v {
			case "true", "":
			case "false":
				req.source.disabled = true
			default:
				req.source.includes = strings.Split(v, ",")
			}
		case "_source_includes":
			req.source.includes = strings.Split(v, ",")
		case "_source_excludes":
			req.source.excludes = strings.Split(v, ",")
		case "rest_total_hits_as_int":
			req.totalAsInt = v == "true" || v == ""
		case "track_scores":
			req.trackScores = v == "true" || v == ""
		case "typed_keys":
			if v == "true" || v == "" {
				return nil, unsupported("illegal_argument_exception", "URL parameter [typed_keys]")
			}
		case "q", "routing", "scroll", "stored_fields", "docvalue_fields", "terminate_after", "suggest_field",
			"analyzer", "default_operator", "df", "lenient", "analyze_wildcard":
			return nil, unsupported("illegal_argument_exception", "URL parameter ["+k+"]")
		case "version", "seq_no_primary_term", "explain":
			if v == "true" || v == "" {
				return nil, unsupported("illegal_argument_exception", "URL parameter ["+k+"]")
			}
		}
		if err != nil {
			return nil, err
		}
	}
	if req.totalAsInt {
		switch {
		case !trackTotalSet:
			req.trackTotal = -1
		case req.trackTotal != -1 && req.trackTotal != 0:
			return nil, badRequest("[rest_total_hits_as_int] cannot be used if the tracking of total hits is not accurate, got %d", req.trackTotal)
		case req.trackTotal == 0 && trackTotalZero:
			return nil, badRequest("[rest_total_hits_as_int] cannot be used if the tracking of total hits is not accurate, got 0")
		}
	}
	if len(req.sort) == 0 {
		req.sort = []*sortSpec{{field: "_score", desc: true}}
	}
	if req.searchAfter != nil {
		if !req.explicitSort {
			return nil, badRequest("Sort must contain at least one field.")
		}
		if len(req.searchAfter) != len(req.sort) {
			return nil, badRequest("search_after has %d value(s) but sort has %d.", len(req.searchAfter), len(req.sort))
		}
		if req.from > 0 {
			return nil, badRequest("[from] parameter must be set to 0 when [search_after] is used")
		}
	}
	return req, nil
}

func parseTrackTotal(v any) (int64, *esError) {
	if b, ok := v.(bool); ok {
		if b {
			return -1, nil
		}
		return 0, nil
	}
	n, ok := asInt(v)
	if !ok {
		return 0, badRequest("[track_total_hits] must be a boolean or an integer, got [%v]", v)
	}
	if n < -1 {
		return 0, badRequest("[track_total_hits] parameter must be positive or equals to -1, got %d", n)
	}
	switch n {
	case -1: // Elasticsearch's TRACK_TOTAL_HITS_DISABLED
		return 0, nil
	case math.MaxInt32: // TRACK_TOTAL_HITS_ACCURATE
		return -1, nil
	}
	return int64(n), nil
}

func parseSort(v any) ([]*sortSpec, *esError) {
	list, ok := v.([]any)
	if !ok {
		list = []any{v}
	}
	var out []*sortSpec
	for _, e := range list {
		switch x := e.(type) {
		case string:
			sp := &sortSpec{field: x, desc: x == "_score"}
			out = append(out, sp)
		case map[string]any:
			for field, def := range x {
				if field == "_geo_distance" || field == "_script" {
					return nil, unsupported("parsing_exception", "sort ["+field+"]")
				}
				sp := &sortSpec{field: field, desc: field == "_score"}
				switch d := def.(type) {
				case string:
					if err := sp.setOrder(d); err != nil {
						return nil, err
					}
				case map[string]any:
					for k, pv := range d {
						switch k {
						case "order":
							s, _ := pv.(string)
							if err := sp.setOrder(s); err != nil {
								return nil, err
							}
						case "missing":
							s, _ := pv.(string)
							switch s {
							case "_last":
							case "_first":
								sp.missingFirst = true
							default:
								return nil, unsupported("parsing_exception", fmt.Sprintf("sort [missing] value [%v] (only _first and _last)", pv))
							}
						case "mode":
							s, _ := pv.(string)
							if s != "min" && s != "max" {
								return nil, unsupported("parsing_exception", "sort mode ["+s+"]", "min", "max")
							}
							sp.mode = s
						case "unmapped_type":
							sp.unmappedType, _ = pv.(string)
						case "format":
							s, _ := pv.(string)
							f, ferr := parseDateFormats(s)
							if s == "" || ferr != nil {
								return nil, unsupported("parsing_exception", fmt.Sprintf("sort format [%v]", pv))
							}
							sp.format, sp.fmt = s, f
						case "numeric_type", "nested":
							return nil, unsupported("parsing_exception", "sort parameter ["+k+"]")
						default:
							return nil, parsingError("[field_sort] unknown field [%s]", k)
						}
					}
				default:
					return nil, parsingError("malformed sort for field [%s]", field)
				}
				out = append(out, sp)
			}
		default:
			return nil, parsingError("malformed [sort]")
		}
	}
	return out, nil
}

func (sp *sortSpec) setOrder(s string) *esError {
	switch strings.ToLower(s) {
	case "asc":
		sp.desc = false
	case "desc":
		sp.desc = true
	default:
		return parsingError("Unknown sort order [%s]", s)
	}
	return nil
}

func parseSourceParam(v any) (sourceFilter, *esError) {
	var sf sourceFilter
	strs := func(x any) ([]string, bool) {
		switch l := x.(type) {
		case string:
			return []string{l}, true
		case []any:
			var out []string
			for _, e := range l {
				s, ok := e.(string)
				if !ok {
					return nil, false
				}
				out = append(out, s)
			}
			return out, true
		}
		return nil, false
	}
	switch x := v.(type) {
	case bool:
		sf.disabled = !x
		return sf, nil
	case map[string]any:
		for k, e := range x {
			l, ok := strs(e)
			if !ok {
				return sf, parsingError("[_source] [%s] must be strings", k)
			}
			switch k {
			case "includes", "include":
				sf.includes = l
			case "excludes", "exclude":
				sf.excludes = l
			default:
				return sf, parsingError("[_source] does not support [%s]", k)
			}
		}
		return sf, nil
	}
	l, ok := strs(v)
	if !ok {
		return sf, parsingError("[_source] must be a boolean, a string, an array or an object")
	}
	sf.includes = l
	return sf, nil
}

// --- execution --------------------------------------------------------------

// slotVals holds one field's doc values of the current document.
type slotVals struct {
	field string
	kind  valueKind
	nums  []int64
	strs  [][2]int32 // offsets into docVals.arena
}

// docVals holds the doc values of the current document for every field an
// aggregation or a sort reads.
type docVals struct {
	slots []slotVals
	arena []byte
}

func (d *docVals) str(slot, i int) []byte {
	o := d.slots[slot].strs[i]
	return d.arena[o[0]:o[1]]
}

func (d *docVals) seenStr(slot, i int) bool {
	b := d.str(slot, i)
	for j := 0; j < i; j++ {
		if bytes.Equal(d.str(slot, j), b) {
			return true
		}
	}
	return false
}

func (d *docVals) reset() {
	d.arena = d.arena[:0]
	for i := range d.slots {
		d.slots[i].nums = d.slots[i].nums[:0]
		d.slots[i].strs = d.slots[i].strs[:0]
	}
}

func (d *docVals) visit(field string, term []byte) {
	for i := range d.slots {
		s := &d.slots[i]
		if s.field != field {
			continue
		}
		if s.kind.stringDV() {
			start := len(d.arena)
			d.arena = append(d.arena, term...)
			s.strs = append(s.strs, [2]int32{int32(start), int32(len(d.arena))})
		} else if len(term) >= dvLen {
			s.nums = append(s.nums, decodeDV(term))
		}
		return
	}
}

// hit is a candidate top document.
type hit struct {
	run   *indexRun
	iid   uint64
	score float64
	keys  []sortVal
	id    string
}

// indexRun is the search over one index.
type indexRun struct {
	ix  *esIndex
	ord int
	m   *mapping
	q   query.Query
	r   index.IndexReader

	vals      docVals
	sortSlots []int // per sort spec: the doc-values slot, -1 if none
	aggSlots  map[*aggSpec]int
	aggs      []aggState

	total    int64
	maxScore float64
	top      hitHeap
}

// hitHeap keeps the k best hits with the worst on top.
type hitHeap struct {
	hits []*hit
	less func(a, b *hit) bool // a sorts before b
}

func (h *hitHeap) Len() int           { return len(h.hits) }
func (h *hitHeap) Less(i, j int) bool { return h.less(h.hits[j], h.hits[i]) }
func (h *hitHeap) Swap(i, j int)      { h.hits[i], h.hits[j] = h.hits[j], h.hits[i] }
func (h *hitHeap) Push(x any)         { h.hits = append(h.hits, x.(*hit)) }
func (h *hitHeap) Pop() any {
	n := len(h.hits)
	x := h.hits[n-1]
	h.hits = h.hits[:n-1]
	return x
}

// searchExec is one search over resolved indices.
type searchExec struct {
	s       *Server
	req     *searchRequest
	indices []*esIndex
	now     time.Time
	// aliasFilters are the filters of the aliases an index was reached
	// through (see Server.aliasFilters).
	aliasFilters map[*esIndex][]qnode

	k         int // hits to keep: from + size
	needScore bool
	after     []sortVal
	runs      []*indexRun
}

func (e *searchExec) less(a, b *hit) bool {
	for i, sp := range e.req.sort {
		if c := sp.cmp(&a.keys[i], &b.keys[i]); c != 0 {
			return c < 0
		}
	}
	if a.run.ord != b.run.ord {
		return a.run.ord < b.run.ord
	}
	return a.iid < b.iid
}

// prepare compiles the query and binds sorts and aggregations per index.
func (e *searchExec) prepare() *esError {
	req := e.req
	e.k = req.from + req.size
	for _, ix := range e.indices {
		if e.k > ix.maxResultWindow() {
			return searchPhaseError(badRequest("Result window is too large, from + size must be less than or equal to: [%d] but was [%d]. See the scroll api for a more efficient way to request large data sets. This limit can be set by changing the [index.max_result_window] index level setting.", ix.maxResultWindow(), e.k))
		}
	}
	mappings := make([]*mapping, len(e.indices))
	names := make([]string, len(e.indices))
	for i, ix := range e.indices {
		mappings[i] = ix.mapping.Load()
		names[i] = ix.name
	}
	for _, sp := range req.sort {
		if err := resolveSort(sp, mappings, names); err != nil {
			return searchPhaseError(err)
		}
		if sp.class == sortScore {
			e.needScore = true
		}
	}
	if req.trackScores {
		e.needScore = true
	}
	if e.k == 0 && !req.trackScores {
		e.needScore = false
	}
	for _, a := range req.aggs {
		if err := a.resolve(mappings, names); err != nil {
			return searchPhaseError(err)
		}
	}
	if req.searchAfter != nil {
		e.after = make([]sortVal, len(req.sort))
		for i, sp := range req.sort {
			v, err := parseAfterValue(sp, req.searchAfter[i])
			if err != nil {
				return err
			}
			e.after[i] = v
		}
	}
	for i, ix := range e.indices {
		run := &indexRun{ix: ix, ord: i, m: mappings[i], aggSlots: map[*aggSpec]int{}}
		c := &compileCtx{ix: ix, m: run.m, now: e.now}
		root := req.query
		if f := e.aliasFilters[ix]; len(f) > 0 {
			// the alias filter narrows the hits without scoring
			root = qBool{must: []qnode{root}, filter: []qnode{qBool{should: f, boost: 1}}, boost: 1}
		}
		q, err := c.compile(root)
		if err != nil {
			return searchPhaseError(err)
		}
		run.q = q
		slotOf := func(path string) int {
			f := run.m.field(path)
			if f == nil || f.isObject() || f.kind() == kindNone || !f.hasDocValues() {
				return -1
			}
			name := dvField(f, path)
			for j, s := range run.vals.slots {
				if s.field == name {
					return j
				}
			}
			run.vals.slots = append(run.vals.slots, slotVals{field: name, kind: f.kind()})
			return len(run.vals.slots) - 1
		}
		for _, sp := range req.sort {
			slot := -1
			if sp.class == sortString || sp.class == sortNumber {
				slot = slotOf(sp.field)
			}
			run.sortSlots = append(run.sortSlots, slot)
		}
		var bindAggs func(specs []*aggSpec)
		bindAggs = func(specs []*aggSpec) {
			for _, a := range specs {
				run.aggSlots[a] = slotOf(a.field)
				bindAggs(a.subs)
			}
		}
		bindAggs(req.aggs)
		run.aggs = newAggStates(req.aggs, run.aggSlots)
		run.top.less = e.less
		e.runs = append(e.runs, run)
	}
	return nil
}

func resolveSort(sp *sortSpec, mappings []*mapping, names []string) *esError {
	switch sp.field {
	case "_score":
		sp.class = sortScore
		return nil
	case "_doc":
		sp.class = sortDoc
		return nil
	case "_id":
		sp.class = sortID
		return nil
	case "_index", "_seq_no", "_version", "_shard_doc":
		return unsupported("illegal_argument_exception", "sort on ["+sp.field+"]")
	}
	sp.kind = kindNone
	for i, m := range mappings {
		f := m.field(sp.field)
		if f == nil || f.isObject() {
			continue
		}
		switch f.Type {
		case typeText:
			return badRequest("Fielddata is disabled on [%s] in [%s]. Text fields are not optimised for operations that require per-document field data like aggregations and sorting, so these operations are disabled by default. Please use a keyword field instead.", sp.field, names[i])
		case typeGeoPoint:
			return badRequest("can't sort on geo_point field without using specific sorting feature, like geo_distance")
		}
		if !f.hasDocValues() {
			return badRequest("Can't load fielddata on [%s] because fielddata is unsupported on fields of type [%s]. Use doc values instead.", sp.field, f.Type)
		}
		k := f.kind()
		if sp.kind != kindNone && k != sp.kind {
			return badRequest("the field [%s] has different types in the searched indices; cannot sort on it", sp.field)
		}
		sp.kind = k
		sp.intSort = isIntType(f.Type)
		if f.formats != nil {
			sp.fieldFmt = f.formats
		}
	}
	if sp.kind == kindNone {
		if sp.unmappedType == "" && len(mappings) == 0 {
			// nothing to search: nothing to sort either
			sp.class = sortString
			return nil
		}
		if sp.unmappedType == "" {
			return queryError("No mapping found for [%s] in order to sort on", sp.field)
		}
		f := &fieldMapping{Type: sp.unmappedType}
		sp.kind = f.kind()
		sp.intSort = isIntType(f.Type)
		if sp.kind == kindNone {
			return unsupported("illegal_argument_exception", "sort unmapped_type ["+sp.unmappedType+"]")
		}
	}
	if sp.fmt != nil && sp.kind != kindDate {
		return unsupported("illegal_argument_exception", "sort [format] on field ["+sp.field+"], which is not a date")
	}
	if sp.kind.stringDV() {
		sp.class = sortString
	} else {
		sp.class = sortNumber
	}
	return nil
}

func isIntType(t string) bool { return t == typeInteger || t == typeShort || t == typeByte }

func parseAfterValue(sp *sortSpec, v any) (sortVal, *esError) {
	bad := func() (sortVal, *esError) {
		return sortVal{}, badRequest("Failed to parse search_after value [%v] for field [%s]", v, sp.field)
	}
	switch sp.class {
	case sortScore:
		f, ok := toFloat(v)
		if !ok {
			return bad()
		}
		return sortVal{f: f}, nil
	case sortString, sortID:
		if v == nil {
			return sortVal{missing: true}, nil
		}
		s, ok := scalarString(v)
		if !ok {
			return bad()
		}
		if sp.kind == kindIP {
			t, err := ipTermFromValue(v)
			if err != nil {
				return bad()
			}
			return sortVal{s: t}, nil
		}
		return sortVal{s: s}, nil
	}
	if v == nil {
		return sortVal{n: sp.missingNumber()}, nil
	}
	switch sp.kind {
	case kindDouble:
		f, ok := toFloat(v)
		if !ok {
			return bad()
		}
		return sortVal{n: sortableFloat(f)}, nil
	case kindULong:
		s, ok := scalarString(v)
		if !ok {
			return bad()
		}
		u, frac, out, err := parseULong(s)
		if err != nil || frac || out != 0 {
			return bad()
		}
		return sortVal{n: ulongToSigned(u)}, nil
	case kindBool:
		if b, ok := v.(bool); ok {
			if b {
				return sortVal{n: 1}, nil
			}
			return sortVal{n: 0}, nil
		}
	case kindDate:
		if s, ok := v.(string); ok {
			if _, err := strconv.ParseInt(s, 10, 64); err != nil || sp.fmt != nil {
				// strings are read in the sort's format, else in the field's
				f := sp.fmt
				if f == nil {
					f = sp.fieldFmt
				}
				if f == nil {
					f, _ = parseDateFormats("")
				}
				ms, err := f.parse(s, time.UTC, false)
				if err != nil {
					return bad()
				}
				return sortVal{n: ms}, nil
			}
		}
	}
	s, ok := scalarString(v)
	if !ok {
		return bad()
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		f, ferr := strconv.ParseFloat(s, 64)
		if ferr != nil {
			return bad()
		}
		n = int64(f)
	}
	return sortVal{n: n}, nil
}

// execute runs the search over every index, in parallel.
func (e *searchExec) execute(ctx context.Context) *esError {
	for _, run := range e.runs {
		r, err := run.ix.ii.Reader()
		if err != nil {
			return newError(http.StatusInternalServerError, "exception", "reading index %s: %v", run.ix.name, err)
		}
		run.r = r
	}
	sem := make(chan struct{}, runtime.GOMAXPROCS(0))
	var wg sync.WaitGroup
	errs := make([]*esError, len(e.runs))
	for i, run := range e.runs {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int, run *indexRun) {
			defer wg.Done()
			defer func() { <-sem }()
			errs[i] = e.runIndex(ctx, run)
		}(i, run)
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func (e *searchExec) close() {
	for _, run := range e.runs {
		if run.r != nil {
			_ = run.r.Close()
		}
	}
}

func (e *searchExec) runIndex(ctx context.Context, run *indexRun) *esError {
	opts := bsearch.SearcherOptions{Score: "none"}
	if e.needScore {
		opts.Score = ""
	}
	s, err := run.q.Searcher(ctx, run.r, run.ix.bi.Mapping(), opts)
	if err != nil {
		return searchPhaseError(queryError("failed to create query: %v", err))
	}
	defer s.Close()
	sctx := &bsearch.SearchContext{DocumentMatchPool: bsearch.NewDocumentMatchPool(s.DocumentMatchPoolSize()+1, 0), IndexReader: run.r}
	var dvr index.DocValueReader
	if len(run.vals.slots) > 0 {
		fields := make([]string, len(run.vals.slots))
		for i, sl := range run.vals.slots {
			fields[i] = sl.field
		}
		if dvr, err = run.r.DocValueReader(fields); err != nil {
			return newError(http.StatusInternalServerError, "exception", "reading doc values: %v", err)
		}
	}
	visitor := run.vals.visit
	keep := e.k > 0
	needID := false
	for _, sp := range e.req.sort {
		if sp.class == sortID {
			needID = true
		}
	}
	scratch := &hit{run: run, keys: make([]sortVal, len(e.req.sort))}
	run.maxScore = math.Inf(-1)
	for n := 0; ; n++ {
		if n&4095 == 4095 {
			if err := ctx.Err(); err != nil {
				return newError(http.StatusRequestTimeout, "task_cancelled_exception", "search cancelled: %v", err)
			}
		}
		dm, err := s.Next(sctx)
		if err != nil {
			return newError(http.StatusInternalServerError, "exception", "searching index %s: %v", run.ix.name, err)
		}
		if dm == nil {
			break
		}
		run.total++
		if math.IsNaN(dm.Score) || math.IsInf(dm.Score, 0) {
			dm.Score = 0
		}
		if dm.Score > run.maxScore {
			run.maxScore = dm.Score
		}
		if dvr != nil {
			run.vals.reset()
			if err := dvr.VisitDocValues(dm.IndexInternalID, visitor); err != nil {
				return newError(http.StatusInternalServerError, "exception", "reading doc values: %v", err)
			}
		}
		for _, a := range run.aggs {
			a.collect(&run.vals)
		}
		if keep {
			scratch.iid = binary.BigEndian.Uint64(dm.IndexInternalID)
			scratch.score = dm.Score
			scratch.id = ""
			if needID {
				id, err := run.r.ExternalID(dm.IndexInternalID)
				if err != nil {
					return newError(http.StatusInternalServerError, "exception", "reading _id: %v", err)
				}
				scratch.id = id
			}
			e.fillKeys(run, scratch)
			if e.after == nil || e.afterCmp(scratch) > 0 {
				if run.top.Len() < e.k {
					heap.Push(&run.top, cloneHit(scratch))
				} else if e.less(scratch, run.top.hits[0]) {
					run.top.hits[0] = cloneHit(scratch)
					heap.Fix(&run.top, 0)
				}
			}
		}
		sctx.DocumentMatchPool.Put(dm)
	}
	return nil
}

func cloneHit(h *hit) *hit {
	c := *h
	c.keys = append([]sortVal(nil), h.keys...)
	for i := range c.keys {
		c.keys[i].s = strings.Clone(c.keys[i].s)
	}
	return &c
}

func (e *searchExec) afterCmp(h *hit) int {
	for i, sp := range e.req.sort {
		if c := sp.cmp(&h.keys[i], &e.after[i]); c != 0 {
			return c
		}
	}
	return 0
}

// fillKeys computes a hit's sort keys from the current doc values.
func (e *searchExec) fillKeys(run *indexRun, h *hit) {
	for i, sp := range e.req.sort {
		k := &h.keys[i]
		*k = sortVal{}
		switch sp.class {
		case sortScore:
			k.f = h.score
		case sortDoc:
			k.n = int64(run.ord)<<44 | int64(h.iid)
		case sortID:
			k.s = h.id
		case sortString:
			slot := run.sortSlots[i]
			if slot < 0 || len(run.vals.slots[slot].strs) == 0 {
				k.missing = true
				continue
			}
			best := run.vals.str(slot, 0)
			useMax := sp.mode == "max" || (sp.mode == "" && sp.desc)
			for j := 1; j < len(run.vals.slots[slot].strs); j++ {
				b := run.vals.str(slot, j)
				if c := bytes.Compare(b, best); (c > 0) == useMax && c != 0 {
					best = b
				}
			}
			// the scratch key aliases the doc-values buffer; cloneHit copies
			// it if the hit is kept, so rejected documents cost nothing
			if len(best) > 0 {
				k.s = unsafe.String(&best[0], len(best))
			}
		case sortNumber:
			slot := run.sortSlots[i]
			if slot < 0 || len(run.vals.slots[slot].nums) == 0 {
				k.n = sp.missingNumber()
				continue
			}
			nums := run.vals.slots[slot].nums
			useMax := sp.mode == "max" || (sp.mode == "" && sp.desc)
			best := nums[0]
			for _, n := range nums[1:] {
				if (n > best) == useMax && n != best {
					best = n
				}
			}
			k.n = best
		}
	}
}

// respond merges the per-index results into the search response.
func (e *searchExec) respond(took time.Duration) (obj, *esError) {
	var total int64
	maxScore := math.Inf(-1)
	var all []*hit
	for _, run := range e.runs {
		total += run.total
		if run.maxScore > maxScore {
			maxScore = run.maxScore
		}
		all = append(all, run.top.hits...)
	}
	sort.Slice(all, func(i, j int) bool { return e.less(all[i], all[j]) })
	from := min(e.req.from, len(all))
	end := min(e.req.from+e.req.size, len(all))
	page := all[from:end]

	hits := make([]any, 0, len(page))
	for _, h := range page {
		ho, err := e.renderHit(h)
		if err != nil {
			return nil, err
		}
		hits = append(hits, ho)
	}
	hitsObj := obj{}
	switch {
	case e.req.totalAsInt:
		hitsObj = append(hitsObj, kv{"total", total})
	case e.req.trackTotal == -1:
		hitsObj = append(hitsObj, kv{"total", obj{{"value", total}, {"relation", "eq"}}})
	case e.req.trackTotal > 0:
		if total > e.req.trackTotal {
			hitsObj = append(hitsObj, kv{"total", obj{{"value", e.req.trackTotal}, {"relation", "gte"}}})
		} else {
			hitsObj = append(hitsObj, kv{"total", obj{{"value", total}, {"relation", "eq"}}})
		}
	}
	if e.needScore && total > 0 && !math.IsInf(maxScore, 0) {
		hitsObj = append(hitsObj, kv{"max_score", maxScore})
	} else {
		hitsObj = append(hitsObj, kv{"max_score", nil})
	}
	hitsObj = append(hitsObj, kv{"hits", hits})
	n := len(e.runs)
	out := obj{
		{"took", took.Milliseconds()},
		{"timed_out", false},
		{"_shards", obj{{"total", n}, {"successful", n}, {"skipped", 0}, {"failed", 0}}},
		{"hits", hitsObj},
	}
	if len(e.req.aggs) > 0 {
		states := newAggStates(e.req.aggs, map[*aggSpec]int{})
		if len(e.runs) > 0 {
			states = e.runs[0].aggs
			for _, run := range e.runs[1:] {
				mergeStates(states, run.aggs)
			}
		}
		aggs, err := renderAggs(e.req.aggs, states, &bucketBudget{})
		if err != nil {
			return nil, searchPhaseError(err)
		}
		out = append(out, kv{"aggregations", aggs})
	}
	return out, nil
}

func (e *searchExec) renderHit(h *hit) (obj, *esError) {
	r := h.run.r
	if h.id == "" {
		id, err := r.ExternalID(index.NewIndexInternalID(nil, h.iid))
		if err != nil {
			return nil, newError(http.StatusInternalServerError, "exception", "reading _id: %v", err)
		}
		h.id = id
	}
	o := obj{{"_index", h.run.ix.name}, {"_id", h.id}}
	scoreTracked := e.needScore && (!e.req.explicitSort || e.req.trackScores || sortHasScore(e.req.sort))
	if scoreTracked {
		o = append(o, kv{"_score", h.score})
	} else {
		o = append(o, kv{"_score", nil})
	}
	if !e.req.source.disabled {
		doc, err := r.Document(h.id)
		if err != nil {
			return nil, newError(http.StatusInternalServerError, "exception", "loading document %s: %v", h.id, err)
		}
		var src []byte
		if doc != nil {
			doc.VisitFields(func(f index.Field) {
				if f.Name() == fieldSource {
					src = f.Value()
				}
			})
		}
		filtered, ferr := e.req.source.apply(src)
		if ferr != nil {
			return nil, ferr
		}
		o = append(o, kv{"_source", rawJSON(filtered)})
	}
	if e.req.explicitSort {
		vals := make([]any, len(e.req.sort))
		for i, sp := range e.req.sort {
			if sp.fmt != nil && (h.keys[i].n == math.MaxInt64 || h.keys[i].n == math.MinInt64) {
				// Elasticsearch formats Long.MAX_VALUE as a date of year
				// 292278994; rather than risk a different rendering, refuse
				return nil, unsupported("illegal_argument_exception", "sort [format] on field ["+sp.field+"] when a hit is missing the field")
			}
			vals[i] = sp.render(&h.keys[i])
		}
		o = append(o, kv{"sort", vals})
	}
	return o, nil
}

func sortHasScore(specs []*sortSpec) bool {
	for _, sp := range specs {
		if sp.class == sortScore {
			return true
		}
	}
	return false
}

// apply filters a stored _source by the includes and excludes.
func (sf sourceFilter) apply(src []byte) ([]byte, *esError) {
	if len(sf.includes) == 0 && len(sf.excludes) == 0 {
		return src, nil
	}
	doc, err := decodeObject(src)
	if err != nil {
		return nil, err
	}
	out := filterSource(doc, "", sf.includes, sf.excludes)
	b, merr := json.Marshal(out)
	if merr != nil {
		return nil, newError(http.StatusInternalServerError, "exception", "encoding _source: %v", merr)
	}
	return b, nil
}

func filterSource(m map[string]any, prefix string, inc, exc []string) map[string]any {
	out := map[string]any{}
	for k, v := range m {
		path := prefix + k
		if matchAnyPattern(exc, path) {
			continue
		}
		full := len(inc) == 0 || matchAnyPattern(inc, path)
		if full {
			out[k] = filterValue(v, path, nil, exc)
			continue
		}
		if !couldMatchBelow(inc, path) {
			continue
		}
		if fv := filterValue(v, path, inc, exc); fv != nil {
			out[k] = fv
		}
	}
	return out
}

func filterValue(v any, path string, inc, exc []string) any {
	switch x := v.(type) {
	case map[string]any:
		f := filterSource(x, path+".", inc, exc)
		if len(f) == 0 && len(inc) > 0 {
			return nil
		}
		return f
	case []any:
		var out []any
		for _, e := range x {
			if fe := filterValue(e, path, inc, exc); fe != nil {
				out = append(out, fe)
			}
		}
		if len(out) == 0 && len(inc) > 0 {
			return nil
		}
		return out
	}
	if len(inc) > 0 {
		return nil
	}
	return v
}

func matchAnyPattern(patterns []string, path string) bool {
	for _, p := range patterns {
		if globMatch(p, path) || strings.HasPrefix(path, p+".") {
			return true
		}
	}
	return false
}

func couldMatchBelow(patterns []string, path string) bool {
	for _, p := range patterns {
		lit := p
		if i := strings.IndexByte(p, '*'); i >= 0 {
			lit = p[:i]
			if strings.HasPrefix(path+".", lit) || strings.HasPrefix(lit, path+".") {
				return true
			}
			continue
		}
		if strings.HasPrefix(lit, path+".") {
			return true
		}
	}
	return false
}
