package main

import (
	"bytes"
	"context"
	"flag"
	"io"
	"strings"
	"testing"
	"time"

	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"github.com/chapper/chapper/services/auth"
	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// issue runs `chapper token issue` with args and returns stdout and stderr.
func issue(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := run(context.Background(), append([]string{"token", "issue"}, args...), &out, &errOut)
	return out.String(), errOut.String(), err
}

// TestTokenIssue writes a key with keygen, issues a token with it and
// verifies it: stdout is the token alone on one line, hints go to stderr.
func TestTokenIssue(t *testing.T) {
	dir := t.TempDir()
	var out bytes.Buffer
	if err := run(context.Background(), []string{"token", "keygen", "-auth.keys-dir=" + dir, "-kid=k1"}, &out, io.Discard); err != nil {
		t.Fatalf("keygen: %v", err)
	}
	if !strings.Contains(out.String(), "k1.key.pem") || !strings.Contains(out.String(), "k1.pub.pem") {
		t.Errorf("keygen printed %q, want both files", out.String())
	}
	stdout, stderr, err := issue(t, "-auth.keys-dir="+dir, "-canvasser=c9", "-role=reader", "-ttl=10m", "-area=regions:5254168")
	if err != nil {
		t.Fatalf("issue: %v", err)
	}
	if strings.Count(stdout, "\n") != 1 || strings.Count(stdout, ".") != 2 {
		t.Fatalf("stdout = %q, want one token line", stdout)
	}
	if !strings.Contains(stderr, "grpcurl") {
		t.Errorf("stderr = %q, want a grpcurl hint", stderr)
	}
	var cfg auth.Config
	cfg.RegisterFlags("auth", flag.NewFlagSet("t", flag.PanicOnError), true, dir)
	keys, _ := cfg.LoadKeys()
	v, err := auth.NewVerifier(cfg, keys)
	if err != nil {
		t.Fatal(err)
	}
	c, err := v.Verify(strings.TrimSpace(stdout))
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if c.CanvasserID() != "c9" || c.Role != auth.RoleReader || c.Area == nil || c.Area.Regions[0] != 5254168 {
		t.Errorf("claims = %+v", c)
	}
	if d := c.ExpiresAt.Sub(c.IssuedAt.Time); d != 10*time.Minute {
		t.Errorf("ttl = %s, want 10m", d)
	}

	for _, tc := range []struct {
		name, want string
		args       []string
	}{
		{"no canvasser", "-canvasser is required", []string{"-auth.keys-dir=" + dir}},
		{"bad role", `role "boss"`, []string{"-auth.keys-dir=" + dir, "-canvasser=c", "-role=boss"}},
		{"bad area", "-area", []string{"-auth.keys-dir=" + dir, "-canvasser=c", "-area=bbox:1"}},
		{"no key", "no key in", []string{"-auth.keys-dir=" + t.TempDir(), "-canvasser=c"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stdout, _, err := issue(t, tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) || stdout != "" {
				t.Errorf("issue %v = %q, %v; want an error containing %q and no stdout", tc.args, stdout, err, tc.want)
			}
		})
	}
}

// TestServeAuthNeedsKey: serve has authentication on by default and the
// gRPC targets refuse to start without a key.
func TestServeAuthNeedsKey(t *testing.T) {
	for _, target := range []string{"ingest", "query"} {
		t.Run(target, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			err := run(ctx, []string{"serve", "-target=" + target, "-log.level=error", "-grpc.addr=127.0.0.1:0", "-admin.addr=127.0.0.1:0"}, io.Discard, io.Discard)
			if err == nil || !strings.Contains(err.Error(), "authentication is on and no signing or verification keys configured") {
				t.Fatalf("serve -target=%s without keys = %v, want a no-key error", target, err)
			}
		})
	}
}

// TestDevAuth runs `chapper dev -auth -tls`: it creates its key pair under
// -dev.dir/auth and a certificate under -dev.dir/tls, serves gRPC over TLS,
// refuses a Submit without a token, and takes one with a token `chapper
// token issue` signed from that directory.
func TestDevAuth(t *testing.T) {
	if testing.Short() {
		t.Skip("starts postgres and redis-server; skipped with -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dev := startDev(t, ctx, "-auth", "-tls", "-target=ingest")
	if dev.Endpoints["auth"] != dev.Dir+"/auth" {
		t.Errorf("auth endpoint line = %q, want %s/auth", dev.Endpoints["auth"], dev.Dir)
	}
	creds, err := credentials.NewClientTLSFromFile(dev.Dir+"/tls/cert.pem", "127.0.0.1")
	if err != nil {
		t.Fatalf("reading the dev certificate: %v", err)
	}
	conn, err := grpc.NewClient(dev.Endpoints["gRPC + gRPC-web"], grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := canvassv1.NewIngestServiceClient(conn)
	req := &canvassv1.SubmitRequest{Visits: []*canvassv1.Visit{{
		Id: uuid.Must(uuid.NewV7()).String(), DwellingId: "d1", Address: "1 High St",
		Location:  &canvassv1.Location{Latitude: 55.9533, Longitude: -3.1883},
		VisitedAt: timestamppb.Now(),
	}}}
	if _, err := client.Submit(ctx, req); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("Submit without token = %v, want Unauthenticated", err)
	}
	tok, _, err := issue(t, "-auth.keys-dir="+dev.Dir+"/auth", "-canvasser=c1")
	if err != nil {
		t.Fatal(err)
	}
	authed := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+strings.TrimSpace(tok))
	resp, err := client.Submit(authed, req)
	if err != nil || resp.GetResults()[0].GetStatus() != canvassv1.Status_STATUS_ACCEPTED {
		t.Fatalf("Submit with token: %v %v", resp, err)
	}
}
