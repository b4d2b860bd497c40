package search

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/blevesearch/bleve/v2/analysis"
	"github.com/blevesearch/bleve/v2/analysis/token/lowercase"
	"github.com/blevesearch/bleve/v2/analysis/tokenizer/unicode"
	"github.com/blevesearch/bleve/v2/document"
	"github.com/blevesearch/bleve/v2/numeric"
	index "github.com/blevesearch/bleve_index_api"
)

// Bleve field names the server adds beside the mapped fields. They start
// with a control character no JSON field name in practice carries (mapping
// field names with it are refused).
const (
	hiddenPrefix = '\x1f'
	fieldSource  = "\x1fsrc"    // stored _source bytes
	fieldVersion = "\x1fver"    // _version, 8 bytes, indexed with doc values, stored
	fieldSeqNo   = "\x1fseq"    // _seq_no, 8 bytes, stored
	fieldNames   = "\x1ffields" // one term per present field path, for exists
	prefixDV     = "\x1fdv:"    // numeric doc values of a field, see encodeDV
	prefixLat    = "\x1flat:"   // geo_point latitude, numeric
	prefixLon    = "\x1flon:"   // geo_point longitude, numeric
)

// standardAnalyzer is Elasticsearch's default analyzer: Unicode text
// segmentation and lower-casing, no stop words.
var standardAnalyzer analysis.Analyzer = &analysis.DefaultAnalyzer{
	Tokenizer:    unicode.NewUnicodeTokenizer(),
	TokenFilters: []analysis.TokenFilter{lowercase.NewLowerCaseFilter()},
}

const (
	// keyword values keep frequencies and norms so term queries on them
	// score; marker, boolean, numeric and doc-value terms do not, and
	// their queries score constantly (constQuery) as in Elasticsearch
	keywordOptions = index.IndexField
	markerOptions  = index.IndexField | index.SkipFreqNorm
	numericOptions = index.IndexField | index.SkipFreqNorm
	textOptions    = index.IndexField
	dvOptions      = index.IndexField | index.DocValues | index.SkipFreqNorm
)

// encodeDV encodes a numeric doc value (the sortable int64 of a long, date,
// boolean or double) as 10 bytes of 7 bits each, big-endian, so byte order
// is numeric order and no byte is 0xff (zap separates a document's
// doc-value terms with 0xff). The occurrence suffix keeps repeated values
// of one document apart, since a document's doc-value terms are a set and
// sum/avg/value_count must see every value.
func encodeDV(n int64, occurrence int) []byte {
	u := uint64(n) ^ (1 << 63)
	b := make([]byte, dvLen, dvLen+1)
	for i := dvLen - 1; i >= 0; i-- {
		b[i] = byte(u & 0x7f)
		u >>= 7
	}
	if occurrence > 0 {
		b = append(b, byte(min(occurrence, 127)))
	}
	return b
}

const dvLen = 10

func decodeDV(b []byte) int64 {
	var u uint64
	for i := 0; i < dvLen; i++ {
		u = u<<7 | uint64(b[i])
	}
	return int64(u ^ (1 << 63))
}

// numericStep is the precision step of numeric terms: a value is indexed
// as 8 prefix-coded terms (shifts 0, 8, ..., 56), half of bleve's default,
// and numRangeQuery searches ranges with the same step.
const numericStep = 8

// numericTerms returns the prefix-coded terms of one numeric value.
func numericTerms(n int64) [][]byte {
	terms := make([][]byte, 0, 64/numericStep)
	buf := make([]byte, 0, 48)
	for shift := uint(0); shift < 64; shift += numericStep {
		var t []byte
		t, buf, _ = numeric.NewPrefixCodedInt64Prealloc(n, shift, buf)
		terms = append(terms, t)
	}
	return terms
}

// numericTerm is the exact (shift 0) term of a numeric value.
func numericTerm(n int64) []byte {
	t, _ := numeric.NewPrefixCodedInt64(n, 0)
	return t
}

// rawField is a bleve field whose terms are given as they are (keyword,
// numeric terms, doc values, stored bytes): it skips bleve's analysis
// machinery, which costs more than the field itself.
type rawField struct {
	name   string
	value  []byte
	terms  [][]byte
	opts   index.FieldIndexingOptions
	typ    byte // 't' text, 'n' numeric: how a stored value reads back
	freqs  index.TokenFrequencies
	length int
}

