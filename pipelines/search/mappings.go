package search

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/chapper/chapper/proto/topic"
)

// Field is one mapped document field and its Elasticsearch type.
type Field struct {
	Name string
	Type string
}

// commonFields are mapped in every kind's index.
var commonFields = []Field{
	{"id", "keyword"},
	{"kind", "keyword"},
	{"@timestamp", "date"},
	{"canvasser_id", "keyword"},
	{"location", "geo_point"},
	{"locality", "long"},
	{"chunk", "long"},
	{"region", "long"},
	{"shard", "long"},
	{"received_at", "date"},
	{"replaces_id", "keyword"},
	{"replaced", "boolean"},
}

// kindFields are the proto fields of each kind, snake_case as in the proto.
var kindFields = map[topic.Kind][]Field{
	topic.KindVisits: {
		{"dwelling_id", "keyword"},
		{"address", "text"},
		{"visited_at", "date"},
		{"outcome", "keyword"},
	},
	topic.KindIntentions: {
		{"visit_id", "keyword"},
		{"elector_id", "keyword"},
		{"option", "keyword"},
		{"recorded_at", "date"},
	},
	topic.KindFollowups: {
		{"visit_id", "keyword"},
		{"elector_id", "keyword"},
		{"issue", "keyword"},
		{"method", "keyword"},
		{"recorded_at", "date"},
	},
}

// TimeField returns the field holding a kind's own time: visited_at for
// visits, recorded_at otherwise. `@timestamp` holds the same value in every
// kind.
func TimeField(k topic.Kind) string {
	if k == topic.KindVisits {
		return "visited_at"
	}
	return "recorded_at"
}

// Fields returns the mapped fields of kind k's documents: the common fields,
// then the kind's own.
func Fields(k topic.Kind) []Field {
	out := append([]Field(nil), commonFields...)
	return append(out, kindFields[k]...)
}

// Names derives index, alias and template names from a prefix and a
// generation. The first generation ("") has the names Chapper always had:
// indices <prefix>-<kind>-<yyyy.mm> under the template <prefix>-<kind>. A
// rebuild fills a later generation G: indices <prefix>-<kind>-G-<yyyy.mm>
// under the template <prefix>-<kind>-G, which has a higher priority than
// the first generation's (whose pattern <prefix>-<kind>-* matches G's
// indices too). The aliases <prefix>-<kind> are the same for every
// generation: they hold the indices of the one generation in force.
type Names struct {
	Prefix string
	// Generation is "" for the first generation, else a rebuild's name
	// (NewGeneration).
	Generation string
}

// Priorities of the index templates: a rebuild's generation outranks the
// first generation, whose pattern also matches its indices. Generations
// after the first do not overlap one another.
const (
	firstPriority      = 200
	generationPriority = 300
)

// Alias returns the alias that reads every index of kind k in force:
// <prefix>-<kind>.
func (n Names) Alias(k topic.Kind) string { return n.Prefix + "-" + string(k) }

// stem is what every index name of kind k in this generation starts with.
func (n Names) stem(k topic.Kind) string {
	if n.Generation == "" {
		return n.Alias(k)
	}
	return n.Alias(k) + "-" + n.Generation
}

// Template returns the name of kind k's index template in this
// generation: <prefix>-<kind>[-<generation>].
func (n Names) Template(k topic.Kind) string { return n.stem(k) }

// Pattern returns the index pattern kind k's template applies to. The
// first generation's pattern matches later generations' indices too; use
// Owns to tell them apart.
func (n Names) Pattern(k topic.Kind) string { return n.stem(k) + "-*" }

// Index returns the index of kind k for the month of t (in UTC):
// <prefix>-<kind>[-<generation>]-<yyyy.mm>, e.g. canvass-intentions-2026.11.
func (n Names) Index(k topic.Kind, t time.Time) string {
	t = t.UTC()
	return fmt.Sprintf("%s-%04d.%02d", n.stem(k), t.Year(), int(t.Month()))
}

var monthRE = regexp.MustCompile(`^[0-9]{4}\.[0-9]{2}$`)

// Owns reports whether index is a monthly index of kind k in this
// generation.
func (n Names) Owns(k topic.Kind, index string) bool {
	rest, ok := strings.CutPrefix(index, n.stem(k)+"-")
	return ok && monthRE.MatchString(rest)
}

// Ledger returns the index of this generation's corrections ledger:
// <prefix>-corrections[-<generation>] (see corrections.go).
func (n Names) Ledger() string {
	if n.Generation == "" {
		return n.Prefix + "-corrections"
	}
	return n.Prefix + "-corrections-" + n.Generation
}

// Control returns the index holding the generation control document of
// every generation under the prefix: <prefix>-control.
func (n Names) Control() string { return n.Prefix + "-control" }

// Mappings returns the explicit mappings of kind k: dynamic strict, so a
// document with an unmapped field is rejected, never silently widened.
func Mappings(k topic.Kind) map[string]any {
	props := map[string]any{}
	for _, f := range Fields(k) {
		props[f.Name] = map[string]any{"type": f.Type}
	}
	return map[string]any{"dynamic": "strict", "properties": props}
}

// CurrentFilter is the filter of every alias: a document a correction
// replaced (replaced: true) is not seen through the aliases, so reports,
// Kibana and _count through an alias count only the newest version of a
// record.
func CurrentFilter() map[string]any {
	return map[string]any{"bool": map[string]any{"must_not": []any{
		map[string]any{"term": map[string]any{"replaced": true}},
	}}}
}

// AliasBody returns the definition of kind k's alias on an index: the
// CurrentFilter.
func AliasBody() map[string]any { return map[string]any{"filter": CurrentFilter()} }

// TemplateBody returns the composable index template of kind k in this
// generation: its index pattern, the mappings and, when withAliases, the
// read alias every new index joins. A rebuild installs its generation's
// template without aliases and adds them at the switch.
func (n Names) TemplateBody(k topic.Kind, withAliases bool) []byte {
	tmpl := map[string]any{"mappings": Mappings(k)}
	if withAliases {
		tmpl["aliases"] = map[string]any{n.Alias(k): AliasBody()}
	}
	priority := firstPriority
	if n.Generation != "" {
		priority = generationPriority
	}
	body := map[string]any{
		"index_patterns": []string{n.Pattern(k)},
		"priority":       priority,
		"template":       tmpl,
		"_meta":          map[string]any{"managed_by": "chapper", "kind": string(k), "generation": n.Generation},
	}
	b, err := json.Marshal(body)
	if err != nil {
		panic(fmt.Sprintf("encoding index template: %v", err)) // static data; cannot fail
	}
	return b
}
