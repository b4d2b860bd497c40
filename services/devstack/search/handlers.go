package search

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

const maxBodyBytes = 100 << 20 // Elasticsearch's default http.max_content_length

// request is one API call being served.
type request struct {
	s      *Server
	w      http.ResponseWriter
	r      *http.Request
	ctx    context.Context
	method string
	path   []string // unescaped path segments
	params url.Values
	body   []byte
	start  time.Time
	status int
}

// globalParams are accepted on every endpoint.
var globalParams = set("pretty", "human", "error_trace", "filter_path", "source", "source_content_type", "format")

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Elastic-Product", "Elasticsearch")
	req := &request{s: s, w: w, r: r, ctx: r.Context(), method: r.Method, params: r.URL.Query(), start: time.Now()}
	endpoint := "other"
	defer func() {
		took := time.Since(req.start)
		metricRequestSeconds.WithLabelValues(endpoint, strconv.Itoa(req.status)).Observe(took.Seconds())
		s.log.Debug("search server request", "method", r.Method, "path", r.URL.Path, "status", req.status, "took", took)
	}()
	for _, seg := range strings.Split(strings.Trim(r.URL.EscapedPath(), "/"), "/") {
		if seg == "" {
			continue
		}
		u, err := url.PathUnescape(seg)
		if err != nil {
			req.fail(badRequest("invalid path segment [%s]", seg))
			return
		}
		req.path = append(req.path, u)
	}
	if err := req.readBody(); err != nil {
		req.fail(err)
		return
	}
	endpoint = req.route()
}

func (req *request) readBody() *esError {
	var rd io.Reader = http.MaxBytesReader(req.w, req.r.Body, maxBodyBytes)
	if strings.EqualFold(req.r.Header.Get("Content-Encoding"), "gzip") {
		gz, err := gzip.NewReader(rd)
		if err != nil {
			return badRequest("reading gzip request body: %v", err)
		}
		defer gz.Close()
		rd = io.LimitReader(gz, maxBodyBytes+1)
	}
	b, err := io.ReadAll(rd)
	if err != nil {
		return newError(http.StatusRequestEntityTooLarge, "content_too_long_exception", "reading request body: %v", err)
	}
	if len(b) > maxBodyBytes {
		return newError(http.StatusRequestEntityTooLarge, "content_too_long_exception", "request body is larger than %d bytes", maxBodyBytes)
	}
	if len(bytes.TrimSpace(b)) == 0 {
		if src := req.params.Get("source"); src != "" {
			b = []byte(src)
		}
	}
	req.body = b
	return nil
}

// reply writes a JSON response; HEAD requests get the status only.
func (req *request) reply(status int, body any) {
	req.status = status
	h := req.w.Header()
	if strings.Contains(req.r.Header.Get("Accept"), "compatible-with=8") {
		h.Set("Content-Type", "application/vnd.elasticsearch+json;compatible-with=8")
	} else {
		h.Set("Content-Type", "application/json")
	}
	if req.method == http.MethodHead {
		h.Set("Content-Length", "0")
		req.w.WriteHeader(status)
		return
	}
	b, err := json.Marshal(body)
	if err != nil {
		req.s.log.Error("encoding search server response", "err", err)
		status = http.StatusInternalServerError
		b, _ = json.Marshal(newError(status, "exception", "encoding response: %v", err).body())
	}
	if fp := req.params.Get("filter_path"); fp != "" {
		b = filterPath(b, strings.Split(fp, ","))
	}
	if _, ok := req.params["pretty"]; ok {
		var out bytes.Buffer
		if json.Indent(&out, b, "", "  ") == nil {
			out.WriteByte('\n')
			b = out.Bytes()
		}
	}
	req.w.WriteHeader(status)
	_, _ = req.w.Write(b)
}

func (req *request) fail(e *esError) {
	if e.status >= 500 {
		req.s.log.Error("search server request failed", "method", req.method, "path", req.r.URL.Path, "err", e)
	}
	req.reply(e.status, e.body())
}

func (req *request) ok(body any) { req.reply(http.StatusOK, body) }

// checkParams refuses URL parameters the endpoint does not know, as
// Elasticsearch does.
func (req *request) checkParams(allowed ...string) *esError {
	var bad []string
	for k := range req.params {
		if globalParams[k] {
			continue
		}
		found := false
		for _, a := range allowed {
			if a == k {
				found = true
				break
			}
		}
		if !found {
			bad = append(bad, k)
		}
	}
	if len(bad) > 0 {
		sort.Strings(bad)
		return badRequest("request [%s] contains unrecognized parameter: [%s]", req.r.URL.Path, strings.Join(bad, ", "))
	}
	return nil
}

