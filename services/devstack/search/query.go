package search

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	blevemapping "github.com/blevesearch/bleve/v2/mapping"
	"github.com/blevesearch/bleve/v2/numeric"
	bsearch "github.com/blevesearch/bleve/v2/search"
	"github.com/blevesearch/bleve/v2/search/query"
	"github.com/blevesearch/bleve/v2/search/searcher"
	index "github.com/blevesearch/bleve_index_api"
)

// supportedQueries names the query types the server implements, for the
// error that refuses the others.
var supportedQueries = []string{"match_all", "match_none", "ids", "bool", "term", "terms", "match",
	"range", "exists", "prefix", "constant_score", "geo_bounding_box"}

// A qnode is a parsed query, independent of any index; compile turns it into
// a bleve query for one index's mapping.
type qnode interface{}

type (
	qMatchAll  struct{ boost float64 }
	qMatchNone struct{}
	qIDs       struct{ ids []string }
	qBool      struct {
		must, filter, should, mustNot []qnode
		msm                           string // minimum_should_match as given, "" if absent
		boost                         float64
	}
	qTerm struct {
		field string
		value any
		boost float64
	}
	qTerms struct {
		field  string
		values []any
		boost  float64
	}
	qMatch struct {
		field   string
		text    any
		and     bool
		msm     string
		zeroAll bool
		boost   float64
	}
	qRange struct {
		field            string
		gt, gte, lt, lte any
		format, timeZone string
		boost            float64
	}
	qExists struct{ field string }
	qPrefix struct {
		field, value string
		boost        float64
	}
	qConstScore struct {
		filter qnode
		boost  float64
	}
	qGeoBox struct {
		field                    string
		top, left, bottom, right float64
		ignoreUnmapped           bool
	}
)

// parseQuery parses the value of "query".
func parseQuery(v any) (qnode, *esError) {
	m, ok := v.(map[string]any)
	if !ok {
		return nil, parsingError("[query] must be an object, found %s", jsonKind(v))
	}
	if len(m) != 1 {
		if len(m) == 0 {
			return qMatchAll{boost: 1}, nil
		}
		return nil, parsingError("[query] holds more than one query: %s", strings.Join(sortedKeys(m), ", "))
	}
	for typ, body := range m {
		return parseQueryOfType(typ, body)
	}
	return nil, nil
}

func sortedKeys(m map[string]any) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func parseQueryOfType(typ string, body any) (qnode, *esError) {
	obj, isObj := body.(map[string]any)
	needObj := func() *esError {
		if !isObj {
			return parsingError("[%s] query malformed, no start_object after query name", typ)
		}
		return nil
	}
	switch typ {
	case "match_all":
		if err := needObj(); err != nil {
			return nil, err
		}
		q := qMatchAll{boost: 1}
		for k, v := range obj {
			switch k {
			case "boost":
				q.boost = numberOr(v, 1)
			case "_name":
			default:
				return nil, parsingError("[match_all] query does not support [%s]", k)
			}
		}
		return q, nil
	case "match_none":
		return qMatchNone{}, nil
	case "ids":
		if err := needObj(); err != nil {
			return nil, err
		}
		q := qIDs{}
		for k, v := range obj {
			switch k {
			case "values":
				l, ok := v.([]any)
				if !ok {
					return nil, parsingError("[ids] query [values] must be an array")
				}
				for _, e := range l {
					s, ok := scalarString(e)
					if !ok {
						return nil, parsingError("[ids] query values must be strings")
					}
					q.ids = append(q.ids, s)
				}
			case "boost", "_name":
			default:
				return nil, parsingError("[ids] query does not support [%s]", k)
			}
		}
		return q, nil
	case "bool":
		if err := needObj(); err != nil {
			return nil, err
		}
		q := qBool{boost: 1}
		for k, v := range obj {
			var list *[]qnode
			switch k {
			case "must":
				list = &q.must
			case "filter":
				list = &q.filter
			case "should":
				list = &q.should
			case "must_not":
				list = &q.mustNot
			case "minimum_should_match":
				s, ok := scalarString(v)
				if !ok {
					return nil, parsingError("[bool] query [minimum_should_match] must be a number or a string")
				}
				q.msm = s
				continue
			case "boost":
				q.boost = numberOr(v, 1)
				continue
			case "_name", "adjust_pure_negative":
				continue
			default:
				return nil, parsingError("[bool] query does not support [%s]", k)
			}
			clauses, ok := v.([]any)
			if !ok {
				clauses = []any{v}
			}
			for _, c := range clauses {
				n, err := parseQuery(c)
				if err != nil {
					return nil, err
				}
				*list = append(*list, n)
			}
		}
		return q, nil
	case "term", "terms", "match", "range", "prefix", "exists", "geo_bounding_box":
		if err := needObj(); err != nil {
			return nil, err
		}
		return parseFieldQuery(typ, obj)
	case "constant_score":
		if err := needObj(); err != nil {
			return nil, err
		}
		q := qConstScore{boost: 1}
		for k, v := range obj {
			switch k {
			case "filter":
				f, err := parseQuery(v)
				if err != nil {
					return nil, err
				}
				q.filter = f
			case "boost":
				q.boost = numberOr(v, 1)
			case "_name":
			default:
				return nil, parsingError("[constant_score] query does not support [%s]", k)
			}
		}
		if q.filter == nil {
			return nil, parsingError("[constant_score] requires a 'filter' element")
		}
		return q, nil
	}
	if knownQueries[typ] {
		return nil, unsupported("parsing_exception", "query ["+typ+"]", supportedQueries...)
	}
	return nil, parsingError("unknown query [%s]", typ)
}

