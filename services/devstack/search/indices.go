package search

import (
	"net/http"
	"sort"
	"strings"
)

// handleCreateIndex answers PUT /<index>.
func (s *Server) handleCreateIndex(req *request) *esError {
	spec, err := parseIndexBody(req.obj)
	if err != nil {
		return err
	}
	ix, err := s.createIndex(req.arg("index"), spec, false)
	if err != nil {
		return err
	}
	req.ok(obj{{"acknowledged", true}, {"shards_acknowledged", true}, {"index", ix.name}})
	return nil
}

// handleDeleteIndex answers DELETE /<index>[,<index>...]: concrete names
// only, as with Elasticsearch's default action.destructive_requires_name.
func (s *Server) handleDeleteIndex(req *request) *esError {
	target := req.arg("index")
	if strings.Contains(target, "*") || target == "_all" {
		return badRequest("Wildcard expressions or all indices are not allowed")
	}
	o := req.resolveOpts()
	o.noAliases = true
	o.allowNoIndices = o.ignoreUnavailable
	list, err := s.resolve(target, o)
	if err != nil {
		return err
	}
	for _, ix := range list {
		if derr := s.deleteIndex(ix); derr != nil {
			return newError(http.StatusInternalServerError, "exception", "deleting index %s: %v", ix.name, derr)
		}
	}
	req.acknowledged()
	return nil
}

// handleGetIndex answers GET /<index> (aliases, mappings, settings) and
// HEAD /<index> (exists).
func (s *Server) handleGetIndex(req *request) *esError {
	o := req.resolveOpts()
	if req.method == http.MethodHead {
		o.allowNoIndices = false
	}
	list, err := s.resolve(req.arg("index"), o)
	if err != nil {
		return err
	}
	out := obj{}
	s.mu.RLock()
	for _, ix := range list {
		out = append(out, kv{ix.name, obj{
			{"aliases", renderAliases(ix.aliases)},
			{"mappings", ix.mapping.Load().root.render(true)},
			{"settings", renderSettings(ix.settings, req.boolParam("flat_settings"))},
		}})
	}
	s.mu.RUnlock()
	req.ok(out)
	return nil
}

// handleGetSettings answers GET /<index>/_settings and /_settings.
func (s *Server) handleGetSettings(req *request) *esError {
	list, err := s.resolve(req.arg("index"), req.resolveOpts())
	if err != nil {
		return err
	}
	out := obj{}
	for _, ix := range list {
		out = append(out, kv{ix.name, obj{{"settings", renderSettings(ix.settings, req.boolParam("flat_settings"))}}})
	}
	req.ok(out)
	return nil
}

// handleGetMapping answers GET /<index>/_mapping and /_mapping.
func (s *Server) handleGetMapping(req *request) *esError {
	list, err := s.resolve(req.arg("index"), req.resolveOpts())
	if err != nil {
		return err
	}
	out := obj{}
	for _, ix := range list {
		out = append(out, kv{ix.name, obj{{"mappings", ix.mapping.Load().root.render(true)}}})
	}
	req.ok(out)
	return nil
}

// handlePutMapping answers PUT /<index>/_mapping: it adds fields to every
// index of the expression, or changes none if any conflicts.
func (s *Server) handlePutMapping(req *request) *esError {
	update, err := parseMapping(req.obj)
	if err != nil {
		return err
	}
	list, release, err := s.open(req.arg("index"), resolveOpts{})
	if err != nil {
		return err
	}
	defer release()
	// check every index first so a conflict changes nothing
	merged := make([]*mapping, len(list))
	for i, ix := range list {
		ix.wmu.Lock()
		defer ix.wmu.Unlock()
		root := cloneField(ix.mapping.Load().root)
		if err := mergeMapping(root, update, "", false); err != nil {
			return err
		}
		merged[i] = newMapping(root)
	}
	for i, ix := range list {
		ix.mapping.Store(merged[i])
	}
	if perr := s.persist(); perr != nil {
		return newError(http.StatusInternalServerError, "exception", "saving mappings: %v", perr)
	}
	req.acknowledged()
	return nil
}

// handleRefresh answers /_refresh and /<index>/_refresh: writes are
// searchable as soon as they are acknowledged, so there is nothing to do.
func (s *Server) handleRefresh(req *request) *esError {
	list, err := s.resolve(req.arg("index"), req.resolveOpts())
	if err != nil {
		return err
	}
	n := len(list)
	req.ok(obj{{"_shards", obj{{"total", 2 * n}, {"successful", n}, {"failed", 0}}}})
	return nil
}

// renderSettings nests "index.number_of_shards" into {"index": {...}}
// unless flat.
func renderSettings(settings map[string]string, flat bool) any {
	keys := make([]string, 0, len(settings))
	for k := range settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	if flat {
		out := obj{}
		for _, k := range keys {
			out = append(out, kv{k, settings[k]})
		}
		return out
	}
	root := map[string]any{}
	for _, k := range keys {
		parts := strings.Split(k, ".")
		m := root
		for _, p := range parts[:len(parts)-1] {
			sub, ok := m[p].(map[string]any)
			if !ok {
				sub = map[string]any{}
				m[p] = sub
			}
			m = sub
		}
		m[parts[len(parts)-1]] = settings[k]
	}
	return root
}