func newRawField(name string, typ byte, opts index.FieldIndexingOptions, value []byte, terms ...[]byte) *rawField {
	return &rawField{name: name, value: value, terms: terms, opts: opts, typ: typ}
}

func (f *rawField) Name() string                        { return f.name }
func (f *rawField) Value() []byte                       { return f.value }
func (f *rawField) ArrayPositions() []uint64            { return nil }
func (f *rawField) EncodedFieldType() byte              { return f.typ }
func (f *rawField) Options() index.FieldIndexingOptions { return f.opts }
func (f *rawField) AnalyzedLength() int                 { return f.length }
func (f *rawField) NumPlainTextBytes() uint64           { return uint64(len(f.value)) }

// Size estimates the memory the field holds.
func (f *rawField) Size() int {
	n := 96 + len(f.name) + len(f.value)
	for _, t := range f.terms {
		n += 24 + len(t)
	}
	return n
}
func (f *rawField) AnalyzedTokenFrequencies() index.TokenFrequencies {
	return f.freqs
}

// Analyze implements index.Field: every term is one token.
func (f *rawField) Analyze() {
	f.freqs = make(index.TokenFrequencies, len(f.terms))
	for _, t := range f.terms {
		tf, ok := f.freqs[string(t)]
		if !ok {
			tf = &index.TokenFreq{Term: t}
			f.freqs[string(t)] = tf
		}
		if !f.opts.SkipFreqNorm() {
			tf.SetFrequency(tf.Frequency() + 1)
		}
	}
	f.length = len(f.terms)
}

// scaled is the value a scaled_float keeps of v: Java's Math.round(v *
// factor) (half up), divided by the factor again.
func scaled(v, factor float64) float64 {
	return math.Floor(v*factor+0.5) / factor
}

// roundHalf rounds f to the nearest IEEE 754 binary16 value (ties to
// even), what Elasticsearch keeps of a half_float; beyond 65504 it is
// infinite.
func roundHalf(f float64) float64 {
	if f == 0 || math.IsNaN(f) || math.IsInf(f, 0) {
		return f
	}
	_, exp := math.Frexp(f) // |f| = frac * 2^exp, frac in [0.5, 1)
	e := max(exp-1, -14)    // binary16: 10 fraction bits, subnormals below 2^-14
	spacing := math.Ldexp(1, e-10)
	r := math.RoundToEven(f/spacing) * spacing
	if math.Abs(r) > 65504 {
		return math.Inf(int(math.Copysign(1, f)))
	}
	return r
}

// sortableFloat maps a double to an int64 with the same order (bleve's
// numeric encoding).
func sortableFloat(f float64) int64 { return numeric.Float64ToInt64(f) }
func floatFromSortable(n int64) float64 {
	return numeric.Int64ToFloat64(n)
}

// leafValue is one converted value of a leaf field.
type leafValue struct {
	s        string // keyword, text
	n        int64  // long, date (ms), boolean (0/1), double (sortable)
	lat, lon float64
}

func docError(id, path, typ string, raw any, cause string) *esError {
	preview := fmt.Sprint(raw)
	if b, err := json.Marshal(raw); err == nil && !isString(raw) {
		preview = string(b)
	}
	e := newError(http.StatusBadRequest, "document_parsing_exception",
		"failed to parse field [%s] of type [%s] in document with id '%s'. Preview of field's value: '%s'", path, typ, id, preview)
	e.causedBy = newError(http.StatusBadRequest, "illegal_argument_exception", "%s", cause)
	return e
}

func isString(v any) bool { _, ok := v.(string); return ok }