// knownQueries are Elasticsearch query types this server refuses as
// unsupported (any other name is unknown to Elasticsearch too).
var knownQueries = set("match_phrase", "match_phrase_prefix", "match_bool_prefix", "multi_match", "query_string",
	"simple_query_string", "wildcard", "regexp", "fuzzy", "nested", "has_child", "has_parent", "parent_id",
	"function_score", "script_score", "script", "dis_max", "boosting", "more_like_this", "geo_distance",
	"geo_polygon", "geo_shape", "shape", "distance_feature", "percolate", "rank_feature", "wrapper", "pinned",
	"terms_set", "intervals", "span_term", "span_near", "span_or", "span_not", "span_first", "span_multi",
	"span_containing", "span_within", "field_masking_span", "combined_fields", "knn", "sparse_vector",
	"text_expansion", "semantic", "rule", "type")

// parseFieldQuery parses the queries that name one field.
func parseFieldQuery(typ string, obj map[string]any) (qnode, *esError) {
	if typ == "exists" {
		var q qExists
		for k, v := range obj {
			switch k {
			case "field":
				s, ok := v.(string)
				if !ok {
					return nil, parsingError("[exists] query [field] must be a string")
				}
				q.field = s
			case "boost", "_name":
			default:
				return nil, parsingError("[exists] query does not support [%s]", k)
			}
		}
		if q.field == "" {
			return nil, parsingError("[exists] must be provided with a [field]")
		}
		return q, nil
	}
	var field string
	var body any
	boost := 1.0
	ignoreUnmapped := false
	for k, v := range obj {
		switch k {
		case "boost":
			boost = numberOr(v, 1)
			continue
		case "_name":
			continue
		}
		if typ == "geo_bounding_box" {
			switch k {
			case "validation_method", "type":
				continue
			case "ignore_unmapped":
				ignoreUnmapped, _ = asBool(v)
				continue
			}
		}
		if field != "" {
			return nil, parsingError("[%s] query doesn't support multiple fields, found [%s] and [%s]", typ, field, k)
		}
		field, body = k, v
	}
	if field == "" {
		return nil, parsingError("[%s] query requires a field", typ)
	}
	switch typ {
	case "term":
		q := qTerm{field: field, boost: boost}
		if m, ok := body.(map[string]any); ok {
			for k, v := range m {
				switch k {
				case "value":
					q.value = v
				case "boost":
					q.boost = numberOr(v, 1)
				case "case_insensitive":
					if b, _ := asBool(v); b {
						return nil, unsupported("parsing_exception", "[term] parameter [case_insensitive: true]")
					}
				case "_name":
				default:
					return nil, parsingError("[term] query does not support [%s]", k)
				}
			}
		} else {
			q.value = body
		}
		if q.value == nil {
			return nil, parsingError("value cannot be null")
		}
		if _, isArr := q.value.([]any); isArr {
			return nil, parsingError("[term] query does not support array of values")
		}
		return q, nil
	case "terms":
		l, ok := body.([]any)
		if !ok {
			if _, isObj := body.(map[string]any); isObj {
				return nil, unsupported("parsing_exception", "terms lookup in [terms] query")
			}
			return nil, parsingError("[terms] query requires an array of values for field [%s]", field)
		}
		return qTerms{field: field, values: l, boost: boost}, nil
	case "match":
		q := qMatch{field: field, boost: boost}
		if m, ok := body.(map[string]any); ok {
			for k, v := range m {
				switch k {
				case "query":
					q.text = v
				case "operator":
					s, _ := v.(string)
					switch strings.ToLower(s) {
					case "and":
						q.and = true
					case "or":
					default:
						return nil, parsingError("[match] query operator [%v] is not allowed", v)
					}
				case "minimum_should_match":
					s, ok := scalarString(v)
					if !ok {
						return nil, parsingError("[match] query [minimum_should_match] must be a number or string")
					}
					q.msm = s
				case "zero_terms_query":
					s, _ := v.(string)
					switch strings.ToLower(s) {
					case "all":
						q.zeroAll = true
					case "none":
					default:
						return nil, parsingError("[match] query [zero_terms_query] must be none or all")
					}
				case "analyzer":
					if s, _ := v.(string); s != "standard" {
						return nil, unsupported("parsing_exception", fmt.Sprintf("[match] analyzer [%v]", v), "standard")
					}
				case "boost":
					q.boost = numberOr(v, 1)
				case "lenient", "auto_generate_synonyms_phrase_query", "_name":
				default:
					return nil, unsupported("parsing_exception", "[match] parameter ["+k+"]", "query", "operator", "minimum_should_match", "zero_terms_query", "boost")
				}
			}
		} else {
			q.text = body
		}
		if q.text == nil {
			return nil, parsingError("No text specified for text query")
		}
		return q, nil
	case "prefix":
		q := qPrefix{field: field, boost: boost}
		if m, ok := body.(map[string]any); ok {
			for k, v := range m {
				switch k {
				case "value":
					q.value, _ = scalarString(v)
				case "boost":
					q.boost = numberOr(v, 1)
				case "case_insensitive":
					if b, _ := asBool(v); b {
						return nil, unsupported("parsing_exception", "[prefix] parameter [case_insensitive: true]")
					}
				case "rewrite", "_name":
				default:
					return nil, parsingError("[prefix] query does not support [%s]", k)
				}
			}
		} else {
			q.value, _ = scalarString(body)
		}
		return q, nil
	case "range":
		m, ok := body.(map[string]any)
		if !ok {
			return nil, parsingError("[range] query malformed, no start_object after field name")
		}
		q := qRange{field: field, boost: boost}
		for k, v := range m {
			switch k {
			case "gt":
				q.gt = v
			case "gte":
				q.gte = v
			case "lt":
				q.lt = v
			case "lte":
				q.lte = v
			case "format":
				q.format, _ = v.(string)
			case "time_zone":
				q.timeZone, _ = v.(string)
			case "boost":
				q.boost = numberOr(v, 1)
			case "relation":
				if s, _ := v.(string); !strings.EqualFold(s, "intersects") {
					return nil, unsupported("parsing_exception", "[range] parameter [relation: "+fmt.Sprint(v)+"]")
				}
			case "_name":
			case "from", "to", "include_lower", "include_upper":
				return nil, unsupported("parsing_exception", "[range] parameter ["+k+"] (use gt, gte, lt, lte)")
			default:
				return nil, parsingError("[range] query does not support [%s]", k)
			}
		}
		return q, nil
	case "geo_bounding_box":
		q, err := parseGeoBox(field, body)
		if err != nil {
			return nil, err
		}
		q.ignoreUnmapped = ignoreUnmapped
		return q, nil
	}
	return nil, parsingError("unknown query [%s]", typ)
}

