package search

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/elastic/go-elasticsearch/v8"

	"github.com/chapper/chapper/proto/topic"
)

// Rebuilds (docs/replay.md, "Rebuilding the search indices"). Under an
// index prefix P, one document says which generation of the monthly
// indices is in force:
//
//	P-control/_doc/generations   {"active": "", "rebuild": "g20261102t101500", "old": [...]}
//
// The live sink reads it (a real-time GET) at the start of every batch
// and, while a rebuild is set, writes every batch to the active
// generation and to the rebuild generation. The aliases P-<kind> hold the
// active generation's indices; a rebuild switches them in one
// POST /_aliases and then makes its generation the active one here. An
// absent document means the first generation and no rebuild.

// generationsID is the id of the control document.
const generationsID = "generations"

// ErrGeneration: a generation name that cannot be part of an index name.
var ErrGeneration = errors.New("generation must be g followed by lower-case letters and digits")

var generationRE = regexp.MustCompile(`^g[a-z0-9]+$`)

// Generations is the control document of an index prefix.
type Generations struct {
	// Active is the generation the aliases hold and the live sink writes
	// ("" is the first generation).
	Active string `json:"active"`
	// Rebuild is a generation a rebuild is filling; empty when none (a
	// rebuild never fills the first generation).
	Rebuild string `json:"rebuild,omitempty"`
	// Old are generations a rebuild switched away from, whose indices
	// stay until CleanGenerations.
	Old []string `json:"old,omitempty"`
}

// Writes returns the generations the live sink writes a batch to: the
// active one, then the one being rebuilt.
func (g Generations) Writes() []string {
	if g.Rebuild != "" && g.Rebuild != g.Active {
		return []string{g.Active, g.Rebuild}
	}
	return []string{g.Active}
}

// NewGeneration returns the name of a new generation started at t:
// g<yyyymmdd>t<hhmmss>, UTC.
func NewGeneration(t time.Time) string { return "g" + t.UTC().Format("20060102t150405") }

// CheckGeneration returns ErrGeneration unless g is "" or a valid
// generation name.
func CheckGeneration(g string) error {
	if g != "" && !generationRE.MatchString(g) {
		return fmt.Errorf("%w: %q", ErrGeneration, g)
	}
	return nil
}

// ReadGenerations reads the control document under prefix (real time, so
// it sees the last write). A missing document or index is the zero
// Generations: the first generation, no rebuild.
func ReadGenerations(ctx context.Context, es *elasticsearch.Client, prefix string) (Generations, error) {
	n := Names{Prefix: prefix}
	res, err := es.Get(n.Control(), generationsID, es.Get.WithContext(ctx), es.Get.WithRealtime(true))
	if err != nil {
		return Generations{}, fmt.Errorf("reading the search generations of %s: %w", prefix, err)
	}
	defer res.Body.Close()
	if res.StatusCode == http.StatusNotFound {
		_, _ = io.Copy(io.Discard, res.Body)
		return Generations{}, nil
	}
	if res.IsError() {
		b, _ := io.ReadAll(io.LimitReader(res.Body, 4096))
		return Generations{}, fmt.Errorf("reading the search generations of %s: %w", prefix, &StatusError{Status: res.StatusCode, Body: string(b)})
	}
	var doc struct {
		Source Generations `json:"_source"`
	}
	if err := json.NewDecoder(res.Body).Decode(&doc); err != nil {
		return Generations{}, fmt.Errorf("decoding the search generations of %s: %w", prefix, err)
	}
	for _, g := range append([]string{doc.Source.Active, doc.Source.Rebuild}, doc.Source.Old...) {
		if err := CheckGeneration(g); err != nil {
			return Generations{}, fmt.Errorf("reading the search generations of %s: %w", prefix, err)
		}
	}
	return doc.Source, nil
}

// WriteGenerations replaces the control document under prefix; the next
// batch of every live sink follows it.
func WriteGenerations(ctx context.Context, es *elasticsearch.Client, prefix string, g Generations) error {
	n := Names{Prefix: prefix}
	b, err := json.Marshal(g)
	if err != nil {
		return fmt.Errorf("encoding the search generations: %w", err)
	}
	res, err := es.Index(n.Control(), bytes.NewReader(b), es.Index.WithContext(ctx), es.Index.WithDocumentID(generationsID),
		es.Index.WithRefresh("true"))
	if err := responseError(res, err); err != nil {
		return fmt.Errorf("writing the search generations of %s: %w", prefix, err)
	}
	return nil
}

