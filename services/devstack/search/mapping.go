package search

import (
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"sort"
	"strconv"
	"strings"
)

// Field types the server implements, as Elasticsearch names them.
const (
	typeKeyword  = "keyword"
	typeText     = "text"
	typeLong     = "long"
	typeInteger  = "integer"
	typeShort    = "short"
	typeByte     = "byte"
	typeDouble   = "double"
	typeFloat    = "float"
	typeDate     = "date"
	typeBoolean  = "boolean"
	typeGeoPoint = "geo_point"
	typeObject   = "object"
	// half_float values are rounded to IEEE 754 binary16, as
	// Elasticsearch indexes them; binary values are stored base64 in
	// _source only, not searchable
	typeHalfFloat = "half_float"
	typeBinary    = "binary"
	// scaled_float values are held as round(value * scaling_factor) /
	// scaling_factor, the double Elasticsearch's long encoding gives back
	typeScaledFloat = "scaled_float"
	// ip values (IPv4 and IPv6) are held as the 16 bytes of their IPv6
	// form (IPv4-mapped for IPv4), hex-encoded so byte order is address
	// order; they render back as Elasticsearch prints them
	typeIP = "ip"
	// unsigned_long values (0 to 2^64-1) are held shifted by -2^63 in the
	// signed 64-bit space, which keeps their order
	typeUnsignedLong = "unsigned_long"
	// date_nanos values are nanoseconds since the epoch (1970 to 2262)
	typeDateNanos = "date_nanos"
)

var supportedTypes = []string{typeKeyword, typeText, typeLong, typeInteger, typeShort, typeByte,
	typeDouble, typeFloat, typeHalfFloat, typeScaledFloat, typeDate, typeDateNanos, typeBoolean, typeGeoPoint, typeBinary, typeIP, typeUnsignedLong, typeObject}

// esOnlyTypes are field types Elasticsearch has and this server does not.
var esOnlyTypes = map[string]bool{
	"nested": true, "flattened": true, "wildcard": true, "constant_keyword": true,
	"match_only_text": true, "search_as_you_type": true, "alias": true, "dense_vector": true,
	"sparse_vector": true, "geo_shape": true, "shape": true, "point": true,
	"integer_range": true, "float_range": true, "long_range": true, "double_range": true,
	"date_range": true, "ip_range": true, "completion": true, "token_count": true,
	"percolator": true, "join": true, "rank_feature": true, "rank_features": true,
	"histogram": true, "aggregate_metric_double": true, "version": true, "murmur3": true,
	"annotated_text": true, "semantic_text": true, "counted_keyword": true, "passthrough": true,
}

// fieldMapping is one field of a mapping. Objects (and the mapping root)
// carry Properties; leaves carry a Type and its parameters.
type fieldMapping struct {
	Type        string
	Properties  map[string]*fieldMapping
	Fields      map[string]*fieldMapping // multi-fields of a leaf
	Dynamic     string                   // objects: "", "true", "false", "strict"
	Enabled     *bool                    // objects
	Index       *bool
	DocValues   *bool
	IgnoreAbove *int
	Format      string
	Analyzer    string
	NullValue   any
	Meta        map[string]any
	// ScalingFactor is a scaled_float's scaling_factor.
	ScalingFactor float64
	// CopyTo are the fields the values are also indexed into (copy_to).
	CopyTo []string

	// root only
	DateDetection *bool
	RootMeta      map[string]any

	formats *dateFormats // parsed Format, dates only
}

func (f *fieldMapping) isObject() bool { return f.Type == typeObject }
func (f *fieldMapping) indexed() bool  { return f.Index == nil || *f.Index }
func (f *fieldMapping) enabled() bool  { return f.Enabled == nil || *f.Enabled }
func (f *fieldMapping) hasDocValues() bool {
	if f.Type == typeBinary {
		// binary doc values (off by default) are not implemented: the
		// mapping refuses doc_values: true
		return false
	}
	return f.DocValues == nil || *f.DocValues
}

