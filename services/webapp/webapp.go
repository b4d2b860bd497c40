// Package webapp serves the canvassing web page (clients/web) at /app/ on
// the gRPC port. The page is built by esbuild from clients/web
// (`make web`, scripts/web.sh build) into dist/, which is committed and
// embedded here, so `go build` needs no Node; scripts/web.sh check fails
// when dist/ is stale against the TypeScript sources.
//
// The page calls the gRPC-web services on its own origin, so it needs no
// CORS allowance; its Content-Security-Policy lets it talk to nothing else.
package webapp

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strings"
	"time"
)

// Prefix is the path the page is served under.
const Prefix = "/app/"

//go:embed dist
var dist embed.FS

// asset is one embedded file with its precomputed validator.
type asset struct {
	body        []byte
	contentType string
	etag        string
}

// Handler serves the page under Prefix: index.html at /app/, its assets
// beside it, a redirect from /app to /app/, 404 for anything else, and only
// GET and HEAD (405 otherwise). Responses carry a strong ETag and
// no-cache (the browser revalidates, so a new build shows at once), plus a
// Content-Security-Policy limiting the page to its own origin. Handler is
// safe for concurrent use.
type Handler struct {
	assets map[string]asset
}

// New returns the Handler of the embedded page. It fails if the embedded
// build has no index.html, which means dist/ was not built.
func New() (*Handler, error) {
	return newHandler(dist)
}

func newHandler(fsys fs.FS) (*Handler, error) {
	sub, err := fs.Sub(fsys, "dist")
	if err != nil {
		return nil, fmt.Errorf("opening the embedded page: %w", err)
	}
	h := &Handler{assets: map[string]asset{}}
	err = fs.WalkDir(sub, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(sub, p)
		if err != nil {
			return fmt.Errorf("reading %s: %w", p, err)
		}
		ct := mime.TypeByExtension(path.Ext(p))
		if ct == "" {
			ct = http.DetectContentType(b)
		}
		sum := sha256.Sum256(b)
		h.assets[p] = asset{body: b, contentType: ct, etag: `"` + hex.EncodeToString(sum[:12]) + `"`}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("loading the embedded page: %w", err)
	}
	if _, ok := h.assets["index.html"]; !ok {
		return nil, fmt.Errorf("the embedded page has no index.html: build it with make web")
	}
	return h, nil
}

// Match reports whether r is for the page (a path under /app/, or /app).
func Match(r *http.Request) bool {
	return r.URL.Path == "/app" || strings.HasPrefix(r.URL.Path, Prefix)
}

// ServeHTTP serves one file of the page.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/app" {
		http.Redirect(w, r, Prefix, http.StatusMovedPermanently)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "the page is read with GET or HEAD", http.StatusMethodNotAllowed)
		return
	}
	name := strings.TrimPrefix(r.URL.Path, Prefix)
	if name == "" {
		name = "index.html"
	}
	a, ok := h.assets[name]
	if !ok {
		http.NotFound(w, r)
		return
	}
	hd := w.Header()
	hd.Set("Content-Type", a.contentType)
	hd.Set("Cache-Control", "no-cache")
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Referrer-Policy", "no-referrer")
	hd.Set("Content-Security-Policy", "default-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
	hd.Set("ETag", a.etag)
	// ServeContent answers If-None-Match with 304 and HEAD without a body.
	http.ServeContent(w, r, name, time.Time{}, strings.NewReader(string(a.body)))
}
