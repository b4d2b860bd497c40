package auth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"github.com/chapper/chapper/proto/locality"
	"github.com/chapper/chapper/services/server"
	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/goleak"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// TestMain checks for leaked goroutines; desertbit/timer (a dependency of
// grpc-web) runs one from its init, for the life of the process.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/desertbit/timer.timerRoutine"))
}

// testKeys writes an ES256 key pair "es1" and an HS256 key "hs1" into a
// temporary directory and loads it.
func testKeys(t *testing.T) (Config, *KeySet, string) {
	t.Helper()
	dir := t.TempDir()
	if _, err := Keygen(dir, "es1", AlgES256); err != nil {
		t.Fatal(err)
	}
	if _, err := Keygen(dir, "hs1", AlgHS256); err != nil {
		t.Fatal(err)
	}
	var cfg Config
	cfg.RegisterFlags("auth", flag.NewFlagSet("t", flag.PanicOnError), true, dir)
	ks, err := cfg.LoadKeys()
	if err != nil {
		t.Fatal(err)
	}
	if ks.Len() != 2 {
		t.Fatalf("loaded %d keys, want 2: %v", ks.Len(), ks.IDs())
	}
	return cfg, ks, dir
}

// sign signs claims with method and key under kid, as an attacker or a
// foreign issuer would.
func sign(t *testing.T, method jwt.SigningMethod, kid string, key any, c jwt.Claims) string {
	t.Helper()
	tok := jwt.NewWithClaims(method, c)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatalf("signing: %v", err)
	}
	return s
}

func claimsAt(now time.Time, edit func(*Claims)) *Claims {
	c := &Claims{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer: "chapper", Subject: "canvasser-7", Audience: jwt.ClaimStrings{"chapper"},
			IssuedAt: jwt.NewNumericDate(now), NotBefore: jwt.NewNumericDate(now), ExpiresAt: jwt.NewNumericDate(now.Add(time.Hour)),
		},
		Role: RoleCanvasser,
	}
	if edit != nil {
		edit(c)
	}
	return c
}

