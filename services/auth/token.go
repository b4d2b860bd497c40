// Package auth is Chapper's authentication and authorisation: signed bearer
// tokens (JWT, HS256 or ES256, several keys chosen by kid), the claims they
// carry (canvasser id, role, optional area), and the gRPC interceptors that
// check them before a call reaches its service.
//
// A client sends its token in the gRPC metadata `authorization: Bearer
// <JWT>`. A missing, malformed, expired, not-yet-valid, wrongly signed or
// unknown-kid token is UNAUTHENTICATED; the wrong role, or a chunk outside
// the token's area, is PERMISSION_DENIED.
package auth

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Role says what a token's holder may do.
type Role string

// The roles.
const (
	// RoleCanvasser may submit records (as itself) and read.
	RoleCanvasser Role = "canvasser"
	// RoleReader may only read.
	RoleReader Role = "reader"
	// RoleOperator may do everything, including submitting records naming
	// any canvasser and correcting another canvasser's records.
	RoleOperator Role = "operator"
)

// ParseRole parses a role name.
func ParseRole(s string) (Role, error) {
	switch r := Role(s); r {
	case RoleCanvasser, RoleReader, RoleOperator:
		return r, nil
	}
	return "", fmt.Errorf("role %q: want canvasser, reader or operator", s)
}

// Claims are what a Chapper token says: the canvasser id (the JWT subject),
// the role and optionally the area the holder works in.
type Claims struct {
	jwt.RegisteredClaims
	Role Role  `json:"role"`
	Area *Area `json:"area,omitempty"`
}

// CanvasserID returns the canvasser id, the token's subject.
func (c *Claims) CanvasserID() string { return c.Subject }

// Errors of token verification; every one of them is UNAUTHENTICATED.
var (
	ErrNoToken      = errors.New("missing authorization metadata (want \"authorization: Bearer <token>\")")
	ErrMalformed    = errors.New("malformed token")
	ErrWrongAlg     = errors.New("token algorithm does not match its key")
	ErrBadClaims    = errors.New("token claims are invalid")
	ErrAuthDisabled = errors.New("authentication is off")
)

// Config configures token checking and issuing.
type Config struct {
	// On turns authentication on.
	On Switch
	// KeysDir is a directory of key files (<kid>.key.pem, <kid>.pub.pem,
	// <kid>.hs256).
	KeysDir string
	// HMACKeys are inline HS256 keys, comma-separated kid=base64secret.
	HMACKeys string
	// Issuer and Audience are the iss and aud every token must carry.
	Issuer   string
	Audience string
	// ClockSkew is the allowance when checking exp, nbf and iat.
	ClockSkew time.Duration
}

// RegisterFlags registers the flags under prefix (e.g. "auth" gives
// -auth.keys-dir); the on/off switch is -<prefix> itself.
func (c *Config) RegisterFlags(prefix string, fs *flag.FlagSet, on bool, keysDir string) {
	c.On = Switch(on)
	fs.Var(&c.On, prefix, "Authentication: on or off (a bare -"+prefix+" means on). With it on, every call but health and reflection needs \"authorization: Bearer <token>\".")
	fs.StringVar(&c.KeysDir, prefix+".keys-dir", keysDir, "Directory of token keys: <kid>.key.pem (ES256 private), <kid>.pub.pem (ES256 public, verify only), <kid>.hs256 (base64 HMAC secret).")
	fs.StringVar(&c.HMACKeys, prefix+".hs256-keys", "", "Inline HS256 keys, comma-separated kid=base64secret (at least 32 bytes each).")
	fs.StringVar(&c.Issuer, prefix+".issuer", "chapper", "Issuer (iss) tokens are issued with and must carry.")
	fs.StringVar(&c.Audience, prefix+".audience", "chapper", "Audience (aud) tokens are issued for and must carry.")
	fs.DurationVar(&c.ClockSkew, prefix+".clock-skew", 30*time.Second, "Allowance for clock differences when checking a token's exp, nbf and iat.")
}

// LoadKeys loads the configured keys (directory and inline); an empty set is
// not an error here (see Verifier).
func (c *Config) LoadKeys() (*KeySet, error) {
	ks := &KeySet{}
	if c.KeysDir != "" {
		if err := ks.LoadDir(c.KeysDir); err != nil {
			return nil, err
		}
	}
	for _, spec := range strings.Split(c.HMACKeys, ",") {
		if spec = strings.TrimSpace(spec); spec == "" {
			continue
		}
		if err := ks.AddHMAC(spec); err != nil {
			return nil, err
		}
	}
	return ks, nil
}

// Switch is an on/off flag value: on, off, true, false, 1, 0; a bare flag
// means on.
type Switch bool

// String implements flag.Value.
func (s *Switch) String() string {
	if s != nil && bool(*s) {
		return "on"
	}
	return "off"
}

// Set implements flag.Value.
func (s *Switch) Set(v string) error {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "on", "true", "1", "yes":
		*s = true
	case "off", "false", "0", "no":
		*s = false
	default:
		return fmt.Errorf("%q: want on or off", v)
	}
	return nil
}

// IsBoolFlag lets a bare -auth mean on.
func (s *Switch) IsBoolFlag() bool { return true }

// Verifier checks tokens against a key set. It is safe for concurrent use.
type Verifier struct {
	keys   *KeySet
	parser *jwt.Parser
	now    func() time.Time
	skew   time.Duration
	cache  *tokenCache // tokens that verified, by their bytes
}

// NewVerifier returns a Verifier for the keys and the configuration's
// issuer, audience and clock skew. It fails with ErrNoKeys on an empty set.
func NewVerifier(cfg Config, keys *KeySet) (*Verifier, error) {
	return newVerifier(cfg, keys, time.Now)
}

