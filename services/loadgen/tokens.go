package loadgen

import (
	"fmt"
	"sync"
	"time"

	"github.com/chapper/chapper/services/auth"
)

// Tokens signs one bearer token per simulated canvasser, as each phone
// would hold its own, and reuses it until half its lifetime has passed.
// Use its Token method as CampaignConfig.Token.
type Tokens struct {
	issuer *auth.Issuer
	ttl    time.Duration
	now    func() time.Time

	mu     sync.Mutex
	byID   map[string]issued
	signed int
}

type issued struct {
	token   string
	renewAt time.Time
}

// NewTokens returns a Tokens signing with issuer, each token valid for ttl.
func NewTokens(issuer *auth.Issuer, ttl time.Duration) (*Tokens, error) {
	if ttl <= 0 {
		return nil, fmt.Errorf("loadgen: token ttl must be positive, got %s", ttl)
	}
	return &Tokens{issuer: issuer, ttl: ttl, now: time.Now, byID: make(map[string]issued)}, nil
}

// Token returns canvasserID's token (role canvasser), signing it on first
// use and again once half its lifetime has passed.
func (t *Tokens) Token(canvasserID string) (string, error) {
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	if tok, ok := t.byID[canvasserID]; ok && now.Before(tok.renewAt) {
		return tok.token, nil
	}
	s, err := t.issuer.Issue(canvasserID, auth.RoleCanvasser, t.ttl, nil)
	if err != nil {
		return "", err
	}
	t.byID[canvasserID] = issued{token: s, renewAt: now.Add(t.ttl / 2)}
	t.signed++
	return s, nil
}

// Canvassers returns how many distinct canvassers hold a token, and how
// many tokens were signed in all (renewals included).
func (t *Tokens) Canvassers() (canvassers, signed int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.byID), t.signed
}
