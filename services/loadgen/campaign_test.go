package loadgen_test

import (
	"context"
	"image/png"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/chapper/chapper/services/devstack/devtest"
	"github.com/chapper/chapper/services/loadgen"
)

// TestCampaign runs a short, compressed campaign against a real ingest on
// a real broker, with bad records, lost answers, corrections and phones
// going offline, and checks the accounting: every generated record was
// answered, shed or is still queued on an offline phone; resent batches
// come back DUPLICATE; bad records are REJECTED; the plot is a PNG.
func TestCampaign(t *testing.T) {
	k := devtest.Kafka(t)
	addr := startIngest(t, k.Addr())
	plotFile := filepath.Join(t.TempDir(), "campaign.png")
	cfg := loadgen.CampaignConfig{
		Canvassers: 1000, Duration: 3 * time.Second, TeamSize: 8, KnockEvery: 100 * time.Second, Speedup: 50,
		OfflineShare: 0.2, OfflineFor: 5 * time.Minute, BadShare: 0.05, RetryShare: 0.1, CorrectionShare: 0.05,
		Connections: 4, MaxInFlight: 64, MaxBacklog: 10000, Plot: plotFile, Seed: 11,
		Probes: loadgen.ProbeConfig{KafkaBrokers: k.Addr()},
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := loadgen.RunCampaign(ctx, addr, 10*time.Second, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("offered %.0f/s configured; %d generated, %d accepted, %d duplicate, %d rejected, %d queued, p99 %v",
		res.OfferedRate, res.Offered, res.Accepted, res.Duplicate, res.Rejected, res.Queued,
		time.Duration(res.Latency.ValueAtQuantile(99))*time.Microsecond)
	if res.Failed != 0 || res.Shed != 0 {
		t.Fatalf("%d failed, %d shed: %v", res.Failed, res.Shed, res.FirstError)
	}
	if got := res.Sent + res.Shed + res.Queued; got != res.Offered {
		t.Errorf("sent %d + shed %d + queued %d = %d, want every generated record (%d)", res.Sent, res.Shed, res.Queued, got, res.Offered)
	}
	if res.Accepted+res.Rejected+res.Duplicate+res.Conflict != res.Sent {
		t.Errorf("answers %d+%d+%d+%d do not add up to %d sent", res.Accepted, res.Rejected, res.Duplicate, res.Conflict, res.Sent)
	}
	if res.Rejected == 0 || res.RetryDuplicate == 0 || res.Queued == 0 {
		t.Errorf("want some rejected (%d), resent-duplicate (%d) and queued (%d) records", res.Rejected, res.RetryDuplicate, res.Queued)
	}
	if res.RetryWrong != 0 {
		t.Errorf("%d records of resent batches were not answered DUPLICATE", res.RetryWrong)
	}
	if int(res.Latency.TotalCount()) == 0 || len(res.Points) < 2 {
		t.Errorf("%d latencies and %d points, want both", res.Latency.TotalCount(), len(res.Points))
	}
	measured := 0
	for _, p := range res.Points {
		if p.Lag[1] >= 0 {
			measured++
		}
	}
	if measured == 0 {
		t.Errorf("lag of the persist group measured in none of %d points", len(res.Points))
	}
	f, err := os.Open(plotFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := png.Decode(f); err != nil {
		t.Errorf("plot is not a PNG: %v", err)
	}
}