// convertLeaf converts one JSON value (not an array) to a value of f's
// type, coercing as Elasticsearch does ("12" into a long, 12.7 truncated).
// The error reason names the problem; the caller adds path and id.
func convertLeaf(f *fieldMapping, path string, v any) (leafValue, *esError) {
	fail := func(format string, args ...any) (leafValue, *esError) {
		return leafValue{}, badRequest(format, args...)
	}
	switch f.Type {
	case typeKeyword, typeText:
		switch x := v.(type) {
		case string:
			return leafValue{s: x}, nil
		case json.Number:
			return leafValue{s: string(x)}, nil
		case bool:
			return leafValue{s: strconv.FormatBool(x)}, nil
		}
		return fail("expected a string value but found %s", jsonKind(v))
	case typeLong, typeInteger, typeShort, typeByte:
		var s string
		switch x := v.(type) {
		case json.Number:
			s = string(x)
		case string:
			s = strings.TrimSpace(x)
		default:
			return fail("expected a number but found %s", jsonKind(v))
		}
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			fv, ferr := strconv.ParseFloat(s, 64)
			if ferr != nil || math.IsNaN(fv) || math.IsInf(fv, 0) {
				return fail("For input string: \"%s\"", s)
			}
			fv = math.Trunc(fv)
			if fv >= math.MaxInt64 || fv < math.MinInt64 {
				return fail("Value [%s] is out of range for a %s", s, f.Type)
			}
			n = int64(fv)
		}
		lo, hi := int64(math.MinInt64), int64(math.MaxInt64)
		switch f.Type {
		case typeInteger:
			lo, hi = math.MinInt32, math.MaxInt32
		case typeShort:
			lo, hi = math.MinInt16, math.MaxInt16
		case typeByte:
			lo, hi = math.MinInt8, math.MaxInt8
		}
		if n < lo || n > hi {
			return fail("Value [%s] is out of range for %s", s, f.Type)
		}
		return leafValue{n: n}, nil
	case typeBinary:
		s, ok := v.(string)
		if !ok {
			return fail("failed to parse field [%s] of type [binary]", path)
		}
		if _, err := base64.StdEncoding.DecodeString(s); err != nil {
			if _, err := base64.RawStdEncoding.DecodeString(s); err != nil {
				return fail("failed to parse field [%s] of type [binary]: illegal base64 value", path)
			}
		}
		return leafValue{s: s}, nil
	case typeDouble, typeFloat, typeHalfFloat, typeScaledFloat:
		var s string
		switch x := v.(type) {
		case json.Number:
			s = string(x)
		case string:
			s = strings.TrimSpace(x)
		default:
			return fail("expected a number but found %s", jsonKind(v))
		}
		fv, err := strconv.ParseFloat(s, 64)
		if err != nil || math.IsNaN(fv) || math.IsInf(fv, 0) {
			return fail("For input string: \"%s\"", s)
		}
		switch f.Type {
		case typeFloat:
			fv = float64(float32(fv))
		case typeHalfFloat:
			fv = roundHalf(fv)
		case typeScaledFloat:
			fv = scaled(fv, f.ScalingFactor)
		}
		if math.IsInf(fv, 0) {
			return fail("[%s] supports only finite values, but got [%s]", f.Type, s)
		}
		return leafValue{n: sortableFloat(fv)}, nil
	case typeDate:
		s, ok := dateText(v)
		if !ok {
			return fail("expected a date but found %s", jsonKind(v))
		}
		ms, err := f.formats.parse(s, time.UTC, false)
		if err != nil {
			return fail("failed to parse date field [%s] with format [%s]", s, f.formats.raw)
		}
		return leafValue{n: ms}, nil
	case typeIP:
		s, ok := v.(string)
		if !ok {
			return fail("'%s' is not an IP string literal.", compactJSON(v))
		}
		a, err := parseIP(s)
		if err != nil {
			return fail("%v", err)
		}
		return leafValue{s: ipTerm(a)}, nil
	case typeUnsignedLong:
		var s string
		switch x := v.(type) {
		case json.Number:
			s = string(x)
		case string:
			s = x
		default:
			return fail("expected a number but found %s", jsonKind(v))
		}
		u, frac, out, err := parseULong(s)
		if err != nil {
			return fail("%v", err)
		}
		if frac {
			return fail("Value \"%s\" has a decimal part", strings.TrimSpace(s))
		}
		if out != 0 {
			return fail("Value [%s] is out of range for unsigned_long", strings.TrimSpace(s))
		}
		return leafValue{n: ulongToSigned(u)}, nil
	case typeDateNanos:
		s, ok := dateText(v)
		if !ok {
			return fail("expected a date but found %s", jsonKind(v))
		}
		ns, err := f.formats.parseNanos(s, time.UTC, false)
		if err != nil {
			return fail("%v", err)
		}
		return leafValue{n: ns}, nil
	case typeBoolean:
		switch x := v.(type) {
		case bool:
			if x {
				return leafValue{n: 1}, nil
			}
			return leafValue{n: 0}, nil
		case string:
			switch x {
			case "true":
				return leafValue{n: 1}, nil
			case "false", "":
				return leafValue{n: 0}, nil
			}
			return fail("Failed to parse value [%s] as only [true] or [false] are allowed.", x)
		}
		return fail("Failed to parse value [%v] as only [true] or [false] are allowed.", v)
	case typeGeoPoint:
		lat, lon, err := parseGeoPoint(v)
		if err != nil {
			return fail("%v", err)
		}
		return leafValue{lat: lat, lon: lon}, nil
	}
	return fail("field [%s] of type [%s] cannot hold a value", path, f.Type)
}