func parseGeoBox(field string, body any) (qGeoBox, *esError) {
	q := qGeoBox{field: field}
	m, ok := body.(map[string]any)
	if !ok {
		return q, parsingError("[geo_bounding_box] query malformed for field [%s]", field)
	}
	// corner reads a corner; a geohash stands for its cell, whose corner
	// on the same side (top/bottom, left/right) is taken, as Elasticsearch
	// does
	corner := func(v any, top, left bool) (lat, lon float64, e *esError) {
		if gh, ok := v.(string); ok && isGeohash(gh) {
			minLat, maxLat, minLon, maxLon := geohashCell(gh)
			lat, lon = minLat, maxLon
			if top {
				lat = maxLat
			}
			if left {
				lon = minLon
			}
			return lat, lon, nil
		}
		lat, lon, err := parseGeoPoint(v)
		if err != nil {
			return 0, 0, parsingError("[geo_bounding_box] %v", err)
		}
		return lat, lon, nil
	}
	have := map[string]bool{}
	for k, v := range m {
		var err *esError
		switch k {
		case "top_left":
			q.top, q.left, err = corner(v, true, true)
			have["top"], have["left"] = true, true
		case "bottom_right":
			q.bottom, q.right, err = corner(v, false, false)
			have["bottom"], have["right"] = true, true
		case "top_right":
			q.top, q.right, err = corner(v, true, false)
			have["top"], have["right"] = true, true
		case "bottom_left":
			q.bottom, q.left, err = corner(v, false, true)
			have["bottom"], have["left"] = true, true
		case "top", "left", "bottom", "right":
			f, ok := toFloat(v)
			if !ok {
				return q, parsingError("[geo_bounding_box] [%s] must be a number", k)
			}
			switch k {
			case "top":
				q.top = f
			case "left":
				q.left = f
			case "bottom":
				q.bottom = f
			case "right":
				q.right = f
			}
			have[k] = true
		case "wkt":
			s, _ := v.(string)
			var ok bool
			q.left, q.right, q.top, q.bottom, ok = parseWKTBBox(s)
			if !ok {
				return q, parsingError("[geo_bounding_box] malformed wkt [%s], expected BBOX (minLon, maxLon, maxLat, minLat)", s)
			}
			have["top"], have["left"], have["bottom"], have["right"] = true, true, true, true
		default:
			return q, unsupported("parsing_exception", "[geo_bounding_box] parameter ["+k+"]", "top_left", "bottom_right", "top_right", "bottom_left", "top", "left", "bottom", "right", "wkt")
		}
		if err != nil {
			return q, err
		}
	}
	if len(have) != 4 {
		return q, parsingError("[geo_bounding_box] requires all of top, left, bottom and right for field [%s]", field)
	}
	if q.top < q.bottom {
		return q, parsingError("top is below bottom corner: %v vs. %v", q.top, q.bottom)
	}
	return q, nil
}

const geohashAlphabet = "0123456789bcdefghjkmnpqrstuvwxyz"

// isGeohash reports whether s is a geohash (1 to 12 base-32 characters).
func isGeohash(s string) bool {
	if len(s) == 0 || len(s) > 12 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if strings.IndexByte(geohashAlphabet, s[i]) < 0 {
			return false
		}
	}
	return true
}

// geohashCell decodes a geohash to its cell: bits alternate longitude and
// latitude, longitude first, each halving the range.
func geohashCell(s string) (minLat, maxLat, minLon, maxLon float64) {
	minLat, maxLat, minLon, maxLon = -90, 90, -180, 180
	even := true
	for i := 0; i < len(s); i++ {
		c := strings.IndexByte(geohashAlphabet, s[i])
		for bit := 4; bit >= 0; bit-- {
			on := c>>bit&1 == 1
			if even {
				mid := (minLon + maxLon) / 2
				if on {
					minLon = mid
				} else {
					maxLon = mid
				}
			} else {
				mid := (minLat + maxLat) / 2
				if on {
					minLat = mid
				} else {
					maxLat = mid
				}
			}
			even = !even
		}
	}
	return minLat, maxLat, minLon, maxLon
}

func parseWKTBBox(s string) (minLon, maxLon, maxLat, minLat float64, ok bool) {
	s = strings.TrimSpace(s)
	if !strings.HasPrefix(strings.ToUpper(s), "BBOX") {
		return
	}
	s = strings.TrimSpace(s[4:])
	if !strings.HasPrefix(s, "(") || !strings.HasSuffix(s, ")") {
		return
	}
	parts := strings.Split(s[1:len(s)-1], ",")
	if len(parts) != 4 {
		return
	}
	var v [4]float64
	for i, p := range parts {
		f, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil {
			return
		}
		v[i] = f
	}
	return v[0], v[1], v[2], v[3], true
}

func numberOr(v any, def float64) float64 {
	if f, ok := toFloat(v); ok {
		return f
	}
	return def
}

func toFloat(v any) (float64, bool) {
	switch n := v.(type) {
	case json.Number:
		f, err := n.Float64()
		return f, err == nil
	case float64:
		return n, true
	case int:
		return float64(n), true
	case int64:
		return float64(n), true
	case string:
		f, err := strconv.ParseFloat(n, 64)
		return f, err == nil
	}
	return 0, false
}

// scalarString renders a JSON scalar as the string Elasticsearch would see.
func scalarString(v any) (string, bool) {
	switch x := v.(type) {
	case string:
		return x, true
	case json.Number:
		return string(x), true
	case bool:
		return strconv.FormatBool(x), true
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64), true
	case int:
		return strconv.Itoa(x), true
	}
	return "", false
}