func (req *request) methodNotAllowed(allowed ...string) {
	req.status = http.StatusMethodNotAllowed
	req.reply(http.StatusMethodNotAllowed, obj{
		{"error", fmt.Sprintf("Incorrect HTTP method for uri [%s] and method [%s], allowed: [%s]", req.r.URL.RequestURI(), req.method, strings.Join(allowed, ", "))},
		{"status", http.StatusMethodNotAllowed},
	})
}

func (req *request) is(methods ...string) bool {
	for _, m := range methods {
		if req.method == m {
			return true
		}
	}
	req.methodNotAllowed(methods...)
	return false
}

func (req *request) boolParam(name string) bool {
	v, ok := req.params[name]
	if !ok {
		return false
	}
	return v[0] == "" || v[0] == "true"
}

// route dispatches the request and returns the endpoint name for metrics.
func (req *request) route() string {
	p := req.path
	s := req.s
	if len(p) == 0 {
		if req.is(http.MethodGet, http.MethodHead) {
			req.ok(s.info())
		}
		return "info"
	}
	if strings.HasPrefix(p[0], "_") && p[0] != "_all" {
		switch p[0] {
		case "_bulk":
			if len(p) == 1 && req.is(http.MethodPost, http.MethodPut) {
				s.handleBulk(req, "")
			}
			return "bulk"
		case "_search":
			if len(p) == 1 && req.is(http.MethodGet, http.MethodPost) {
				s.handleSearch(req, "")
			}
			return "search"
		case "_count":
			if len(p) == 1 && req.is(http.MethodGet, http.MethodPost) {
				s.handleCount(req, "")
			}
			return "count"
		case "_refresh":
			if len(p) == 1 && req.is(http.MethodGet, http.MethodPost) {
				s.handleRefresh(req, "")
			}
			return "refresh"
		case "_aliases":
			switch {
			case len(p) == 1 && req.method == http.MethodPost:
				s.handleAliasActions(req)
			case len(p) <= 2 && (req.method == http.MethodGet || req.method == http.MethodHead):
				s.handleGetAlias(req, "", strings.Join(p[1:], ""))
			default:
				req.methodNotAllowed(http.MethodPost, http.MethodGet)
			}
			return "aliases"
		case "_alias":
			if len(p) <= 2 && req.is(http.MethodGet, http.MethodHead) {
				s.handleGetAlias(req, "", strings.Join(p[1:], ""))
			}
			return "aliases"
		case "_index_template":
			s.handleTemplate(req, p[1:])
			return "index_template"
		case "_mapping":
			if len(p) == 1 && req.is(http.MethodGet) {
				s.handleGetMapping(req, "")
			}
			return "mapping"
		case "_cluster":
			if len(p) >= 2 && p[1] == "health" && req.is(http.MethodGet) {
				s.handleHealth(req)
				return "health"
			}
		case "_cat":
			if len(p) >= 2 && (p[1] == "indices" || p[1] == "aliases") && req.is(http.MethodGet) {
				s.handleCat(req, p[1], strings.Join(p[2:], ""))
				return "cat"
			}
		case "_template":
			req.fail(unsupported("illegal_argument_exception", "legacy index templates [/_template]; use [/_index_template]"))
			return "other"
		}
		req.fail(unsupported("illegal_argument_exception", fmt.Sprintf("endpoint [%s %s]", req.method, req.r.URL.Path)))
		return "other"
	}
	target := p[0]
	if len(p) == 1 {
		switch req.method {
		case http.MethodPut:
			s.handleCreateIndex(req, target)
		case http.MethodDelete:
			s.handleDeleteIndex(req, target)
		case http.MethodHead, http.MethodGet:
			s.handleGetIndex(req, target)
		default:
			req.methodNotAllowed(http.MethodPut, http.MethodDelete, http.MethodHead, http.MethodGet)
		}
		return "index"
	}
	switch p[1] {
	case "_bulk":
		if len(p) == 2 && req.is(http.MethodPost, http.MethodPut) {
			s.handleBulk(req, target)
		}
		return "bulk"
	case "_search":
		if len(p) == 2 && req.is(http.MethodGet, http.MethodPost) {
			s.handleSearch(req, target)
		}
		return "search"
	case "_count":
		if len(p) == 2 && req.is(http.MethodGet, http.MethodPost) {
			s.handleCount(req, target)
		}
		return "count"
	case "_refresh":
		if len(p) == 2 && req.is(http.MethodGet, http.MethodPost) {
			s.handleRefresh(req, target)
		}
		return "refresh"
	case "_mapping":
		switch {
		case len(p) == 2 && req.method == http.MethodGet:
			s.handleGetMapping(req, target)
		case len(p) == 2 && (req.method == http.MethodPut || req.method == http.MethodPost):
			s.handlePutMapping(req, target)
		default:
			req.methodNotAllowed(http.MethodGet, http.MethodPut)
		}
		return "mapping"
	case "_settings":
		if len(p) == 2 && req.is(http.MethodGet) {
			s.handleGetSettings(req, target)
		}
		return "settings"
	case "_alias", "_aliases":
		name := strings.Join(p[2:], "")
		switch req.method {
		case http.MethodGet, http.MethodHead:
			s.handleGetAlias(req, target, name)
		case http.MethodPut, http.MethodPost, http.MethodDelete:
			if name == "" {
				req.fail(badRequest("alias name is missing"))
				break
			}
			s.handleIndexAlias(req, target, name)
		default:
			req.methodNotAllowed(http.MethodGet, http.MethodPut, http.MethodDelete)
		}
		return "aliases"
	case "_doc", "_create":
		switch {
		case len(p) == 2 && p[1] == "_doc" && req.method == http.MethodPost:
			s.handleWriteDoc(req, target, "", "create")
		case len(p) == 3 && p[1] == "_create" && (req.method == http.MethodPut || req.method == http.MethodPost):
			s.handleWriteDoc(req, target, p[2], "create")
		case len(p) == 3 && p[1] == "_doc" && (req.method == http.MethodPut || req.method == http.MethodPost):
			op := "index"
			if req.params.Get("op_type") == "create" {
				op = "create"
			}
			s.handleWriteDoc(req, target, p[2], op)
		case len(p) == 3 && p[1] == "_doc" && req.method == http.MethodDelete:
			s.handleWriteDoc(req, target, p[2], "delete")
		case len(p) == 3 && p[1] == "_doc" && (req.method == http.MethodGet || req.method == http.MethodHead):
			s.handleGetDoc(req, target, p[2], false)
		default:
			req.methodNotAllowed(http.MethodGet, http.MethodHead, http.MethodPut, http.MethodPost, http.MethodDelete)
		}
		return "doc"
	case "_source":
		if len(p) == 3 && req.is(http.MethodGet, http.MethodHead) {
			s.handleGetDoc(req, target, p[2], true)
		}
		return "doc"
	}
	req.fail(unsupported("illegal_argument_exception", fmt.Sprintf("endpoint [%s %s]", req.method, req.r.URL.Path)))
	return "other"
}

