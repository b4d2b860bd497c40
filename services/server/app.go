package server

import (
	"net/http"

	"github.com/chapper/chapper/services/webapp"
)

// appHandler returns the canvassing page's handler (services/webapp), served
// at /app/ on the gRPC port's HTTP side, or nil when the embedded build is
// missing (then /app/ answers 404 like any other path, and a warning says
// why).
func (s *Server) appHandler() http.Handler {
	h, err := webapp.New()
	if err != nil {
		s.log.Warn("not serving the web page at /app/", "err", err)
		return nil
	}
	return h
}

// serveApp serves r from page when it asks for the page; it reports whether
// it did.
func serveApp(page http.Handler, w http.ResponseWriter, r *http.Request) bool {
	if page == nil || !webapp.Match(r) {
		return false
	}
	page.ServeHTTP(w, r)
	return true
}