// dateText is the text of a date value: a string, or a number (epoch
// millis).
func dateText(v any) (string, bool) {
	switch x := v.(type) {
	case string:
		return x, true
	case json.Number:
		return string(x), true
	}
	return "", false
}

func jsonKind(v any) string {
	switch v.(type) {
	case map[string]any:
		return "an object"
	case []any:
		return "an array"
	case bool:
		return "a boolean"
	case json.Number:
		return "a number"
	case string:
		return "a string"
	case nil:
		return "null"
	}
	return fmt.Sprintf("%T", v)
}

// parseGeoPoint accepts the geo_point forms Elasticsearch documents: an
// object with lat and lon, "lat,lon", [lon, lat] and "POINT (lon lat)".
func parseGeoPoint(v any) (lat, lon float64, err error) {
	num := func(x any) (float64, bool) {
		switch n := x.(type) {
		case json.Number:
			f, err := n.Float64()
			return f, err == nil
		case string:
			f, err := strconv.ParseFloat(strings.TrimSpace(n), 64)
			return f, err == nil
		case float64:
			return n, true
		}
		return 0, false
	}
	var ok1, ok2 bool
	switch x := v.(type) {
	case map[string]any:
		for k := range x {
			if k != "lat" && k != "lon" {
				return 0, 0, fmt.Errorf("field [%s] not supported in a geo_point, expected lat and lon", k)
			}
		}
		lat, ok1 = num(x["lat"])
		lon, ok2 = num(x["lon"])
	case []any:
		if len(x) < 2 || len(x) > 3 {
			return 0, 0, fmt.Errorf("geo_point array must hold [lon, lat]")
		}
		lon, ok1 = num(x[0])
		lat, ok2 = num(x[1])
		if _, isStr := x[0].(string); isStr {
			ok1 = false
		}
	case string:
		s := strings.TrimSpace(x)
		if strings.HasPrefix(strings.ToUpper(s), "POINT") {
			inner := strings.TrimSpace(s[5:])
			if !strings.HasPrefix(inner, "(") || !strings.HasSuffix(inner, ")") {
				return 0, 0, fmt.Errorf("malformed WKT point [%s]", s)
			}
			parts := strings.Fields(inner[1 : len(inner)-1])
			if len(parts) != 2 {
				return 0, 0, fmt.Errorf("malformed WKT point [%s]", s)
			}
			lon, ok1 = num(parts[0])
			lat, ok2 = num(parts[1])
			break
		}
		parts := strings.Split(s, ",")
		if len(parts) == 1 {
			return 0, 0, fmt.Errorf("unsupported by the embedded search server: geohash geo_point [%s]", s)
		}
		if len(parts) != 2 {
			return 0, 0, fmt.Errorf("expected \"lat,lon\" but found [%s]", s)
		}
		lat, ok1 = num(parts[0])
		lon, ok2 = num(parts[1])
	default:
		return 0, 0, fmt.Errorf("geo_point expected but found %s", jsonKind(v))
	}
	if !ok1 || !ok2 {
		return 0, 0, fmt.Errorf("geo_point must have numeric lat and lon")
	}
	if math.IsNaN(lat) || lat < -90 || lat > 90 {
		return 0, 0, fmt.Errorf("illegal latitude value [%v]", lat)
	}
	if math.IsNaN(lon) || lon < -180 || lon > 180 {
		return 0, 0, fmt.Errorf("illegal longitude value [%v]", lon)
	}
	return lat, lon, nil
}