// TestVerify covers every way a token is refused, and the ways it passes.
func TestVerify(t *testing.T) {
	cfg, ks, dir := testKeys(t)
	v, err := NewVerifier(cfg, ks)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	es, _ := ks.Get("es1")
	hs, _ := ks.Get("hs1")
	pubPEM, err := os.ReadFile(filepath.Join(dir, "es1.pub.pem"))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(pubPEM)
	pubDER := block.Bytes
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)

	issuerES, err := NewIssuer(cfg, ks, "es1")
	if err != nil {
		t.Fatal(err)
	}
	good, err := issuerES.Issue("canvasser-7", RoleCanvasser, time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	issuerHS, _ := NewIssuer(cfg, ks, "hs1")
	goodHS, _ := issuerHS.Issue("canvasser-8", RoleReader, time.Hour, &Area{Regions: []int64{5254168}})

	// Tampered payload: the subject changed after signing.
	parts := strings.Split(good, ".")
	payload, _ := base64.RawURLEncoding.DecodeString(parts[1])
	var m map[string]any
	_ = json.Unmarshal(payload, &m)
	m["sub"] = "someone-else"
	payload, _ = json.Marshal(m)
	tampered := parts[0] + "." + base64.RawURLEncoding.EncodeToString(payload) + "." + parts[2]

	noneTok := sign(t, jwt.SigningMethodNone, "es1", jwt.UnsafeAllowNoneSignatureType, claimsAt(now, nil))

	tests := []struct {
		name    string
		token   string
		wantErr error // nil: valid
		wantSub string
	}{
		{name: "valid ES256", token: good, wantSub: "canvasser-7"},
		{name: "valid HS256 with area", token: goodHS, wantSub: "canvasser-8"},
		{name: "valid within clock skew", token: sign(t, jwt.SigningMethodES256, "es1", es.priv, claimsAt(now.Add(10*time.Second), nil)), wantSub: "canvasser-7"},
		{name: "empty", token: "", wantErr: ErrMalformed},
		{name: "garbage", token: "not-a-jwt", wantErr: ErrMalformed},
		{name: "two parts", token: parts[0] + "." + parts[1], wantErr: ErrMalformed},
		{name: "expired", token: sign(t, jwt.SigningMethodES256, "es1", es.priv, claimsAt(now.Add(-2*time.Hour), nil)), wantErr: jwt.ErrTokenExpired},
		{name: "no exp", token: sign(t, jwt.SigningMethodES256, "es1", es.priv, claimsAt(now, func(c *Claims) { c.ExpiresAt = nil })), wantErr: jwt.ErrTokenRequiredClaimMissing},
		{name: "not yet valid", token: sign(t, jwt.SigningMethodES256, "es1", es.priv, claimsAt(now, func(c *Claims) { c.NotBefore = jwt.NewNumericDate(now.Add(5 * time.Minute)) })), wantErr: jwt.ErrTokenNotValidYet},
		{name: "issued in the future", token: sign(t, jwt.SigningMethodES256, "es1", es.priv, claimsAt(now, func(c *Claims) { c.IssuedAt = jwt.NewNumericDate(now.Add(5 * time.Minute)) })), wantErr: jwt.ErrTokenUsedBeforeIssued},
		{name: "wrong issuer", token: sign(t, jwt.SigningMethodES256, "es1", es.priv, claimsAt(now, func(c *Claims) { c.Issuer = "evil" })), wantErr: jwt.ErrTokenInvalidIssuer},
		{name: "wrong audience", token: sign(t, jwt.SigningMethodES256, "es1", es.priv, claimsAt(now, func(c *Claims) { c.Audience = jwt.ClaimStrings{"other"} })), wantErr: jwt.ErrTokenInvalidAudience},
		{name: "forged signature (other key, same kid)", token: sign(t, jwt.SigningMethodES256, "es1", other, claimsAt(now, nil)), wantErr: jwt.ErrTokenSignatureInvalid},
		{name: "forged HS256 (other secret)", token: sign(t, jwt.SigningMethodHS256, "hs1", []byte(strings.Repeat("x", 32)), claimsAt(now, nil)), wantErr: jwt.ErrTokenSignatureInvalid},
		{name: "tampered payload", token: tampered, wantErr: jwt.ErrTokenSignatureInvalid},
		{name: "alg none", token: noneTok, wantErr: jwt.ErrTokenSignatureInvalid},
		{name: "HS256 under ES256 kid keyed with public PEM", token: sign(t, jwt.SigningMethodHS256, "es1", pubPEM, claimsAt(now, nil)), wantErr: ErrWrongAlg},
		{name: "HS256 under ES256 kid keyed with public DER", token: sign(t, jwt.SigningMethodHS256, "es1", pubDER, claimsAt(now, nil)), wantErr: ErrWrongAlg},
		{name: "ES256 under HS256 kid", token: sign(t, jwt.SigningMethodES256, "hs1", other, claimsAt(now, nil)), wantErr: ErrWrongAlg},
		{name: "unknown kid", token: sign(t, jwt.SigningMethodHS256, "nope", hs.secret, claimsAt(now, nil)), wantErr: ErrUnknownKid},
		{name: "no kid", token: sign(t, jwt.SigningMethodHS256, "", hs.secret, claimsAt(now, nil)), wantErr: ErrUnknownKid},
		{name: "no subject", token: sign(t, jwt.SigningMethodHS256, "hs1", hs.secret, claimsAt(now, func(c *Claims) { c.Subject = "" })), wantErr: ErrBadClaims},
		{name: "unknown role", token: sign(t, jwt.SigningMethodHS256, "hs1", hs.secret, claimsAt(now, func(c *Claims) { c.Role = "admin" })), wantErr: ErrBadClaims},
		{name: "bad area", token: sign(t, jwt.SigningMethodHS256, "hs1", hs.secret, claimsAt(now, func(c *Claims) { c.Area = &Area{BBox: []float64{1, 2}} })), wantErr: ErrBadClaims},
	}
	// Twice each: the second answer of a valid token comes from the cache
	// of verified tokens, and a refused one must be refused again.
	for _, tc := range append(tests, tests...) {
		t.Run(tc.name, func(t *testing.T) {
			c, err := v.Verify(tc.token)
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				if c.CanvasserID() != tc.wantSub {
					t.Errorf("canvasser = %q, want %q", c.CanvasserID(), tc.wantSub)
				}
				return
			}
			if err == nil {
				t.Fatalf("Verify accepted the token (claims %+v), want %v", c, tc.wantErr)
			}
			if !errors.Is(err, tc.wantErr) {
				t.Errorf("Verify error = %v, want %v", err, tc.wantErr)
			}
		})
	}
}

