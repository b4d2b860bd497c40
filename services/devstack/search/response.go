package search

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
)

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

// acknowledged answers {"acknowledged": true}.
func (req *request) acknowledged() { req.ok(obj{{"acknowledged", true}}) }

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
