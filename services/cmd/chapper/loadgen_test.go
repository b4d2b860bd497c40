package main

import (
	"io"
	"testing"
	"time"

	"github.com/chapper/chapper/services/auth"
	"github.com/chapper/chapper/services/auth/authtest"
	"github.com/chapper/chapper/services/loadgen"
)

// TestLoadgenTokens checks that `chapper loadgen -auth` signs with the
// configured key: a token per canvasser in campaign mode (its subject is
// that canvasser), one operator token in closed mode, and a clear error
// when there is no key that can sign.
func TestLoadgenTokens(t *testing.T) {
	ac, v, _ := authtest.Keys(t)

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
