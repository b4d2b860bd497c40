package search

import (
	"fmt"
	"net/http"
	"sort"
	"strings"
)

type aliasAction struct {
	add      bool
	indices  []string
	aliases  []string
	meta     aliasMeta
	mustExit bool
}

// handleAliasActions answers POST /_aliases.
func (s *Server) handleAliasActions(req *request) *esError {
	rawActions, ok := req.obj["actions"].([]any)
	if !ok || len(req.obj) != 1 {
		return newError(http.StatusBadRequest, "action_request_validation_exception", "Validation Failed: 1: no actions specified;")
	}
	var actions []aliasAction
	for _, ra := range rawActions {
		m, ok := ra.(map[string]any)
		if !ok || len(m) != 1 {
			return parsingError("[actions] entries must be objects with one action")
		}
		for typ, def := range m {
			a, err := parseAliasAction(typ, def)
			if err != nil {
				return err
			}
			actions = append(actions, a)
		}
	}
	if err := s.applyAliasActions(actions); err != nil {
		return err
	}
	req.ok(obj{{"acknowledged", true}, {"errors", false}})
	return nil
}

func parseAliasAction(typ string, def any) (aliasAction, *esError) {
	var a aliasAction
	switch typ {
	case "add":
		a.add = true
	case "remove":
	case "remove_index":
		return a, unsupported("illegal_argument_exception", "alias action [remove_index]; delete the index instead", "add", "remove")
	default:
		return a, parsingError("Unknown alias action [%s]", typ)
	}
	m, ok := def.(map[string]any)
	if !ok {
		return a, parsingError("[%s] must be an object", typ)
	}
	strs := func(v any) []string {
		switch x := v.(type) {
		case string:
			return []string{x}
		case []any:
			var out []string
			for _, e := range x {
				if s, ok := e.(string); ok {
					out = append(out, s)
				}
			}
			return out
		}
		return nil
	}
	for k, v := range m {
		switch k {
		case "index", "indices":
			a.indices = append(a.indices, strs(v)...)
		case "alias", "aliases":
			a.aliases = append(a.aliases, strs(v)...)
		case "is_write_index":
			b, ok := asBool(v)
			if !ok {
				return a, parsingError("[is_write_index] must be a boolean")
			}
			a.meta.IsWriteIndex = &b
		case "filter":
			var err *esError
			if a.meta.Filter, err = parseAliasFilter(fmt.Sprint(m["alias"], m["aliases"]), v); err != nil {
				return a, err
			}
		case "must_exist":
			a.mustExit, _ = asBool(v)
		case "is_hidden":
			if b, _ := asBool(v); b {
				return a, unsupported("illegal_argument_exception", "alias parameter [is_hidden: true]")
			}
		default:
			return a, unsupported("illegal_argument_exception", "alias action parameter ["+k+"]", "index", "indices", "alias", "aliases", "is_write_index", "filter", "must_exist")
		}
	}
	if len(a.indices) == 0 {
		return a, newError(http.StatusBadRequest, "action_request_validation_exception", "Validation Failed: 1: One of [index] or [indices] is required;")
	}
	if len(a.aliases) == 0 {
		return a, newError(http.StatusBadRequest, "action_request_validation_exception", "Validation Failed: 1: One of [alias] or [aliases] is required;")
	}
	return a, nil
}