// valueKind says how a field's values are held in doc values and compared.
type valueKind uint8

const (
	kindNone      valueKind = iota // unmapped or without doc values
	kindString                     // keyword
	kindLong                       // long, integer, short, byte
	kindDouble                     // double, float
	kindDate                       // date, milliseconds
	kindBool                       // boolean, 0 or 1
	kindIP                         // ip, hex of the 16-byte form
	kindULong                      // unsigned_long, shifted by -2^63
	kindDateNanos                  // date_nanos, nanoseconds
)

func (f *fieldMapping) kind() valueKind {
	switch f.Type {
	case typeKeyword:
		return kindString
	case typeLong, typeInteger, typeShort, typeByte:
		return kindLong
	case typeDouble, typeFloat, typeHalfFloat, typeScaledFloat:
		return kindDouble
	case typeDate:
		return kindDate
	case typeBoolean:
		return kindBool
	case typeIP:
		return kindIP
	case typeUnsignedLong:
		return kindULong
	case typeDateNanos:
		return kindDateNanos
	}
	return kindNone
}

func (k valueKind) numeric() bool {
	return k == kindLong || k == kindDouble || k == kindDate || k == kindBool || k == kindULong || k == kindDateNanos
}

// stringDV reports whether the kind's doc values are strings (keyword
// bytes, the hex of an ip) rather than encoded numbers.
func (k valueKind) stringDV() bool { return k == kindString || k == kindIP }

// mapping is an index's mapping: the root object plus a flat view by full
// path (multi-fields included, e.g. "address.keyword"). A mapping is
// immutable once built; changes make a new one.
type mapping struct {
	root *fieldMapping
	flat map[string]*fieldMapping
}

func newMapping(root *fieldMapping) *mapping {
	if root == nil {
		root = &fieldMapping{Type: typeObject}
	}
	m := &mapping{root: root, flat: map[string]*fieldMapping{}}
	var walk func(prefix string, f *fieldMapping)
	walk = func(prefix string, f *fieldMapping) {
		for name, p := range f.Properties {
			path := prefix + name
			m.flat[path] = p
			if p.isObject() {
				walk(path+".", p)
				continue
			}
			for sub, sf := range p.Fields {
				m.flat[path+"."+sub] = sf
			}
		}
	}
	walk("", root)
	return m
}

func (m *mapping) dynamic() string {
	if m.root.Dynamic == "" {
		return "true"
	}
	return m.root.Dynamic
}

// field returns the mapping of a full path, or nil when it is unmapped.
func (m *mapping) field(path string) *fieldMapping { return m.flat[path] }

func mappingError(format string, args ...any) *esError {
	return newError(http.StatusBadRequest, "mapper_parsing_exception", format, args...)
}

