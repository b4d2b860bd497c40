package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/chapper/chapper/services/auth"
)

// defaultKeysDir is where `chapper dev -auth` keeps its key pair with the
// default -dev.dir, so `chapper token issue` in the same checkout finds it.
const defaultKeysDir = "var/auth"

// runToken is `chapper token issue|keygen`.
func runToken(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return errors.New("chapper token: give a subcommand: issue (print a signed token) or keygen (write a key)")
	}
	switch args[0] {
	case "issue":
		return runTokenIssue(args[1:], stdout, stderr)
	case "keygen":
		return runTokenKeygen(args[1:], stdout, stderr)
	}
	return fmt.Errorf("chapper token: unknown subcommand %q (want issue or keygen)", args[0])
}

// runTokenIssue prints a signed token alone on one line of stdout; how to
// use it goes to stderr.
func runTokenIssue(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("token issue", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg auth.Config
	cfg.RegisterFlags("auth", fs, true, defaultKeysDir)
	canvasser := fs.String("canvasser", "", "Canvasser id the token is for (its subject; ingest sets canvasser_id from it). Required.")
	role := fs.String("role", string(auth.RoleCanvasser), "Role: canvasser (submit and read), reader (read only) or operator.")
	ttl := fs.Duration("ttl", 12*time.Hour, "How long the token is valid.")
	area := fs.String("area", "", "Optional area: regions:<r>,<r>... or bbox:<min_lat>,<min_lon>,<max_lat>,<max_lon>.")
	kid := fs.String("kid", "", "Key id to sign with; empty: the newest key that can sign.")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *canvasser == "" {
		return errors.New("-canvasser is required")
	}
	r, err := auth.ParseRole(*role)
	if err != nil {
		return fmt.Errorf("-role: %w", err)
	}
	var a *auth.Area
	if *area != "" {
		if a, err = auth.ParseArea(*area); err != nil {
			return fmt.Errorf("-area: %w", err)
		}
	}
	keys, err := cfg.LoadKeys()
	if err != nil {
		return fmt.Errorf("loading token keys: %w", err)
	}
	if keys.Len() == 0 {
		return fmt.Errorf("no key in %s: run `chapper dev -auth` once or `chapper token keygen`, or give -auth.keys-dir or -auth.hs256-keys", cfg.KeysDir)
	}
	is, err := auth.NewIssuer(cfg, keys, *kid)
	if err != nil {
		return fmt.Errorf("choosing the signing key: %w", err)
	}
	tok, err := is.Issue(*canvasser, r, *ttl, a)
	if err != nil {
		return fmt.Errorf("issuing token: %w", err)
	}
	fmt.Fprintln(stdout, tok)
	fmt.Fprintf(stderr, "token for %s (role %s, key %s, valid %s). Use it as gRPC metadata, e.g.\n", *canvasser, r, is.KeyID(), *ttl)
	fmt.Fprintf(stderr, "  TOKEN=$(chapper token issue -canvasser=%s -role=%s)\n", *canvasser, r)
	fmt.Fprintf(stderr, "  grpcurl -plaintext -H \"authorization: Bearer $TOKEN\" -d '{\"visits\":[...]}' 127.0.0.1:7070 canvass.v1.IngestService/Submit\n")
	return nil
}

// runTokenKeygen writes a new key into the key directory.
func runTokenKeygen(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("token keygen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("auth.keys-dir", defaultKeysDir, "Directory to write the key into (created when missing).")
	alg := fs.String("alg", auth.AlgES256, "Algorithm the key is bound to: ES256 (a P-256 key pair; servers that only verify need just <kid>.pub.pem) or HS256 (a shared secret).")
	kid := fs.String("kid", "", "Key id; empty: k<UTC time>, so the newest key sorts last and signs by default.")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	id := *kid
	if id == "" {
		id = auth.NewKid("k", time.Now())
	}
	files, err := auth.Keygen(*dir, id, strings.ToUpper(*alg))
	if err != nil {
		return fmt.Errorf("writing key %s: %w", id, err)
	}
	for _, f := range files {
		fmt.Fprintln(stdout, f)
	}
	fmt.Fprintf(stderr, "key %s (%s) written; servers load it with -auth.keys-dir=%s\n", id, strings.ToUpper(*alg), *dir)
	return nil
}

// devAuth prepares `chapper dev -auth`: the keys default to <dev.dir>/auth,
// and a key pair is created there on first use.
func devAuth(c *auth.Config, devDir string, stderr io.Writer) error {
	if !c.On {
		return nil
	}
	if c.KeysDir == "" {
		c.KeysDir = filepath.Join(devDir, "auth")
	}
	if abs, err := filepath.Abs(c.KeysDir); err == nil {
		c.KeysDir = abs
	}
	keys, err := c.LoadKeys()
	if err != nil {
		return fmt.Errorf("loading dev token keys: %w", err)
	}
	if _, err := keys.Signer(""); err == nil {
		return nil
	}
	if _, err := os.Stat(c.KeysDir); err == nil && keys.Len() > 0 {
		// Public keys only: someone else signs; nothing to create.
		return nil
	}
	id := auth.NewKid("dev-", time.Now())
	if _, err := auth.Keygen(c.KeysDir, id, auth.AlgES256); err != nil {
		return fmt.Errorf("creating the dev key pair: %w", err)
	}
	fmt.Fprintf(stderr, "created token key %s in %s\n", id, c.KeysDir)
	return nil
}