// msmValue applies a minimum_should_match spec to n optional clauses.
func msmValue(spec string, n int) (int, *esError) {
	spec = strings.TrimSpace(spec)
	if spec == "" {
		return 0, nil
	}
	if strings.ContainsAny(spec, "< ") {
		return 0, unsupported("parsing_exception", "combined minimum_should_match ["+spec+"]")
	}
	var v int
	if strings.HasSuffix(spec, "%") {
		p, err := strconv.Atoi(strings.TrimSuffix(spec, "%"))
		if err != nil {
			return 0, parsingError("invalid minimum_should_match [%s]", spec)
		}
		if p < 0 {
			v = n - (n*(-p))/100
		} else {
			v = (n * p) / 100
		}
	} else {
		i, err := strconv.Atoi(spec)
		if err != nil {
			return 0, parsingError("invalid minimum_should_match [%s]", spec)
		}
		if i < 0 {
			v = n + i
		} else {
			v = i
		}
	}
	if v < 0 {
		v = 0
	}
	return v, nil
}

// compileCtx carries what compiling a query for one index needs.
type compileCtx struct {
	ix  *esIndex
	m   *mapping
	now time.Time
}

func queryError(format string, args ...any) *esError {
	return newError(http.StatusBadRequest, "query_shard_exception", format, args...)
}

func matchNone() query.Query { return query.NewMatchNoneQuery() }

func termOn(field, term string, boost float64) query.Query {
	q := query.NewTermQuery(term)
	q.SetField(field)
	if boost != 1 {
		q.SetBoost(boost)
	}
	return q
}

// compile turns a parsed query into a bleve query for one index.
func (c *compileCtx) compile(n qnode) (query.Query, *esError) {
	switch q := n.(type) {
	case qMatchAll:
		mq := query.NewMatchAllQuery()
		if q.boost != 1 {
			mq.SetBoost(q.boost)
		}
		return mq, nil
	case qMatchNone:
		return matchNone(), nil
	case qIDs:
		if len(q.ids) == 0 {
			return matchNone(), nil
		}
		return query.NewDocIDQuery(q.ids), nil
	case qBool:
		return c.compileBool(q)
	case qConstScore:
		f, err := c.compile(q.filter)
		if err != nil {
			return nil, err
		}
		all := query.NewMatchAllQuery()
		all.SetBoost(q.boost)
		return &query.BooleanQuery{Must: query.NewConjunctionQuery([]query.Query{all}), Filter: f}, nil
	case qTerm:
		return c.compileTerms(q.field, []any{q.value}, q.boost)
	case qTerms:
		return c.compileTerms(q.field, q.values, q.boost)
	case qMatch:
		return c.compileMatch(q)
	case qRange:
		return c.compileRange(q)
	case qExists:
		if q.field == "_id" || q.field == "_index" || q.field == "_source" {
			return query.NewMatchAllQuery(), nil
		}
		// numeric and geo fields are not in the field-names marker: any
		// term of theirs will do
		if f := c.m.field(q.field); f != nil {
			switch {
			case f.Type == typeGeoPoint:
				return constant(&numRangeQuery{field: prefixLat + q.field, min: math.MinInt64, max: math.MaxInt64, boost: 1}, 1), nil
			case f.kind().numeric() && f.Type != typeBoolean:
				return constant(&numRangeQuery{field: q.field, min: math.MinInt64, max: math.MaxInt64, boost: 1}, 1), nil
			}
		}
		return constant(termOn(fieldNames, q.field, 1), 1), nil
	case qPrefix:
		return c.compilePrefix(q)
	case qGeoBox:
		return c.compileGeoBox(q)
	}
	return nil, badRequest("cannot compile query %T", n)
}

func (c *compileCtx) compileBool(q qBool) (query.Query, *esError) {
	compileAll := func(list []qnode) ([]query.Query, *esError) {
		out := make([]query.Query, 0, len(list))
		for _, n := range list {
			bq, err := c.compile(n)
			if err != nil {
				return nil, err
			}
			out = append(out, bq)
		}
		return out, nil
	}
	must, err := compileAll(q.must)
	if err != nil {
		return nil, err
	}
	filter, err := compileAll(q.filter)
	if err != nil {
		return nil, err
	}
	should, err := compileAll(q.should)
	if err != nil {
		return nil, err
	}
	mustNot, err := compileAll(q.mustNot)
	if err != nil {
		return nil, err
	}
	required := len(must)+len(filter) > 0
	msm := 0
	if len(should) > 0 {
		if q.msm != "" {
			if msm, err = msmValue(q.msm, len(should)); err != nil {
				return nil, err
			}
		}
		if !required && msm < 1 {
			msm = 1
		}
		if msm > len(should) {
			return matchNone(), nil
		}
	}
	bq := &query.BooleanQuery{}
	if q.boost != 1 {
		bq.SetBoost(q.boost)
	}
	if len(should) > 0 {
		dq := query.NewDisjunctionQuery(should)
		if msm > 0 {
			dq.SetMin(float64(msm))
			must = append(must, dq)
		} else {
			// optional clauses only add to the score; bleve iterates
			// should-only booleans over the should clauses, so give it a
			// required clause to drive the iteration
			if len(must) == 0 {
				must = append(must, query.NewMatchAllQuery())
			}
			bq.Should = dq
		}
	}
	if len(must) > 0 {
		bq.Must = query.NewConjunctionQuery(must)
	}
	if len(filter) > 0 {
		if len(filter) == 1 {
			bq.Filter = filter[0]
		} else {
			bq.Filter = query.NewConjunctionQuery(filter)
		}
	}
	if len(mustNot) > 0 {
		bq.MustNot = query.NewDisjunctionQuery(mustNot)
	}
	if bq.Must == nil && bq.Filter == nil && bq.Should == nil {
		all := query.NewMatchAllQuery()
		if bq.MustNot == nil {
			return all, nil
		}
		bq.Must = query.NewConjunctionQuery([]query.Query{all})
	}
	return bq, nil
}