// metadataFields are Elasticsearch's metadata fields, which a document
// cannot hold.
var metadataFields = set("_id", "_index", "_source", "_routing", "_version", "_seq_no", "_primary_term",
	"_ignored", "_field_names", "_doc_count", "_tier", "_nested_path", "_data_stream_timestamp", "_feature", "_ignored_source")

// dynamicAddition is a field a document introduces under dynamic: true.
type dynamicAddition struct {
	parent []string // object path of the parent
	name   string
	field  *fieldMapping
}

// docBuilder converts one JSON document into a bleve document with a
// mapping. A field the mapping lacks under dynamic: true stops conversion
// with needDynamic set; the caller adds it to the mapping and converts
// again.
type docBuilder struct {
	id          string
	m           *mapping
	doc         *document.Document
	present     map[string]bool
	dvCount     map[string]int
	needDynamic *dynamicAddition
}

// buildDocument converts src (the parsed document) for index mapping m.
// It returns the bleve document, or an error for this document alone, or a
// needed dynamic mapping addition.
func buildDocument(m *mapping, id string, src map[string]any, raw []byte, version, seqNo uint64) (*document.Document, *dynamicAddition, *esError) {
	b := &docBuilder{id: id, m: m, doc: document.NewDocument(id), present: map[string]bool{}}
	for k := range src {
		if metadataFields[k] {
			return nil, nil, newError(http.StatusBadRequest, "document_parsing_exception",
				"Field [%s] is a metadata field and cannot be added inside a document. Use the index API request parameters.", k)
		}
	}
	if err := b.object(m.root, nil, m.dynamic(), src); err != nil {
		return nil, nil, err
	}
	if b.needDynamic != nil {
		return nil, b.needDynamic, nil
	}
	if len(b.present) > 0 {
		names := make([][]byte, 0, len(b.present))
		for p := range b.present {
			names = append(names, []byte(p))
		}
		b.doc.AddField(newRawField(fieldNames, 't', markerOptions, nil, names...))
	}
	b.doc.AddField(newRawField(fieldSource, 't', index.StoreField, raw))
	ver := encodeDV(int64(version), 0)
	b.doc.AddField(newRawField(fieldVersion, 't', dvOptions|index.StoreField, ver, ver))
	seq := make([]byte, 8)
	binary.BigEndian.PutUint64(seq, seqNo)
	b.doc.AddField(newRawField(fieldSeqNo, 't', index.StoreField, seq))
	return b.doc, nil, nil
}

func (b *docBuilder) object(om *fieldMapping, path []string, dynamic string, src map[string]any) *esError {
	keys := make([]string, 0, len(src))
	for k := range src {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if b.needDynamic != nil {
			return nil
		}
		v := src[k]
		if k == "" || strings.Trim(k, ".") == "" {
			return newError(http.StatusBadRequest, "document_parsing_exception", "field name cannot be an empty string")
		}
		if strings.Contains(k, ".") {
			// "a.b": 1 is shorthand for "a": {"b": 1}
			parts := strings.Split(k, ".")
			nested := map[string]any{parts[len(parts)-1]: v}
			for i := len(parts) - 2; i >= 1; i-- {
				nested = map[string]any{parts[i]: nested}
			}
			if err := b.value(om, path, dynamic, parts[0], nested); err != nil {
				return err
			}
			continue
		}
		if err := b.value(om, path, dynamic, k, v); err != nil {
			return err
		}
	}
	return nil
}

