package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// startWith runs a server with cfg (address and shutdown filled in) and the
// test service.
func startWith(t *testing.T, cfg Config) *Server {
	t.Helper()
	cfg.Addr, cfg.ShutdownTimeout = "127.0.0.1:0", 2*time.Second
	s, err := New(cfg, quietLog)
	if err != nil {
		t.Fatal(err)
	}
	testpb.RegisterTestServiceServer(s.GRPC(), testService{release: make(chan struct{}), entered: make(chan struct{}, 1)})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return")
		}
	})
	waitListening(t, s)
	return s
}

// webCall posts one gRPC-web message to path and returns the HTTP answer
// and body.
func webCall(t *testing.T, ctx context.Context, client *http.Client, url, origin string, msg []byte) (*http.Response, string) {
	t.Helper()
	frame := make([]byte, 5, 5+len(msg))
	binary.BigEndian.PutUint32(frame[1:5], uint32(len(msg)))
	frame = append(frame, msg...)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(frame))
	req.Header.Set("Content-Type", "application/grpc-web+proto")
	if origin != "" {
		req.Header.Set("Origin", origin)
	}
	res, err := client.Do(req)
	if err != nil {
		t.Fatalf("gRPC-web POST: %v", err)
	}
	raw, _ := io.ReadAll(res.Body)
	res.Body.Close()
	return res, string(raw)
}

// TestCORS checks the allow-list: exact origins and any-port origins get
// their origin echoed with credentials, * gets * without credentials,
// others are refused (preflight and call), and calls without an Origin
// pass.
func TestCORS(t *testing.T) {
	tests := []struct {
		name, list, origin string
		allowed            bool
		wantOrigin         string
		credentials        bool
	}{
		{"exact", "https://app.example.org", "https://app.example.org", true, "https://app.example.org", true},
		{"exact, other port", "https://app.example.org", "https://app.example.org:8443", false, "", false},
		{"dev localhost any port", "http://localhost:*,http://127.0.0.1:*", "http://localhost:5173", true, "http://localhost:5173", true},
		{"dev 127.0.0.1 any port", "http://localhost:*,http://127.0.0.1:*", "http://127.0.0.1:8080", true, "http://127.0.0.1:8080", true},
		{"dev rejects other host", "http://localhost:*,http://127.0.0.1:*", "http://localhost.evil.com:80", false, "", false},
		{"dev rejects https", "http://localhost:*", "https://localhost:5173", false, "", false},
		{"dev rejects no port", "http://localhost:*", "http://localhost", false, "", false},
		{"star never with credentials", "*", "https://anyone.example", true, "*", false},
		{"empty allows none", "", "http://localhost:5173", false, "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := startWith(t, Config{CORSOrigins: tc.list})
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			url := "http://" + s.Addr().String() + "/grpc.health.v1.Health/Check"
			pre, _ := http.NewRequestWithContext(ctx, http.MethodOptions, url, nil)
			pre.Header.Set("Origin", tc.origin)
			pre.Header.Set("Access-Control-Request-Method", "POST")
			pre.Header.Set("Access-Control-Request-Headers", "authorization,content-type,x-grpc-web")
			res, err := http.DefaultClient.Do(pre)
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			gotOrigin, gotCred := res.Header.Get("Access-Control-Allow-Origin"), res.Header.Get("Access-Control-Allow-Credentials") == "true"
			if tc.allowed {
				if res.StatusCode != http.StatusNoContent || gotOrigin != tc.wantOrigin || gotCred != tc.credentials || !strings.Contains(res.Header.Get("Access-Control-Allow-Headers"), "authorization") {
					t.Errorf("preflight: %s origin %q credentials %v headers %q; want 204 %q %v", res.Status, gotOrigin, gotCred, res.Header.Get("Access-Control-Allow-Headers"), tc.wantOrigin, tc.credentials)
				}
			} else if res.StatusCode != http.StatusForbidden || gotOrigin != "" || gotCred {
				t.Errorf("preflight from a refused origin: %s origin %q credentials %v; want 403 without CORS headers", res.Status, gotOrigin, gotCred)
			}
			body, _ := proto.Marshal(&healthpb.HealthCheckRequest{})
			res, raw := webCall(t, ctx, http.DefaultClient, url, tc.origin, body)
			if tc.allowed != (res.StatusCode == http.StatusOK && strings.Contains(raw, "grpc-status: 0")) {
				t.Errorf("call: %s %q (allowed %v)", res.Status, raw, tc.allowed)
			}
			if tc.allowed && (res.Header.Get("Access-Control-Allow-Origin") != tc.wantOrigin || !strings.Contains(res.Header.Get("Access-Control-Expose-Headers"), "grpc-status")) {
				t.Errorf("call headers %v", res.Header)
			}
			if res, raw := webCall(t, ctx, http.DefaultClient, url, "", body); res.StatusCode != http.StatusOK || !strings.Contains(raw, "grpc-status: 0") {
				t.Errorf("call without Origin: %s %q", res.Status, raw)
			}
		})
	}
	t.Run("same origin with an empty list", func(t *testing.T) {
		s := startWith(t, Config{})
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		url := "http://" + s.Addr().String() + "/grpc.health.v1.Health/Check"
		body, _ := proto.Marshal(&healthpb.HealthCheckRequest{})
		if res, raw := webCall(t, ctx, http.DefaultClient, url, "http://"+s.Addr().String(), body); res.StatusCode != http.StatusOK || !strings.Contains(raw, "grpc-status: 0") {
			t.Errorf("same-origin call: %s %q", res.Status, raw)
		}
	})
	if _, err := New(Config{Addr: ":0", CORSOrigins: "localhost:3000"}, quietLog); err == nil {
		t.Error("New took a CORS origin without a scheme")
	}
}