// metaFieldQuery handles term queries on _id and _index.
func (c *compileCtx) metaFieldQuery(field string, values []any) (query.Query, bool) {
	switch field {
	case "_id":
		ids := make([]string, 0, len(values))
		for _, v := range values {
			if s, ok := scalarString(v); ok {
				ids = append(ids, s)
			}
		}
		if len(ids) == 0 {
			return matchNone(), true
		}
		return query.NewDocIDQuery(ids), true
	case "_index":
		for _, v := range values {
			if s, ok := scalarString(v); ok && globMatch(s, c.ix.name) {
				return query.NewMatchAllQuery(), true
			}
		}
		return matchNone(), true
	}
	return nil, false
}

// compileTerms builds term (one value) and terms queries.
func (c *compileCtx) compileTerms(field string, values []any, boost float64) (query.Query, *esError) {
	if q, ok := c.metaFieldQuery(field, values); ok {
		return q, nil
	}
	f := c.m.field(field)
	if f != nil && f.Type == typeBinary {
		return nil, queryError("Binary fields do not support searching")
	}
	if f == nil || f.isObject() {
		return matchNone(), nil
	}
	var qs []query.Query
	switch f.Type {
	case typeKeyword, typeText:
		for _, v := range values {
			s, ok := scalarString(v)
			if !ok {
				return nil, queryError("failed to create query: value [%s] of field [%s] must be a scalar", compactJSON(v), field)
			}
			qs = append(qs, termOn(field, s, boost))
		}
	case typeBoolean:
		for _, v := range values {
			lv, err := convertLeaf(f, field, v)
			if err != nil {
				return nil, queryError("failed to create query: %s", err.reason)
			}
			term := "F"
			if lv.n == 1 {
				term = "T"
			}
			qs = append(qs, constant(termOn(field, term, 1), boost))
		}
	case typeGeoPoint:
		return nil, queryError("Field [%s] of type [geo_point] does not support term queries", field)
	case typeIP:
		// an address, or a CIDR block for every address in it
		for _, v := range values {
			if str, ok := v.(string); ok && strings.Contains(str, "/") {
				lo, hi, err := ipPrefixRange(str)
				if err != nil {
					return nil, queryError("failed to create query: %v", err)
				}
				qs = append(qs, constant(ipRange(field, lo, hi), boost))
				continue
			}
			t, err := ipTermFromValue(v)
			if err != nil {
				return nil, queryError("failed to create query: %v", err)
			}
			qs = append(qs, constant(termOn(field, t, 1), boost))
		}
	case typeDateNanos:
		// as for dates, a value covers what its precision leaves out
		for _, v := range values {
			s, ok := scalarString(v)
			if !ok {
				return nil, queryError("failed to create query: [%s] is not a date", compactJSON(v))
			}
			lo, err := f.formats.parseNanos(s, time.UTC, false)
			if err != nil {
				return nil, queryError("failed to create query: %v", err)
			}
			hi, err := f.formats.parseNanos(s, time.UTC, true)
			if err != nil {
				return nil, queryError("failed to create query: %v", err)
			}
			qs = append(qs, constant(&numRangeQuery{field: field, min: lo, max: hi, boost: 1}, boost))
		}
	case typeDate:
		// a date term is the range its precision covers, as in
		// Elasticsearch: "2024-01-15" matches the whole day
		for _, v := range values {
			s, ok := scalarString(v)
			if !ok {
				return nil, queryError("failed to create query: [%s] is not a date", compactJSON(v))
			}
			lo, err := parseDateMath(s, f.formats, false, time.UTC, c.now)
			if err != nil {
				return nil, queryError("failed to create query: %v", err)
			}
			hi, err := parseDateMath(s, f.formats, true, time.UTC, c.now)
			if err != nil {
				return nil, queryError("failed to create query: %v", err)
			}
			qs = append(qs, constant(&numRangeQuery{field: field, min: lo, max: hi, boost: 1}, boost))
		}
	default:
		for _, v := range values {
			n, exact, err := c.numericTerm(f, field, v)
			if err != nil {
				return nil, err
			}
			if !exact {
				continue
			}
			qs = append(qs, constant(termOn(field, string(numericTerm(n)), 1), boost))
		}
	}
	switch len(qs) {
	case 0:
		return matchNone(), nil
	case 1:
		return qs[0], nil
	}
	return query.NewDisjunctionQuery(qs), nil
}

// numericTerm converts a term value for a numeric or date field. exact is
// false for a value no document can hold (1.5 in a long field).
func (c *compileCtx) numericTerm(f *fieldMapping, field string, v any) (int64, bool, *esError) {
	switch f.Type {
	case typeDate:
		s, ok := scalarString(v)
		if !ok {
			return 0, false, queryError("failed to create query: [%s] is not a date", compactJSON(v))
		}
		ms, err := parseDateMath(s, f.formats, false, time.UTC, c.now)
		if err != nil {
			return 0, false, queryError("failed to create query: %v", err)
		}
		return ms, true, nil
	case typeUnsignedLong:
		// a fraction or a value beyond the type matches nothing, as in
		// Elasticsearch (parseTerm)
		str, ok := scalarString(v)
		if !ok {
			return 0, false, queryError("failed to create query: For input string: \"%v\"", compactJSON(v))
		}
		u, frac, out, err := parseULong(str)
		if err != nil {
			return 0, false, queryError("failed to create query: %v", err)
		}
		if frac || out != 0 {
			return 0, false, nil
		}
		return ulongToSigned(u), true, nil
	case typeDouble, typeFloat, typeHalfFloat, typeScaledFloat:
		fv, ok := toFloat(v)
		if !ok || math.IsNaN(fv) {
			return 0, false, queryError("failed to create query: For input string: \"%v\"", v)
		}
		if f.Type == typeScaledFloat {
			return sortableFloat(scaled(fv, f.ScalingFactor)), true, nil
		}
		// Elasticsearch parses the value as a float and rounds it as the
		// field's values were rounded, so 2.5000001 finds a float 2.5
		switch f.Type {
		case typeFloat:
			fv = float64(float32(fv))
		case typeHalfFloat:
			fv = roundHalf(float64(float32(fv)))
		}
		return sortableFloat(fv), true, nil
	}
	s, ok := scalarString(v)
	if !ok {
		return 0, false, queryError("failed to create query: For input string: \"%v\"", compactJSON(v))
	}
	if n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64); err == nil {
		return n, true, nil
	}
	fv, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil {
		return 0, false, queryError("failed to create query: For input string: \"%s\"", s)
	}
	if fv != math.Trunc(fv) || fv >= math.MaxInt64 || fv < math.MinInt64 {
		return 0, false, nil
	}
	return int64(fv), true, nil
}