func TestKeysLoading(t *testing.T) {
	dir := t.TempDir()
	if _, err := Keygen(dir, "a", AlgES256); err != nil {
		t.Fatal(err)
	}
	if _, err := Keygen(dir, "a", AlgES256); err == nil {
		t.Error("Keygen overwrote an existing key")
	}
	// A public key alone verifies but cannot sign.
	pubOnly := t.TempDir()
	data, _ := os.ReadFile(filepath.Join(dir, "a.pub.pem"))
	_ = os.WriteFile(filepath.Join(pubOnly, "a.pub.pem"), data, 0o644)
	ks := &KeySet{}
	if err := ks.LoadDir(pubOnly); err != nil {
		t.Fatal(err)
	}
	if _, err := ks.Signer(""); !errors.Is(err, ErrNoSigner) {
		t.Errorf("Signer on public keys = %v, want ErrNoSigner", err)
	}
	// One kid, two algorithms.
	_ = os.WriteFile(filepath.Join(pubOnly, "a.hs256"), []byte(base64.StdEncoding.EncodeToString(make([]byte, 32))), 0o600)
	if err := (&KeySet{}).LoadDir(pubOnly); err == nil || !strings.Contains(err.Error(), "one algorithm") {
		t.Errorf("LoadDir with kid a as ES256 and HS256 = %v, want a one-algorithm error", err)
	}
	if err := (&KeySet{}).AddHMAC("k=" + base64.StdEncoding.EncodeToString(make([]byte, 8))); err == nil {
		t.Error("AddHMAC took an 8-byte secret")
	}
	if err := (&KeySet{}).AddHMAC("nosecret"); err == nil || strings.Contains(err.Error(), "nosecret") {
		t.Errorf("AddHMAC without = : %v (must fail without echoing the value)", err)
	}
	var cfg Config
	cfg.RegisterFlags("auth", flag.NewFlagSet("t", flag.PanicOnError), true, "")
	if _, err := NewVerifier(cfg, &KeySet{}); !errors.Is(err, ErrNoKeys) {
		t.Errorf("NewVerifier with no keys = %v, want ErrNoKeys", err)
	}
	// Newest key signs by default.
	if _, err := Keygen(dir, "b", AlgHS256); err != nil {
		t.Fatal(err)
	}
	ks = &KeySet{}
	_ = ks.LoadDir(dir)
	if k, err := ks.Signer(""); err != nil || k.ID != "b" {
		t.Errorf("Signer(\"\") = %v, %v; want key b", k, err)
	}
}

func TestArea(t *testing.T) {
	edinburgh, _ := locality.Of(55.9533, -3.1883)
	glasgow, _ := locality.Of(55.8642, -4.2518)
	regions := &Area{Regions: []int64{edinburgh.Region()}}
	bbox, err := ParseArea("bbox:55.9,-3.3,56.0,-3.1")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		area *Area
		loc  locality.Index
		want bool
	}{
		{"regions inside", regions, edinburgh, true},
		{"regions outside", regions, glasgow, false},
		{"bbox inside", bbox, edinburgh, true},
		{"bbox outside", bbox, glasgow, false},
		{"no area", nil, glasgow, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.area.AllowsChunk(tc.loc.Chunk()); got != tc.want {
				t.Errorf("AllowsChunk = %v, want %v", got, tc.want)
			}
			if got := tc.area.AllowsLocality(tc.loc); got != tc.want {
				t.Errorf("AllowsLocality = %v, want %v", got, tc.want)
			}
		})
	}
	for _, bad := range []string{"bbox:1,2,3", "bbox:56,0,55,1", "regions:x", "circle:1", "regions:-1", "nothing"} {
		if _, err := ParseArea(bad); err == nil {
			t.Errorf("ParseArea(%q) accepted it", bad)
		}
	}
}

// chunkServer is a QueryService answering an empty chunk: the interceptor
// is under test, not the query service.
type chunkServer struct {
	canvassv1.UnimplementedQueryServiceServer
	canvassv1.UnimplementedIngestServiceServer
}

func (chunkServer) GetChunk(ctx context.Context, req *canvassv1.GetChunkRequest) (*canvassv1.GetChunkResponse, error) {
	if _, ok := FromContext(ctx); !ok {
		return nil, status.Error(codes.Internal, "no claims in context")
	}
	return &canvassv1.GetChunkResponse{}, nil
}

func (chunkServer) WatchChunk(req *canvassv1.WatchChunkRequest, ss grpc.ServerStreamingServer[canvassv1.ChunkEvent]) error {
	if _, ok := FromContext(ss.Context()); !ok {
		return status.Error(codes.Internal, "no claims in context")
	}
	return ss.Send(&canvassv1.ChunkEvent{})
}

func (chunkServer) Submit(ctx context.Context, req *canvassv1.SubmitRequest) (*canvassv1.SubmitResponse, error) {
	return &canvassv1.SubmitResponse{}, nil
}

