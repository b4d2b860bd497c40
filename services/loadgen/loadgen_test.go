package loadgen_test

import (
	"context"
	"testing"
	"time"

	"github.com/chapper/chapper/services/devstack/devtest"
	"github.com/chapper/chapper/services/ingest"
	"github.com/chapper/chapper/services/loadgen"
	"github.com/chapper/chapper/services/server"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
)

func TestMain(m *testing.M) { devtest.Main(m) }

// TestRun puts paced, generated and pre-encoded load on a real ingest and
// checks the counts and latencies it reports.
func TestRun(t *testing.T) {
	k := devtest.Kafka(t)
	addr := startIngest(t, k.Addr())
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	tests := []struct {
		name string
		cfg  loadgen.Config
		min  time.Duration // least elapsed time the pacing implies
	}{
		{name: "paced mixed", cfg: loadgen.Config{Records: 250, Rate: 2500, Clients: 4, BatchSize: 50, Kind: "mixed"}, min: 80 * time.Millisecond},
		{name: "unpaced pregenerated", cfg: loadgen.Config{Records: 1000, Clients: 8, BatchSize: 100, Kind: "followups", Pregenerate: true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			cfg.Addr = addr
			cfg.Timeout = 10 * time.Second
			res, err := loadgen.Run(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			if res.Accepted != cfg.Records || res.Submitted != cfg.Records || res.Failed != 0 || res.Rejected != 0 {
				t.Errorf("result %v, want all %d accepted", res, cfg.Records)
			}
			if want := (cfg.Records + cfg.BatchSize - 1) / cfg.BatchSize; len(res.Latencies) != want {
				t.Errorf("%d latencies, want one per batch (%d)", len(res.Latencies), want)
			}
			if res.Elapsed < tc.min {
				t.Errorf("took %v; pacing implies at least %v", res.Elapsed, tc.min)
			}
			if res.Percentile(50) > res.Percentile(99) || res.Percentile(99) > res.Percentile(100) {
				t.Errorf("percentiles out of order: %v", res)
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		edit func(*loadgen.Config)
	}{
		{name: "no address", edit: func(c *loadgen.Config) { c.Addr = "" }},
		{name: "no clients", edit: func(c *loadgen.Config) { c.Clients = 0 }},
		{name: "negative rate", edit: func(c *loadgen.Config) { c.Rate = -1 }},
		{name: "unknown kind", edit: func(c *loadgen.Config) { c.Kind = "votes" }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := loadgen.Config{Addr: "x:1", Records: 1, Clients: 1, BatchSize: 1, Kind: "visits", Timeout: time.Second}
			if err := c.Validate(); err != nil {
				t.Fatalf("base config invalid: %v", err)
			}
			tc.edit(&c)
			if err := c.Validate(); err == nil {
				t.Error("Validate accepted it")
			}
		})
	}
}

// startIngest runs a real ingest service on a free port against brokers
// until the test ends, and returns its address; opts are the gRPC server's
// options (authentication, for example).
func startIngest(t *testing.T, brokers string, opts ...grpc.ServerOption) string {
	t.Helper()
	svc, err := ingest.New(ingest.Config{
		Brokers: []string{brokers}, BatchLimit: 500, DedupSize: 100000, MaxFuture: time.Hour,
		ProduceTimeout: 5 * time.Second, BatchTimeout: time.Millisecond, MaxAttempts: 3,
		Compression: "lz4", KafkaClientID: "loadgen-test", CreateTopics: true, TopicPartitions: 12, ReplicationFactor: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Config{Addr: "127.0.0.1:0", ShutdownTimeout: time.Second}, nil, opts...)
	if err != nil {
		t.Fatal(err)
	}
	svc.Register(srv.GRPC())
	srv.Gate(svc.WaitReady)
	ctx, stop := context.WithCancel(context.Background())
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return svc.Run(gctx) })
	g.Go(func() error { return srv.Run(gctx) })
	t.Cleanup(func() {
		stop()
		if err := g.Wait(); err != nil {
			t.Errorf("ingest: %v", err)
		}
	})
	select {
	case <-srv.Listening():
	case <-time.After(60 * time.Second):
		t.Fatal("server not listening")
	}
	return srv.Addr().String()
}
