package search

import (
	"encoding/json"
	"fmt"
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

// Names derives index, alias and template names from a prefix.
type Names struct {
	Prefix string
}

// Alias returns the alias that reads every index of kind k: <prefix>-<kind>.
func (n Names) Alias(k topic.Kind) string { return n.Prefix + "-" + string(k) }

// Template returns the name of kind k's index template (the alias name).
func (n Names) Template(k topic.Kind) string { return n.Alias(k) }

// Pattern returns the index pattern kind k's template applies to.
func (n Names) Pattern(k topic.Kind) string { return n.Alias(k) + "-*" }

// Index returns the index of kind k for the month of t (in UTC):
// <prefix>-<kind>-<yyyy.mm>, e.g. canvass-intentions-2026.11.
func (n Names) Index(k topic.Kind, t time.Time) string {
	t = t.UTC()
	return fmt.Sprintf("%s-%04d.%02d", n.Alias(k), t.Year(), int(t.Month()))
}

// Mappings returns the explicit mappings of kind k: dynamic strict, so a
// document with an unmapped field is rejected, never silently widened.
func Mappings(k topic.Kind) map[string]any {
	props := map[string]any{}
	for _, f := range Fields(k) {
		props[f.Name] = map[string]any{"type": f.Type}
	}
	return map[string]any{"dynamic": "strict", "properties": props}
}

// TemplateBody returns the composable index template of kind k: its index
// pattern, the mappings and the read alias every new index joins.
func (n Names) TemplateBody(k topic.Kind) []byte {
	body := map[string]any{
		"index_patterns": []string{n.Pattern(k)},
		"priority":       200,
		"template": map[string]any{
			"mappings": Mappings(k),
			"aliases":  map[string]any{n.Alias(k): map[string]any{}},
		},
		"_meta": map[string]any{"managed_by": "chapper", "kind": string(k)},
	}
	b, err := json.Marshal(body)
	if err != nil {
		panic(fmt.Sprintf("encoding index template: %v", err)) // static data; cannot fail
	}
	return b
}