// applyAliasActions applies the actions atomically: all or none.
func (s *Server) applyAliasActions(actions []aliasAction) *esError {
	s.mu.Lock()
	// work on copies, then swap in
	work := map[*esIndex]map[string]aliasMeta{}
	aliasesOf := func(ix *esIndex) map[string]aliasMeta {
		if m, ok := work[ix]; ok {
			return m
		}
		m := map[string]aliasMeta{}
		for k, v := range ix.aliases {
			m[k] = v
		}
		work[ix] = m
		return m
	}
	for _, a := range actions {
		var targets []*esIndex
		for _, expr := range a.indices {
			if !strings.Contains(expr, "*") {
				ix, ok := s.indices[expr]
				if !ok {
					s.mu.Unlock()
					return indexNotFound(expr)
				}
				targets = append(targets, ix)
				continue
			}
			for name, ix := range s.indices {
				if globMatch(expr, name) {
					targets = append(targets, ix)
				}
			}
		}
		for _, alias := range a.aliases {
			if a.add {
				if strings.Contains(alias, "*") {
					s.mu.Unlock()
					return newError(http.StatusBadRequest, "invalid_alias_name_exception", "Invalid alias name [%s]: must not contain [*]", alias)
				}
				if _, clash := s.indices[alias]; clash {
					s.mu.Unlock()
					return newError(http.StatusBadRequest, "invalid_alias_name_exception", "Invalid alias name [%s]: an index or data stream exists with the same name as the alias", alias)
				}
				for _, ix := range targets {
					aliasesOf(ix)[alias] = a.meta
				}
				continue
			}
			removed := false
			for _, ix := range targets {
				m := aliasesOf(ix)
				for name := range m {
					if globMatch(alias, name) {
						delete(m, name)
						removed = true
					}
				}
			}
			if !removed && (a.mustExit || !strings.Contains(alias, "*")) {
				s.mu.Unlock()
				return newError(http.StatusNotFound, "aliases_not_found_exception", "aliases [%s] missing", alias)
			}
		}
	}
	for ix, m := range work {
		ix.aliases = m
	}
	s.mu.Unlock()
	if err := s.persist(); err != nil {
		return newError(http.StatusInternalServerError, "exception", "%v", err)
	}
	return nil
}

// handleIndexAlias answers PUT/POST/DELETE /<index>/_alias/<name>.
func (s *Server) handleIndexAlias(req *request) *esError {
	a := aliasAction{add: req.method != http.MethodDelete, indices: strings.Split(req.arg("index"), ","), aliases: strings.Split(req.arg("name"), ",")}
	if a.add {
		for k, v := range req.obj {
			switch k {
			case "is_write_index":
				b, ok := asBool(v)
				if !ok {
					return parsingError("[is_write_index] must be a boolean")
				}
				a.meta.IsWriteIndex = &b
			case "filter":
				f, err := parseAliasFilter(req.arg("name"), v)
				if err != nil {
					return err
				}
				a.meta.Filter = f
			default:
				return unsupported("illegal_argument_exception", "alias parameter ["+k+"]", "is_write_index", "filter")
			}
		}
	}
	if err := s.applyAliasActions([]aliasAction{a}); err != nil {
		return err
	}
	req.acknowledged()
	return nil
}

// handleGetAlias answers GET/HEAD /_alias[/<name>] and
// /<index>/_alias[/<name>].
func (s *Server) handleGetAlias(req *request) *esError {
	names := req.arg("name")
	list, err := s.resolve(req.arg("index"), req.resolveOpts())
	if err != nil {
		return err
	}
	var patterns []string
	if names != "" && names != "_all" && names != "*" {
		patterns = strings.Split(names, ",")
	}
	found := map[string]bool{}
	out := obj{}
	s.mu.RLock()
	for _, ix := range list {
		matched := map[string]aliasMeta{}
		for a, m := range ix.aliases {
			if patterns == nil {
				matched[a] = m
				continue
			}
			for _, p := range patterns {
				if globMatch(p, a) {
					matched[a] = m
					found[p] = true
				}
			}
		}
		if len(matched) > 0 || patterns == nil {
			out = append(out, kv{ix.name, obj{{"aliases", renderAliases(matched)}}})
		}
	}
	s.mu.RUnlock()
	var missing []string
	for _, p := range patterns {
		if !found[p] && !strings.Contains(p, "*") {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		reason := fmt.Sprintf("alias [%s] missing", strings.Join(missing, ","))
		if len(missing) > 1 {
			reason = fmt.Sprintf("aliases [%s] missing", strings.Join(missing, ","))
		}
		req.reply(http.StatusNotFound, append(obj{{"error", reason}, {"status", http.StatusNotFound}}, out...))
		return nil
	}
	if req.method == http.MethodHead && len(out) == 0 {
		req.reply(http.StatusNotFound, nil)
		return nil
	}
	req.ok(out)
	return nil
}

func renderAliases(aliases map[string]aliasMeta) obj {
	names := make([]string, 0, len(aliases))
	for a := range aliases {
		names = append(names, a)
	}
	sort.Strings(names)
	out := obj{}
	for _, a := range names {
		m := obj{}
		if f := aliases[a].Filter; f != nil {
			m = append(m, kv{"filter", rawJSON(f)})
		}
		if w := aliases[a].IsWriteIndex; w != nil {
			m = append(m, kv{"is_write_index", *w})
		}
		out = append(out, kv{a, m})
	}
	return out
}