func (s *Server) info() obj {
	host, _ := os.Hostname()
	return obj{
		{"name", host},
		{"cluster_name", "chapper"},
		{"cluster_uuid", s.clusterUUID},
		{"version", obj{
			{"number", Version},
			{"build_flavor", "default"},
			{"build_type", "chapper-embedded"},
			{"build_hash", "chapper"},
			{"build_date", "2024-08-05T10:05:34.233336849Z"},
			{"build_snapshot", false},
			{"lucene_version", "9.11.1"},
			{"minimum_wire_compatibility_version", "7.17.0"},
			{"minimum_index_compatibility_version", "7.0.0"},
		}},
		{"tagline", "You Know, for Search"},
	}
}

func (req *request) resolveOpts() resolveOpts {
	o := resolveOpts{allowNoIndices: true}
	if v := req.params.Get("ignore_unavailable"); v == "true" {
		o.ignoreUnavailable = true
	}
	if v := req.params.Get("allow_no_indices"); v == "false" {
		o.allowNoIndices = false
	}
	return o
}

// --- writes -----------------------------------------------------------------

var writeParams = []string{"refresh", "timeout", "wait_for_active_shards", "require_alias", "op_type", "require_data_stream", "list_executed_pipelines", "master_timeout"}

func (s *Server) handleBulk(req *request, target string) {
	if err := req.checkParams(append(writeParams, "pipeline", "routing", "_source", "_source_includes", "_source_excludes")...); err != nil {
		req.fail(err)
		return
	}
	for _, p := range []string{"pipeline", "routing"} {
		if req.params.Get(p) != "" {
			req.fail(unsupported("illegal_argument_exception", "bulk URL parameter ["+p+"]"))
			return
		}
	}
	ops, err := parseBulk(req.body, target)
	if err != nil {
		req.fail(err)
		return
	}
	if req.boolParam("require_alias") {
		for _, op := range ops {
			op.requireAlias = true
		}
	}
	s.execWrites(ops)
	req.ok(bulkResponse(ops, time.Since(req.start)))
}