// parseMapping parses the body of "mappings" (in a create-index request, a
// template or PUT _mapping).
func parseMapping(raw any) (*fieldMapping, *esError) {
	m, ok := raw.(map[string]any)
	if !ok {
		return nil, mappingError("Failed to parse mapping: mappings must be an object")
	}
	root := &fieldMapping{Type: typeObject}
	for k, v := range m {
		switch k {
		case "properties":
			props, err := parseProperties(v, "")
			if err != nil {
				return nil, err
			}
			root.Properties = props
		case "dynamic":
			d, err := parseDynamic(v, "_doc")
			if err != nil {
				return nil, err
			}
			root.Dynamic = d
		case "date_detection":
			b, ok := asBool(v)
			if !ok {
				return nil, mappingError("Failed to parse mapping: [date_detection] must be a boolean")
			}
			root.DateDetection = &b
		case "numeric_detection":
			if b, ok := asBool(v); !ok || b {
				return nil, unsupported("mapper_parsing_exception", "mapping parameter [numeric_detection: true]")
			}
		case "_meta":
			mm, ok := v.(map[string]any)
			if !ok {
				return nil, mappingError("Failed to parse mapping: [_meta] must be an object")
			}
			root.RootMeta = mm
		case "dynamic_templates":
			if l, ok := v.([]any); !ok || len(l) > 0 {
				return nil, unsupported("mapper_parsing_exception", "mapping parameter [dynamic_templates]")
			}
		case "_source":
			if sm, ok := v.(map[string]any); ok {
				if e, ok := sm["enabled"]; ok {
					if b, ok := asBool(e); ok && b && len(sm) == 1 {
						continue
					}
				}
			}
			return nil, unsupported("mapper_parsing_exception", "mapping parameter [_source] other than {\"enabled\": true}")
		case "_routing":
			if sm, ok := v.(map[string]any); ok {
				if r, ok := asBool(sm["required"]); ok && !r && len(sm) == 1 {
					continue
				}
			}
			return nil, unsupported("mapper_parsing_exception", "mapping parameter [_routing]")
		default:
			if strings.HasPrefix(k, "_") {
				return nil, unsupported("mapper_parsing_exception", "mapping parameter ["+k+"]")
			}
			return nil, mappingError("Root mapping definition has unsupported parameters:  [%s : %s]", k, compactJSON(v))
		}
	}
	return root, nil
}

func parseDynamic(v any, where string) (string, *esError) {
	switch d := v.(type) {
	case bool:
		return strconv.FormatBool(d), nil
	case string:
		switch d {
		case "true", "false", "strict":
			return d, nil
		case "runtime":
			return "", unsupported("mapper_parsing_exception", "[dynamic: runtime] on ["+where+"]")
		}
	}
	return "", mappingError("Could not convert [dynamic] to boolean or strict on [%s]", where)
}

func parseProperties(v any, prefix string) (map[string]*fieldMapping, *esError) {
	props, ok := v.(map[string]any)
	if !ok {
		return nil, mappingError("Expected map for property [properties] on [%s]", strings.TrimSuffix(prefix, "."))
	}
	out := map[string]*fieldMapping{}
	for name, def := range props {
		if err := checkFieldName(name); err != nil {
			return nil, err
		}
		// A dotted name in a mapping is shorthand for nested objects.
		parts := strings.Split(name, ".")
		f, err := parseField(def, prefix+name, false)
		if err != nil {
			return nil, err
		}
		target := out
		for i, part := range parts[:len(parts)-1] {
			o, ok := target[part]
			if !ok {
				o = &fieldMapping{Type: typeObject, Properties: map[string]*fieldMapping{}}
				target[part] = o
			} else if !o.isObject() {
				return nil, mappingError("Field [%s] is defined both as an object and a field", strings.Join(parts[:i+1], "."))
			}
			if o.Properties == nil {
				o.Properties = map[string]*fieldMapping{}
			}
			target = o.Properties
		}
		target[parts[len(parts)-1]] = f
	}
	return out, nil
}

func checkFieldName(name string) *esError {
	if name == "" || strings.Trim(name, ".") == "" || strings.Contains(name, "..") || strings.HasPrefix(name, ".") || strings.HasSuffix(name, ".") {
		return mappingError("field name cannot be empty or contain only dots: [%s]", name)
	}
	if strings.ContainsRune(name, hiddenPrefix) {
		return unsupported("mapper_parsing_exception", fmt.Sprintf("field name [%q] with control characters", name))
	}
	return nil
}

