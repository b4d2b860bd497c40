package ingest

import (
	"context"
	"errors"
	"flag"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"github.com/chapper/chapper/services/devstack/devtest"
	"github.com/chapper/chapper/services/server"
	"github.com/google/uuid"
	"github.com/segmentio/kafka-go"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// TestMain runs the tests on the devtest harness, which checks for leaked
// goroutines once it stopped its servers.
func TestMain(m *testing.M) { devtest.Main(m) }

// quietLog keeps test output to warnings and errors.
var quietLog = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

// testConfig returns the flag defaults with brokers set, one replica (a
// single kfake broker) and a short produce timeout.
func testConfig(brokers string) Config {
	var c Config
	c.RegisterFlags("ingest", flag.NewFlagSet("test", flag.PanicOnError))
	c.Brokers = []string{brokers}
	c.ReplicationFactor = 1
	c.ProduceTimeout = 2 * time.Second
	c.Logger = quietLog
	return c
}

// running is an ingest service served by a real gRPC server on a free port.
type running struct {
	svc    *Service
	srv    *server.Server
	addr   string
	conn   *grpc.ClientConn
	client canvassv1.IngestServiceClient
}

// startIngest runs ingest against brokers behind a server on a free port and
// stops both when t ends, failing t if either returned an error.
func startIngest(t testing.TB, brokers string, edit ...func(*Config)) *running {
	t.Helper()
	return startIngestWith(t, brokers, nil, edit...)
}

// startIngestWith is startIngest with extra gRPC server options (the
// authentication interceptors, say).
func startIngestWith(t testing.TB, brokers string, opts []grpc.ServerOption, edit ...func(*Config)) *running {
	t.Helper()
	cfg := testConfig(brokers)
	for _, e := range edit {
		e(&cfg)
	}
	svc, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	srv, err := server.New(server.Config{Addr: "127.0.0.1:0", ShutdownTimeout: 5 * time.Second, CORSOrigins: "https://canvass.example.org,http://localhost:*"}, quietLog, opts...)
	if err != nil {
		t.Fatalf("server.New: %v", err)
	}
	svc.Register(srv.GRPC())
	srv.Gate(svc.WaitReady)

	ctx, cancel := context.WithCancel(context.Background())
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return svc.Run(gctx) })
	g.Go(func() error { return srv.Run(gctx) })
	t.Cleanup(func() {
		cancel()
		if err := g.Wait(); err != nil {
			t.Errorf("ingest or server stopped with: %v", err)
		}
	})
	select {
	case <-srv.Listening():
	case <-gctx.Done():
		t.Fatalf("server stopped before listening: %v", g.Wait())
	case <-time.After(30 * time.Second):
		t.Fatal("server did not start listening within 30s")
	}
	addr := srv.Addr().String()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("grpc.NewClient: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return &running{svc: svc, srv: srv, addr: addr, conn: conn, client: canvassv1.NewIngestServiceClient(conn)}
}

// runService runs a Service on cfg without a gRPC server (call Submit
// directly). stop cancels Run and returns what it returned; the test's end
// stops it too.
func runService(t testing.TB, cfg Config) (svc *Service, stop func() error) {
	t.Helper()
	svc, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	var once sync.Once
	var runErr error
	stop = func() error {
		once.Do(func() { cancel(); runErr = <-done })
		return runErr
	}
	t.Cleanup(func() { _ = stop() })
	return svc, stop
}