func (b *docBuilder) value(om *fieldMapping, path []string, dynamic, name string, v any) *esError {
	if strings.ContainsRune(name, hiddenPrefix) {
		return newError(http.StatusBadRequest, "document_parsing_exception", "field name [%q] with control characters is unsupported", name)
	}
	full := append(append([]string(nil), path...), name)
	fullPath := strings.Join(full, ".")
	fm := om.Properties[name]
	if fm == nil {
		if v == nil {
			return nil
		}
		if l, ok := v.([]any); ok && len(l) == 0 {
			return nil
		}
		switch dynamic {
		case "strict":
			within := "_doc"
			if len(path) > 0 {
				within = strings.Join(path, ".")
			}
			return newError(http.StatusBadRequest, "strict_dynamic_mapping_exception",
				"mapping set to strict, dynamic introduction of [%s] within [%s] is not allowed", name, within)
		case "false":
			return nil
		}
		f := inferField(v, b.m.root.DateDetection == nil || *b.m.root.DateDetection)
		if f == nil {
			return nil
		}
		b.needDynamic = &dynamicAddition{parent: path, name: name, field: f}
		return nil
	}
	if fm.isObject() {
		childDynamic := dynamic
		if fm.Dynamic != "" {
			childDynamic = fm.Dynamic
		}
		var objs []map[string]any
		var collect func(x any) *esError
		collect = func(x any) *esError {
			switch o := x.(type) {
			case nil:
				return nil
			case map[string]any:
				objs = append(objs, o)
				return nil
			case []any:
				for _, e := range o {
					if err := collect(e); err != nil {
						return err
					}
				}
				return nil
			}
			return newError(http.StatusBadRequest, "document_parsing_exception",
				"object mapping for [%s] tried to parse field [%s] as object, but found a concrete value", fullPath, name)
		}
		if err := collect(v); err != nil {
			return err
		}
		if !fm.enabled() {
			return nil
		}
		for _, o := range objs {
			if err := b.object(fm, full, childDynamic, o); err != nil {
				return err
			}
		}
		return nil
	}
	return b.leaf(fm, fullPath, v)
}