func (s *Server) handleWriteDoc(req *request, target, id, action string) {
	if err := req.checkParams(append(writeParams, "if_seq_no", "if_primary_term", "version", "version_type", "routing", "pipeline")...); err != nil {
		req.fail(err)
		return
	}
	for _, p := range []string{"if_seq_no", "if_primary_term", "version", "version_type", "routing", "pipeline"} {
		if req.params.Get(p) != "" {
			req.fail(unsupported("illegal_argument_exception", "document URL parameter ["+p+"]"))
			return
		}
	}
	op := &writeOp{action: action, indexName: target, id: id, requireAlias: req.boolParam("require_alias")}
	if action != "delete" {
		op.source = bytes.TrimSpace(req.body)
		if len(op.source) == 0 {
			req.fail(newError(http.StatusBadRequest, "action_request_validation_exception", "Validation Failed: 1: source is missing;"))
			return
		}
	}
	s.execWrites([]*writeOp{op})
	if op.err != nil {
		if op.ix != nil && op.err.status == http.StatusConflict {
			op.err.extra = append(op.err.extra, kv{"index_uuid", op.ix.uuid}, kv{"shard", "0"}, kv{"index", op.ix.name})
		}
		req.fail(op.err)
		return
	}
	item := op.item()
	body := obj{}
	for _, m := range item {
		if m.K != "status" {
			body = append(body, m)
		}
	}
	req.reply(op.status, body)
}

func (s *Server) handleGetDoc(req *request, target, id string, sourceOnly bool) {
	if err := req.checkParams("_source", "_source_includes", "_source_excludes", "realtime", "refresh", "preference", "stored_fields", "routing", "version", "version_type"); err != nil {
		req.fail(err)
		return
	}
	if req.params.Get("stored_fields") != "" || req.params.Get("routing") != "" {
		req.fail(unsupported("illegal_argument_exception", "get URL parameters [stored_fields] and [routing]"))
		return
	}
	list, err := s.resolve(target, resolveOpts{})
	if err != nil {
		req.fail(err)
		return
	}
	if len(list) != 1 {
		names := make([]string, len(list))
		for i, ix := range list {
			names[i] = ix.name
		}
		req.fail(badRequest("alias [%s] has more than one index associated with it [%s], can't execute a single index op", target, strings.Join(names, ", ")))
		return
	}
	release, err := acquire(list)
	if err != nil {
		req.fail(err)
		return
	}
	defer release()
	ix := list[0]
	r, rerr := ix.ii.Reader()
	if rerr != nil {
		req.fail(newError(http.StatusInternalServerError, "exception", "reading index: %v", rerr))
		return
	}
	defer r.Close()
	doc, rerr := r.Document(id)
	if rerr != nil {
		req.fail(newError(http.StatusInternalServerError, "exception", "loading document: %v", rerr))
		return
	}
	if doc == nil {
		if sourceOnly {
			req.fail(newError(http.StatusNotFound, "resource_not_found_exception", "Document not found [%s]/[%s]", ix.name, id))
			return
		}
		req.reply(http.StatusNotFound, obj{{"_index", ix.name}, {"_id", id}, {"found", false}})
		return
	}
	var src []byte
	var version, seq uint64
	doc.VisitFields(func(f indexField) {
		switch f.Name() {
		case fieldSource:
			src = f.Value()
		case fieldVersion:
			if v := f.Value(); len(v) >= dvLen {
				version = uint64(decodeDV(v))
			}
		case fieldSeqNo:
			seq = beUint64(f.Value())
		}
	})
	sf := sourceFilter{}
	if v, ok := req.params["_source"]; ok {
		switch v[0] {
		case "false":
			sf.disabled = true
		case "true", "":
		default:
			sf.includes = strings.Split(v[0], ",")
		}
	}
	if v := req.params.Get("_source_includes"); v != "" {
		sf.includes = strings.Split(v, ",")
	}
	if v := req.params.Get("_source_excludes"); v != "" {
		sf.excludes = strings.Split(v, ",")
	}
	filtered, ferr := sf.apply(src)
	if ferr != nil {
		req.fail(ferr)
		return
	}
	if sourceOnly {
		req.ok(rawJSON(filtered))
		return
	}
	out := obj{{"_index", ix.name}, {"_id", id}, {"_version", version}, {"_seq_no", seq}, {"_primary_term", 1}, {"found", true}}
	if !sf.disabled {
		out = append(out, kv{"_source", rawJSON(filtered)})
	}
	req.ok(out)
}

// --- search -----------------------------------------------------------------

func (s *Server) handleSearch(req *request, target string) {
	if err := req.checkParamSet(searchParams); err != nil {
		req.fail(err)
		return
	}
	body, err := decodeObject(req.body)
	if err != nil {
		req.fail(err)
		return
	}
	sr, err := parseSearchRequest(body, req.params)
	if err != nil {
		req.fail(err)
		return
	}
	e, done, err := s.runSearch(req, target, sr)
	if err != nil {
		req.fail(err)
		return
	}
	defer done()
	out, err := e.respond(time.Since(req.start))
	if err != nil {
		req.fail(err)
		return
	}
	req.ok(out)
}