func newVerifier(cfg Config, keys *KeySet, now func() time.Time) (*Verifier, error) {
	if keys.Len() == 0 {
		return nil, ErrNoKeys
	}
	if cfg.Issuer == "" || cfg.Audience == "" {
		return nil, errors.New("token issuer and audience must be set")
	}
	p := jwt.NewParser(
		jwt.WithValidMethods([]string{AlgHS256, AlgES256}),
		jwt.WithIssuer(cfg.Issuer),
		jwt.WithAudience(cfg.Audience),
		jwt.WithLeeway(cfg.ClockSkew),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithTimeFunc(now),
		jwt.WithStrictDecoding(),
	)
	return &Verifier{keys: keys, parser: p, now: now, skew: cfg.ClockSkew, cache: newTokenCache(tokenCacheSize)}, nil
}

// Verify checks a token (without the "Bearer " prefix): its kid names a
// known key, its header's algorithm is that key's, the signature verifies,
// and exp, nbf, iat, iss and aud hold; then that it names a canvasser and a
// known role, and a well-formed area when it has one.
//
// A token that verified is remembered by its exact bytes and answered
// again without checking its signature while the clock is inside the
// window the checks allow (up to exp plus the clock skew); the Claims
// returned are then shared by every call with that token and must not be
// modified.
func (v *Verifier) Verify(token string) (*Claims, error) {
	if c, ok := v.cache.get(token, v.now()); ok {
		tokenCacheHits.Inc()
		return c, nil
	}
	tokenCacheMisses.Inc()
	c, err := v.verify(token)
	if err != nil {
		return nil, err
	}
	v.cache.put(token, c, v.skew)
	return c, nil
}

// verify checks token in full.
func (v *Verifier) verify(token string) (*Claims, error) {
	claims := &Claims{}
	_, err := v.parser.ParseWithClaims(token, claims, func(t *jwt.Token) (any, error) {
		kid, _ := t.Header["kid"].(string)
		if kid == "" {
			return nil, fmt.Errorf("%w: token header has no kid", ErrUnknownKid)
		}
		k, ok := v.keys.Get(kid)
		if !ok {
			return nil, fmt.Errorf("%w %q", ErrUnknownKid, kid)
		}
		// The kid decides the algorithm, never the token: an HS256 header
		// under an ES256 kid would otherwise verify an HMAC keyed with the
		// public key, which anyone has.
		if t.Method.Alg() != k.Alg {
			return nil, fmt.Errorf("%w: header says %s, key %q is %s", ErrWrongAlg, t.Method.Alg(), kid, k.Alg)
		}
		return k.verifyKey(), nil
	})
	if err != nil {
		if errors.Is(err, jwt.ErrTokenMalformed) {
			return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
		}
		return nil, err
	}
	if claims.Subject == "" {
		return nil, fmt.Errorf("%w: sub (the canvasser id) is required", ErrBadClaims)
	}
	if _, err := ParseRole(string(claims.Role)); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadClaims, err)
	}
	if claims.Area != nil {
		if err := claims.Area.Validate(); err != nil {
			return nil, fmt.Errorf("%w: area: %v", ErrBadClaims, err)
		}
	}
	return claims, nil
}

// Issuer signs tokens with one key.
type Issuer struct {
	key      *Key
	issuer   string
	audience string
	now      func() time.Time
}

// NewIssuer returns an Issuer signing with the key named kid ("" for the
// newest signing key of keys).
func NewIssuer(cfg Config, keys *KeySet, kid string) (*Issuer, error) {
	k, err := keys.Signer(kid)
	if err != nil {
		return nil, err
	}
	return &Issuer{key: k, issuer: cfg.Issuer, audience: cfg.Audience, now: time.Now}, nil
}

// KeyID returns the kid the issuer signs with.
func (is *Issuer) KeyID() string { return is.key.ID }

// Issue returns a signed token for canvasser with role, valid for ttl from
// now, limited to area when area is not nil.
func (is *Issuer) Issue(canvasser string, role Role, ttl time.Duration, area *Area) (string, error) {
	if canvasser == "" {
		return "", errors.New("canvasser id is required")
	}
	if _, err := ParseRole(string(role)); err != nil {
		return "", err
	}
	if ttl <= 0 {
		return "", fmt.Errorf("ttl must be positive, got %s", ttl)
	}
	if area != nil {
		if err := area.Validate(); err != nil {
			return "", fmt.Errorf("area: %w", err)
		}
	}
	now := is.now().Truncate(time.Second)
	c := &Claims{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer:    is.issuer,
			Subject:   canvasser,
			Audience:  jwt.ClaimStrings{is.audience},
			IssuedAt:  jwt.NewNumericDate(now),
			NotBefore: jwt.NewNumericDate(now),
			ExpiresAt: jwt.NewNumericDate(now.Add(ttl)),
		},
		Role: role,
		Area: area,
	}
	var method jwt.SigningMethod = jwt.SigningMethodES256
	if is.key.Alg == AlgHS256 {
		method = jwt.SigningMethodHS256
	}
	t := jwt.NewWithClaims(method, c)
	t.Header["kid"] = is.key.ID
	s, err := t.SignedString(is.key.signKey())
	if err != nil {
		return "", fmt.Errorf("signing token with key %q: %w", is.key.ID, err)
	}
	return s, nil
}

type ctxKey struct{}

// NewContext returns ctx carrying claims.
func NewContext(ctx context.Context, c *Claims) context.Context {
	return context.WithValue(ctx, ctxKey{}, c)
}

// FromContext returns the claims of the call's token; false when the call
// carried none (authentication off, or a public method).
func FromContext(ctx context.Context) (*Claims, bool) {
	c, ok := ctx.Value(ctxKey{}).(*Claims)
	return c, ok && c != nil
}
