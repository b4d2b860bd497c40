package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"github.com/chapper/chapper/pipelines/report"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"github.com/chapper/chapper/services/devstack"
	"github.com/chapper/chapper/services/devstack/devtest"
	"github.com/chapper/chapper/services/ingest"
	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// TestMain runs the tests through devtest (shared servers, leak check) and
// removes the chapper binary the crash tests built. The consumer runtime's
// dead-letter writer has no Transport of its own, so it uses kafka-go's
// process-wide DefaultTransport, whose per-broker pool goroutine
// (connPool.discover) lives as long as the process: ignored here until the
// runtime gives that writer its own transport and closes it.
func TestMain(m *testing.M) {
	// the pipelines child of an in-process `chapper dev` (dev_test.go)
	// runs this binary as `chapper serve`
	if len(os.Args) > 1 && os.Args[1] == "serve" {
		main()
		os.Exit(0)
	}
	code := devtest.Run(m, goleak.IgnoreTopFunction("github.com/segmentio/kafka-go.(*connPool).discover"))
	if binDir != "" {
		_ = os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// TestFlagEnv checks the one mapping of flags to the environment: the
// environment sets a flag, the command line beats it, dev defaults yield to
// both.
func TestFlagEnv(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		args []string
		dev  bool
		flag string
		want string
	}{
		{name: "default", flag: "ingest.batch-limit", want: "500"},
		{name: "env sets", env: map[string]string{"CHAPPER_INGEST_BATCH_LIMIT": "7"}, flag: "ingest.batch-limit", want: "7"},
		{name: "flag beats env", env: map[string]string{"CHAPPER_INGEST_BATCH_LIMIT": "7"}, args: []string{"-ingest.batch-limit=9"}, flag: "ingest.batch-limit", want: "9"},
		{name: "dots and dashes", env: map[string]string{"CHAPPER_INGEST_TOPIC_REPLICATION_FACTOR": "2"}, flag: "ingest.topic-replication-factor", want: "2"},
		{name: "shared flag", env: map[string]string{"CHAPPER_KAFKA_BROKERS": "k1:9092,k2:9092"}, flag: "kafka.brokers", want: "k1:9092,k2:9092"},
		{name: "dev default", dev: true, flag: "ingest.topic-replication-factor", want: "1"},
		{name: "env beats dev default", dev: true, env: map[string]string{"CHAPPER_INGEST_TOPIC_REPLICATION_FACTOR": "3"}, flag: "ingest.topic-replication-factor", want: "3"},
		{name: "dev grpc address", dev: true, flag: "grpc.addr", want: "127.0.0.1:7070"},
		{name: "search batches", flag: "search.batch-size", want: "500"},
		{name: "dev search batches", dev: true, flag: "search.batch-size", want: "2000"},
		{name: "producer linger", flag: "ingest.kafka-batch-timeout", want: "1ms"},
		{name: "dev producer linger", dev: true, flag: "ingest.kafka-batch-timeout", want: "5ms"},
		{name: "flag beats dev default", dev: true, args: []string{"-admin.addr=:9999"}, flag: "admin.addr", want: ":9999"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			fs := flag.NewFlagSet("test", flag.ContinueOnError)
			var c common
			c.register(fs, "")
			registerTargetFlags(fs)
			if tc.dev {
				if err := setDevDefaults(fs); err != nil {
					t.Fatal(err)
				}
			}
			if err := parseFlags(fs, tc.args); err != nil {
				t.Fatalf("parseFlags: %v", err)
			}
			if got := fs.Lookup(tc.flag).Value.String(); got != tc.want {
				t.Errorf("-%s = %q, want %q", tc.flag, got, tc.want)
			}
		})
	}
	if got := envName("ingest.batch-limit"); got != "CHAPPER_INGEST_BATCH_LIMIT" {
		t.Errorf("envName = %q", got)
	}
}

