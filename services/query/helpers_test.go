package query_test

import (
	"context"
	"flag"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/chapper/chapper/pipelines/runtime"
	"github.com/chapper/chapper/pipelines/timeline"
	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"github.com/chapper/chapper/proto/locality"
	"github.com/chapper/chapper/proto/topic"
	"github.com/chapper/chapper/services/devstack/devtest"
	"github.com/chapper/chapper/services/query"
)

// TestMain runs the tests on devtest's shared servers. Leaks are checked
// per test (checkLeaks, in every env) since devtest.Main exits the binary
// itself; where devtest.Main checks with goleak at the end of the binary,
// that check applies too.
func TestMain(m *testing.M) { devtest.Main(m) }

// checkLeaks fails t if a goroutine started after this call is still
// running once t's later cleanups (service stopped, clients closed) ran.
// Goroutines that existed before (devtest's shared servers) are not
// counted; goleak retries for a while, so goroutines winding down pass.
func checkLeaks(t testing.TB) {
	t.Helper()
	before := goleak.IgnoreCurrent()
	t.Cleanup(func() {
		if t.Failed() {
			return
		}
		// devstack's waiter of a server process restarted by the test
		// (proc.go, startChild) lives until the server's own cleanup,
		// which runs after this one.
		if err := goleak.Find(before, goleak.IgnoreAnyFunction("github.com/chapper/chapper/services/devstack.startChild.func1")); err != nil {
			t.Errorf("goroutines leaked by the test: %v", err)
		}
	})
}

// edinburgh is a locality in the middle of its chunk's south-west corner
// row; the tests fill the localities of its chunk.
const (
	edinburghLat = 55.9533
	edinburghLon = -3.1883
)

// env is a query service served over real gRPC, on a real redis-server,
// with a timeline sink to fill it.
type env struct {
	svc    *query.Service
	client *grpc.ClientConn
	qc     canvassv1.QueryServiceClient
	sink   *timeline.Sink
	rdb    redis.UniversalClient // the sink's and the test's own client
	prefix string
	addr   string // gRPC address
	// rounds counts the page reads (pipelined round trips) of the service.
	rounds atomic.Int64
	// delay is added before each of the service's pipelines.
	delay atomic.Int64
}

// defaultConfig returns the flag defaults.
func defaultConfig() query.Config {
	var c query.Config
	c.RegisterFlags("query", flag.NewFlagSet("test", flag.PanicOnError))
	return c
}

// newEnv starts the service on the shared redis-server under a fresh key
// prefix.
func newEnv(t testing.TB, mutate func(*query.Config)) *env {
	t.Helper()
	return newEnvOn(t, devtest.Redis(t).Addr(), devtest.KeyPrefix(t), mutate)
}

// newEnvOn starts the service on the redis-server at addr.
func newEnvOn(t testing.TB, addr, prefix string, mutate func(*query.Config)) *env {
	t.Helper()
	return newEnvWith(t, func() redis.UniversalClient { return redis.NewClient(&redis.Options{Addr: addr}) }, prefix, mutate)
}

// newEnvWith starts the service on the Redis that newClient's clients
// reach (one for the sink and the test, one for the service).
func newEnvWith(t testing.TB, newClient func() redis.UniversalClient, prefix string, mutate func(*query.Config)) *env {
	t.Helper()
	checkLeaks(t)
	e := &env{prefix: prefix}
	cfg := defaultConfig()
	cfg.Prefix = prefix
	if mutate != nil {
		mutate(&cfg)
	}

	e.rdb = newClient()
	t.Cleanup(func() { _ = e.rdb.Close() })
	sink, err := timeline.New(e.rdb, timeline.Config{Prefix: prefix})
	if err != nil {
		t.Fatalf("timeline.New: %v", err)
	}
	e.sink = sink

	svcClient := newClient()
	svcClient.AddHook(countingHook{e})
	t.Cleanup(func() { _ = svcClient.Close() })
	svc, err := query.New(svcClient, cfg)
	if err != nil {
		t.Fatalf("query.New: %v", err)
	}
	e.svc = svc

	srv := grpc.NewServer()
	canvassv1.RegisterQueryServiceServer(srv, svc)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.addr = lis.Addr().String()
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(lis)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-served
	})

	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- svc.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-ran:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Run did not return within 10s of cancel")
		}
	})
	eventually(t, 10*time.Second, "service ready", func() error { return svc.Ready() })

	e.client = e.dial(t)
	e.qc = canvassv1.NewQueryServiceClient(e.client)
	return e
}

