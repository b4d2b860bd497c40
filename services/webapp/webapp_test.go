package webapp

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/fstest"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestHandler(t *testing.T) {
	h, err := New()
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	c := srv.Client()
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

	index, err := dist.ReadFile("dist/index.html")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		method     string
		path       string
		header     map[string]string
		wantCode   int
		wantType   string
		wantBody   string
		wantHeader map[string]string
	}{
		{name: "index", method: "GET", path: "/app/", wantCode: 200, wantType: "text/html; charset=utf-8", wantBody: string(index)},
		{name: "script", method: "GET", path: "/app/app.js", wantCode: 200, wantType: "text/javascript; charset=utf-8"},
		{name: "style", method: "GET", path: "/app/app.css", wantCode: 200, wantType: "text/css; charset=utf-8"},
		{name: "no slash redirects", method: "GET", path: "/app", wantCode: 301, wantHeader: map[string]string{"Location": "/app/"}},
		{name: "missing file", method: "GET", path: "/app/nope.js", wantCode: 404},
		{name: "post refused", method: "POST", path: "/app/", wantCode: 405, wantHeader: map[string]string{"Allow": "GET, HEAD"}},
		{name: "head", method: "HEAD", path: "/app/", wantCode: 200, wantBody: ""},
		{name: "csp", method: "GET", path: "/app/", wantCode: 200, wantHeader: map[string]string{"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest(tc.method, srv.URL+tc.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.wantCode {
				t.Fatalf("status %d, want %d (body %q)", resp.StatusCode, tc.wantCode, body)
			}
			if tc.wantType != "" && resp.Header.Get("Content-Type") != tc.wantType {
				t.Errorf("Content-Type %q, want %q", resp.Header.Get("Content-Type"), tc.wantType)
			}
			if tc.wantBody != "" || tc.method == "HEAD" {
				if string(body) != tc.wantBody {
					t.Errorf("body %.80q, want %.80q", body, tc.wantBody)
				}
			}
			for k, v := range tc.wantHeader {
				if resp.Header.Get(k) != v {
					t.Errorf("%s %q, want %q", k, resp.Header.Get(k), v)
				}
			}
			if tc.wantCode == 200 && !strings.Contains(resp.Header.Get("Content-Security-Policy"), "connect-src 'self'") {
				t.Errorf("Content-Security-Policy %q lacks connect-src 'self'", resp.Header.Get("Content-Security-Policy"))
			}
		})
	}
}

func TestETagRevalidates(t *testing.T) {
	h, err := New()
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/app/app.js", nil))
	etag := rec.Header().Get("ETag")
	if rec.Code != 200 || etag == "" {
		t.Fatalf("first GET: status %d, ETag %q", rec.Code, etag)
	}
	req := httptest.NewRequest("GET", "/app/app.js", nil)
	req.Header.Set("If-None-Match", etag)
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusNotModified || rec.Body.Len() != 0 {
		t.Fatalf("GET with If-None-Match %s: status %d, %d bytes; want 304 and no body", etag, rec.Code, rec.Body.Len())
	}
}

func TestPageReferencesItsAssets(t *testing.T) {
	// The built index.html must load the bundle and stylesheet that were embedded beside it.
	index, err := dist.ReadFile("dist/index.html")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`src="app.js"`, `href="app.css"`} {
		if !strings.Contains(string(index), want) {
			t.Errorf("index.html lacks %s", want)
		}
	}
	for _, f := range []string{"dist/app.js", "dist/app.css"} {
		if b, err := dist.ReadFile(f); err != nil || len(b) == 0 {
			t.Errorf("embedded %s: %d bytes, %v", f, len(b), err)
		}
	}
}

func TestNewWithoutIndex(t *testing.T) {
	_, err := newHandler(fstest.MapFS{"dist/app.js": {Data: []byte("x")}})
	if err == nil || !strings.Contains(err.Error(), "make web") {
		t.Fatalf("New without index.html: %v, want an error telling to run make web", err)
	}
}
