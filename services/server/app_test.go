package server

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

// TestServesWebPage checks that the gRPC port's HTTP side serves the
// canvassing page at /app/ beside gRPC-web, and still answers 404 elsewhere.
func TestServesWebPage(t *testing.T) {
	s, _, _ := start(t, nil)
	addr := waitListening(t, s)
	tests := []struct {
		name     string
		path     string
		wantCode int
		wantBody string
	}{
		{name: "page", path: "/app/", wantCode: 200, wantBody: `<script type="module" src="app.js">`},
		{name: "bundle", path: "/app/app.js", wantCode: 200},
		{name: "elsewhere", path: "/other", wantCode: 404, wantBody: "this port speaks gRPC"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := http.Get("http://" + addr + tc.path)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.wantCode || !strings.Contains(string(b), tc.wantBody) {
				t.Fatalf("GET %s: %d %.100q; want %d containing %q", tc.path, resp.StatusCode, b, tc.wantCode, tc.wantBody)
			}
		})
	}
}