// AliasIndex is an index behind an alias.
type AliasIndex struct {
	Name string
	// Filtered says whether the alias carries a filter on this index.
	Filtered bool
}

// AliasIndices returns the indices behind each kind's alias under prefix.
func AliasIndices(ctx context.Context, es *elasticsearch.Client, prefix string) (map[topic.Kind][]AliasIndex, error) {
	n := Names{Prefix: prefix}
	var aliases []string
	for _, k := range topic.Kinds {
		aliases = append(aliases, n.Alias(k))
	}
	res, err := es.Indices.GetAlias(es.Indices.GetAlias.WithContext(ctx), es.Indices.GetAlias.WithName(aliases...))
	if err != nil {
		return nil, fmt.Errorf("reading the aliases of %s: %w", prefix, err)
	}
	defer res.Body.Close()
	// 404 when some alias does not exist yet; the body still lists the
	// others
	if res.IsError() && res.StatusCode != http.StatusNotFound {
		b, _ := io.ReadAll(io.LimitReader(res.Body, 4096))
		return nil, fmt.Errorf("reading the aliases of %s: %w", prefix, &StatusError{Status: res.StatusCode, Body: string(b)})
	}
	var body map[string]json.RawMessage
	if err := json.NewDecoder(res.Body).Decode(&body); err != nil {
		return nil, fmt.Errorf("decoding the aliases of %s: %w", prefix, err)
	}
	out := map[topic.Kind][]AliasIndex{}
	for index, raw := range body {
		var ix struct {
			Aliases map[string]struct {
				Filter json.RawMessage `json:"filter"`
			} `json:"aliases"`
		}
		if json.Unmarshal(raw, &ix) != nil {
			continue // "error", "status"
		}
		for _, k := range topic.Kinds {
			if a, ok := ix.Aliases[n.Alias(k)]; ok {
				out[k] = append(out[k], AliasIndex{Name: index, Filtered: len(a.Filter) > 0 && string(a.Filter) != "null"})
			}
		}
	}
	for _, list := range out {
		slices.SortFunc(list, func(a, b AliasIndex) int { return strings.Compare(a.Name, b.Name) })
	}
	return out, nil
}

// UpdateAliases sends actions in one POST /_aliases, which Elasticsearch
// applies atomically.
func UpdateAliases(ctx context.Context, es *elasticsearch.Client, actions []any) error {
	b, err := json.Marshal(map[string]any{"actions": actions})
	if err != nil {
		return fmt.Errorf("encoding alias actions: %w", err)
	}
	res, err := es.Indices.UpdateAliases(bytes.NewReader(b), es.Indices.UpdateAliases.WithContext(ctx))
	if err := responseError(res, err); err != nil {
		return fmt.Errorf("updating the aliases: %w", err)
	}
	return nil
}