// allowedParams lists the mapping parameters accepted per type. Parameters
// Elasticsearch knows that would change results here are refused instead.
var allowedParams = map[string]map[string]bool{
	typeKeyword:      set("index", "doc_values", "ignore_above", "null_value", "norms", "fields", "store", "meta", "eager_global_ordinals", "similarity", "copy_to"),
	typeText:         set("index", "analyzer", "search_analyzer", "fields", "norms", "store", "meta", "index_options", "fielddata", "eager_global_ordinals", "similarity", "copy_to"),
	typeLong:         set("index", "doc_values", "null_value", "coerce", "ignore_malformed", "fields", "store", "meta", "copy_to"),
	typeDate:         set("index", "doc_values", "null_value", "format", "ignore_malformed", "fields", "store", "meta", "copy_to"),
	typeDateNanos:    set("index", "doc_values", "null_value", "format", "ignore_malformed", "fields", "store", "meta", "copy_to"),
	typeIP:           set("index", "doc_values", "null_value", "ignore_malformed", "fields", "store", "meta", "copy_to"),
	typeUnsignedLong: set("index", "doc_values", "null_value", "coerce", "ignore_malformed", "fields", "store", "meta", "copy_to"),
	typeBoolean:      set("index", "doc_values", "null_value", "fields", "store", "meta", "copy_to"),
	typeGeoPoint:     set("index", "doc_values", "ignore_malformed", "ignore_z_value", "store", "meta"),
	typeObject:       set("properties", "dynamic", "enabled"),
	typeBinary:       set("doc_values", "store", "meta"),
	typeScaledFloat: set("index", "doc_values", "null_value", "coerce", "ignore_malformed", "fields", "store", "meta",
		"scaling_factor", "copy_to"),
}

func set(xs ...string) map[string]bool {
	m := map[string]bool{}
	for _, x := range xs {
		m[x] = true
	}
	return m
}

func paramsFor(typ string) map[string]bool {
	switch typ {
	case typeInteger, typeShort, typeByte, typeDouble, typeFloat, typeHalfFloat:
		return allowedParams[typeLong]
	}
	return allowedParams[typ]
}