func (c *compileCtx) compileMatch(q qMatch) (query.Query, *esError) {
	if mq, ok := c.metaFieldQuery(q.field, []any{q.text}); ok {
		return mq, nil
	}
	f := c.m.field(q.field)
	if f != nil && f.Type == typeBinary {
		return nil, queryError("Binary fields do not support searching")
	}
	if f == nil || f.isObject() {
		return matchNone(), nil
	}
	if f.Type != typeText {
		return c.compileTerms(q.field, []any{q.text}, q.boost)
	}
	text, ok := scalarString(q.text)
	if !ok {
		return nil, parsingError("[match] query text must be a scalar")
	}
	seen := map[string]bool{}
	var terms []query.Query
	for _, tok := range standardAnalyzer.Analyze([]byte(text)) {
		t := string(tok.Term)
		if seen[t] {
			continue
		}
		seen[t] = true
		terms = append(terms, termOn(q.field, t, 1))
	}
	if len(terms) == 0 {
		if q.zeroAll {
			return query.NewMatchAllQuery(), nil
		}
		return matchNone(), nil
	}
	if q.and {
		cq := query.NewConjunctionQuery(terms)
		if q.boost != 1 {
			cq.SetBoost(q.boost)
		}
		return cq, nil
	}
	min := 1
	if q.msm != "" {
		v, err := msmValue(q.msm, len(terms))
		if err != nil {
			return nil, err
		}
		if v > min {
			min = v
		}
		if min > len(terms) {
			return matchNone(), nil
		}
	}
	dq := query.NewDisjunctionQuery(terms)
	dq.SetMin(float64(min))
	if q.boost != 1 {
		dq.SetBoost(q.boost)
	}
	return dq, nil
}

func (c *compileCtx) compilePrefix(q qPrefix) (query.Query, *esError) {
	if q.field == "_id" || q.field == "_index" {
		return nil, unsupported("parsing_exception", "[prefix] query on ["+q.field+"]")
	}
	f := c.m.field(q.field)
	if f != nil && f.Type == typeBinary {
		return nil, queryError("Binary fields do not support searching")
	}
	if f == nil || f.isObject() {
		return matchNone(), nil
	}
	if f.Type != typeKeyword && f.Type != typeText {
		return nil, queryError("Can only use prefix queries on keyword and text fields - not on [%s] which is of type [%s]", q.field, f.Type)
	}
	pq := query.NewPrefixQuery(q.value)
	pq.SetField(q.field)
	if q.boost != 1 {
		pq.SetBoost(q.boost)
	}
	return pq, nil
}

func (c *compileCtx) compileRange(q qRange) (query.Query, *esError) {
	f := c.m.field(q.field)
	if f != nil && f.Type == typeBinary {
		return nil, queryError("Binary fields do not support searching")
	}
	if f == nil || f.isObject() {
		return matchNone(), nil
	}
	if q.gt != nil && q.gte != nil || q.lt != nil && q.lte != nil {
		return nil, parsingError("[range] query can hold only one of gt and gte, and one of lt and lte")
	}
	switch f.Type {
	case typeKeyword, typeText:
		tr := &query.TermRangeQuery{}
		tr.SetField(q.field)
		var inclMin, inclMax bool
		if q.gte != nil || q.gt != nil {
			v := q.gte
			inclMin = true
			if v == nil {
				v, inclMin = q.gt, false
			}
			s, _ := scalarString(v)
			tr.Min = s
		}
		if q.lte != nil || q.lt != nil {
			v := q.lte
			inclMax = true
			if v == nil {
				v, inclMax = q.lt, false
			}
			s, _ := scalarString(v)
			tr.Max = s
		}
		tr.InclusiveMin, tr.InclusiveMax = &inclMin, &inclMax
		if q.boost != 1 {
			tr.SetBoost(q.boost)
		}
		return &termRangeQuery{TermRangeQuery: tr, hasMax: q.lte != nil || q.lt != nil}, nil
	case typeGeoPoint:
		return nil, queryError("Field [%s] of type [geo_point] does not support range queries", q.field)
	case typeIP:
		return c.compileIPRange(q)
	}
	lo, hi := int64(math.MinInt64), int64(math.MaxInt64)
	var err *esError
	bound := func(v any, upper, inclusive bool) (int64, bool) {
		var n int64
		var empty bool
		n, empty, err = c.rangeBound(f, q, v, upper, inclusive)
		return n, empty
	}
	if q.gte != nil || q.gt != nil {
		v, incl := q.gte, true
		if v == nil {
			v, incl = q.gt, false
		}
		n, empty := bound(v, false, incl)
		if err != nil {
			return nil, err
		}
		if empty {
			return matchNone(), nil
		}
		lo = n
	}
	if q.lte != nil || q.lt != nil {
		v, incl := q.lte, true
		if v == nil {
			v, incl = q.lt, false
		}
		n, empty := bound(v, true, incl)
		if err != nil {
			return nil, err
		}
		if empty {
			return matchNone(), nil
		}
		hi = n
	}
	if lo > hi {
		return matchNone(), nil
	}
	if f.Type == typeBoolean {
		var qs []query.Query
		if lo <= 0 && hi >= 0 {
			qs = append(qs, termOn(q.field, "F", 1))
		}
		if lo <= 1 && hi >= 1 {
			qs = append(qs, termOn(q.field, "T", 1))
		}
		if len(qs) == 0 {
			return matchNone(), nil
		}
		return constant(query.NewDisjunctionQuery(qs), q.boost), nil
	}
	return constant(&numRangeQuery{field: q.field, min: lo, max: hi, boost: 1}, q.boost), nil
}

