package search

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/blevesearch/bleve/v2"
	"github.com/blevesearch/bleve/v2/index/scorch"
	blevemapping "github.com/blevesearch/bleve/v2/mapping"
	index "github.com/blevesearch/bleve_index_api"
)

// On disk, DataDir holds state.json (cluster UUID, index metadata with
// mappings, settings and aliases, and the index templates) and one bleve
// (scorch) index per Elasticsearch index under indices/<uuid>. state.json
// is replaced atomically; an index directory that state.json does not name
// is a leftover of an interrupted create or delete and is removed at start.

const stateFile = "state.json"

// seqKey is the bleve internal key holding an index's next _seq_no; it is
// written in the same batch as the documents.
var seqKey = []byte("chapper.next_seq_no")

type aliasMeta struct {
	IsWriteIndex *bool `json:"is_write_index,omitempty"`
	// Filter is the alias's filter query as given (JSON); searches
	// through the alias see only the documents it matches.
	Filter json.RawMessage `json:"filter,omitempty"`
}

// parseAliasFilter checks an alias filter and returns it as JSON.
func parseAliasFilter(alias string, v any) (json.RawMessage, *esError) {
	if _, ok := v.(map[string]any); !ok {
		return nil, badRequest("failed to parse filter for alias [%s]", alias)
	}
	if _, err := parseQuery(v); err != nil {
		return nil, err
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, badRequest("failed to parse filter for alias [%s]: %v", alias, err)
	}
	return b, nil
}

// aliasFilters returns, for each index of list that expr reaches only
// through filtered aliases, the filters of those aliases (a document
// matching any of them is seen), as Elasticsearch resolves them: an
// index named directly, or through an alias without a filter, has none.
func (s *Server) aliasFilters(expr string, list []*esIndex) (map[*esIndex][]qnode, *esError) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if expr == "" || expr == "_all" || expr == "*" {
		return nil, nil
	}
	var out map[*esIndex][]qnode
	for _, ix := range list {
		var filters []qnode
		unfiltered := false
		for i, part := range strings.Split(expr, ",") {
			part = strings.TrimSpace(part)
			if part == "" || strings.HasPrefix(part, "-") && i > 0 {
				continue
			}
			if part == "_all" || globMatch(part, ix.name) {
				unfiltered = true
				break
			}
			for a, m := range ix.aliases {
				if !globMatch(part, a) {
					continue
				}
				if m.Filter == nil {
					unfiltered = true
					break
				}
				raw, err := decodeObject(m.Filter)
				if err != nil {
					return nil, err
				}
				q, err := parseQuery(raw)
				if err != nil {
					return nil, err
				}
				filters = append(filters, q)
			}
			if unfiltered {
				break
			}
		}
		if !unfiltered && len(filters) > 0 {
			if out == nil {
				out = map[*esIndex][]qnode{}
			}
			out[ix] = filters
		}
	}
	return out, nil
}

type indexState struct {
	Name     string               `json:"name"`
	UUID     string               `json:"uuid"`
	Created  int64                `json:"created"`
	Settings map[string]string    `json:"settings"`
	Mappings json.RawMessage      `json:"mappings"`
	Aliases  map[string]aliasMeta `json:"aliases,omitempty"`
}

type templateState struct {
	Name string          `json:"name"`
	Body json.RawMessage `json:"body"`
}

type clusterState struct {
	ClusterUUID string          `json:"cluster_uuid"`
	Indices     []indexState    `json:"indices"`
	Templates   []templateState `json:"templates"`
}

// esIndex is one open index.
type esIndex struct {
	name     string
	uuid     string
	created  int64
	settings map[string]string
	dir      string
	bi       bleve.Index
	ii       index.Index
	mapping  atomic.Pointer[mapping]
	aliases  map[string]aliasMeta // guarded by Server.mu

	// life is read-locked by every request using the index and locked to
	// close it, so an index is never closed under a running request.
	life   sync.RWMutex
	closed bool

	// wmu guards the write bookkeeping: a batch decides its outcomes
	// (existence lookup, versions, dynamic mapping) under it, then writes
	// without it; pending holds the ids of batches being written, and a
	// batch sharing one of them waits on wcond.
	wmu     sync.Mutex
	wcond   *sync.Cond
	pending map[string]struct{}
	nextSeq uint64
}