// runSearch resolves target, holds its indices open and executes sr over
// them, for _search and _count alike. The caller calls done once it has
// read the results.
func (s *Server) runSearch(req *request, target string, sr *searchRequest) (e *searchExec, done func(), err *esError) {
	list, err := s.resolve(target, req.resolveOpts())
	if err != nil {
		return nil, nil, err
	}
	release, err := acquire(list)
	if err != nil {
		return nil, nil, err
	}
	e = &searchExec{s: s, req: sr, indices: list, now: time.Now()}
	done = func() {
		e.close()
		release()
	}
	if err := e.prepare(); err != nil {
		done()
		return nil, nil, err
	}
	if err := e.execute(req.ctx); err != nil {
		done()
		return nil, nil, err
	}
	return e, done, nil
}

func (req *request) checkParamSet(allowed map[string]bool) *esError {
	names := make([]string, 0, len(allowed))
	for k := range allowed {
		names = append(names, k)
	}
	return req.checkParams(names...)
}

func (s *Server) handleCount(req *request, target string) {
	if err := req.checkParams("ignore_unavailable", "allow_no_indices", "expand_wildcards", "q", "routing", "preference", "min_score", "terminate_after", "analyzer", "default_operator", "df", "lenient", "ignore_throttled"); err != nil {
		req.fail(err)
		return
	}
	for _, p := range []string{"q", "routing", "min_score", "terminate_after"} {
		if req.params.Get(p) != "" {
			req.fail(unsupported("illegal_argument_exception", "_count URL parameter ["+p+"]"))
			return
		}
	}
	body, err := decodeObject(req.body)
	if err != nil {
		req.fail(err)
		return
	}
	sr := &searchRequest{query: qMatchAll{boost: 1}, sort: []*sortSpec{{field: "_doc"}}, trackTotal: -1}
	for k, v := range body {
		if k != "query" {
			req.fail(parsingError("request does not support [%s]", k))
			return
		}
		if sr.query, err = parseQuery(v); err != nil {
			req.fail(err)
			return
		}
	}
	e, done, err := s.runSearch(req, target, sr)
	if err != nil {
		req.fail(err)
		return
	}
	defer done()
	var total int64
	for _, run := range e.runs {
		total += run.total
	}
	n := len(e.indices)
	req.ok(obj{{"count", total}, {"_shards", obj{{"total", n}, {"successful", n}, {"skipped", 0}, {"failed", 0}}}})
}

func (s *Server) handleRefresh(req *request, target string) {
	if err := req.checkParams("ignore_unavailable", "allow_no_indices", "expand_wildcards"); err != nil {
		req.fail(err)
		return
	}
	list, err := s.resolve(target, req.resolveOpts())
	if err != nil {
		req.fail(err)
		return
	}
	// writes are searchable as soon as they are acknowledged
	n := len(list)
	req.ok(obj{{"_shards", obj{{"total", 2 * n}, {"successful", n}, {"failed", 0}}}})
}

// --- indices ----------------------------------------------------------------

func (s *Server) handleCreateIndex(req *request, name string) {
	if err := req.checkParams("wait_for_active_shards", "timeout", "master_timeout"); err != nil {
		req.fail(err)
		return
	}
	body, err := decodeObject(req.body)
	if err != nil {
		req.fail(err)
		return
	}
	spec, err := parseIndexBody(body)
	if err != nil {
		req.fail(err)
		return
	}
	ix, err := s.createIndex(name, spec, false)
	if err != nil {
		req.fail(err)
		return
	}
	req.ok(obj{{"acknowledged", true}, {"shards_acknowledged", true}, {"index", ix.name}})
}

func (s *Server) handleDeleteIndex(req *request, target string) {
	if err := req.checkParams("ignore_unavailable", "allow_no_indices", "expand_wildcards", "timeout", "master_timeout"); err != nil {
		req.fail(err)
		return
	}
	if strings.Contains(target, "*") || target == "_all" {
		req.fail(badRequest("Wildcard expressions or all indices are not allowed"))
		return
	}
	o := req.resolveOpts()
	o.noAliases = true
	o.allowNoIndices = o.ignoreUnavailable
	list, err := s.resolve(target, o)
	if err != nil {
		req.fail(err)
		return
	}
	for _, ix := range list {
		if derr := s.deleteIndex(ix); derr != nil {
			req.fail(newError(http.StatusInternalServerError, "exception", "%v", derr))
			return
		}
	}
	req.ok(obj{{"acknowledged", true}})
}