// dial opens a new client connection to the service.
func (e *env) dial(t testing.TB, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	opts = append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)
	cc, err := grpc.NewClient("passthrough:///"+e.addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

// countingHook counts and optionally delays the service's page reads.
type countingHook struct{ e *env }

func (h countingHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h countingHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return next
}
func (h countingHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if len(cmds) == 0 || !strings.HasPrefix(cmds[0].Name(), "eval") {
			// Connection set-up (HELLO, CLIENT SETINFO) is pipelined too.
			return next(ctx, cmds)
		}
		h.e.rounds.Add(1)
		if d := time.Duration(h.e.delay.Load()); d > 0 {
			time.Sleep(d)
		}
		return next(ctx, cmds)
	}
}

// write materialises records through the timeline sink.
func (e *env) write(t testing.TB, msgs ...proto.Message) {
	t.Helper()
	batch := make([]runtime.Record, 0, len(msgs))
	for i, m := range msgs {
		kind, ok := topic.KindOf(m)
		if !ok {
			t.Fatalf("not a record: %T", m)
		}
		value, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		batch = append(batch, runtime.Record{Topic: kind.Topic(), Offset: int64(i), Value: value, Message: m, Time: time.Now()})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := e.sink.Write(ctx, batch); err != nil {
		t.Fatalf("timeline write: %v", err)
	}
}

// chunkOf returns the chunk of a point.
func chunkOf(t testing.TB, lat, lon float64) int64 {
	t.Helper()
	i, err := locality.Of(lat, lon)
	if err != nil {
		t.Fatal(err)
	}
	return i.Chunk()
}

// pointIn returns the centre of a locality.
func pointIn(loc locality.Index) *canvassv1.Location {
	c := loc.Cell()
	return &canvassv1.Location{Latitude: (float64(c.Row)+0.5)/1000 - 90, Longitude: (float64(c.Col)+0.5)/1000 - 180}
}

// visit returns a visit at loc, at, with a fresh id.
func visit(loc locality.Index, at time.Time, outcome canvassv1.Outcome) *canvassv1.Visit {
	return &canvassv1.Visit{
		Id:          uuid.Must(uuid.NewV7()).String(),
		DwellingId:  "dwelling-" + uuid.NewString()[:8],
		Address:     "1 High Street",
		Location:    pointIn(loc),
		CanvasserId: "canvasser-1",
		VisitedAt:   timestamppb.New(at),
		Outcome:     outcome,
	}
}

// entryIDs returns the ids of a response's entries, locality by locality.
func entryIDs(resp *canvassv1.GetChunkResponse) map[int64][]string {
	out := make(map[int64][]string)
	for _, lt := range resp.GetLocalities() {
		for _, e := range lt.GetEntries() {
			out[lt.GetLocality()] = append(out[lt.GetLocality()], e.GetId())
		}
	}
	return out
}

// eventually calls f until it returns nil or timeout passes.
func eventually(t testing.TB, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ctxT returns a context bounded by timeout and cancelled when t ends.
func ctxT(t testing.TB, timeout time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	return ctx
}

// containsAll reports which of want are not in s.
func missing(s string, want ...string) error {
	var miss []string
	for _, w := range want {
		if !strings.Contains(s, w) {
			miss = append(miss, w)
		}
	}
	if len(miss) > 0 {
		return fmt.Errorf("%q lacks %q", s, miss)
	}
	return nil
}

// waitSubscribed waits until the service subscribed to the news of chunk
// and had the time to see Redis's confirmation.
func (e *env) waitSubscribed(t testing.TB, chunk int64) {
	t.Helper()
	if _, err := e.qc.GetChunk(ctxT(t, 10*time.Second), &canvassv1.GetChunkRequest{Chunk: chunk}); err != nil {
		t.Fatal(err)
	}
	channel := timeline.NewsChannel(e.prefix, chunk)
	eventually(t, 5*time.Second, "subscribed to "+channel, func() error {
		n, err := e.rdb.PubSubNumSub(context.Background(), channel).Result()
		if err != nil {
			return err
		}
		if n[channel] != 1 {
			return fmt.Errorf("%d subscribers", n[channel])
		}
		return nil
	})
	time.Sleep(50 * time.Millisecond)
}