// pendingAny reports whether a batch being written holds one of ids.
// Callers hold wmu.
func (ix *esIndex) pendingAny(ids []string) bool {
	if len(ix.pending) == 0 {
		return false
	}
	for _, id := range ids {
		if _, ok := ix.pending[id]; ok {
			return true
		}
	}
	return false
}

func (ix *esIndex) maxResultWindow() int {
	if v, ok := ix.settings["index.max_result_window"]; ok {
		if n, err := strconv.Atoi(v); err == nil {
			return n
		}
	}
	return 10000
}

// template is a parsed composable index template.
type template struct {
	name     string
	body     json.RawMessage
	patterns []string
	priority int64
	mappings *fieldMapping
	settings map[string]string
	aliases  map[string]aliasMeta
}

func newUUID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)[:22]
}

// newDocID generates an _id the way Elasticsearch's auto ids look: 20
// URL-safe base64 characters.
func newDocID() string {
	b := make([]byte, 15)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func (s *Server) loadState() error {
	if err := os.MkdirAll(filepath.Join(s.cfg.DataDir, "indices"), 0o755); err != nil {
		return fmt.Errorf("creating search data directory: %w", err)
	}
	var st clusterState
	b, err := os.ReadFile(filepath.Join(s.cfg.DataDir, stateFile))
	switch {
	case errors.Is(err, os.ErrNotExist):
		// the first start writes state.json before any index exists, so
		// index directories without it mean the state was lost: refuse
		// rather than treat the indexes as leftovers and remove them
		if entries, _ := os.ReadDir(filepath.Join(s.cfg.DataDir, "indices")); len(entries) > 0 {
			return fmt.Errorf("%w: %s has index directories but no %s", ErrStateMissing, s.cfg.DataDir, stateFile)
		}
		st.ClusterUUID = newUUID()
	case err != nil:
		return fmt.Errorf("reading search state: %w", err)
	default:
		if err := json.Unmarshal(b, &st); err != nil {
			return fmt.Errorf("parsing %s: %w", filepath.Join(s.cfg.DataDir, stateFile), err)
		}
	}
	s.clusterUUID = st.ClusterUUID
	for _, ts := range st.Templates {
		t, eerr := parseTemplate(ts.Name, ts.Body)
		if eerr != nil {
			return fmt.Errorf("loading index template %s: %w", ts.Name, eerr)
		}
		s.templates[t.name] = t
	}
	known := map[string]bool{}
	for _, is := range st.Indices {
		known[is.UUID] = true
		ix, err := s.openIndex(is)
		if err != nil {
			return err
		}
		s.indices[ix.name] = ix
	}
	entries, err := os.ReadDir(filepath.Join(s.cfg.DataDir, "indices"))
	if err != nil {
		return fmt.Errorf("listing search indices: %w", err)
	}
	for _, e := range entries {
		if !known[e.Name()] {
			s.log.Info("removing leftover search index directory", "dir", e.Name())
			if err := os.RemoveAll(filepath.Join(s.cfg.DataDir, "indices", e.Name())); err != nil {
				return fmt.Errorf("removing leftover index directory: %w", err)
			}
		}
	}
	if len(st.Indices) == 0 && len(st.Templates) == 0 {
		return s.persist()
	}
	return nil
}

func (s *Server) openIndex(is indexState) (*esIndex, error) {
	dir := filepath.Join(s.cfg.DataDir, "indices", is.UUID)
	var raw any
	dec := json.NewDecoder(bytes.NewReader(is.Mappings))
	dec.UseNumber()
	if err := dec.Decode(&raw); err != nil {
		return nil, fmt.Errorf("parsing stored mapping of index %s: %w", is.Name, err)
	}
	root, eerr := parseMapping(raw)
	if eerr != nil {
		return nil, fmt.Errorf("parsing stored mapping of index %s: %w", is.Name, eerr)
	}
	bi, err := bleve.OpenUsing(dir, s.cfg.Scorch.kvConfig())
	if err != nil {
		return nil, fmt.Errorf("opening index %s in %s: %w", is.Name, dir, err)
	}
	ix, err := s.wrapIndex(is, dir, bi, root)
	if err != nil {
		_ = bi.Close()
		return nil, err
	}
	r, err := ix.ii.Reader()
	if err != nil {
		_ = bi.Close()
		return nil, fmt.Errorf("reading index %s: %w", is.Name, err)
	}
	defer r.Close()
	v, err := r.GetInternal(seqKey)
	if err != nil {
		_ = bi.Close()
		return nil, fmt.Errorf("reading sequence number of index %s: %w", is.Name, err)
	}
	if len(v) == 8 {
		ix.nextSeq = binary.BigEndian.Uint64(v)
	}
	return ix, nil
}

func (s *Server) wrapIndex(is indexState, dir string, bi bleve.Index, root *fieldMapping) (*esIndex, error) {
	ii, err := bi.Advanced()
	if err != nil {
		return nil, fmt.Errorf("opening index %s: %w", is.Name, err)
	}
	ix := &esIndex{name: is.Name, uuid: is.UUID, created: is.Created, settings: is.Settings, dir: dir, bi: bi, ii: ii, aliases: is.Aliases, pending: map[string]struct{}{}}
	ix.wcond = sync.NewCond(&ix.wmu)
	if ix.aliases == nil {
		ix.aliases = map[string]aliasMeta{}
	}
	if ix.settings == nil {
		ix.settings = map[string]string{}
	}
	ix.mapping.Store(newMapping(root))
	return ix, nil
}

// persist writes state.json. Callers must not hold s.mu.
func (s *Server) persist() error {
	s.saveMu.Lock()
	defer s.saveMu.Unlock()
	s.mu.RLock()
	st := clusterState{ClusterUUID: s.clusterUUID}
	names := make([]string, 0, len(s.indices))
	for n := range s.indices {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		ix := s.indices[n]
		mb, _ := json.Marshal(ix.mapping.Load().root.render(true))
		aliases := map[string]aliasMeta{}
		for a, m := range ix.aliases {
			aliases[a] = m
		}
		st.Indices = append(st.Indices, indexState{Name: ix.name, UUID: ix.uuid, Created: ix.created, Settings: ix.settings, Mappings: mb, Aliases: aliases})
	}
	tnames := make([]string, 0, len(s.templates))
	for n := range s.templates {
		tnames = append(tnames, n)
	}
	sort.Strings(tnames)
	for _, n := range tnames {
		st.Templates = append(st.Templates, templateState{Name: n, Body: s.templates[n].body})
	}
	s.mu.RUnlock()
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding search state: %w", err)
	}
	return writeFileAtomic(filepath.Join(s.cfg.DataDir, stateFile), b)
}

