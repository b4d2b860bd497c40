package server

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// TestMain checks for leaked goroutines after the tests; desertbit/timer
// (a dependency of grpc-web) runs one from its init for the life of the
// process.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/desertbit/timer.timerRoutine"))
}

var quietLog = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))

// testService panics in EmptyCall and blocks in UnaryCall until released.
type testService struct {
	testpb.UnimplementedTestServiceServer
	release chan struct{}
	entered chan struct{}
}

func (testService) EmptyCall(context.Context, *testpb.Empty) (*testpb.Empty, error) {
	panic("boom")
}

func (s testService) UnaryCall(ctx context.Context, _ *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	s.entered <- struct{}{}
	select {
	case <-s.release:
		return &testpb.SimpleResponse{}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// start runs a server with the test service on a free port; the returned
// stop cancels it and returns Run's error.
func start(t *testing.T, gate func(context.Context) error) (*Server, testService, func() error) {
	t.Helper()
	s, err := New(Config{Addr: "127.0.0.1:0", ShutdownTimeout: 2 * time.Second, CORSOrigins: "https://app.example.org"}, quietLog)
	if err != nil {
		t.Fatal(err)
	}
	svc := testService{release: make(chan struct{}), entered: make(chan struct{}, 1)}
	testpb.RegisterTestServiceServer(s.GRPC(), svc)
	if gate != nil {
		s.Gate(gate)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	stopped := false
	stop := func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(10 * time.Second):
			return errors.New("Run did not return within 10s")
		}
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return s, svc, stop
}

func dial(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func waitListening(t *testing.T, s *Server) string {
	t.Helper()
	select {
	case <-s.Listening():
		return s.Addr().String()
	case <-time.After(10 * time.Second):
		t.Fatal("server not listening within 10s")
		return ""
	}
}

// TestGateHoldsPort checks that the port opens only after the gate passed.
func TestGateHoldsPort(t *testing.T) {
	open := make(chan struct{})
	s, _, _ := start(t, func(ctx context.Context) error {
		select {
		case <-open:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	select {
	case <-s.Listening():
		t.Fatal("listening before the gate passed")
	case <-time.After(200 * time.Millisecond):
	}
	if err := s.Ready(); !errors.Is(err, ErrNotListening) {
		t.Fatalf("Ready = %v before the gate passed", err)
	}
	close(open)
	waitListening(t, s)
	if err := s.Ready(); err != nil {
		t.Fatalf("Ready = %v after listening", err)
	}
}

// TestNativeAndWebOnOnePort calls health over native gRPC and over gRPC-web
// (plain net/http, HTTP/1.1) on the same port, checks CORS preflight for an
// allowed and a refused origin, and that other HTTP requests get 404.
func TestNativeAndWebOnOnePort(t *testing.T) {
	s, _, _ := start(t, nil)
	addr := waitListening(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	hc := healthpb.NewHealthClient(dial(t, addr))
	for _, svc := range []string{"", "grpc.testing.TestService"} {
		res, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
		if err != nil || res.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("native health of %q: %v %v", svc, res, err)
		}
	}

	body, _ := proto.Marshal(&healthpb.HealthCheckRequest{})
	frame := append([]byte{0, 0, 0, 0, 0}, body...)
	binary.BigEndian.PutUint32(frame[1:5], uint32(len(body)))
	url := "http://" + addr + "/grpc.health.v1.Health/Check"
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(frame))
	req.Header.Set("Content-Type", "application/grpc-web+proto")
	req.Header.Set("Origin", "https://app.example.org")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("gRPC-web POST: %v", err)
	}
	raw, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK || res.ProtoMajor != 1 {
		t.Fatalf("gRPC-web: %s over HTTP/%d.%d: %q", res.Status, res.ProtoMajor, res.ProtoMinor, raw)
	}
	if got := res.Header.Get("Access-Control-Allow-Origin"); got != "https://app.example.org" {
		t.Errorf("Access-Control-Allow-Origin = %q", got)
	}
	if len(raw) < 5 || raw[0] != 0 {
		t.Fatalf("gRPC-web answer does not start with a message frame: %q", raw)
	}
	n := binary.BigEndian.Uint32(raw[1:5])
	var out healthpb.HealthCheckResponse
	if err := proto.Unmarshal(raw[5:5+n], &out); err != nil || out.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("gRPC-web health answer %v %v", &out, err)
	}
	if !strings.Contains(string(raw[5+n:]), "grpc-status: 0") {
		t.Errorf("trailer frame %q lacks grpc-status: 0", raw[5+n:])
	}

	tests := []struct {
		name, origin string
		allowed      bool
	}{
		{name: "allowed origin", origin: "https://app.example.org", allowed: true},
		{name: "other origin", origin: "https://evil.example.com", allowed: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pre, _ := http.NewRequestWithContext(ctx, http.MethodOptions, url, nil)
			pre.Header.Set("Origin", tc.origin)
			pre.Header.Set("Access-Control-Request-Method", "POST")
			pre.Header.Set("Access-Control-Request-Headers", "content-type,x-grpc-web")
			res, err := http.DefaultClient.Do(pre)
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			got := res.Header.Get("Access-Control-Allow-Origin")
			if tc.allowed && (res.StatusCode >= 300 || got != tc.origin) {
				t.Errorf("preflight from %s: %s, allow-origin %q", tc.origin, res.Status, got)
			}
			if !tc.allowed && got != "" {
				t.Errorf("preflight from %s allowed: %q", tc.origin, got)
			}
		})
	}

	res, err = http.Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusNotFound {
		t.Errorf("GET / = %s, want 404", res.Status)
	}
}

// TestPanicIsInternal checks that a panicking handler answers INTERNAL and
// the server keeps serving.
func TestPanicIsInternal(t *testing.T) {
	s, _, _ := start(t, nil)
	conn := dial(t, waitListening(t, s))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := testpb.NewTestServiceClient(conn).EmptyCall(ctx, &testpb.Empty{})
	if status.Code(err) != codes.Internal {
		t.Fatalf("EmptyCall = %v, want INTERNAL", err)
	}
	if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("health after a panic: %v", err)
	}
}

// TestGracefulStop checks that a call in progress at shutdown completes,
// new connections are refused, and Run returns nil.
func TestGracefulStop(t *testing.T) {
	s, svc, stop := start(t, nil)
	addr := waitListening(t, s)
	conn := dial(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	callErr := make(chan error, 1)
	go func() {
		_, err := testpb.NewTestServiceClient(conn).UnaryCall(ctx, &testpb.SimpleRequest{})
		callErr <- err
	}()
	<-svc.entered
	stopErr := make(chan error, 1)
	go func() { stopErr <- stop() }()
	// The listener closes at once; the call in progress is still served.
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("port still open 5s after shutdown began")
		}
		time.Sleep(20 * time.Millisecond)
	}
	close(svc.release)
	if err := <-callErr; err != nil {
		t.Errorf("call in progress at shutdown: %v", err)
	}
	if err := <-stopErr; err != nil {
		t.Errorf("Run: %v", err)
	}
}
