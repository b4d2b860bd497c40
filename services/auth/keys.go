package auth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Algorithms a key may be bound to.
const (
	AlgHS256 = "HS256"
	AlgES256 = "ES256"
)

// Key file suffixes in a key directory: <kid>.key.pem holds a P-256 private
// key (PKCS #8, signs and verifies ES256), <kid>.pub.pem its public key
// (verifies only), <kid>.hs256 a base64 HMAC secret (signs and verifies
// HS256).
const (
	suffixPrivate = ".key.pem"
	suffixPublic  = ".pub.pem"
	suffixHMAC    = ".hs256"
)

// MinHMACSecret is the shortest HS256 secret accepted, in bytes (RFC 7518
// section 3.2: at least the hash size).
const MinHMACSecret = 32

// Errors of key loading.
var (
	ErrNoKeys     = errors.New("no signing or verification keys configured")
	ErrNoSigner   = errors.New("no key that can sign")
	ErrUnknownKid = errors.New("unknown key id")
)

// Key is one named key bound to one algorithm. A key holds either an HMAC
// secret (HS256) or a P-256 key pair or public key (ES256).
type Key struct {
	// ID is the key's kid.
	ID string
	// Alg is AlgHS256 or AlgES256; a token naming this kid under any other
	// algorithm is refused.
	Alg string

	secret []byte
	priv   *ecdsa.PrivateKey
	pub    *ecdsa.PublicKey
}

// CanSign reports whether the key can sign tokens (a secret or a private
// key, not a bare public key).
func (k *Key) CanSign() bool { return k.secret != nil || k.priv != nil }

// verifyKey is what jwt's Verify wants for k's algorithm.
func (k *Key) verifyKey() any {
	if k.Alg == AlgHS256 {
		return k.secret
	}
	return k.pub
}

// signKey is what jwt's Sign wants for k's algorithm.
func (k *Key) signKey() any {
	if k.Alg == AlgHS256 {
		return k.secret
	}
	return k.priv
}

// KeySet holds keys by kid, for rotation: tokens signed with any of them
// verify. KeySet is read-only after loading and safe for concurrent use.
type KeySet struct {
	keys map[string]*Key
}

// Len returns the number of keys.
func (s *KeySet) Len() int {
	if s == nil {
		return 0
	}
	return len(s.keys)
}

// Get returns the key named kid.
func (s *KeySet) Get(kid string) (*Key, bool) {
	if s == nil {
		return nil, false
	}
	k, ok := s.keys[kid]
	return k, ok
}

// IDs returns the kids, sorted.
func (s *KeySet) IDs() []string {
	ids := make([]string, 0, s.Len())
	if s != nil {
		for id := range s.keys {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

// Signer returns the key named kid, or, when kid is empty, the signing key
// with the greatest kid (keygen names keys by their creation time, so that
// is the newest).
func (s *KeySet) Signer(kid string) (*Key, error) {
	if kid != "" {
		k, ok := s.Get(kid)
		if !ok {
			return nil, fmt.Errorf("%w %q (have %s)", ErrUnknownKid, kid, strings.Join(s.IDs(), ", "))
		}
		if !k.CanSign() {
			return nil, fmt.Errorf("key %q: %w (only its public key is here)", kid, ErrNoSigner)
		}
		return k, nil
	}
	ids := s.IDs()
	for i := len(ids) - 1; i >= 0; i-- {
		if k := s.keys[ids[i]]; k.CanSign() {
			return k, nil
		}
	}
	return nil, ErrNoSigner
}

// add adds k, merging a private and a public key of one kid; a kid bound to
// two algorithms is an error.
func (s *KeySet) add(k *Key) error {
	if s.keys == nil {
		s.keys = map[string]*Key{}
	}
	if err := checkKid(k.ID); err != nil {
		return err
	}
	old, ok := s.keys[k.ID]
	if !ok {
		s.keys[k.ID] = k
		return nil
	}
	if old.Alg != k.Alg {
		return fmt.Errorf("key %q is given as both %s and %s; a kid is bound to one algorithm", k.ID, old.Alg, k.Alg)
	}
	if k.Alg == AlgHS256 {
		return fmt.Errorf("HS256 key %q is given twice", k.ID)
	}
	if old.priv == nil {
		old.priv = k.priv
	}
	if old.priv != nil && !old.priv.PublicKey.Equal(k.pub) {
		return fmt.Errorf("key %q: public key does not match the private key", k.ID)
	}
	return nil
}

// checkKid accepts a kid of 1 to 64 letters, digits, '-', '_' and '.'.
func checkKid(kid string) error {
	if kid == "" || len(kid) > 64 {
		return fmt.Errorf("key id %q: must be 1 to 64 characters", kid)
	}
	for _, c := range kid {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return fmt.Errorf("key id %q: only letters, digits, '-', '_' and '.' are allowed", kid)
		}
	}
	return nil
}

// LoadDir adds every key file of dir (see the suffixes above) to the set.
// A missing directory adds nothing.
func (s *KeySet) LoadDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading key directory: %w", err)
	}
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		name := e.Name()
		if !strings.HasSuffix(name, suffixPrivate) && !strings.HasSuffix(name, suffixPublic) && !strings.HasSuffix(name, suffixHMAC) {
			continue
		}
		if err := s.LoadFile(filepath.Join(dir, name)); err != nil {
			return err
		}
	}
	return nil
}

