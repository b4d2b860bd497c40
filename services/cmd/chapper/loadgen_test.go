package main

import (
	"flag"
	"io"
	"testing"
	"time"

	"github.com/chapper/chapper/services/auth"
	"github.com/chapper/chapper/services/loadgen"
)

// TestLoadgenTokens checks that `chapper loadgen -auth` signs with the
// configured key: a token per canvasser in campaign mode (its subject is
// that canvasser), one operator token in closed mode, and a clear error
// when there is no key that can sign.
func TestLoadgenTokens(t *testing.T) {
	dir := t.TempDir()
	if _, err := auth.Keygen(dir, "k1", auth.AlgES256); err != nil {
		t.Fatal(err)
	}
	var ac auth.Config
	ac.RegisterFlags("auth", flag.NewFlagSet("t", flag.PanicOnError), true, dir)
	keys, err := ac.LoadKeys()
	if err != nil {
		t.Fatal(err)
	}
	v, err := auth.NewVerifier(ac, keys)
	if err != nil {
		t.Fatal(err)
	}

	campaign := loadgen.Config{Mode: "campaign"}
	if err := loadgenTokens(&campaign, ac, time.Hour, io.Discard); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"c-1", "c-2"} {
		tok, err := campaign.Campaign.Token(id)
		if err != nil {
			t.Fatal(err)
		}
		c, err := v.Verify(tok)
		if err != nil {
			t.Fatalf("token for %s: %v", id, err)
		}
		if c.CanvasserID() != id || c.Role != auth.RoleCanvasser {
			t.Errorf("token for %s names %s with role %s", id, c.CanvasserID(), c.Role)
		}
	}

	closed := loadgen.Config{Mode: "closed"}
	if err := loadgenTokens(&closed, ac, time.Hour, io.Discard); err != nil {
		t.Fatal(err)
	}
	if c, err := v.Verify(closed.Token); err != nil || c.Role != auth.RoleOperator {
		t.Errorf("closed mode token: claims %+v, error %v; want an operator token", c, err)
	}

	noKeys := ac
	noKeys.KeysDir = t.TempDir()
	if err := loadgenTokens(&loadgen.Config{Mode: "campaign"}, noKeys, time.Hour, io.Discard); err == nil {
		t.Error("signing without a key succeeded")
	}
}