// testCtx returns a context cancelled after d or when t ends.
func testCtx(t testing.TB, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// newID returns a fresh UUIDv7.
func newID(t testing.TB) string {
	t.Helper()
	return uuid.Must(uuid.NewV7()).String()
}

// Edinburgh, the first test vector of DESIGN.md.
const (
	edinburghLat      = 55.9533
	edinburghLon      = -3.1883
	edinburghLocality = 52543256811
)

func validVisit(t testing.TB) *canvassv1.Visit {
	return &canvassv1.Visit{
		Id:          newID(t),
		DwellingId:  "dwelling-42",
		Address:     "42 Royal Mile\nEdinburgh EH1 1AA",
		Location:    &canvassv1.Location{Latitude: edinburghLat, Longitude: edinburghLon},
		CanvasserId: "canvasser-7",
		VisitedAt:   timestamppb.New(time.Now().Add(-time.Minute)),
		Outcome:     canvassv1.Outcome_OUTCOME_ANSWERED,
	}
}

func validIntention(t testing.TB) *canvassv1.Intention {
	return &canvassv1.Intention{
		Id:          newID(t),
		VisitId:     newID(t),
		ElectorId:   "elector-1",
		Option:      "green",
		Location:    &canvassv1.Location{Latitude: edinburghLat, Longitude: edinburghLon},
		RecordedAt:  timestamppb.New(time.Now().Add(-time.Minute)),
		CanvasserId: "canvasser-7",
	}
}

func validFollowup(t testing.TB) *canvassv1.FollowupRequest {
	return &canvassv1.FollowupRequest{
		Id:         newID(t),
		VisitId:    newID(t),
		ElectorId:  "elector-1",
		Issue:      "housing",
		Method:     canvassv1.Method_METHOD_EMAIL,
		Location:   &canvassv1.Location{Latitude: edinburghLat, Longitude: edinburghLon},
		RecordedAt: timestamppb.New(time.Now().Add(-time.Minute)),
	}
}

// readTopic reads every record of a topic, partition by partition, with a
// kafka-go Reader, up to each partition's high watermark at call time.
func readTopic(t testing.TB, brokers, topicName string) []kafka.Message {
	t.Helper()
	ctx := testCtx(t, 30*time.Second)
	conn, err := kafka.DialContext(ctx, "tcp", brokers)
	if err != nil {
		t.Fatalf("dialing %s: %v", brokers, err)
	}
	parts, err := conn.ReadPartitions(topicName)
	_ = conn.Close()
	if err != nil {
		t.Fatalf("reading partitions of %s: %v", topicName, err)
	}
	var out []kafka.Message
	for _, p := range parts {
		lc, err := kafka.DialLeader(ctx, "tcp", brokers, topicName, p.ID)
		if err != nil {
			t.Fatalf("dialing leader of %s/%d: %v", topicName, p.ID, err)
		}
		last, err := lc.ReadLastOffset()
		_ = lc.Close()
		if err != nil {
			t.Fatalf("reading last offset of %s/%d: %v", topicName, p.ID, err)
		}
		if last == 0 {
			continue
		}
		r := kafka.NewReader(kafka.ReaderConfig{
			Brokers: []string{brokers}, Topic: topicName, Partition: p.ID,
			MaxWait: 100 * time.Millisecond,
		})
		for {
			m, err := r.ReadMessage(ctx)
			if err != nil {
				_ = r.Close()
				t.Fatalf("reading %s/%d: %v", topicName, p.ID, err)
			}
			out = append(out, m)
			if m.Offset >= last-1 {
				break
			}
		}
		if err := r.Close(); err != nil && !errors.Is(err, context.Canceled) {
			t.Fatalf("closing reader: %v", err)
		}
	}
	return out
}

// javaMurmur2 is the Java client's murmur2 (Utils.murmur2), written out
// independently of kafka-go so the test checks the balancer, not itself.
func javaMurmur2(data []byte) int32 {
	const (
		seed = uint32(0x9747b28c)
		m    = uint32(0x5bd1e995)
		r    = 24
	)
	length := len(data)
	h := seed ^ uint32(length)
	for i := 0; i+4 <= length; i += 4 {
		k := uint32(data[i]) | uint32(data[i+1])<<8 | uint32(data[i+2])<<16 | uint32(data[i+3])<<24
		k *= m
		k ^= k >> r
		k *= m
		h *= m
		h ^= k
	}
	tail := data[length&^3:]
	switch len(tail) {
	case 3:
		h ^= uint32(tail[2]) << 16
		fallthrough
	case 2:
		h ^= uint32(tail[1]) << 8
		fallthrough
	case 1:
		h ^= uint32(tail[0])
		h *= m
	}
	h ^= h >> 13
	h *= m
	h ^= h >> 15
	return int32(h)
}

// javaPartition is the Java default partitioner for a keyed record:
// toPositive(murmur2(key)) % numPartitions.
func javaPartition(key []byte, n int) int {
	return int(uint32(javaMurmur2(key))&0x7fffffff) % n
}