func parseField(v any, path string, multiField bool) (*fieldMapping, *esError) {
	def, ok := v.(map[string]any)
	if !ok {
		return nil, mappingError("Expected map for property [fields] on field [%s] but got a class %T", path, v)
	}
	f := &fieldMapping{}
	if t, ok := def["type"]; ok {
		s, ok := t.(string)
		if !ok {
			return nil, mappingError("type must be a string on field [%s]", path)
		}
		f.Type = s
	} else if _, ok := def["properties"]; ok || !multiField {
		f.Type = typeObject
	}
	if esOnlyTypes[f.Type] {
		return nil, unsupported("mapper_parsing_exception", fmt.Sprintf("field type [%s] on field [%s]", f.Type, path), supportedTypes...)
	}
	allowed := paramsFor(f.Type)
	if allowed == nil {
		return nil, mappingError("No handler for type [%s] declared on field [%s]", f.Type, path)
	}
	if multiField && f.isObject() {
		return nil, unsupported("mapper_parsing_exception", "object multi-field ["+path+"]")
	}
	for k, pv := range def {
		if k == "type" {
			continue
		}
		if !allowed[k] {
			return nil, unsupported("mapper_parsing_exception", fmt.Sprintf("mapping parameter [%s] on field [%s] of type [%s]", k, path, f.Type))
		}
		var err *esError
		switch k {
		case "properties":
			f.Properties, err = parseProperties(pv, path+".")
		case "dynamic":
			f.Dynamic, err = parseDynamic(pv, path)
		case "enabled":
			b, ok := asBool(pv)
			if !ok {
				return nil, mappingError("Failed to parse mapping: [enabled] must be a boolean on [%s]", path)
			}
			f.Enabled = &b
		case "index", "doc_values":
			b, ok := asBool(pv)
			if !ok {
				return nil, mappingError("Failed to parse value [%v] as only [true] or [false] are allowed for [%s] on [%s]", pv, k, path)
			}
			if f.Type == typeBinary && b {
				return nil, unsupported("mapper_parsing_exception", "[doc_values: true] on binary field ["+path+"]")
			}
			if k == "index" {
				f.Index = &b
			} else {
				f.DocValues = &b
			}
		case "ignore_above":
			n, ok := asInt(pv)
			if !ok || n < 0 {
				return nil, mappingError("[ignore_above] must be a non-negative integer on [%s]", path)
			}
			f.IgnoreAbove = &n
		case "format":
			s, ok := pv.(string)
			if !ok {
				return nil, mappingError("[format] must be a string on [%s]", path)
			}
			formats, ferr := parseDateFormats(s)
			if ferr == nil && f.Type == typeDateNanos {
				ferr = nanosFormats(s)
			}
			if ferr != nil {
				return nil, unsupported("mapper_parsing_exception", fmt.Sprintf("date format on field [%s]: %v", path, ferr))
			}
			f.Format, f.formats = s, formats
		case "analyzer", "search_analyzer":
			s, _ := pv.(string)
			if s != "standard" {
				return nil, unsupported("mapper_parsing_exception", fmt.Sprintf("analyzer [%s] on field [%s]", s, path), "standard")
			}
			if k == "analyzer" {
				f.Analyzer = s
			}
		case "copy_to":
			if multiField {
				return nil, mappingError("[copy_to] may not be used to copy from a multi-field: [%s]", path)
			}
			switch x := pv.(type) {
			case string:
				f.CopyTo = []string{x}
			case []any:
				for _, e := range x {
					s, ok := e.(string)
					if !ok {
						return nil, mappingError("[copy_to] must be a field name or a list of them on [%s]", path)
					}
					f.CopyTo = append(f.CopyTo, s)
				}
			default:
				return nil, mappingError("[copy_to] must be a field name or a list of them on [%s]", path)
			}
		case "scaling_factor":
			sf, ok := toFloat(pv)
			if !ok || !(sf > 0) || math.IsInf(sf, 0) {
				return nil, mappingError("[scaling_factor] must be a positive number, got [%v]", pv)
			}
			f.ScalingFactor = sf
		case "null_value":
			f.NullValue = pv
		case "fields":
			subs, ok := pv.(map[string]any)
			if !ok {
				return nil, mappingError("Expected map for property [fields] on field [%s]", path)
			}
			f.Fields = map[string]*fieldMapping{}
			for name, sd := range subs {
				if strings.Contains(name, ".") {
					return nil, mappingError("Field name [%s] which is a multi field of [%s] cannot contain '.'", name, path)
				}
				sf, serr := parseField(sd, path+"."+name, true)
				if serr != nil {
					return nil, serr
				}
				f.Fields[name] = sf
			}
		case "coerce":
			if b, ok := asBool(pv); !ok || !b {
				return nil, unsupported("mapper_parsing_exception", "[coerce: false] on field ["+path+"]")
			}
		case "ignore_malformed":
			if b, ok := asBool(pv); !ok || b {
				return nil, unsupported("mapper_parsing_exception", "[ignore_malformed: true] on field ["+path+"]")
			}
		case "fielddata":
			if b, ok := asBool(pv); !ok || b {
				return nil, unsupported("mapper_parsing_exception", "[fielddata: true] on field ["+path+"]")
			}
		case "meta":
			f.Meta, _ = pv.(map[string]any)
		case "similarity":
			if s, _ := pv.(string); s != "BM25" {
				return nil, unsupported("mapper_parsing_exception", "similarity ["+fmt.Sprint(pv)+"] on field ["+path+"]")
			}
		}
		if err != nil {
			return nil, err
		}
	}
	if f.Type == typeScaledFloat && f.ScalingFactor == 0 {
		return nil, mappingError("Failed to parse mapping: Field [scaling_factor] is required")
	}
	if f.Type == typeDate && f.formats == nil {
		f.formats, _ = parseDateFormats("")
	}
	if f.Type == typeDateNanos && f.formats == nil {
		f.formats, _ = parseDateFormats(defaultDateNanosFormat)
	}
	if f.NullValue != nil {
		// the null value must itself be a valid value of the field
		if _, err := convertLeaf(f, path, f.NullValue); err != nil {
			return nil, mappingError("Failed to parse mapping: Error parsing [null_value] on field [%s]: %s", path, err.reason)
		}
	}
	return f, nil
}