func (s *Server) handleGetIndex(req *request, target string) {
	if err := req.checkParams("ignore_unavailable", "allow_no_indices", "expand_wildcards", "flat_settings", "include_defaults", "local", "master_timeout", "features"); err != nil {
		req.fail(err)
		return
	}
	o := req.resolveOpts()
	if req.method == http.MethodHead {
		o.allowNoIndices = false
	}
	list, err := s.resolve(target, o)
	if err != nil {
		if req.method == http.MethodHead {
			req.reply(err.status, nil)
			return
		}
		req.fail(err)
		return
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
		if w := aliases[a].IsWriteIndex; w != nil {
			m = append(m, kv{"is_write_index", *w})
		}
		out = append(out, kv{a, m})
	}
	return out
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

func (s *Server) handleGetSettings(req *request, target string) {
	if err := req.checkParams("ignore_unavailable", "allow_no_indices", "expand_wildcards", "flat_settings", "include_defaults", "local", "master_timeout"); err != nil {
		req.fail(err)
		return
	}
	list, err := s.resolve(target, req.resolveOpts())
	if err != nil {
		req.fail(err)
		return
	}
	out := obj{}
	for _, ix := range list {
		out = append(out, kv{ix.name, obj{{"settings", renderSettings(ix.settings, req.boolParam("flat_settings"))}}})
	}
	req.ok(out)
}

func (s *Server) handleGetMapping(req *request, target string) {
	if err := req.checkParams("ignore_unavailable", "allow_no_indices", "expand_wildcards", "local", "master_timeout"); err != nil {
		req.fail(err)
		return
	}
	list, err := s.resolve(target, req.resolveOpts())
	if err != nil {
		req.fail(err)
		return
	}
	out := obj{}
	for _, ix := range list {
		out = append(out, kv{ix.name, obj{{"mappings", ix.mapping.Load().root.render(true)}}})
	}
	req.ok(out)
}

func (s *Server) handlePutMapping(req *request, target string) {
	if err := req.checkParams("ignore_unavailable", "allow_no_indices", "expand_wildcards", "timeout", "master_timeout", "write_index_only"); err != nil {
		req.fail(err)
		return
	}
	body, err := decodeObject(req.body)
	if err != nil {
		req.fail(err)
		return
	}
	update, err := parseMapping(body)
	if err != nil {
		req.fail(err)
		return
	}
	list, err := s.resolve(target, resolveOpts{})
	if err != nil {
		req.fail(err)
		return
	}
	release, err := acquire(list)
	if err != nil {
		req.fail(err)
		return
	}
	defer release()
	// check every index first so a conflict changes nothing
	merged := make([]*mapping, len(list))
	for i, ix := range list {
		ix.wmu.Lock()
		defer ix.wmu.Unlock()
		root := cloneField(ix.mapping.Load().root)
		if err := mergeMapping(root, update, "", false); err != nil {
			req.fail(err)
			return
		}
		merged[i] = newMapping(root)
	}
	for i, ix := range list {
		ix.mapping.Store(merged[i])
	}
	if perr := s.persist(); perr != nil {
		req.fail(newError(http.StatusInternalServerError, "exception", "%v", perr))
		return
	}
	req.ok(obj{{"acknowledged", true}})
}

// --- aliases ----------------------------------------------------------------

type aliasAction struct {
	add      bool
	indices  []string
	aliases  []string
	meta     aliasMeta
	mustExit bool
}

func (s *Server) handleAliasActions(req *request) {
	if err := req.checkParams("timeout", "master_timeout"); err != nil {
		req.fail(err)
		return
	}
	body, err := decodeObject(req.body)
	if err != nil {
		req.fail(err)
		return
	}
	rawActions, ok := body["actions"].([]any)
	if !ok || len(body) != 1 {
		req.fail(newError(http.StatusBadRequest, "action_request_validation_exception", "Validation Failed: 1: no actions specified;"))
		return
	}
	var actions []aliasAction
	for _, ra := range rawActions {
		m, ok := ra.(map[string]any)
		if !ok || len(m) != 1 {
			req.fail(parsingError("[actions] entries must be objects with one action"))
			return
		}
		for typ, def := range m {
			a, err := parseAliasAction(typ, def)
			if err != nil {
				req.fail(err)
				return
			}
			actions = append(actions, a)
		}
	}
	if err := s.applyAliasActions(actions); err != nil {
		req.fail(err)
		return
	}
	req.ok(obj{{"acknowledged", true}, {"errors", false}})
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
		case "must_exist":
			a.mustExit, _ = asBool(v)
		case "is_hidden":
			if b, _ := asBool(v); b {
				return a, unsupported("illegal_argument_exception", "alias parameter [is_hidden: true]")
			}
		default:
			return a, unsupported("illegal_argument_exception", "alias action parameter ["+k+"]", "index", "indices", "alias", "aliases", "is_write_index", "must_exist")
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

func (s *Server) handleIndexAlias(req *request, target, name string) {
	if err := req.checkParams("timeout", "master_timeout"); err != nil {
		req.fail(err)
		return
	}
	a := aliasAction{add: req.method != http.MethodDelete, indices: strings.Split(target, ","), aliases: strings.Split(name, ",")}
	if a.add {
		body, err := decodeObject(req.body)
		if err != nil {
			req.fail(err)
			return
		}
		for k, v := range body {
			if k != "is_write_index" {
				req.fail(unsupported("illegal_argument_exception", "alias parameter ["+k+"]", "is_write_index"))
				return
			}
			b, ok := asBool(v)
			if !ok {
				req.fail(parsingError("[is_write_index] must be a boolean"))
				return
			}
			a.meta.IsWriteIndex = &b
		}
	}
	if err := s.applyAliasActions([]aliasAction{a}); err != nil {
		req.fail(err)
		return
	}
	req.ok(obj{{"acknowledged", true}})
}

func (s *Server) handleGetAlias(req *request, target, names string) {
	if err := req.checkParams("ignore_unavailable", "allow_no_indices", "expand_wildcards", "local", "master_timeout"); err != nil {
		req.fail(err)
		return
	}
	list, err := s.resolve(target, req.resolveOpts())
	if err != nil {
		if req.method == http.MethodHead {
			req.reply(err.status, nil)
			return
		}
		req.fail(err)
		return
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
		return
	}
	if req.method == http.MethodHead && len(out) == 0 {
		req.reply(http.StatusNotFound, nil)
		return
	}
	req.ok(out)
}

// --- templates --------------------------------------------------------------

func (s *Server) handleTemplate(req *request, rest []string) {
	name := strings.Join(rest, "")
	switch req.method {
	case http.MethodPut, http.MethodPost:
		if err := req.checkParams("create", "master_timeout", "cause"); err != nil {
			req.fail(err)
			return
		}
		if name == "" {
			req.methodNotAllowed(http.MethodGet)
			return
		}
		t, err := parseTemplate(name, append(json.RawMessage(nil), req.body...))
		if err != nil {
			req.fail(err)
			return
		}
		s.mu.Lock()
		if _, exists := s.templates[name]; exists && req.boolParam("create") {
			s.mu.Unlock()
			req.fail(badRequest("index template [%s] already exists", name))
			return
		}
		s.templates[name] = t
		s.mu.Unlock()
		if perr := s.persist(); perr != nil {
			req.fail(newError(http.StatusInternalServerError, "exception", "%v", perr))
			return
		}
		req.ok(obj{{"acknowledged", true}})
	case http.MethodGet, http.MethodHead:
		if err := req.checkParams("flat_settings", "include_defaults", "local", "master_timeout"); err != nil {
			req.fail(err)
			return
		}
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
			list = append(list, obj{{"name", n}, {"index_template", body}})
		}
		s.mu.RUnlock()
		if len(names) == 0 && name != "" && !strings.Contains(name, "*") {
			req.fail(newError(http.StatusNotFound, "resource_not_found_exception", "index template matching [%s] not found", name))
			return
		}
		req.ok(obj{{"index_templates", list}})
	case http.MethodDelete:
		if err := req.checkParams("master_timeout", "timeout"); err != nil {
			req.fail(err)
			return
		}
		s.mu.Lock()
		if _, ok := s.templates[name]; !ok {
			s.mu.Unlock()
			req.fail(newError(http.StatusNotFound, "resource_not_found_exception", "index_template [%s] missing", name))
			return
		}
		delete(s.templates, name)
		s.mu.Unlock()
		if perr := s.persist(); perr != nil {
			req.fail(newError(http.StatusInternalServerError, "exception", "%v", perr))
			return
		}
		req.ok(obj{{"acknowledged", true}})
	default:
		req.methodNotAllowed(http.MethodGet, http.MethodPut, http.MethodDelete, http.MethodHead)
	}
}

// --- cluster ----------------------------------------------------------------

func (s *Server) handleHealth(req *request) {
	s.mu.RLock()
	n := len(s.indices)
	s.mu.RUnlock()
	req.ok(obj{
		{"cluster_name", "chapper"}, {"status", "green"}, {"timed_out", false},
		{"number_of_nodes", 1}, {"number_of_data_nodes", 1},
		{"active_primary_shards", n}, {"active_shards", n}, {"relocating_shards", 0},
		{"initializing_shards", 0}, {"unassigned_shards", 0}, {"delayed_unassigned_shards", 0},
		{"number_of_pending_tasks", 0}, {"number_of_in_flight_fetch", 0},
		{"task_max_waiting_in_queue_millis", 0}, {"active_shards_percent_as_number", 100.0},
	})
}

func (s *Server) handleCat(req *request, what, target string) {
	asJSON := req.params.Get("format") == "json"
	var header []string
	var rows [][]string
	switch what {
	case "indices":
		list, err := s.resolve(target, resolveOpts{allowNoIndices: true})
		if err != nil {
			req.fail(err)
			return
		}
		release, err := acquire(list)
		if err != nil {
			req.fail(err)
			return
		}
		header = []string{"health", "status", "index", "uuid", "pri", "rep", "docs.count", "docs.deleted", "store.size", "pri.store.size"}
		for _, ix := range list {
			var count uint64
			if r, rerr := ix.ii.Reader(); rerr == nil {
				count, _ = r.DocCount()
				r.Close()
			}
			size := dirSize(ix.dir)
			rows = append(rows, []string{"green", "open", ix.name, ix.uuid, "1", "0", strconv.FormatUint(count, 10), "0", humanBytes(size), humanBytes(size)})
		}
		release()
	case "aliases":
		header = []string{"alias", "index", "filter", "routing.index", "routing.search", "is_write_index"}
		s.mu.RLock()
		for _, ix := range s.indices {
			for a, m := range ix.aliases {
				if target != "" && !globMatch(target, a) {
					continue
				}
				w := "-"
				if m.IsWriteIndex != nil {
					w = strconv.FormatBool(*m.IsWriteIndex)
				}
				rows = append(rows, []string{a, ix.name, "-", "-", "-", w})
			}
		}
		s.mu.RUnlock()
		sort.Slice(rows, func(i, j int) bool { return rows[i][0]+rows[i][1] < rows[j][0]+rows[j][1] })
	}
	if asJSON {
		out := make([]any, 0, len(rows))
		for _, r := range rows {
			o := obj{}
			for i, h := range header {
				o = append(o, kv{h, r[i]})
			}
			out = append(out, o)
		}
		req.ok(out)
		return
	}
	var b strings.Builder
	if _, ok := req.params["v"]; ok {
		rows = append([][]string{header}, rows...)
	}
	widths := make([]int, len(header))
	for _, r := range rows {
		for i, c := range r {
			widths[i] = max(widths[i], len(c))
		}
	}
	for _, r := range rows {
		for i, c := range r {
			if i > 0 {
				b.WriteByte(' ')
			}
			b.WriteString(c + strings.Repeat(" ", widths[i]-len(c)))
		}
		b.WriteByte('\n')
	}
	req.status = http.StatusOK
	req.w.Header().Set("Content-Type", "text/plain; charset=UTF-8")
	req.w.WriteHeader(http.StatusOK)
	_, _ = io.WriteString(req.w, b.String())
}

func dirSize(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if info, ierr := d.Info(); ierr == nil {
				n += info.Size()
			}
		}
		return nil
	})
	return n
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1fgb", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1fmb", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1fkb", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%db", n)
}

