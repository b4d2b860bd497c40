// Package authtest gives tests of authenticated services a key, the
// configuration that reads it, a verifier and an issuer.
package authtest

import (
	"flag"
	"testing"

	"github.com/chapper/chapper/services/auth"
)

// Keys writes an ES256 key pair with kid "k1" into a temporary directory
// and returns the configuration reading it (authentication on, the
// default issuer and audience), a verifier and an issuer for it.
func Keys(t testing.TB) (auth.Config, *auth.Verifier, *auth.Issuer) {
	t.Helper()
	dir := t.TempDir()
	if _, err := auth.Keygen(dir, "k1", auth.AlgES256); err != nil {
		t.Fatal(err)
	}
	var cfg auth.Config
	cfg.RegisterFlags("auth", flag.NewFlagSet("authtest", flag.PanicOnError), true, dir)
	keys, err := cfg.LoadKeys()
	if err != nil {
		t.Fatal(err)
	}
	v, err := auth.NewVerifier(cfg, keys)
	if err != nil {
		t.Fatal(err)
	}
	is, err := auth.NewIssuer(cfg, keys, "")
	if err != nil {
		t.Fatal(err)
	}
	return cfg, v, is
}