// LoadFile adds the key in path; its kid and kind come from the file name
// (<kid>.key.pem, <kid>.pub.pem or <kid>.hs256).
func (s *KeySet) LoadFile(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("reading key file: %w", err)
	}
	name := filepath.Base(path)
	var k *Key
	switch {
	case strings.HasSuffix(name, suffixPrivate):
		k, err = parsePrivate(strings.TrimSuffix(name, suffixPrivate), data)
	case strings.HasSuffix(name, suffixPublic):
		k, err = parsePublic(strings.TrimSuffix(name, suffixPublic), data)
	case strings.HasSuffix(name, suffixHMAC):
		k, err = parseHMAC(strings.TrimSuffix(name, suffixHMAC), strings.TrimSpace(string(data)))
	default:
		err = fmt.Errorf("file name must end in %s, %s or %s", suffixPrivate, suffixPublic, suffixHMAC)
	}
	if err != nil {
		return fmt.Errorf("loading key %s: %w", path, err)
	}
	return s.add(k)
}

// AddHMAC adds an HS256 key given as kid=base64secret.
func (s *KeySet) AddHMAC(spec string) error {
	kid, secret, ok := strings.Cut(spec, "=")
	if !ok {
		return fmt.Errorf("HS256 key %q: want kid=base64secret", redact(spec))
	}
	k, err := parseHMAC(strings.TrimSpace(kid), strings.TrimSpace(secret))
	if err != nil {
		return err
	}
	return s.add(k)
}

// redact keeps a secret out of an error message.
func redact(s string) string {
	if kid, _, ok := strings.Cut(s, "="); ok {
		return kid + "=..."
	}
	if len(s) > 4 {
		return s[:4] + "..."
	}
	return s
}

func parseHMAC(kid, b64 string) (*Key, error) {
	secret, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		secret, err = base64.RawURLEncoding.DecodeString(b64)
	}
	if err != nil {
		return nil, fmt.Errorf("HS256 key %q: secret must be base64: %w", kid, err)
	}
	if len(secret) < MinHMACSecret {
		return nil, fmt.Errorf("HS256 key %q: secret must be at least %d bytes, got %d", kid, MinHMACSecret, len(secret))
	}
	return &Key{ID: kid, Alg: AlgHS256, secret: secret}, nil
}

func parsePrivate(kid string, data []byte) (*Key, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM block")
	}
	var priv *ecdsa.PrivateKey
	switch block.Type {
	case "PRIVATE KEY":
		k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parsing PKCS #8 key: %w", err)
		}
		ec, ok := k.(*ecdsa.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("key is %T, want an ECDSA P-256 key", k)
		}
		priv = ec
	case "EC PRIVATE KEY":
		k, err := x509.ParseECPrivateKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parsing EC key: %w", err)
		}
		priv = k
	default:
		return nil, fmt.Errorf("PEM block is %q, want PRIVATE KEY or EC PRIVATE KEY", block.Type)
	}
	if priv.Curve != elliptic.P256() {
		return nil, fmt.Errorf("curve is %s, want P-256 for ES256", priv.Curve.Params().Name)
	}
	return &Key{ID: kid, Alg: AlgES256, priv: priv, pub: &priv.PublicKey}, nil
}

func parsePublic(kid string, data []byte) (*Key, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PUBLIC KEY" {
		return nil, errors.New("want a PEM PUBLIC KEY block")
	}
	k, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parsing public key: %w", err)
	}
	pub, ok := k.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return nil, fmt.Errorf("key is %T, want an ECDSA P-256 public key", k)
	}
	return &Key{ID: kid, Alg: AlgES256, pub: pub}, nil
}

// NewKid returns a kid for a key created now: prefix, then the UTC time,
// so that the newest key sorts last.
func NewKid(prefix string, now time.Time) string {
	return prefix + now.UTC().Format("20060102T150405Z")
}

// Keygen writes a new key named kid into dir (created 0700 when missing):
// for ES256 <kid>.key.pem (0600) and <kid>.pub.pem (0644, for servers that
// only verify), for HS256 <kid>.hs256 (0600). It returns the files written
// and never overwrites one.
func Keygen(dir, kid, alg string) ([]string, error) {
	if err := checkKid(kid); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating key directory: %w", err)
	}
	switch alg {
	case AlgES256:
		priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("generating P-256 key: %w", err)
		}
		der, err := x509.MarshalPKCS8PrivateKey(priv)
		if err != nil {
			return nil, fmt.Errorf("encoding private key: %w", err)
		}
		pubDER, err := x509.MarshalPKIXPublicKey(&priv.PublicKey)
		if err != nil {
			return nil, fmt.Errorf("encoding public key: %w", err)
		}
		privPath := filepath.Join(dir, kid+suffixPrivate)
		pubPath := filepath.Join(dir, kid+suffixPublic)
		if err := writeNew(privPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
			return nil, err
		}
		if err := writeNew(pubPath, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o644); err != nil {
			return nil, err
		}
		return []string{privPath, pubPath}, nil
	case AlgHS256:
		secret := make([]byte, 32)
		if _, err := rand.Read(secret); err != nil {
			return nil, fmt.Errorf("generating secret: %w", err)
		}
		path := filepath.Join(dir, kid+suffixHMAC)
		if err := writeNew(path, []byte(base64.StdEncoding.EncodeToString(secret)+"\n"), 0o600); err != nil {
			return nil, err
		}
		return []string{path}, nil
	}
	return nil, fmt.Errorf("algorithm %q: want %s or %s", alg, AlgES256, AlgHS256)
}

// writeNew writes a file that must not exist yet.
func writeNew(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("creating key file: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		_ = f.Close()
		return fmt.Errorf("writing key file %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing key file %s: %w", path, err)
	}
	return nil
}