// filterPath applies Elasticsearch's filter_path response filtering:
// dotted paths where * matches one level, ** any number, and a leading -
// excludes.
func filterPath(b []byte, paths []string) []byte {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if dec.Decode(&v) != nil {
		return b
	}
	var inc, exc [][]string
	for _, p := range paths {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		if strings.HasPrefix(p, "-") {
			exc = append(exc, strings.Split(p[1:], "."))
		} else {
			inc = append(inc, strings.Split(p, "."))
		}
	}
	if len(inc) > 0 {
		v = includePaths(v, inc)
		if v == nil {
			v = map[string]any{}
		}
	}
	for _, e := range exc {
		v = excludePath(v, e)
	}
	out, err := json.Marshal(v)
	if err != nil {
		return b
	}
	return out
}

func includePaths(v any, paths [][]string) any {
	switch x := v.(type) {
	case []any:
		var out []any
		for _, e := range x {
			if f := includePaths(e, paths); f != nil {
				out = append(out, f)
			}
		}
		if out == nil {
			return nil
		}
		return out
	case map[string]any:
		out := map[string]any{}
		for k, e := range x {
			var rest [][]string
			whole := false
			for _, p := range paths {
				if len(p) == 0 {
					continue
				}
				switch {
				case p[0] == "**":
					if len(p) == 1 {
						whole = true
					}
					rest = append(rest, p, p[1:])
					if len(p) > 1 && globMatch(p[1], k) {
						if len(p) == 2 {
							whole = true
						} else {
							rest = append(rest, p[2:])
						}
					}
				case globMatch(p[0], k):
					if len(p) == 1 {
						whole = true
					} else {
						rest = append(rest, p[1:])
					}
				}
			}
			if whole {
				out[k] = e
				continue
			}
			if len(rest) > 0 {
				if f := includePaths(e, rest); f != nil {
					out[k] = f
				}
			}
		}
		if len(out) == 0 {
			return nil
		}
		return out
	}
	return nil
}

func excludePath(v any, p []string) any {
	switch x := v.(type) {
	case []any:
		for i, e := range x {
			x[i] = excludePath(e, p)
		}
		return x
	case map[string]any:
		for k, e := range x {
			if globMatch(p[0], k) {
				if len(p) == 1 {
					delete(x, k)
				} else {
					x[k] = excludePath(e, p[1:])
				}
			}
		}
		return x
	}
	return v
}