// mergeMapping merges src into dst (both object mappings) in place. With
// override, src's parameters win (composing templates and a create
// request); without, a changed parameter is a conflict (PUT _mapping).
func mergeMapping(dst, src *fieldMapping, path string, override bool) *esError {
	if src.Dynamic != "" {
		dst.Dynamic = src.Dynamic
	}
	if src.Enabled != nil {
		if dst.Enabled != nil && *dst.Enabled != *src.Enabled && !override {
			return badRequest("Mapper for [%s] conflicts with existing mapper: Cannot update parameter [enabled]", path)
		}
		dst.Enabled = src.Enabled
	}
	if src.DateDetection != nil {
		dst.DateDetection = src.DateDetection
	}
	if src.RootMeta != nil {
		dst.RootMeta = src.RootMeta
	}
	if len(src.Properties) > 0 && dst.Properties == nil {
		dst.Properties = map[string]*fieldMapping{}
	}
	for name, sf := range src.Properties {
		p := joinPath(path, name)
		df, ok := dst.Properties[name]
		if !ok {
			dst.Properties[name] = cloneField(sf)
			continue
		}
		if df.Type != sf.Type {
			return badRequest("mapper [%s] cannot be changed from type [%s] to [%s]", p, df.Type, sf.Type)
		}
		if df.isObject() {
			if err := mergeMapping(df, sf, p, override); err != nil {
				return err
			}
			continue
		}
		if err := mergeLeaf(df, sf, p, override); err != nil {
			return err
		}
	}
	return nil
}

func mergeLeaf(df, sf *fieldMapping, path string, override bool) *esError {
	if !override {
		conflict := func(param string, a, b any) *esError {
			if compactJSON(a) != compactJSON(b) {
				return badRequest("Mapper for [%s] conflicts with existing mapper:\n\tCannot update parameter [%s] from [%v] to [%v]", path, param, compactJSON(a), compactJSON(b))
			}
			return nil
		}
		if err := conflict("index", df.indexed(), sf.indexed()); err != nil {
			return err
		}
		if err := conflict("doc_values", df.hasDocValues(), sf.hasDocValues()); err != nil {
			return err
		}
		if err := conflict("format", df.Format, sf.Format); err != nil {
			return err
		}
		if err := conflict("null_value", df.NullValue, sf.NullValue); err != nil {
			return err
		}
		if err := conflict("scaling_factor", df.ScalingFactor, sf.ScalingFactor); err != nil {
			return err
		}
		df.IgnoreAbove = sf.IgnoreAbove
		df.CopyTo = sf.CopyTo
		if sf.Meta != nil {
			df.Meta = sf.Meta
		}
	} else {
		fields := df.Fields
		*df = *cloneField(sf)
		if df.Fields == nil && fields != nil {
			df.Fields = fields
			return nil
		}
		for k, v := range fields {
			if _, ok := df.Fields[k]; !ok {
				df.Fields[k] = v
			}
		}
		return nil
	}
	for name, ssub := range sf.Fields {
		if df.Fields == nil {
			df.Fields = map[string]*fieldMapping{}
		}
		dsub, ok := df.Fields[name]
		if !ok {
			df.Fields[name] = cloneField(ssub)
			continue
		}
		if dsub.Type != ssub.Type {
			return badRequest("mapper [%s.%s] cannot be changed from type [%s] to [%s]", path, name, dsub.Type, ssub.Type)
		}
		if err := mergeLeaf(dsub, ssub, path+"."+name, override); err != nil {
			return err
		}
	}
	return nil
}