// TestCommandErrors checks the errors a user meets first.
func TestCommandErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
		is   error
	}{
		{name: "unknown target", args: []string{"serve", "-target=ingest,bogus"}, want: `unknown target "bogus"; built targets: ingest`},
		{name: "report without a name", args: []string{"report"}, want: "give a report name"},
		{name: "unknown report", args: []string{"report", "bogus"}, want: `report "bogus": want one of intentions, followups, canvassers, unknocked`, is: report.ErrUnknownReport},
		{name: "no target", args: []string{"serve"}, want: "no target given"},
		{name: "unknown subcommand", args: []string{"frobnicate"}, want: `unknown subcommand "frobnicate"`},
		{name: "token without subcommand", args: []string{"token"}, want: "chapper token: give a subcommand"},
		{name: "bad flag", args: []string{"serve", "-no-such-flag"}, want: "flag provided but not defined"},
		{name: "bad env value", args: []string{"serve", "-target=ingest"}, want: `error setting flag "ingest.batch-limit" from environment variable "CHAPPER_INGEST_BATCH_LIMIT"`},
		{name: "stray argument", args: []string{"serve", "-target=ingest", "extra"}, want: "unexpected arguments: extra"},
		{name: "pipelines nice above 19", args: []string{"dev", "-dev.pipelines-nice=20"}, want: "-dev.pipelines-nice must be 0 to 19"},
		{name: "negative pipelines nice", args: []string{"dev", "-dev.pipelines-nice=-1"}, want: "-dev.pipelines-nice must be 0 to 19"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "bad env value" {
				t.Setenv("CHAPPER_INGEST_BATCH_LIMIT", "many")
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err := run(ctx, tc.args, io.Discard, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("run(%v) = %v, want an error containing %q", tc.args, err, tc.want)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %v is not %v", err, tc.is)
			}
		})
	}
}

// TestNotYet checks the answer of a subcommand a later issue builds.
func TestNotYet(t *testing.T) {
	c := notYet("frob", "frobnicate", "issue 99")
	err := c.run(context.Background(), nil, io.Discard, io.Discard)
	if !errors.Is(err, ErrNotImplemented) || err.Error() != "chapper frob: not implemented yet (issue 99)" {
		t.Fatalf("run = %v", err)
	}
	for _, c := range commands {
		if c.name == "" || c.summary == "" || c.run == nil {
			t.Errorf("command %+v incomplete", c)
		}
	}
}

// freeAddr returns a loopback address with a port free right now.
func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestServeIngest runs `chapper serve -target=ingest` with Kafka missing at
// first: /healthz answers, /readyz is 503 and the gRPC port stays closed;
// once Kafka is up, /readyz turns 200, the port opens, a Submit is accepted
// and /metrics shows ingest's metrics. Cancelling stops it cleanly.
func TestServeIngest(t *testing.T) {
	kafkaAddr, grpcAddr, adminAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- run(runCtx, []string{"serve", "-target=ingest", "-log.level=warn",
			"-kafka.brokers=" + kafkaAddr, "-grpc.addr=" + grpcAddr, "-admin.addr=" + adminAddr,
			"-ingest.topic-replication-factor=1", "-auth=off"}, io.Discard, io.Discard)
	}()

	base := "http://" + adminAddr
	waitHTTP(t, ctx, base+"/healthz", http.StatusOK)
	code, body := get(t, ctx, base+"/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "ingest: topics not ready yet") || !strings.Contains(body, "grpc: not listening yet") {
		t.Errorf("/readyz before kafka = %d %q, want 503 naming ingest and grpc", code, body)
	}
	if c, err := net.DialTimeout("tcp", grpcAddr, time.Second); err == nil {
		c.Close()
		t.Errorf("gRPC port %s open before ingest is ready", grpcAddr)
	}

	k, err := devstack.StartKafka(devstack.KafkaConfig{Addr: kafkaAddr, Partitions: 12})
	if err != nil {
		t.Fatalf("starting kafka on %s: %v", kafkaAddr, err)
	}
	defer k.Close()
	body = waitHTTP(t, ctx, base+"/readyz", http.StatusOK)
	if !strings.Contains(body, "ingest: ok") || !strings.Contains(body, "grpc: ok") {
		t.Errorf("/readyz = %q, want every check ok", body)
	}

	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	resp, err := canvassv1.NewIngestServiceClient(conn).Submit(ctx, &canvassv1.SubmitRequest{Visits: []*canvassv1.Visit{{
		Id: uuid.Must(uuid.NewV7()).String(), DwellingId: "d1", Address: "1 High St",
		Location:  &canvassv1.Location{Latitude: 55.9533, Longitude: -3.1883},
		VisitedAt: timestamppb.Now(),
	}}})
	if err != nil || resp.GetResults()[0].GetStatus() != canvassv1.Status_STATUS_ACCEPTED {
		t.Fatalf("Submit: %v %v", resp, err)
	}
	_, metrics := get(t, ctx, base+"/metrics")
	for _, m := range []string{`chapper_ingest_records_total{kind="visits",result="accepted"}`, "chapper_ingest_produce_seconds_bucket", "chapper_ingest_batch_records", `chapper_grpc_calls_total{code="OK",method="/canvass.v1.IngestService/Submit"}`} {
		if !strings.Contains(metrics, m) {
			t.Errorf("/metrics lacks %s", m)
		}
	}

	stop()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve returned %v on shutdown", err)
		}
	case <-ctx.Done():
		t.Fatal("serve did not stop")
	}
}

