package loadgen

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

func testCampaign(cfg CampaignConfig) *campaign {
	c := &campaign{cfg: cfg, rng: rand.New(rand.NewPCG(cfg.Seed, 1))}
	c.placeTeams()
	return c
}

// TestSizing checks DESIGN.md's sizing: 35,000 canvassers knocking every
// 100 s give about 700 records/s with the default mix.
func TestSizing(t *testing.T) {
	cfg := CampaignConfig{Canvassers: 35000, KnockEvery: 100 * time.Second, Speedup: 1}
	if got := cfg.OfferedRate(); math.Abs(got-700)/700 > 0.02 {
		t.Errorf("35,000 canvassers offer %.1f records/s, want about 700", got)
	}
}

// TestKnockMix generates many knocks and checks the mean records per knock,
// the share of bad records and that corrections name an earlier intention
// of the same canvasser.
func TestKnockMix(t *testing.T) {
	c := testCampaign(CampaignConfig{Canvassers: 100, TeamSize: 10, BadShare: 0.05, CorrectionShare: 0.1, Seed: 3})
	const knocks = 40000
	var records, visits, bad, corrections int
	seen := map[string]string{} // intention id -> canvasser
	now := time.Now()
	for i := range knocks {
		p := c.people[i%len(c.people)]
		req := c.records(p, now)
		records += count(req)
		for _, v := range req.Visits {
			visits++
			if v.GetLocation().GetLatitude() > 90 {
				bad++
			}
		}
		for _, in := range req.Intentions {
			if in.GetElectorId() == "" {
				bad++
			}
			if r := in.GetReplacesId(); r != "" {
				corrections++
				if seen[r] != p.id {
					t.Fatalf("correction %s replaces %s, which is not an earlier intention of %s", in.GetId(), r, p.id)
				}
			}
			seen[in.GetId()] = p.id
		}
	}
	if visits != knocks {
		t.Errorf("%d visits for %d knocks, want one each", visits, knocks)
	}
	if mean := float64(records) / knocks; math.Abs(mean-RecordsPerKnock)/RecordsPerKnock > 0.03 {
		t.Errorf("%.3f records per knock, want %.3f", mean, RecordsPerKnock)
	}
	if share := float64(bad) / float64(records); math.Abs(share-0.05) > 0.01 {
		t.Errorf("bad share %.3f, want 0.05", share)
	}
	if share := float64(corrections) / knocks; math.Abs(share-0.1) > 0.02 {
		t.Errorf("correction share %.3f of knocks, want about 0.1", share)
	}
}

// TestOfflineShare checks that the online/offline spells leave the
// configured share of phones offline at any moment.
func TestOfflineShare(t *testing.T) {
	c := testCampaign(CampaignConfig{Canvassers: 4000, TeamSize: 8, OfflineShare: 0.2, OfflineFor: 10 * time.Minute, Speedup: 60, Seed: 5})
	start := time.Now()
	offline, total := 0, 0
	for step := range 200 {
		now := start.Add(time.Duration(step) * 3 * time.Second)
		for _, p := range c.people {
			if c.offline(p, now) {
				offline++
			}
			total++
		}
	}
	if share := float64(offline) / float64(total); math.Abs(share-0.2) > 0.02 {
		t.Errorf("%.3f of phones offline, want 0.2", share)
	}
}

func TestSplit(t *testing.T) {
	c := testCampaign(CampaignConfig{Canvassers: 1, TeamSize: 1, Seed: 9})
	var all = c.records(c.people[0], time.Now())
	for range 300 {
		all = merge(all, c.records(c.people[0], time.Now()))
	}
	parts := split(all, flushLimit)
	n := 0
	for _, p := range parts {
		if count(p) > flushLimit || count(p) == 0 {
			t.Fatalf("a part of %d records, want 1..%d", count(p), flushLimit)
		}
		n += count(p)
	}
	if n != count(all) {
		t.Fatalf("parts hold %d records, want %d", n, count(all))
	}
}