// TestMaxMessageSize sends a message over the limit on native gRPC and on
// gRPC-web: both are RESOURCE_EXHAUSTED, and one under it passes.
func TestMaxMessageSize(t *testing.T) {
	const limit = 1 << 10
	s := startWith(t, Config{MaxRecvBytes: limit})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	client := testpb.NewTestServiceClient(dial(t, s.Addr().String()))
	big := &testpb.SimpleRequest{Payload: &testpb.Payload{Body: make([]byte, 2*limit)}}
	if _, err := client.UnaryCall(ctx, big); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("native call over the limit = %v, want RESOURCE_EXHAUSTED", err)
	}
	url := "http://" + s.Addr().String() + "/grpc.testing.TestService/UnaryCall"
	raw, _ := proto.Marshal(big)
	// A trailers-only answer carries the status in the HTTP headers.
	if res, body := webCall(t, ctx, http.DefaultClient, url, "", raw); !strings.Contains(body, "grpc-status: 8") && res.Header.Get("Grpc-Status") != "8" {
		t.Errorf("gRPC-web call over the limit answered %v %q, want grpc-status 8 (RESOURCE_EXHAUSTED)", res.Header, body)
	}
	hc := healthpb.NewHealthClient(dial(t, s.Addr().String()))
	if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: strings.Repeat("x", limit/2)}); status.Code(err) != codes.NotFound {
		t.Errorf("native call under the limit = %v, want NotFound (unknown service)", err)
	}
}

// TestTLS serves with a self-signed certificate: native gRPC (HTTP/2 by
// ALPN) and gRPC-web over HTTP/1.1 and HTTP/2 all work; plaintext does not.
func TestTLS(t *testing.T) {
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := WriteSelfSigned(cert, key, []string{"localhost", "127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	s := startWith(t, Config{TLSCert: cert, TLSKey: key, CORSOrigins: "https://localhost:*"})
	addr := s.Addr().String()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	pemBytes, _ := os.ReadFile(cert)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pemBytes)
	tlsCfg := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}

	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if res, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || res.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("native gRPC over TLS: %v %v", res, err)
	}
	body, _ := proto.Marshal(&healthpb.HealthCheckRequest{})
	url := "https://" + addr + "/grpc.health.v1.Health/Check"
	h1 := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsCfg.Clone()}}
	h2only := &http.Transport{TLSClientConfig: tlsCfg.Clone(), Protocols: new(http.Protocols)}
	h2only.Protocols.SetHTTP2(true)
	h2 := &http.Client{Transport: h2only}
	for name, c := range map[string]*http.Client{"HTTP/1.1": h1, "HTTP/2": h2} {
		res, raw := webCall(t, ctx, c, url, "https://localhost:8443", body)
		if res.StatusCode != http.StatusOK || !strings.Contains(raw, "grpc-status: 0") || res.Header.Get("Access-Control-Allow-Origin") != "https://localhost:8443" {
			t.Errorf("gRPC-web over TLS %s: %s (%s) %q", name, res.Status, res.Proto, raw)
		}
	}
	plain, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	short, cancel2 := context.WithTimeout(ctx, 2*time.Second)
	defer cancel2()
	if _, err := healthpb.NewHealthClient(plain).Check(short, &healthpb.HealthCheckRequest{}); err == nil {
		t.Error("plaintext gRPC call to the TLS port succeeded")
	}
}