func joinPath(prefix, name string) string {
	if prefix == "" {
		return name
	}
	return prefix + "." + name
}

func cloneField(f *fieldMapping) *fieldMapping {
	if f == nil {
		return nil
	}
	c := *f
	if f.Properties != nil {
		c.Properties = make(map[string]*fieldMapping, len(f.Properties))
		for k, v := range f.Properties {
			c.Properties[k] = cloneField(v)
		}
	}
	if f.Fields != nil {
		c.Fields = make(map[string]*fieldMapping, len(f.Fields))
		for k, v := range f.Fields {
			c.Fields[k] = cloneField(v)
		}
	}
	return &c
}

// render returns the mapping as Elasticsearch prints it in GET _mapping.
func (f *fieldMapping) render(root bool) obj {
	var o obj
	if root {
		if f.Dynamic != "" {
			o = append(o, kv{"dynamic", f.Dynamic})
		}
		if f.DateDetection != nil {
			o = append(o, kv{"date_detection", *f.DateDetection})
		}
		if f.RootMeta != nil {
			o = append(o, kv{"_meta", f.RootMeta})
		}
	} else if !f.isObject() || len(f.Properties) == 0 {
		o = append(o, kv{"type", f.Type})
	}
	if f.isObject() {
		if !root && f.Dynamic != "" {
			o = append(o, kv{"dynamic", f.Dynamic})
		}
		if f.Enabled != nil {
			o = append(o, kv{"enabled", *f.Enabled})
		}
		if len(f.Properties) > 0 {
			names := make([]string, 0, len(f.Properties))
			for n := range f.Properties {
				names = append(names, n)
			}
			sort.Strings(names)
			props := obj{}
			for _, n := range names {
				props = append(props, kv{n, f.Properties[n].render(false)})
			}
			o = append(o, kv{"properties", props})
		}
		return o
	}
	if f.ScalingFactor != 0 {
		o = append(o, kv{"scaling_factor", f.ScalingFactor})
	}
	if f.Analyzer != "" {
		o = append(o, kv{"analyzer", f.Analyzer})
	}
	if f.Format != "" {
		o = append(o, kv{"format", f.Format})
	}
	if f.Index != nil {
		o = append(o, kv{"index", *f.Index})
	}
	if f.DocValues != nil {
		o = append(o, kv{"doc_values", *f.DocValues})
	}
	if f.IgnoreAbove != nil {
		o = append(o, kv{"ignore_above", *f.IgnoreAbove})
	}
	if f.NullValue != nil {
		o = append(o, kv{"null_value", f.NullValue})
	}
	if len(f.CopyTo) > 0 {
		// Elasticsearch always echoes copy_to as a list
		o = append(o, kv{"copy_to", f.CopyTo})
	}
	if f.Meta != nil {
		o = append(o, kv{"meta", f.Meta})
	}
	if len(f.Fields) > 0 {
		names := make([]string, 0, len(f.Fields))
		for n := range f.Fields {
			names = append(names, n)
		}
		sort.Strings(names)
		subs := obj{}
		for _, n := range names {
			subs = append(subs, kv{n, f.Fields[n].render(false)})
		}
		o = append(o, kv{"fields", subs})
	}
	return o
}

// asBool accepts true/false and "true"/"false", as mapping parameters do.
func asBool(v any) (bool, bool) {
	switch b := v.(type) {
	case bool:
		return b, true
	case string:
		switch b {
		case "true":
			return true, true
		case "false":
			return false, true
		}
	}
	return false, false
}

func asInt(v any) (int, bool) {
	switch n := v.(type) {
	case json.Number:
		i, err := strconv.Atoi(string(n))
		return i, err == nil
	case float64:
		if n == float64(int(n)) {
			return int(n), true
		}
	case int:
		return n, true
	case string:
		i, err := strconv.Atoi(n)
		return i, err == nil
	}
	return 0, false
}

func compactJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
