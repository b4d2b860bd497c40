package loadgen_test

import (
	"context"
	"testing"
	"time"

	"github.com/chapper/chapper/services/auth"
	"github.com/chapper/chapper/services/auth/authtest"
	"github.com/chapper/chapper/services/devstack/devtest"
	"github.com/chapper/chapper/services/loadgen"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestCampaignSignsTokenPerCanvasser runs a campaign against an ingest with
// authentication on. Ingest takes canvasser_id from the token and rejects a
// record naming anyone else, so the campaign is only fully accepted when
// each simulated canvasser sends its own token; without tokens every
// Submit fails UNAUTHENTICATED.
func TestCampaignSignsTokenPerCanvasser(t *testing.T) {
	_, v, is := authtest.Keys(t)
	k := devtest.Kafka(t)
	addr := startIngest(t, k.Addr(), auth.NewInterceptors(v).ServerOptions()...)

	run := func(token func(string) (string, error)) *loadgen.CampaignResult {
		cfg := loadgen.CampaignConfig{
			Canvassers: 400, Duration: 2 * time.Second, TeamSize: 8, KnockEvery: 100 * time.Second, Speedup: 50,
			Connections: 2, MaxInFlight: 32, MaxBacklog: 10000, Seed: 3, Token: token,
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		res, err := loadgen.RunCampaign(ctx, addr, 10*time.Second, cfg)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}

	tokens, err := loadgen.NewTokens(is, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	res := run(tokens.Token)
	if res.Failed != 0 || res.Rejected != 0 || res.Accepted == 0 {
		t.Fatalf("with a token per canvasser: %d accepted, %d rejected, %d failed (%v); want all accepted",
			res.Accepted, res.Rejected, res.Failed, res.FirstError)
	}
	canvassers, signed := tokens.Canvassers()
	if canvassers < 100 || signed != canvassers {
		t.Errorf("%d canvassers hold tokens, %d signed; want one token each for most of the 400", canvassers, signed)
	}

	res = run(nil)
	if res.Accepted != 0 || res.Failed == 0 || status.Code(res.FirstError) != codes.Unauthenticated {
		t.Errorf("without tokens: %d accepted, %d failed, first error %v; want every Submit UNAUTHENTICATED", res.Accepted, res.Failed, res.FirstError)
	}
}
