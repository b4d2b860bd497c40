package auth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestVerifyCache checks that a remembered token is answered without its
// signature being checked again, but only inside the window the checks
// allow: it expires at exp plus the clock skew, cached or not; a token that
// was not yet valid is not remembered; and a token sharing a cached one's
// header and payload under another signature is refused.
func TestVerifyCache(t *testing.T) {
	cfg, ks, _ := testKeys(t)
	start := time.Now().Truncate(time.Second)
	clock := start
	v, err := newVerifier(cfg, ks, func() time.Time { return clock })
	if err != nil {
		t.Fatal(err)
	}
	es, _ := ks.Get("es1")
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	short := func(c *Claims) { c.ExpiresAt = jwt.NewNumericDate(start.Add(time.Minute)) }
	good := sign(t, jwt.SigningMethodES256, "es1", es.priv, claimsAt(start, short))
	forged := sign(t, jwt.SigningMethodES256, "es1", other, claimsAt(start, short))
	if strings.Split(good, ".")[1] != strings.Split(forged, ".")[1] {
		t.Fatal("the forged token should carry the same payload")
	}
	later := start.Add(5 * time.Minute)
	notYet := sign(t, jwt.SigningMethodES256, "es1", es.priv, claimsAt(start, func(c *Claims) { c.NotBefore = jwt.NewNumericDate(later) }))

	hits := func() float64 { return testutil.ToFloat64(tokenCacheHits) }
	steps := []struct {
		name    string
		at      time.Time
		token   string
		wantErr error
		wantHit bool
	}{
		{name: "first use verifies", at: start, token: good},
		{name: "second use is remembered", at: start.Add(time.Second), token: good, wantHit: true},
		{name: "same payload, forged signature", at: start.Add(time.Second), token: forged, wantErr: jwt.ErrTokenSignatureInvalid},
		{name: "one signature byte altered", at: start.Add(time.Second), token: alter(good, len(good)-10), wantErr: jwt.ErrTokenSignatureInvalid},
		{name: "clock before iat minus skew", at: start.Add(-cfg.ClockSkew - time.Second), token: good, wantErr: jwt.ErrTokenUsedBeforeIssued},
		{name: "inside the skew after exp", at: start.Add(time.Minute + cfg.ClockSkew - time.Second), token: good, wantHit: true},
		{name: "expired at exp plus skew", at: start.Add(time.Minute + cfg.ClockSkew), token: good, wantErr: jwt.ErrTokenExpired},
		{name: "still expired", at: start.Add(time.Hour), token: good, wantErr: jwt.ErrTokenExpired},
		{name: "not yet valid", at: start, token: notYet, wantErr: jwt.ErrTokenNotValidYet},
		{name: "valid once nbf passed", at: later, token: notYet},
		{name: "then remembered", at: later, token: notYet, wantHit: true},
	}
	for _, st := range steps {
		clock = st.at
		before := hits()
		c, err := v.Verify(st.token)
		if hit := hits() > before; hit != st.wantHit {
			t.Errorf("%s: cache hit = %v, want %v", st.name, hit, st.wantHit)
		}
		switch {
		case st.wantErr == nil && err != nil:
			t.Errorf("%s: Verify: %v", st.name, err)
		case st.wantErr == nil && c.CanvasserID() != "canvasser-7":
			t.Errorf("%s: canvasser = %q", st.name, c.CanvasserID())
		case st.wantErr != nil && !errors.Is(err, st.wantErr):
			t.Errorf("%s: Verify error = %v, want %v", st.name, err, st.wantErr)
		}
	}
}

// alter returns token with the base64url character at i changed.
func alter(token string, i int) string {
	c := byte('A')
	if token[i] == 'A' {
		c = 'B'
	}
	return token[:i] + string(c) + token[i+1:]
}

// TestTokenCacheBounded checks that the cache keeps at most its size and
// still answers the newest tokens.
func TestTokenCacheBounded(t *testing.T) {
	c := newTokenCache(4)
	now := time.Now()
	claims := claimsAt(now, nil)
	for i := range 10 {
		c.put(strings.Repeat("t", i+1), claims, 0)
	}
	if n := len(c.cur) + len(c.prev); n > 4 {
		t.Errorf("cache holds %d tokens, want at most 4", n)
	}
	if _, ok := c.get(strings.Repeat("t", 10), now); !ok {
		t.Error("the newest token is not remembered")
	}
	if _, ok := c.get(strings.Repeat("t", 1), now); ok {
		t.Error("the oldest token is still remembered")
	}
}