// rangeBound converts one range bound to an inclusive bound in the field's
// int64 space. empty reports a bound no value can satisfy.
func (c *compileCtx) rangeBound(f *fieldMapping, q qRange, v any, upper, inclusive bool) (n int64, empty bool, err *esError) {
	switch f.Type {
	case typeDate:
		formats := f.formats
		if q.format != "" {
			ff, ferr := parseDateFormats(q.format)
			if ferr != nil {
				return 0, false, unsupported("parsing_exception", fmt.Sprintf("[range] format [%s]: %v", q.format, ferr))
			}
			formats = ff
		}
		loc, s, berr := dateBound(q, v)
		if berr != nil {
			return 0, false, berr
		}
		// gt and lte round up, gte and lt round down
		roundUp := upper == inclusive
		ms, perr := parseDateMath(s, formats, roundUp, loc, c.now)
		if perr != nil {
			return 0, false, queryError("failed to create query: %v", perr)
		}
		return adjustBound(ms, upper, inclusive)
	case typeDouble, typeFloat, typeHalfFloat, typeScaledFloat:
		fv, ok := toFloat(v)
		if !ok || math.IsNaN(fv) {
			return 0, false, queryError("failed to create query: For input string: \"%v\"", v)
		}
		if f.Type == typeScaledFloat {
			// Elasticsearch's bounds on the scaled long: ceil of the lower,
			// floor of the upper (after nextUp/nextDown when exclusive)
			d := fv * f.ScalingFactor
			if upper {
				if !inclusive {
					d = math.Nextafter(d, math.Inf(-1))
				}
				d = math.Floor(d)
			} else {
				if !inclusive {
					d = math.Nextafter(d, math.Inf(1))
				}
				d = math.Ceil(d)
			}
			return sortableFloat(d / f.ScalingFactor), false, nil
		}
		// bounds are parsed as floats; against the rounded values of a
		// half_float an unrounded bound selects what Elasticsearch's
		// nextUp/nextDown adjustment does
		if f.Type == typeFloat || f.Type == typeHalfFloat {
			fv = float64(float32(fv))
		}
		return adjustBound(sortableFloat(fv), upper, inclusive)
	case typeBoolean:
		lv, cerr := convertLeaf(f, q.field, v)
		if cerr != nil {
			return 0, false, queryError("failed to create query: %s", cerr.reason)
		}
		return adjustBound(lv.n, upper, inclusive)
	case typeUnsignedLong:
		return ulongBound(v, upper, inclusive)
	case typeDateNanos:
		if q.format != "" {
			return 0, false, unsupported("parsing_exception", "[range] format on date_nanos field ["+q.field+"]")
		}
		loc, s, berr := dateBound(q, v)
		if berr != nil {
			return 0, false, berr
		}
		if strings.Contains(s, "||") || strings.HasPrefix(s, "now") {
			return 0, false, unsupported("parsing_exception", "date math ["+s+"] on date_nanos field ["+q.field+"]")
		}
		ns, perr := f.formats.parseNanos(s, loc, upper == inclusive)
		if perr != nil {
			return 0, false, queryError("failed to create query: %v", perr)
		}
		return adjustBound(ns, upper, inclusive)
	}
	// long, integer, short, byte: fractional bounds round inwards
	s, ok := scalarString(v)
	if !ok {
		return 0, false, queryError("failed to create query: For input string: \"%s\"", compactJSON(v))
	}
	s = strings.TrimSpace(s)
	if i, perr := strconv.ParseInt(s, 10, 64); perr == nil {
		return adjustBound(i, upper, inclusive)
	}
	fv, perr := strconv.ParseFloat(s, 64)
	if perr != nil || math.IsNaN(fv) {
		return 0, false, queryError("failed to create query: For input string: \"%s\"", s)
	}
	if fv != math.Trunc(fv) {
		// a fractional bound rounds inwards and becomes inclusive
		if upper {
			fv = math.Floor(fv)
		} else {
			fv = math.Ceil(fv)
		}
		inclusive = true
	}
	if fv >= math.MaxInt64 {
		if upper {
			return math.MaxInt64, false, nil
		}
		return 0, true, nil
	}
	if fv < math.MinInt64 {
		if upper {
			return 0, true, nil
		}
		return math.MinInt64, false, nil
	}
	return adjustBound(int64(fv), upper, inclusive)
}

// dateBound reads a date range bound: the query's time zone and the
// bound's text.
func dateBound(q qRange, v any) (*time.Location, string, *esError) {
	loc, err := parseTimeZone(q.timeZone)
	if err != nil {
		return nil, "", parsingError("%v", err)
	}
	s, ok := scalarString(v)
	if !ok {
		return nil, "", queryError("failed to create query: [%s] is not a date", compactJSON(v))
	}
	return loc, s, nil
}

// adjustBound makes an exclusive bound inclusive.
func adjustBound(n int64, upper, inclusive bool) (int64, bool, *esError) {
	if inclusive {
		return n, false, nil
	}
	if upper {
		if n == math.MinInt64 {
			return 0, true, nil
		}
		return n - 1, false, nil
	}
	if n == math.MaxInt64 {
		return 0, true, nil
	}
	return n + 1, false, nil
}

func (c *compileCtx) compileGeoBox(q qGeoBox) (query.Query, *esError) {
	f := c.m.field(q.field)
	if f != nil && f.Type == typeBinary {
		return nil, queryError("Binary fields do not support searching")
	}
	if f == nil {
		if q.ignoreUnmapped {
			return matchNone(), nil
		}
		return nil, queryError("failed to find geo field [%s]", q.field)
	}
	if f.Type != typeGeoPoint {
		return nil, queryError("field [%s] is not a geo_point field", q.field)
	}
	lat := &numRangeQuery{field: prefixLat + q.field, min: sortableFloat(q.bottom), max: sortableFloat(q.top), boost: 1}
	var lon query.Query
	if q.left <= q.right {
		lon = &numRangeQuery{field: prefixLon + q.field, min: sortableFloat(q.left), max: sortableFloat(q.right), boost: 1}
	} else {
		// the box crosses the antimeridian
		lon = query.NewDisjunctionQuery([]query.Query{
			&numRangeQuery{field: prefixLon + q.field, min: sortableFloat(q.left), max: sortableFloat(180), boost: 1},
			&numRangeQuery{field: prefixLon + q.field, min: sortableFloat(-180), max: sortableFloat(q.right), boost: 1},
		})
	}
	return constant(query.NewConjunctionQuery([]query.Query{lat, lon}), 1), nil
}