// leaf indexes the value(s) of a leaf field and its multi-fields.
func (b *docBuilder) leaf(fm *fieldMapping, path string, v any) *esError {
	var values []any
	if fm.Type == typeGeoPoint {
		values = geoValues(v)
	} else {
		var flatten func(x any)
		flatten = func(x any) {
			if l, ok := x.([]any); ok {
				for _, e := range l {
					flatten(e)
				}
				return
			}
			values = append(values, x)
		}
		flatten(v)
	}
	for _, raw := range values {
		if raw == nil {
			if fm.NullValue == nil {
				continue
			}
			raw = fm.NullValue
		}
		if err := b.addValue(fm, path, raw); err != nil {
			return err
		}
		for sub, sf := range fm.Fields {
			if err := b.addValue(sf, path+"."+sub, raw); err != nil {
				return err
			}
		}
		// copy_to indexes the value into each target (and its
		// multi-fields) as if the document held it there; it does not
		// chain, and _source is unchanged
		for _, target := range fm.CopyTo {
			tf := b.m.field(target)
			if tf == nil || tf.isObject() {
				return newError(http.StatusBadRequest, "document_parsing_exception",
					"unsupported by the embedded search server: [copy_to] target [%s] of field [%s] is not a mapped field", target, path)
			}
			if err := b.addValue(tf, target, raw); err != nil {
				return err
			}
			for sub, sf := range tf.Fields {
				if err := b.addValue(sf, target+"."+sub, raw); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// geoValues splits a geo_point value into points: [lon, lat] is one point,
// an array of anything else is several.
func geoValues(v any) []any {
	l, ok := v.([]any)
	if !ok {
		return []any{v}
	}
	if len(l) >= 2 && len(l) <= 3 {
		allNum := true
		for _, e := range l {
			if _, isNum := e.(json.Number); !isNum {
				allNum = false
			}
		}
		if allNum {
			return []any{v}
		}
	}
	return l
}

func (b *docBuilder) addValue(fm *fieldMapping, path string, raw any) *esError {
	if _, isObj := raw.(map[string]any); isObj && fm.Type != typeGeoPoint {
		return docError(b.id, path, fm.Type, raw, "Can't get text on a START_OBJECT")
	}
	lv, err := convertLeaf(fm, path, raw)
	if err != nil {
		return docError(b.id, path, fm.Type, raw, err.reason)
	}
	switch fm.Type {
	case typeIP:
		opts := markerOptions
		if fm.hasDocValues() {
			opts |= index.DocValues
		}
		b.doc.AddField(newRawField(path, 't', opts, nil, []byte(lv.s)))
		b.markPresent(path)
	case typeKeyword:
		if fm.IgnoreAbove != nil && utf8.RuneCountInString(lv.s) > *fm.IgnoreAbove {
			return nil
		}
		opts := keywordOptions
		if fm.hasDocValues() {
			opts |= index.DocValues
		}
		b.doc.AddField(newRawField(path, 't', opts, nil, []byte(lv.s)))
		b.markPresent(path)
	case typeText:
		b.doc.AddField(document.NewTextFieldCustom(path, nil, []byte(lv.s), textOptions, standardAnalyzer))
		b.markPresent(path)
	case typeBoolean:
		term := "F"
		if lv.n == 1 {
			term = "T"
		}
		b.doc.AddField(newRawField(path, 't', markerOptions, nil, []byte(term)))
		b.addDV(fm, path, lv.n)
		b.markPresent(path)
	case typeBinary:
		// stored in _source only; exists finds it by its marker
		b.markPresent(path)
	case typeGeoPoint:
		// exists on a geo_point looks for any latitude term
		b.doc.AddField(newRawField(prefixLat+path, 'n', numericOptions, nil, numericTerms(sortableFloat(lv.lat))...))
		b.doc.AddField(newRawField(prefixLon+path, 'n', numericOptions, nil, numericTerms(sortableFloat(lv.lon))...))
		b.markParents(path)
	default: // long, integer, short, byte, double, float, date, date_nanos, unsigned_long
		// exists on a numeric field looks for any term of the field
		b.doc.AddField(newRawField(path, 'n', numericOptions, nil, numericTerms(lv.n)...))
		b.addDV(fm, path, lv.n)
		b.markParents(path)
	}
	return nil
}

func (b *docBuilder) addDV(fm *fieldMapping, path string, n int64) {
	if !fm.hasDocValues() {
		return
	}
	if b.dvCount == nil {
		b.dvCount = map[string]int{}
	}
	key := path + "\x00" + strconv.FormatInt(n, 10)
	occ := b.dvCount[key]
	b.dvCount[key] = occ + 1
	b.doc.AddField(newRawField(prefixDV+path, 't', dvOptions, nil, encodeDV(n, occ)))
}

// markParents records the parent objects of path for exists queries.
func (b *docBuilder) markParents(path string) {
	if i := strings.LastIndexByte(path, '.'); i >= 0 {
		b.markPresent(path[:i])
	}
}

// markPresent records path and its parent objects for exists queries.
func (b *docBuilder) markPresent(path string) {
	for {
		if b.present[path] {
			return
		}
		b.present[path] = true
		i := strings.LastIndexByte(path, '.')
		if i < 0 {
			return
		}
		path = path[:i]
	}
}

// inferField is dynamic mapping: the mapping Elasticsearch gives a new
// field from its first value.
func inferField(v any, dateDetection bool) *fieldMapping {
	switch x := v.(type) {
	case []any:
		for _, e := range x {
			if f := inferField(e, dateDetection); f != nil {
				return f
			}
		}
		return nil
	case map[string]any:
		return &fieldMapping{Type: typeObject, Properties: map[string]*fieldMapping{}}
	case bool:
		return &fieldMapping{Type: typeBoolean}
	case json.Number:
		if strings.ContainsAny(string(x), ".eE") {
			return &fieldMapping{Type: typeFloat}
		}
		if _, err := strconv.ParseInt(string(x), 10, 64); err != nil {
			return &fieldMapping{Type: typeFloat}
		}
		return &fieldMapping{Type: typeLong}
	case string:
		if dateDetection && len(x) >= 10 && x[4] == '-' && x[7] == '-' {
			if _, err := (isoFormat{}).parse(x, time.UTC, false); err == nil {
				f := &fieldMapping{Type: typeDate}
				f.formats, _ = parseDateFormats("")
				return f
			}
		}
		above := 256
		return &fieldMapping{Type: typeText, Fields: map[string]*fieldMapping{
			"keyword": {Type: typeKeyword, IgnoreAbove: &above},
		}}
	}
	return nil
}

// withAddition returns a copy of m with a dynamically added field.
func (m *mapping) withAddition(a *dynamicAddition) *mapping {
	root := cloneField(m.root)
	o := root
	for _, p := range a.parent {
		o = o.Properties[p]
	}
	if o.Properties == nil {
		o.Properties = map[string]*fieldMapping{}
	}
	o.Properties[a.name] = a.field
	return newMapping(root)
}

// indexField is a stored field of a loaded document.
type indexField = index.Field

func beUint64(b []byte) uint64 {
	if len(b) < 8 {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}