func writeFileAtomic(path string, b []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("syncing %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("closing %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("replacing %s: %w", path, err)
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// validIndexName applies Elasticsearch's index name rules.
func validIndexName(name string) *esError {
	bad := func(why string) *esError {
		e := newError(http.StatusBadRequest, "invalid_index_name_exception", "Invalid index name [%s], %s", name, why)
		e.extra = obj{{"index_uuid", "_na_"}, {"index", name}}
		return e
	}
	switch {
	case name == "":
		return bad("must not be empty")
	case name == "." || name == "..":
		return bad("must not be '.' or '..'")
	case strings.ToLower(name) != name:
		return bad("must be lowercase")
	case strings.ContainsAny(name, "\\/*?\"<>| ,#:"):
		return bad("must not contain the following characters [ , \", *, \\, <, |, ,, >, /, ?, #, :]")
	case strings.HasPrefix(name, "_") || strings.HasPrefix(name, "-") || strings.HasPrefix(name, "+"):
		return bad("must not start with '_', '-', or '+'")
	case len(name) > 255:
		return bad("index name is too long, (" + strconv.Itoa(len(name)) + " > 255)")
	}
	return nil
}

// globMatch matches Elasticsearch's simple wildcard patterns (only *).
func globMatch(pattern, s string) bool {
	if !strings.Contains(pattern, "*") {
		return pattern == s
	}
	parts := strings.Split(pattern, "*")
	if !strings.HasPrefix(s, parts[0]) {
		return false
	}
	s = s[len(parts[0]):]
	for i := 1; i < len(parts)-1; i++ {
		j := strings.Index(s, parts[i])
		if j < 0 {
			return false
		}
		s = s[j+len(parts[i]):]
	}
	return strings.HasSuffix(s, parts[len(parts)-1])
}

// indexSpec is what an index is created with: mappings, settings and
// aliases from the matching template merged with the request's.
type indexSpec struct {
	mappings *fieldMapping
	settings map[string]string
	aliases  map[string]aliasMeta
}

// parseIndexBody parses a create-index body or a template's "template".
func parseIndexBody(body map[string]any, allowed ...string) (*indexSpec, *esError) {
	spec := &indexSpec{settings: map[string]string{}, aliases: map[string]aliasMeta{}}
	for k, v := range body {
		switch k {
		case "mappings":
			m, err := parseMapping(v)
			if err != nil {
				return nil, err
			}
			spec.mappings = m
		case "settings":
			st, err := parseSettings(v)
			if err != nil {
				return nil, err
			}
			spec.settings = st
		case "aliases":
			am, ok := v.(map[string]any)
			if !ok {
				return nil, badRequest("[aliases] must be an object")
			}
			for name, def := range am {
				meta, err := parseAliasDef(name, def)
				if err != nil {
					return nil, err
				}
				spec.aliases[name] = meta
			}
		default:
			return nil, unsupported("illegal_argument_exception", "index body field ["+k+"]", "mappings", "settings", "aliases")
		}
	}
	return spec, nil
}

func parseAliasDef(name string, def any) (aliasMeta, *esError) {
	var meta aliasMeta
	d, ok := def.(map[string]any)
	if !ok {
		return meta, badRequest("alias [%s] must be an object", name)
	}
	for k, v := range d {
		switch k {
		case "is_write_index":
			b, ok := asBool(v)
			if !ok {
				return meta, badRequest("[is_write_index] must be a boolean")
			}
			meta.IsWriteIndex = &b
		case "filter":
			f, err := parseAliasFilter(name, v)
			if err != nil {
				return meta, err
			}
			meta.Filter = f
		case "is_hidden":
			if b, ok := asBool(v); !ok || b {
				return meta, unsupported("illegal_argument_exception", "alias parameter [is_hidden: true]")
			}
		default:
			return meta, unsupported("illegal_argument_exception", "alias parameter ["+k+"] on alias ["+name+"]", "is_write_index", "filter")
		}
	}
	return meta, nil
}

// settingsAllowed lists the index settings accepted; they either do not
// change results here (shards, replicas, refresh) or are honoured
// (max_result_window).
var settingsAllowed = set("number_of_shards", "number_of_replicas", "refresh_interval", "max_result_window",
	"mapping.total_fields.limit", "auto_expand_replicas", "codec", "lifecycle.name", "lifecycle.rollover_alias",
	"uuid", "creation_date", "provided_name", "version.created", "hidden", "number_of_routing_shards",
	// static settings that limit or tune features the server does not
	// have, so accepting them changes no answer
	"shard.check_on_startup", "routing_partition_size", "soft_deletes.enabled", "priority",
	"load_fixed_bitset_filters_eagerly", "max_inner_result_window", "max_rescore_window",
	"max_docvalue_fields_search", "max_script_fields", "max_ngram_diff", "max_shingle_diff",
	"max_refresh_listeners", "max_regex_length", "analyze.max_token_count",
	"highlight.max_analyzed_offset", "max_slices_per_scroll", "gc_deletes")

func parseSettings(v any) (map[string]string, *esError) {
	out := map[string]string{}
	var walk func(prefix string, x any) *esError
	walk = func(prefix string, x any) *esError {
		if m, ok := x.(map[string]any); ok {
			for k, v := range m {
				if err := walk(joinPath(prefix, k), v); err != nil {
					return err
				}
			}
			return nil
		}
		key := prefix
		if !strings.HasPrefix(key, "index.") {
			key = "index." + key
		}
		if !settingsAllowed[strings.TrimPrefix(key, "index.")] {
			return unsupported("illegal_argument_exception", "index setting ["+key+"]")
		}
		switch val := x.(type) {
		case string:
			out[key] = val
		case json.Number:
			out[key] = string(val)
		case bool:
			out[key] = strconv.FormatBool(val)
		default:
			return badRequest("index setting [%s] must be a scalar", key)
		}
		return nil
	}
	if err := walk("", v); err != nil {
		return nil, err
	}
	return out, nil
}

func parseTemplate(name string, raw json.RawMessage) (*template, *esError) {
	body, err := decodeObject(raw)
	if err != nil {
		return nil, err
	}
	t := &template{name: name, body: raw, aliases: map[string]aliasMeta{}, settings: map[string]string{}}
	for k, v := range body {
		switch k {
		case "index_patterns":
			switch p := v.(type) {
			case string:
				t.patterns = strings.Split(p, ",")
			case []any:
				for _, e := range p {
					s, ok := e.(string)
					if !ok {
						return nil, badRequest("[index_patterns] must be strings")
					}
					t.patterns = append(t.patterns, s)
				}
			default:
				return nil, badRequest("[index_patterns] must be a string or an array")
			}
		case "template":
			tm, ok := v.(map[string]any)
			if !ok {
				return nil, badRequest("[template] must be an object")
			}
			spec, err := parseIndexBody(tm)
			if err != nil {
				return nil, err
			}
			t.mappings, t.settings, t.aliases = spec.mappings, spec.settings, spec.aliases
		case "priority":
			n, ok := asInt(v)
			if !ok || n < 0 {
				return nil, badRequest("[priority] must be a non-negative integer")
			}
			t.priority = int64(n)
		case "version", "_meta":
		case "composed_of":
			if l, ok := v.([]any); !ok || len(l) > 0 {
				return nil, unsupported("illegal_argument_exception", "index template parameter [composed_of] (component templates)")
			}
		case "allow_auto_create":
		default:
			return nil, unsupported("illegal_argument_exception", "index template parameter ["+k+"]", "index_patterns", "template", "priority", "version", "_meta")
		}
	}
	if len(t.patterns) == 0 {
		return nil, newError(http.StatusBadRequest, "action_request_validation_exception", "Validation Failed: 1: index patterns are missing;")
	}
	return t, nil
}

// matchTemplate returns the highest-priority template matching name.
// Callers hold s.mu.
func (s *Server) matchTemplate(name string) *template {
	var best *template
	for _, t := range s.templates {
		for _, p := range t.patterns {
			if globMatch(p, name) {
				if best == nil || t.priority > best.priority || (t.priority == best.priority && t.name < best.name) {
					best = t
				}
				break
			}
		}
	}
	return best
}

// createIndex creates an index from the matching template and spec (nil
// for an index auto-created by a write). It fails with
// resource_already_exists_exception if the index exists, unless exists is
// allowed, when it returns the existing index.
func (s *Server) createIndex(name string, spec *indexSpec, allowExisting bool) (*esIndex, *esError) {
	if err := validIndexName(name); err != nil {
		return nil, err
	}
	s.mu.Lock()
	if ix, ok := s.indices[name]; ok {
		s.mu.Unlock()
		if allowExisting {
			return ix, nil
		}
		e := newError(http.StatusBadRequest, "resource_already_exists_exception", "index [%s/%s] already exists", name, ix.uuid)
		e.extra = obj{{"index_uuid", ix.uuid}, {"index", name}}
		return nil, e
	}
	if s.aliasExists(name) {
		s.mu.Unlock()
		return nil, newError(http.StatusBadRequest, "invalid_index_name_exception", "Invalid index name [%s], already exists as alias", name)
	}
	root := &fieldMapping{Type: typeObject}
	settings := map[string]string{"index.number_of_shards": "1", "index.number_of_replicas": "1"}
	aliases := map[string]aliasMeta{}
	if t := s.matchTemplate(name); t != nil {
		if t.mappings != nil {
			if err := mergeMapping(root, t.mappings, "", true); err != nil {
				s.mu.Unlock()
				return nil, err
			}
		}
		for k, v := range t.settings {
			settings[k] = v
		}
		for k, v := range t.aliases {
			aliases[k] = v
		}
	}
	if spec != nil {
		if spec.mappings != nil {
			if err := mergeMapping(root, spec.mappings, "", true); err != nil {
				s.mu.Unlock()
				return nil, err
			}
		}
		for k, v := range spec.settings {
			settings[k] = v
		}
		for k, v := range spec.aliases {
			aliases[k] = v
		}
	}
	for a := range aliases {
		if _, clash := s.indices[a]; clash || a == name {
			s.mu.Unlock()
			return nil, newError(http.StatusBadRequest, "invalid_alias_name_exception", "Invalid alias name [%s]: an index or data stream exists with the same name as the alias", a)
		}
	}
	is := indexState{Name: name, UUID: newUUID(), Created: time.Now().UnixMilli(), Settings: settings, Aliases: aliases}
	settings["index.uuid"] = is.UUID
	settings["index.creation_date"] = strconv.FormatInt(is.Created, 10)
	settings["index.provided_name"] = name
	dir := filepath.Join(s.cfg.DataDir, "indices", is.UUID)
	bi, err := bleve.NewUsing(dir, newBleveMapping(), scorch.Name, scorch.Name, s.cfg.Scorch.kvConfig())
	if err != nil {
		s.mu.Unlock()
		return nil, newError(http.StatusInternalServerError, "exception", "creating index %s: %v", name, err)
	}
	ix, err := s.wrapIndex(is, dir, bi, root)
	if err != nil {
		s.mu.Unlock()
		_ = bi.Close()
		return nil, newError(http.StatusInternalServerError, "exception", "%v", err)
	}
	s.indices[name] = ix
	s.mu.Unlock()
	if err := s.persist(); err != nil {
		s.log.Error("saving search state after creating an index", "index", name, "err", err)
		return nil, newError(http.StatusInternalServerError, "exception", "%v", err)
	}
	s.log.Debug("index created", "index", name, "uuid", is.UUID)
	return ix, nil
}

func newBleveMapping() *blevemapping.IndexMappingImpl {
	im := bleve.NewIndexMapping()
	// documents are built field by field (Batch.Update with our own
	// document.Document), so bleve's own mapping never indexes anything
	im.DefaultMapping.Dynamic = false
	im.IndexDynamic = false
	im.StoreDynamic = false
	im.DocValuesDynamic = false
	return im
}

// deleteIndex removes an index and its data.
func (s *Server) deleteIndex(ix *esIndex) error {
	s.mu.Lock()
	if s.indices[ix.name] != ix {
		s.mu.Unlock()
		return nil
	}
	delete(s.indices, ix.name)
	s.mu.Unlock()
	if err := s.persist(); err != nil {
		return err
	}
	ix.life.Lock()
	ix.closed = true
	err := ix.bi.Close()
	ix.life.Unlock()
	if err != nil {
		s.log.Warn("closing deleted index", "index", ix.name, "err", err)
	}
	if err := os.RemoveAll(ix.dir); err != nil {
		return fmt.Errorf("removing index %s: %w", ix.name, err)
	}
	return nil
}

// aliasExists reports whether any index has alias name. Callers hold s.mu.
func (s *Server) aliasExists(name string) bool {
	for _, ix := range s.indices {
		if _, ok := ix.aliases[name]; ok {
			return true
		}
	}
	return false
}

// resolveOpts are the index-resolution options of a request.
type resolveOpts struct {
	ignoreUnavailable bool
	allowNoIndices    bool
	noAliases         bool // delete index: an alias is an error
}

// resolve expands an index expression (names, aliases, wildcards, comma
// lists, _all, -exclusions) into concrete indices sorted by name.
func (s *Server) resolve(expr string, o resolveOpts) ([]*esIndex, *esError) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if expr == "" || expr == "_all" || expr == "*" {
		expr = "*"
	}
	picked := map[string]*esIndex{}
	for i, part := range strings.Split(expr, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		exclude := false
		if strings.HasPrefix(part, "-") && i > 0 {
			exclude = true
			part = part[1:]
		}
		matched := s.matchExpr(part)
		if matched == nil && !exclude {
			if strings.Contains(part, "*") || o.ignoreUnavailable {
				continue
			}
			return nil, indexNotFound(part)
		}
		if o.noAliases && !strings.Contains(part, "*") {
			if _, isIndex := s.indices[part]; !isIndex {
				if o.ignoreUnavailable {
					continue
				}
				return nil, badRequest("The provided expression [%s] matches an alias, specify the corresponding concrete indices instead.", part)
			}
		}
		for _, ix := range matched {
			if exclude {
				delete(picked, ix.name)
			} else {
				picked[ix.name] = ix
			}
		}
	}
	if len(picked) == 0 && !o.allowNoIndices {
		return nil, indexNotFound(expr)
	}
	out := make([]*esIndex, 0, len(picked))
	for _, ix := range picked {
		out = append(out, ix)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out, nil
}

// matchExpr resolves one name or pattern; nil if nothing matches. Callers
// hold s.mu.
func (s *Server) matchExpr(part string) []*esIndex {
	var out []*esIndex
	if part == "_all" {
		part = "*"
	}
	for _, ix := range s.indices {
		if globMatch(part, ix.name) {
			out = append(out, ix)
			continue
		}
		for a := range ix.aliases {
			if globMatch(part, a) {
				out = append(out, ix)
				break
			}
		}
	}
	return out
}

// writeIndex returns the index a write to name goes to: the index itself,
// the write index of an alias, or (with autoCreate) a new index created
// from the matching template.
func (s *Server) writeIndex(name string, autoCreate bool) (*esIndex, *esError) {
	s.mu.RLock()
	if ix, ok := s.indices[name]; ok {
		s.mu.RUnlock()
		return ix, nil
	}
	var members []*esIndex
	var writeIdx *esIndex
	undesignated := 0
	for _, ix := range s.indices {
		if m, ok := ix.aliases[name]; ok {
			members = append(members, ix)
			switch {
			case m.IsWriteIndex == nil:
				undesignated++
			case *m.IsWriteIndex:
				writeIdx = ix
			}
		}
	}
	s.mu.RUnlock()
	if writeIdx != nil {
		return writeIdx, nil
	}
	if len(members) == 1 && undesignated == 1 {
		return members[0], nil
	}
	if len(members) > 0 {
		return nil, badRequest("no write index is defined for alias [%s]. The write index may be explicitly disabled using is_write_index=false or the alias points to multiple indices without one being designated as a write index", name)
	}
	if !autoCreate || strings.Contains(name, "*") {
		return nil, indexNotFound(name)
	}
	return s.createIndex(name, nil, true)
}

// acquire read-locks the indices for the duration of a request; release
// undoes it. An index deleted in between is reported missing.
// open resolves expr and holds its indices open (acquire) until the
// returned release is called.
func (s *Server) open(expr string, o resolveOpts) ([]*esIndex, func(), *esError) {
	list, err := s.resolve(expr, o)
	if err != nil {
		return nil, nil, err
	}
	release, err := acquire(list)
	if err != nil {
		return nil, nil, err
	}
	return list, release, nil
}

func acquire(list []*esIndex) (func(), *esError) {
	for i, ix := range list {
		ix.life.RLock()
		if ix.closed {
			ix.life.RUnlock()
			for _, prev := range list[:i] {
				prev.life.RUnlock()
			}
			return nil, indexNotFound(ix.name)
		}
	}
	return func() {
		for _, ix := range list {
			ix.life.RUnlock()
		}
	}, nil
}

func decodeObject(raw []byte) (map[string]any, *esError) {
	if len(bytes.TrimSpace(raw)) == 0 {
		return map[string]any{}, nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, newError(http.StatusBadRequest, "x_content_parse_exception", "request body is not valid JSON: %v", err)
	}
	if dec.More() {
		return nil, newError(http.StatusBadRequest, "x_content_parse_exception", "request body holds more than one JSON value")
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, newError(http.StatusBadRequest, "x_content_parse_exception", "request body must be a JSON object")
	}
	return m, nil
}