// constQuery scores every match of q with boost, as Elasticsearch scores
// term queries on numbers, dates and booleans, range and exists queries.
// (Their bleve fields carry no frequencies or norms, so bleve's own score
// would be meaningless.)
type constQuery struct {
	q     query.Query
	boost float64
}

func constant(q query.Query, boost float64) query.Query { return &constQuery{q: q, boost: boost} }

// Searcher implements query.Query.
func (c *constQuery) Searcher(ctx context.Context, r index.IndexReader, m blevemapping.IndexMapping, opts bsearch.SearcherOptions) (bsearch.Searcher, error) {
	s, err := c.q.Searcher(ctx, r, m, opts)
	if err != nil || opts.Score == "none" {
		return s, err
	}
	return &constScoreSearcher{Searcher: s, score: c.boost}, nil
}

type constScoreSearcher struct {
	bsearch.Searcher
	score float64
}

func (c *constScoreSearcher) Next(ctx *bsearch.SearchContext) (*bsearch.DocumentMatch, error) {
	dm, err := c.Searcher.Next(ctx)
	if dm != nil {
		dm.Score = c.score
	}
	return dm, err
}

func (c *constScoreSearcher) Advance(ctx *bsearch.SearchContext, id index.IndexInternalID) (*bsearch.DocumentMatch, error) {
	dm, err := c.Searcher.Advance(ctx, id)
	if dm != nil {
		dm.Score = c.score
	}
	return dm, err
}

func (c *constScoreSearcher) Weight() float64        { return 1 }
func (c *constScoreSearcher) SetQueryNorm(_ float64) {}

// numRangeQuery matches a numeric field whose int64 value (long, date in
// ms, or the sortable form of a double) lies in [min, max].
type numRangeQuery struct {
	field    string
	min, max int64
	boost    float64
}

// Searcher implements query.Query. It splits [min, max] into prefix-coded
// term ranges at the indexing precision step (as Lucene's numeric range
// queries do) and enumerates the terms that exist in the index.
func (q *numRangeQuery) Searcher(ctx context.Context, r index.IndexReader, _ blevemapping.IndexMapping, opts bsearch.SearcherOptions) (bsearch.Searcher, error) {
	if q.min > q.max {
		return searcher.NewMatchNoneSearcher(r)
	}
	var terms [][]byte
	var ferr error
	splitRange(uint64(q.min)^(1<<63), uint64(q.max)^(1<<63), numericStep, func(lo, hi uint64, shift uint) {
		if ferr != nil {
			return
		}
		start, _ := numeric.NewPrefixCodedInt64(int64(lo^(1<<63)), shift)
		end, _ := numeric.NewPrefixCodedInt64(int64(hi^(1<<63)), shift)
		fd, err := r.FieldDictRange(q.field, start, end)
		if err != nil {
			ferr = err
			return
		}
		defer fd.Close()
		for {
			e, err := fd.Next()
			if err != nil {
				ferr = err
				return
			}
			if e == nil {
				return
			}
			terms = append(terms, []byte(e.Term))
		}
	})
	if ferr != nil {
		return nil, ferr
	}
	if len(terms) == 0 {
		return searcher.NewMatchNoneSearcher(r)
	}
	return searcher.NewMultiTermSearcherBytes(ctx, r, terms, q.field, q.boost, opts, true)
}

// splitRange splits the unsigned range [lo, hi] into the fewest blocks
// aligned to multiples of step bits, calling add(lo, hi, shift) for each
// (Lucene's LegacyNumericUtils.splitRange).
func splitRange(lo, hi uint64, step uint, add func(lo, hi uint64, shift uint)) {
	for shift := uint(0); ; shift += step {
		if shift+step >= 64 {
			add(lo, hi, shift)
			return
		}
		diff := uint64(1) << (shift + step)
		mask := ((uint64(1) << step) - 1) << shift
		hasLower := lo&mask != 0
		hasUpper := hi&mask != mask
		nextLo := lo &^ mask
		if hasLower {
			nextLo = (lo + diff) &^ mask
		}
		nextHi := hi &^ mask
		if hasUpper {
			nextHi = (hi - diff) &^ mask
		}
		lowerWrapped := nextLo < lo
		upperWrapped := nextHi > hi
		if nextLo > nextHi || lowerWrapped || upperWrapped {
			add(lo, hi, shift)
			return
		}
		if hasLower {
			add(lo, lo|mask, shift)
		}
		if hasUpper {
			add(hi&^mask, hi, shift)
		}
		lo, hi = nextLo, nextHi
	}
}

// termRangeQuery is bleve's term range with an unbounded upper end when
// none was given (bleve treats an empty Max as unbounded too, but an
// explicit empty upper bound must match nothing above "").
type termRangeQuery struct {
	*query.TermRangeQuery
	hasMax bool
}

// Searcher implements query.Query.
func (q *termRangeQuery) Searcher(ctx context.Context, r index.IndexReader, m blevemapping.IndexMapping, opts bsearch.SearcherOptions) (bsearch.Searcher, error) {
	if q.hasMax && q.Max == "" {
		if *q.InclusiveMax && (q.Min == "" && *q.InclusiveMin) {
			return termOn(q.FieldVal, "", q.BoostVal.Value()).Searcher(ctx, r, m, opts)
		}
		return searcher.NewMatchNoneSearcher(r)
	}
	return q.TermRangeQuery.Searcher(ctx, r, m, opts)
}