// TestInterceptors runs the interceptors on a real gRPC server and checks
// the codes a client sees.
func TestInterceptors(t *testing.T) {
	cfg, ks, _ := testKeys(t)
	v, err := NewVerifier(cfg, ks)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Config{Addr: "127.0.0.1:0", ShutdownTimeout: 5 * time.Second}, slog.New(slog.NewTextHandler(io.Discard, nil)), NewInterceptors(v).ServerOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	canvassv1.RegisterQueryServiceServer(srv.GRPC(), chunkServer{})
	canvassv1.RegisterIngestServiceServer(srv.GRPC(), chunkServer{})
	ctx, cancel := context.WithCancel(context.Background())
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return srv.Run(gctx) })
	t.Cleanup(func() {
		cancel()
		if err := g.Wait(); err != nil {
			t.Error(err)
		}
	})
	select {
	case <-srv.Listening():
	case <-time.After(30 * time.Second):
		t.Fatal("server not listening")
	}
	conn, err := grpc.NewClient(srv.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	q := canvassv1.NewQueryServiceClient(conn)
	ing := canvassv1.NewIngestServiceClient(conn)

	is, _ := NewIssuer(cfg, ks, "es1")
	tok := func(role Role, area *Area) string {
		s, err := is.Issue("c1", role, time.Hour, area)
		if err != nil {
			t.Fatal(err)
		}
		return "Bearer " + s
	}
	expired := "Bearer " + sign(t, jwt.SigningMethodES256, "es1", mustKey(ks, "es1").priv, claimsAt(time.Now().Add(-3*time.Hour), nil))
	edinburgh := &canvassv1.Location{Latitude: 55.9533, Longitude: -3.1883}
	glasgow := &canvassv1.Location{Latitude: 55.8642, Longitude: -4.2518}
	edRegion := int64(5254168)
	inArea := &Area{Regions: []int64{edRegion}}

	tests := []struct {
		name string
		auth string // "" sends no metadata
		call string // get, watch, submit
		loc  *canvassv1.Location
		want codes.Code
	}{
		{"no token", "", "get", edinburgh, codes.Unauthenticated},
		{"not bearer", "Basic abc", "get", edinburgh, codes.Unauthenticated},
		{"bearer without token", "Bearer ", "get", edinburgh, codes.Unauthenticated},
		{"malformed", "Bearer abc.def", "get", edinburgh, codes.Unauthenticated},
		{"expired", expired, "get", edinburgh, codes.Unauthenticated},
		{"expired watch", expired, "watch", edinburgh, codes.Unauthenticated},
		{"reader reads", tok(RoleReader, nil), "get", edinburgh, codes.OK},
		{"reader may not submit", tok(RoleReader, nil), "submit", nil, codes.PermissionDenied},
		{"canvasser submits", tok(RoleCanvasser, nil), "submit", nil, codes.OK},
		{"operator submits", tok(RoleOperator, nil), "submit", nil, codes.OK},
		{"inside area", tok(RoleCanvasser, inArea), "get", edinburgh, codes.OK},
		{"outside area", tok(RoleCanvasser, inArea), "get", glasgow, codes.PermissionDenied},
		{"watch inside area", tok(RoleReader, inArea), "watch", edinburgh, codes.OK},
		{"watch outside area", tok(RoleReader, inArea), "watch", glasgow, codes.PermissionDenied},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			if tc.auth != "" {
				ctx = metadata.AppendToOutgoingContext(ctx, "authorization", tc.auth)
			}
			var err error
			switch tc.call {
			case "get":
				_, err = q.GetChunk(ctx, &canvassv1.GetChunkRequest{Location: tc.loc})
			case "watch":
				var st grpc.ServerStreamingClient[canvassv1.ChunkEvent]
				st, err = q.WatchChunk(ctx, &canvassv1.WatchChunkRequest{Location: tc.loc})
				if err == nil {
					_, err = st.Recv()
				}
			case "submit":
				_, err = ing.Submit(ctx, &canvassv1.SubmitRequest{})
			}
			if got := status.Code(err); got != tc.want {
				t.Errorf("code = %v (%v), want %v", got, err, tc.want)
			}
		})
	}
	t.Run("health is public", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
			t.Errorf("health check without token: %v", err)
		}
	})
}

func mustKey(ks *KeySet, kid string) *Key {
	k, _ := ks.Get(kid)
	return k
}

// TestPEMBytesAreNotASecret makes sure the key file's public PEM really is
// what an attacker would use: the public half parses back to the key.
func TestPEMBytesAreNotASecret(t *testing.T) {
	_, ks, dir := testKeys(t)
	data, _ := os.ReadFile(filepath.Join(dir, "es1.pub.pem"))
	block, _ := pem.Decode(data)
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if !pub.(*ecdsa.PublicKey).Equal(mustKey(ks, "es1").pub) {
		t.Fatal("public key file does not hold es1's public key")
	}
}
