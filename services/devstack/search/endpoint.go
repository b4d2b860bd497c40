package search

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// An endpoint is one call of the REST API: where it is routed, which URL
// parameters it takes, whether its body is a JSON object, and the handler.
// serveHTTP does everything common to all endpoints before the handler
// runs (routing, 405, unknown and refused parameters, body decoding), so a
// handler holds only the call's own logic. The table is in routes.go.
type endpoint struct {
	// name labels the endpoint in metrics and logs.
	name string
	// methods are the HTTP methods routed here, space-separated; "" routes
	// every method (for endpoints that only refuse).
	methods string
	// paths are the path patterns: literal segments and {name} captures.
	// An {index} capture takes an index expression: a segment that does
	// not start with "_", or "_all".
	paths []string
	// params are the URL parameters accepted besides globalParams; any
	// other one answers 400 as Elasticsearch does.
	params []string
	// refuse are parameters Elasticsearch takes that the server does not
	// honour: with a non-empty value the call answers 400 naming them.
	refuse []string
	// object decodes the body as a JSON object into request.obj (an
	// empty body is an empty object).
	object bool
	// handle serves the call. A returned error is the response; on
	// success the handler has replied itself.
	handle func(s *Server, req *request) *esError
}

const maxBodyBytes = 100 << 20 // Elasticsearch's default http.max_content_length

// globalParams are accepted on every endpoint.
var globalParams = set("pretty", "human", "error_trace", "filter_path", "source", "source_content_type", "format")

// request is one API call being served.
type request struct {
	s      *Server
	w      http.ResponseWriter
	r      *http.Request
	ctx    context.Context
	method string
	path   []string // unescaped path segments
	vars   map[string]string
	params url.Values
	body   []byte
	obj    map[string]any // the decoded body, for endpoints with object set
	start  time.Time
	status int
}

// arg returns the path segment captured as {name} ("" if the route has none).
func (req *request) arg(name string) string { return req.vars[name] }

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Elastic-Product", "Elasticsearch")
	req := &request{s: s, w: w, r: r, ctx: r.Context(), method: r.Method, params: r.URL.Query(), start: time.Now()}
	name := "other"
	defer func() {
		took := time.Since(req.start)
		metricRequestSeconds.WithLabelValues(name, strconv.Itoa(req.status)).Observe(took.Seconds())
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
	ep, allowed := route(req)
	if ep == nil {
		if len(allowed) > 0 {
			req.methodNotAllowed(allowed...)
			return
		}
		req.fail(unsupported("illegal_argument_exception", fmt.Sprintf("endpoint [%s %s]", req.method, r.URL.Path)))
		return
	}
	name = ep.name
	if err := req.prepare(ep); err != nil {
		req.fail(err)
		return
	}
	if err := ep.handle(s, req); err != nil {
		req.fail(err)
	}
}

// route finds the endpoint for the request's method and path and fills in
// req.vars. With no endpoint for the method it returns the methods the
// path has.
func route(req *request) (*endpoint, []string) {
	var allowed []string
	for _, ep := range routes {
		for _, p := range ep.paths {
			vars, ok := matchPath(p, req.path)
			if !ok {
				continue
			}
			if ep.methods == "" || strings.Contains(" "+ep.methods+" ", " "+req.method+" ") {
				req.vars = vars
				return ep, nil
			}
			for _, m := range strings.Fields(ep.methods) {
				if !contains(allowed, m) {
					allowed = append(allowed, m)
				}
			}
		}
	}
	return nil, allowed
}

func matchPath(pattern string, segs []string) (map[string]string, bool) {
	parts := strings.FieldsFunc(pattern, func(r rune) bool { return r == '/' })
	if len(parts) != len(segs) {
		return nil, false
	}
	var vars map[string]string
	for i, p := range parts {
		seg := segs[i]
		if !strings.HasPrefix(p, "{") {
			if p != seg {
				return nil, false
			}
			continue
		}
		name := strings.Trim(p, "{}")
		if name == "index" && strings.HasPrefix(seg, "_") && seg != "_all" {
			return nil, false
		}
		if vars == nil {
			vars = map[string]string{}
		}
		vars[name] = seg
	}
	return vars, true
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// prepare does the endpoint's common checks: URL parameters, refused
// parameters, reading and decoding the body.
func (req *request) prepare(ep *endpoint) *esError {
	if err := req.checkParams(slices.Concat(ep.params, ep.refuse)...); err != nil {
		return err
	}
	for _, p := range ep.refuse {
		if req.params.Get(p) != "" {
			return unsupported("illegal_argument_exception", fmt.Sprintf("URL parameter [%s] of %s", p, ep.name))
		}
	}
	if err := req.readBody(); err != nil {
		return err
	}
	if ep.object {
		o, err := decodeObject(req.body)
		if err != nil {
			return err
		}
		req.obj = o
	}
	return nil
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
	var buf bytes.Buffer
	if n := req.r.ContentLength; n > 0 && n <= maxBodyBytes {
		buf.Grow(int(n) + bytes.MinRead)
	}
	if _, err := buf.ReadFrom(rd); err != nil {
		return newError(http.StatusRequestEntityTooLarge, "content_too_long_exception", "reading request body: %v", err)
	}
	b := buf.Bytes()
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

// checkParams refuses URL parameters the endpoint does not know, as
// Elasticsearch does.
func (req *request) checkParams(allowed ...string) *esError {
	var bad []string
	for k := range req.params {
		if !globalParams[k] && !contains(allowed, k) {
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
	req.reply(http.StatusMethodNotAllowed, obj{
		{"error", fmt.Sprintf("Incorrect HTTP method for uri [%s] and method [%s], allowed: [%s]", req.r.URL.RequestURI(), req.method, strings.Join(allowed, ", "))},
		{"status", http.StatusMethodNotAllowed},
	})
}

// boolParam reports whether the URL parameter is set to true ("" or
// "true").
func (req *request) boolParam(name string) bool {
	v, ok := req.params[name]
	if !ok {
		return false
	}
	return v[0] == "" || v[0] == "true"
}

// refreshParam reads ?refresh: true ("" or "true") forces a refresh,
// which the response reports as forced_refresh; false and wait_for do not
// (every write is searchable once acknowledged either way).
func (req *request) refreshParam() (bool, *esError) {
	v, ok := req.params["refresh"]
	if !ok {
		return false, nil
	}
	switch v[0] {
	case "", "true":
		return true, nil
	case "false", "wait_for":
		return false, nil
	}
	return false, badRequest("Unknown value for refresh: [%s].", v[0])
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

// resolveParams are the URL parameters of endpoints that take an index
// expression.
var resolveParams = []string{"ignore_unavailable", "allow_no_indices", "expand_wildcards"}

// with returns list followed by more, without changing list.
func with(list []string, more ...string) []string {
	return append(append([]string(nil), list...), more...)
}
