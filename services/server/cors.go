package server

import (
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// corsPolicy is the -grpc.cors-origins allow-list. Entries are exact
// origins (scheme://host[:port]), origins with any port
// (scheme://host:*), or * (any origin, never with credentials).
type corsPolicy struct {
	any     bool
	exact   map[string]bool
	anyPort []string // "scheme://host:" prefixes
}

// parseCORS parses a comma-separated allow-list; empty allows no origin.
func parseCORS(list string) (*corsPolicy, error) {
	p := &corsPolicy{exact: map[string]bool{}}
	for _, o := range strings.Split(list, ",") {
		o = strings.TrimSpace(o)
		switch {
		case o == "":
			continue
		case o == "*":
			p.any = true
			continue
		case strings.HasSuffix(o, ":*"):
			base := strings.TrimSuffix(o, "*")
			if err := checkOrigin(base + "1"); err != nil {
				return nil, fmt.Errorf("cors origin %q: %w", o, err)
			}
			p.anyPort = append(p.anyPort, base)
			continue
		}
		if err := checkOrigin(o); err != nil {
			return nil, fmt.Errorf("cors origin %q: %w", o, err)
		}
		p.exact[o] = true
	}
	return p, nil
}

// checkOrigin accepts scheme://host[:port] and nothing more.
func checkOrigin(o string) error {
	u, err := url.Parse(o)
	if err != nil {
		return err
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" || u.Path != "" || u.RawQuery != "" || u.User != nil || u.Fragment != "" {
		return fmt.Errorf("want scheme://host[:port] with scheme http or https, * or scheme://host:*")
	}
	return nil
}

// allow reports whether origin may call, and whether with credentials
// (only an origin named in the list, never through *).
func (p *corsPolicy) allow(origin string) (ok, credentials bool) {
	if p.exact[origin] {
		return true, true
	}
	for _, base := range p.anyPort {
		if port, found := strings.CutPrefix(origin, base); found {
			if n, err := strconv.Atoi(port); err == nil && n > 0 && n < 65536 && strconv.Itoa(n) == port {
				return true, true
			}
		}
	}
	return p.any, false
}

// corsAllowHeaders are the request headers a gRPC-web client sends.
const corsAllowHeaders = "authorization, content-type, grpc-timeout, x-grpc-web, x-user-agent, x-trace-id, x-client-id"

// corsExposeHeaders are the response headers a gRPC-web client reads.
const corsExposeHeaders = "grpc-status, grpc-message, grpc-status-details-bin, x-trace-id, x-field-violations-bin"

// wrap answers CORS preflight for allowed origins only (403 otherwise),
// refuses calls from origins not allowed, and adds the CORS headers to the
// answers of allowed ones. Requests without an Origin (native tools) pass.
func (p *corsPolicy) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		origin := r.Header.Get("Origin")
		if origin == "" {
			next.ServeHTTP(w, r)
			return
		}
		ok, cred := p.allow(origin)
		if !ok && origin == requestOrigin(r) {
			// Same origin (the page at /app/ on this port): not a
			// cross-origin call, whatever the allow-list says.
			ok, cred = true, true
		}
		h := w.Header()
		h.Add("Vary", "Origin")
		preflight := r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != ""
		if !ok {
			corsRefusedTotal.Inc()
			http.Error(w, "origin "+origin+" is not allowed (-grpc.cors-origins)", http.StatusForbidden)
			return
		}
		if cred {
			h.Set("Access-Control-Allow-Origin", origin)
			h.Set("Access-Control-Allow-Credentials", "true")
		} else {
			h.Set("Access-Control-Allow-Origin", "*")
		}
		if preflight {
			h.Set("Access-Control-Allow-Methods", "POST, OPTIONS")
			h.Set("Access-Control-Allow-Headers", corsAllowHeaders)
			h.Set("Access-Control-Max-Age", "600")
			w.WriteHeader(http.StatusNoContent)
			return
		}
		h.Set("Access-Control-Expose-Headers", corsExposeHeaders)
		next.ServeHTTP(w, r)
	})
}

// requestOrigin is the origin the request was addressed to.
func requestOrigin(r *http.Request) string {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}