// metricValue returns the value of the series name without labels in a
// text exposition.
func metricValue(exposition, name string) (float64, bool) {
	for _, l := range strings.Split(exposition, "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f, err == nil
		}
	}
	return 0, false
}

// processAlive reports whether pid is a live process, not a zombie.
func processAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	state := b[bytes.LastIndexByte(b, ')')+2]
	return state != 'Z' && state != 'X'
}

func get(t *testing.T, ctx context.Context, url string) (int, string) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

// waitHTTP polls url until it answers want or ctx is done, and returns the
// body.
func waitHTTP(t *testing.T, ctx context.Context, url string, want int) string {
	t.Helper()
	for {
		code, body := get(t, ctx, url)
		if code == want {
			return body
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s never answered %d; last %d %q", url, want, code, body)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// TestDev runs `chapper dev` on a temporary directory and free ports: it
// prints its endpoints, takes a record, and stops cleanly on cancel.
func TestDev(t *testing.T) {
	if testing.Short() {
		t.Skip("starts postgres and redis-server; skipped with -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dev := startDev(t, ctx)
	grpcAddr, adminURL, searchURL := dev.Endpoints["gRPC + gRPC-web"], dev.Endpoints["admin"], dev.Endpoints["search"]

	// consumers (persist, ...) turn ready once they joined their group,
	// which may come just after the endpoints are printed
	waitHTTP(t, ctx, adminURL+"/readyz", http.StatusOK)
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	resp, err := canvassv1.NewIngestServiceClient(conn).Submit(ctx, &canvassv1.SubmitRequest{Intentions: []*canvassv1.Intention{{
		Id: uuid.Must(uuid.NewV7()).String(), VisitId: uuid.Must(uuid.NewV7()).String(),
		ElectorId: "e1", Option: "yes",
		Location:   &canvassv1.Location{Latitude: 55.9533, Longitude: -3.1883},
		RecordedAt: timestamppb.Now(),
	}}})
	if err != nil || resp.GetResults()[0].GetStatus() != canvassv1.Status_STATUS_ACCEPTED {
		t.Fatalf("Submit: %v %v", resp, err)
	}
	// the id store keeps the id on the second redis-server, kept for it,
	// and the timeline's redis-server holds none
	id := resp.GetResults()[0].GetId()
	idKey, idField := ingest.IDStoreSlot("ingest:", uuid.MustParse(id))
	for label, want := range map[string]bool{"Redis (ids)": true, "Redis": false} {
		rdb := redis.NewClient(&redis.Options{Addr: dev.Endpoints[label]})
		held, err := rdb.HExists(ctx, idKey, idField).Result()
		_ = rdb.Close()
		if err != nil || held != want {
			t.Errorf("HEXISTS %s on %s (%s) = %v, %v; want %v", idKey, label, dev.Endpoints[label], held, err, want)
		}
	}
	// the timeline target materialises it and the query target reads it back
	q := canvassv1.NewQueryServiceClient(conn)
	for found := false; !found; {
		chunk, err := q.GetChunk(ctx, &canvassv1.GetChunkRequest{Location: &canvassv1.Location{Latitude: 55.9533, Longitude: -3.1883}})
		if err != nil {
			t.Fatalf("GetChunk: %v", err)
		}
		for _, l := range chunk.GetLocalities() {
			for _, e := range l.GetEntries() {
				found = found || e.GetId() == id
			}
		}
		if !found {
			select {
			case <-ctx.Done():
				t.Fatalf("record %s never showed in GetChunk", id)
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	// the search target indexes it into the embedded search server, and
	// the report subcommand reads it back
	var out strings.Builder
	const edinburghRegion = "5254168"
	for !strings.Contains(out.String(), edinburghRegion) {
		out.Reset()
		err := run(ctx, []string{"report", "intentions", "-search.addresses=" + searchURL, "-from=-1h", "-to=+1h"}, &out, io.Discard)
		if err != nil {
			t.Fatalf("chapper report intentions: %v", err)
		}
		if !strings.Contains(out.String(), edinburghRegion) {
			select {
			case <-ctx.Done():
				t.Fatalf("the intention never showed in the report:\n%s", out.String())
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	// the search child's metrics are on dev's /metrics: it indexed the
	// intention
	_, metrics := get(t, ctx, adminURL+"/metrics")
	if v, ok := metricValue(metrics, "chapper_searchserver_documents_written_total"); !ok || v < 1 {
		t.Errorf("dev's /metrics: chapper_searchserver_documents_written_total = %v (present %v), want >= 1", v, ok)
	}
	for _, m := range []string{"chapper_searchserver_request_seconds_bucket", "chapper_dev_search_metrics_up 1", "chapper_dev_search_restarts_total 0", "chapper_ingest_records_total"} {
		if !strings.Contains(metrics, m) {
			t.Errorf("dev's /metrics lacks %s", m)
		}
	}
	// a SIGKILLed search child comes back by itself, its data kept
	pm := regexp.MustCompile(`process (\d+),`).FindStringSubmatch(dev.Lines["search"])
	if pm == nil {
		t.Fatalf("no search child pid in %q", dev.Lines["search"])
	}
	pid, _ := strconv.Atoi(pm[1])
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for {
		_, metrics = get(t, ctx, adminURL+"/metrics")
		if v, _ := metricValue(metrics, "chapper_dev_search_restarts_total"); v == 1 && strings.Contains(metrics, "chapper_dev_search_metrics_up 1") {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the search child never came back; /metrics:\n%s", metrics)
		case <-time.After(50 * time.Millisecond):
		}
	}
	waitHTTP(t, ctx, adminURL+"/readyz", http.StatusOK)
	if processAlive(pid) {
		t.Errorf("the SIGKILLed search child %d is still alive", pid)
	}
	out.Reset()
	if err := run(ctx, []string{"report", "intentions", "-search.addresses=" + searchURL, "-from=-1h", "-to=+1h"}, &out, io.Discard); err != nil || !strings.Contains(out.String(), edinburghRegion) {
		t.Errorf("report after the search child's restart: %v\n%s", err, out.String())
	}
	if err := dev.Stop(); err != nil {
		t.Fatalf("dev returned %v on shutdown", err)
	}
	if _, err := os.Stat(dev.Dir + "/kafka"); err != nil {
		t.Errorf("no kafka data under the dev directory: %v", err)
	}
}
