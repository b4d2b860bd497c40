package search

import (
	"encoding/json"
	"net/http"
	"sort"
	"strings"
)

// handlePutTemplate answers PUT/POST /_index_template/<name>.
func (s *Server) handlePutTemplate(req *request) *esError {
	name := req.arg("name")
	t, err := parseTemplate(name, append(json.RawMessage(nil), req.body...))
	if err != nil {
		return err
	}
	s.mu.Lock()
	if _, exists := s.templates[name]; exists && req.boolParam("create") {
		s.mu.Unlock()
		return badRequest("index template [%s] already exists", name)
	}
	s.templates[name] = t
	s.mu.Unlock()
	if perr := s.persist(); perr != nil {
		return newError(http.StatusInternalServerError, "exception", "saving index template %s: %v", name, perr)
	}
	req.acknowledged()
	return nil
}

// handleGetTemplate answers GET/HEAD /_index_template[/<name or pattern>].
func (s *Server) handleGetTemplate(req *request) *esError {
	name := req.arg("name")
	s.mu.RLock()
	var names []string
	for n := range s.templates {
		if name == "" || name == "*" || globMatch(name, n) {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	list := make([]any, 0, len(names))
	for _, n := range names {
		var body map[string]any
		_ = json.Unmarshal(s.templates[n].body, &body)
		if _, ok := body["composed_of"]; !ok {
			body["composed_of"] = []any{}
		}
		if p, ok := body["index_patterns"].(string); ok {
			body["index_patterns"] = strings.Split(p, ",")
		}
		// settings come back as Elasticsearch normalises them: under
		// "index", values as strings
		if tm, ok := body["template"].(map[string]any); ok {
			if _, has := tm["settings"]; has {
				tm["settings"] = renderSettings(s.templates[n].settings, req.boolParam("flat_settings"))
			}
		}
		list = append(list, obj{{"name", n}, {"index_template", body}})
	}
	s.mu.RUnlock()
	if len(names) == 0 && name != "" && !strings.Contains(name, "*") {
		return newError(http.StatusNotFound, "resource_not_found_exception", "index template matching [%s] not found", name)
	}
	req.ok(obj{{"index_templates", list}})
	return nil
}

// handleDeleteTemplate answers DELETE /_index_template/<name>.
func (s *Server) handleDeleteTemplate(req *request) *esError {
	name := req.arg("name")
	s.mu.Lock()
	if _, ok := s.templates[name]; !ok {
		s.mu.Unlock()
		return newError(http.StatusNotFound, "resource_not_found_exception", "index_template [%s] missing", name)
	}
	delete(s.templates, name)
	s.mu.Unlock()
	if perr := s.persist(); perr != nil {
		return newError(http.StatusInternalServerError, "exception", "saving index templates: %v", perr)
	}
	req.acknowledged()
	return nil
}