// Indices returns the monthly indices of kind k in generation n, sorted.
func Indices(ctx context.Context, es *elasticsearch.Client, n Names, k topic.Kind) ([]string, error) {
	res, err := es.Indices.Get([]string{n.Pattern(k)}, es.Indices.Get.WithContext(ctx),
		es.Indices.Get.WithAllowNoIndices(true), es.Indices.Get.WithIgnoreUnavailable(true))
	if err != nil {
		return nil, fmt.Errorf("listing the indices %s: %w", n.Pattern(k), err)
	}
	defer res.Body.Close()
	if res.StatusCode == http.StatusNotFound {
		_, _ = io.Copy(io.Discard, res.Body)
		return nil, nil
	}
	if res.IsError() {
		b, _ := io.ReadAll(io.LimitReader(res.Body, 4096))
		return nil, fmt.Errorf("listing the indices %s: %w", n.Pattern(k), &StatusError{Status: res.StatusCode, Body: string(b)})
	}
	var body map[string]json.RawMessage
	if err := json.NewDecoder(res.Body).Decode(&body); err != nil {
		return nil, fmt.Errorf("decoding the indices %s: %w", n.Pattern(k), err)
	}
	var out []string
	for name := range body {
		if n.Owns(k, name) {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out, nil
}

// Errors of the generation switch.
var (
	// ErrNoRebuild: Switch was asked to switch to a generation that is not
	// being rebuilt.
	ErrNoRebuild = errors.New("search generation is not the one being rebuilt")
	// ErrGenerationInUse: a rebuild may not fill the active generation.
	ErrGenerationInUse = errors.New("search generation is in use")
)

// StartRebuild installs generation gen's index templates (its mappings,
// a higher priority than the first generation's, no aliases) and sets it
// as the rebuild generation in the control document: from the next batch
// on, every live sink writes to it as well as to the active generation. A
// rebuild generation it replaces (an interrupted rebuild not resumed)
// joins the old generations.
func StartRebuild(ctx context.Context, cfg Config, gen string) error {
	if gen == "" {
		return fmt.Errorf("starting a search rebuild: %w", ErrGenerationInUse)
	}
	if err := CheckGeneration(gen); err != nil {
		return err
	}
	es, err := NewClient(cfg)
	if err != nil {
		return err
	}
	g, err := ReadGenerations(ctx, es, cfg.IndexPrefix)
	if err != nil {
		return err
	}
	if gen == g.Active || slices.Contains(g.Old, gen) {
		return fmt.Errorf("starting a search rebuild into generation %q: %w", gen, ErrGenerationInUse)
	}
	fixed := cfg
	fixed.Generation, fixed.Fixed = gen, true
	s, err := New(ctx, fixed) // installs the templates, no aliases
	if err != nil {
		return err
	}
	if err := s.Close(ctx); err != nil {
		return err
	}
	if g.Rebuild != "" && g.Rebuild != gen && !slices.Contains(g.Old, g.Rebuild) {
		// an unfinished rebuild given up: CleanGenerations drops it
		g.Old = append(g.Old, g.Rebuild)
	}
	g.Rebuild = gen
	return WriteGenerations(ctx, es, cfg.IndexPrefix, g)
}

// Switch makes generation gen, the one being rebuilt, the one in force:
// in one POST /_aliases its indices join the three aliases and the
// active generation's leave them; then gen's templates gain the aliases
// (so that its indices of later months join them when created), indices
// of gen created meanwhile are added, gen becomes the active generation
// in the control document (the live sinks stop writing the old one at
// their next batch) and the old generation's templates are deleted. The
// old generation's indices stay until CleanGenerations. It returns
// ErrNoRebuild, changing nothing, unless gen is being rebuilt.
func Switch(ctx context.Context, cfg Config, gen string) error {
	es, err := NewClient(cfg)
	if err != nil {
		return err
	}
	g, err := ReadGenerations(ctx, es, cfg.IndexPrefix)
	if err != nil {
		return err
	}
	if g.Rebuild != gen || gen == "" {
		return fmt.Errorf("switching the search indices to generation %q (rebuild generation %q): %w", gen, g.Rebuild, ErrNoRebuild)
	}
	next := Names{Prefix: cfg.IndexPrefix, Generation: gen}
	addAll := func() ([]any, error) {
		var actions []any
		for _, k := range topic.Kinds {
			list, err := Indices(ctx, es, next, k)
			if err != nil {
				return nil, err
			}
			for _, ix := range list {
				actions = append(actions, map[string]any{"add": map[string]any{"index": ix, "alias": next.Alias(k), "filter": CurrentFilter()}})
			}
		}
		return actions, nil
	}
	behind, err := AliasIndices(ctx, es, cfg.IndexPrefix)
	if err != nil {
		return err
	}
	var actions []any
	for k, list := range behind {
		for _, ix := range list {
			if !next.Owns(k, ix.Name) {
				actions = append(actions, map[string]any{"remove": map[string]any{"index": ix.Name, "alias": next.Alias(k)}})
			}
		}
	}
	adds, err := addAll()
	if err != nil {
		return err
	}
	if actions = append(actions, adds...); len(actions) > 0 {
		if err := UpdateAliases(ctx, es, actions); err != nil {
			return fmt.Errorf("switching the search aliases to generation %q: %w", gen, err)
		}
	}
	for _, k := range topic.Kinds {
		res, err := es.Indices.PutIndexTemplate(next.Template(k), bytes.NewReader(next.TemplateBody(k, true)), es.Indices.PutIndexTemplate.WithContext(ctx))
		if err := responseError(res, err); err != nil {
			return fmt.Errorf("adding the aliases to index template %s: %w", next.Template(k), err)
		}
	}
	// an index of gen created between the switch and the template
	// update joins now
	if adds, err = addAll(); err != nil {
		return err
	}
	if len(adds) > 0 {
		if err := UpdateAliases(ctx, es, adds); err != nil {
			return fmt.Errorf("adding new indices of generation %q to the aliases: %w", gen, err)
		}
	}
	old := g.Active
	g.Active, g.Rebuild = gen, ""
	if !slices.Contains(g.Old, old) {
		g.Old = append(g.Old, old)
	}
	if err := WriteGenerations(ctx, es, cfg.IndexPrefix, g); err != nil {
		return err
	}
	return deleteTemplates(ctx, es, Names{Prefix: cfg.IndexPrefix, Generation: old})
}

func deleteTemplates(ctx context.Context, es *elasticsearch.Client, n Names) error {
	for _, k := range topic.Kinds {
		res, err := es.Indices.DeleteIndexTemplate(n.Template(k), es.Indices.DeleteIndexTemplate.WithContext(ctx))
		if err := responseError(res, err); err != nil {
			var st *StatusError
			if errors.As(err, &st) && st.Status == http.StatusNotFound {
				continue
			}
			return fmt.Errorf("deleting index template %s: %w", n.Template(k), err)
		}
	}
	return nil
}

// Cleaned is what CleanGenerations dropped.
type Cleaned struct {
	Generations []string
	Indices     []string
}

// CleanGenerations deletes the indices, ledger and templates of every
// generation a switch left behind under cfg.IndexPrefix (never the active
// or the rebuild generation, never an index behind an alias) and forgets
// them in the control document.
func CleanGenerations(ctx context.Context, cfg Config) (Cleaned, error) {
	var out Cleaned
	es, err := NewClient(cfg)
	if err != nil {
		return out, err
	}
	g, err := ReadGenerations(ctx, es, cfg.IndexPrefix)
	if err != nil {
		return out, err
	}
	behind, err := AliasIndices(ctx, es, cfg.IndexPrefix)
	if err != nil {
		return out, err
	}
	aliased := map[string]bool{}
	for _, list := range behind {
		for _, ix := range list {
			aliased[ix.Name] = true
		}
	}
	var keep []string
	for _, old := range g.Old {
		if old == g.Active || (g.Rebuild != "" && old == g.Rebuild) {
			continue
		}
		n := Names{Prefix: cfg.IndexPrefix, Generation: old}
		drop := []string{}
		for _, k := range topic.Kinds {
			list, err := Indices(ctx, es, n, k)
			if err != nil {
				return out, err
			}
			for _, ix := range list {
				if !aliased[ix] {
					drop = append(drop, ix)
				}
			}
		}
		drop = append(drop, n.Ledger())
		for _, ix := range drop {
			res, err := es.Indices.Delete([]string{ix}, es.Indices.Delete.WithContext(ctx), es.Indices.Delete.WithIgnoreUnavailable(true))
			if err := responseError(res, err); err != nil {
				var st *StatusError
				if errors.As(err, &st) && st.Status == http.StatusNotFound {
					continue
				}
				return out, fmt.Errorf("deleting index %s of old search generation %q: %w", ix, old, err)
			}
			if ix != n.Ledger() {
				out.Indices = append(out.Indices, ix)
			}
		}
		if err := deleteTemplates(ctx, es, n); err != nil {
			return out, err
		}
		out.Generations = append(out.Generations, old)
	}
	for _, old := range g.Old {
		if !slices.Contains(out.Generations, old) {
			keep = append(keep, old)
		}
	}
	g.Old = keep
	return out, WriteGenerations(ctx, es, cfg.IndexPrefix, g)
}
