package ingest

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"github.com/chapper/chapper/proto/topic"
	"github.com/chapper/chapper/services/devstack"
	"github.com/chapper/chapper/services/devstack/devtest"
	"github.com/segmentio/kafka-go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// TestMurmur2Vectors checks the test's own murmur2 against the Java
// client's results (as librdkafka and kafka-go list them).
func TestMurmur2Vectors(t *testing.T) {
	tests := []struct {
		key  string
		want uint32
	}{
		{"kafka", 0xd067cf64},
		{"giberish123456789", 0x8f552b0c},
		{"1234", 0x9fc97b14},
		{"234", 0xe7c009ca},
		{"34", 0x873930da},
		{"4", 0x5a4b5ca1},
		{"PreAmbleWillBeRemoved,ThePrePartThatIs", 0x78424f1c},
		{"reAmbleWillBeRemoved,ThePrePartThatIs", 0x4a62b377},
		{"", 0x106e08d9},
	}
	for _, tc := range tests {
		t.Run(tc.key, func(t *testing.T) {
			if got := uint32(javaMurmur2([]byte(tc.key))); got != tc.want {
				t.Errorf("murmur2(%q) = %#x, want %#x", tc.key, got, tc.want)
			}
		})
	}
}

// TestSubmitRoundTrip submits every kind through a real gRPC client and reads
// each topic back: payload, key, headers and partition must be right.
func TestSubmitRoundTrip(t *testing.T) {
	k := devtest.Kafka(t)
	r := startIngest(t, k.Addr())
	ctx := testCtx(t, 30*time.Second)

	req := &canvassv1.SubmitRequest{}
	points := [][2]float64{{55.9533, -3.1883}, {55.8642, -4.2518}, {56.1165, -3.9369}, {0, 179.9999}, {-90, 0}, {90, 0}}
	for i, p := range points {
		v := validVisit(t)
		v.Location = &canvassv1.Location{Latitude: p[0], Longitude: p[1]}
		if i == 1 {
			v.Id = strings.ToUpper(v.Id) // stored canonical, answered as given
		}
		req.Visits = append(req.Visits, v)
		in := validIntention(t)
		in.Location = v.Location
		req.Intentions = append(req.Intentions, in)
		f := validFollowup(t)
		f.Location = v.Location
		req.Followups = append(req.Followups, f)
	}
	want := proto.Clone(req).(*canvassv1.SubmitRequest)

	var header metadata.MD
	ctx = metadata.AppendToOutgoingContext(ctx, MetadataTraceID, "trace-abc-123", MetadataClientID, "tests/1.0")
	resp, err := r.client.Submit(ctx, req, grpc.Header(&header))
	if err != nil {
		t.Fatalf("Submit: %v", err)
	}
	if got := header.Get(MetadataTraceID); len(got) != 1 || got[0] != "trace-abc-123" {
		t.Errorf("response trace id header = %v, want trace-abc-123", got)
	}
	all := slices.Concat(
		idsOf(want.GetVisits()), idsOf(want.GetIntentions()), idsOf(want.GetFollowups()))
	if len(resp.GetResults()) != len(all) {
		t.Fatalf("%d results, want %d", len(resp.GetResults()), len(all))
	}
	for i, res := range resp.GetResults() {
		if res.GetId() != all[i] || res.GetStatus() != canvassv1.Status_STATUS_ACCEPTED {
			t.Errorf("result %d = %v, want %s ACCEPTED", i, res, all[i])
		}
	}
	if got := resp.GetResults()[0].GetLocality(); got != edinburghLocality {
		t.Errorf("locality of Edinburgh = %d, want %d", got, edinburghLocality)
	}

	sent := map[string]proto.Message{}
	for _, v := range want.GetVisits() {
		v.Id = strings.ToLower(v.Id)
		sent[v.Id] = v
	}
	for _, in := range want.GetIntentions() {
		sent[in.Id] = in
	}
	for _, f := range want.GetFollowups() {
		sent[f.Id] = f
	}
	for _, kind := range topic.Kinds {
		msgs := readTopic(t, k.Addr(), kind.Topic())
		if len(msgs) != len(points) {
			t.Errorf("%s holds %d records, want %d", kind.Topic(), len(msgs), len(points))
		}
		for _, m := range msgs {
			got, err := topic.Decode(m.Topic, m.Value)
			if err != nil {
				t.Fatalf("decoding %s/%d@%d: %v", m.Topic, m.Partition, m.Offset, err)
			}
			meta, _ := topic.MetaOf(got)
			if !proto.Equal(got, sent[meta.ID]) {
				t.Errorf("%s record\n got %v\nwant %v", m.Topic, got, sent[meta.ID])
			}
			loc, err := strconv.ParseInt(string(m.Key), 10, 64)
			if err != nil || strconv.FormatInt(loc, 10) != string(m.Key) {
				t.Errorf("key %q is not a decimal locality", m.Key)
			}
			if wantP := javaPartition(m.Key, 12); m.Partition != wantP {
				t.Errorf("key %s on partition %d, want murmur2 partition %d", m.Key, m.Partition, wantP)
			}
			h := headers(m)
			if h[topic.HeaderSchema] != string(got.ProtoReflect().Descriptor().FullName()) {
				t.Errorf("schema header = %q", h[topic.HeaderSchema])
			}
			if h[topic.HeaderClientID] != "tests/1.0" {
				t.Errorf("client-id header = %q, want tests/1.0", h[topic.HeaderClientID])
			}
			if h[topic.HeaderTraceID] != "trace-abc-123" {
				t.Errorf("trace-id header = %q", h[topic.HeaderTraceID])
			}
			at, err := time.Parse(time.RFC3339Nano, h[topic.HeaderReceivedAt])
			if err != nil || !strings.HasSuffix(h[topic.HeaderReceivedAt], "Z") || time.Since(at) > time.Minute || time.Since(at) < 0 {
				t.Errorf("received-at header %q is not a recent RFC 3339 UTC time (%v)", h[topic.HeaderReceivedAt], err)
			}
		}
	}
}

func idsOf[M interface{ GetId() string }](ms []M) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.GetId()
	}
	return out
}

func headers(m kafka.Message) map[string]string {
	h := map[string]string{}
	for _, x := range m.Headers {
		h[x.Key] = string(x.Value)
	}
	return h
}

// TestSubmitMixedBatch checks that a batch with bad records accepts the good
// ones, answers in request order and names each bad field; and that ids
// repeated within a batch or across batches are DUPLICATE (CONFLICT when
// another kind reused the id) and produced once.
func TestSubmitMixedBatch(t *testing.T) {
	k := devtest.Kafka(t)
	r := startIngest(t, k.Addr())
	ctx := testCtx(t, 30*time.Second)

	good := validVisit(t)
	bad := validVisit(t)
	bad.Location.Latitude = 91
	twin := proto.Clone(good).(*canvassv1.Visit)
	twin.Id = strings.ToUpper(twin.Id) // same UUID, other spelling
	noTime := validIntention(t)
	noTime.RecordedAt = nil
	goodIn := validIntention(t)
	badMethod := validFollowup(t)
	badMethod.Method = 42
	goodFu := validFollowup(t)
	goodFu.Id = goodIn.Id // an id may not repeat across kinds either: CONFLICT

	resp, err := r.client.Submit(ctx, &canvassv1.SubmitRequest{
		Visits:     []*canvassv1.Visit{good, bad, twin},
		Intentions: []*canvassv1.Intention{noTime, goodIn},
		Followups:  []*canvassv1.FollowupRequest{badMethod, goodFu},
	})
	if err != nil {
		t.Fatalf("Submit: %v", err)
	}
	want := []struct {
		id     string
		status canvassv1.Status
		reason string
	}{
		{good.Id, canvassv1.Status_STATUS_ACCEPTED, ""},
		{bad.Id, canvassv1.Status_STATUS_REJECTED, "visits[1].location.latitude: must be a finite number in [-90, 90], got 91"},
		{twin.Id, canvassv1.Status_STATUS_DUPLICATE, ""},
		{noTime.Id, canvassv1.Status_STATUS_REJECTED, "intentions[0].recorded_at: is required"},
		{goodIn.Id, canvassv1.Status_STATUS_ACCEPTED, ""},
		{badMethod.Id, canvassv1.Status_STATUS_REJECTED, "followups[0].method: must be a known Method value, got 42"},
		{goodFu.Id, canvassv1.Status_STATUS_CONFLICT, "id was already accepted as an intention, not a follow-up request"},
	}
	checkResults(t, resp, want)

	// Across batches: both acknowledged ids come back DUPLICATE, a new one is
	// accepted.
	again := validVisit(t)
	resp, err = r.client.Submit(ctx, &canvassv1.SubmitRequest{
		Visits:     []*canvassv1.Visit{good, again},
		Intentions: []*canvassv1.Intention{goodIn},
	})
	if err != nil {
		t.Fatalf("second Submit: %v", err)
	}
	checkResults(t, resp, []struct {
		id     string
		status canvassv1.Status
		reason string
	}{
		{good.Id, canvassv1.Status_STATUS_DUPLICATE, ""},
		{again.Id, canvassv1.Status_STATUS_ACCEPTED, ""},
		{goodIn.Id, canvassv1.Status_STATUS_DUPLICATE, ""},
	})
	if n := len(readTopic(t, k.Addr(), topic.Visits)); n != 2 {
		t.Errorf("%s holds %d records, want 2 (good, again)", topic.Visits, n)
	}
	if n := len(readTopic(t, k.Addr(), topic.Intentions)); n != 1 {
		t.Errorf("%s holds %d records, want 1", topic.Intentions, n)
	}
	if n := len(readTopic(t, k.Addr(), topic.Followups)); n != 0 {
		t.Errorf("%s holds %d records, want 0", topic.Followups, n)
	}
}

func checkResults(t *testing.T, resp *canvassv1.SubmitResponse, want []struct {
	id     string
	status canvassv1.Status
	reason string
}) {
	t.Helper()
	if len(resp.GetResults()) != len(want) {
		t.Fatalf("%d results, want %d: %v", len(resp.GetResults()), len(want), resp)
	}
	for i, w := range want {
		got := resp.GetResults()[i]
		if got.GetId() != w.id || got.GetStatus() != w.status || got.GetReason() != w.reason {
			t.Errorf("result %d = {%s %s %q}, want {%s %s %q}", i, got.GetId(), got.GetStatus(), got.GetReason(), w.id, w.status, w.reason)
		}
	}
}

// TestSubmitBatchLimit checks the limit edge and the empty batch.
func TestSubmitBatchLimit(t *testing.T) {
	k := devtest.Kafka(t)
	r := startIngest(t, k.Addr(), func(c *Config) { c.BatchLimit = 10 })
	ctx := testCtx(t, 30*time.Second)
	batch := func(v, i, f int) *canvassv1.SubmitRequest {
		req := &canvassv1.SubmitRequest{}
		for range v {
			req.Visits = append(req.Visits, validVisit(t))
		}
		for range i {
			req.Intentions = append(req.Intentions, validIntention(t))
		}
		for range f {
			req.Followups = append(req.Followups, validFollowup(t))
		}
		return req
	}
	tests := []struct {
		name     string
		req      *canvassv1.SubmitRequest
		wantCode codes.Code
		results  int
	}{
		{name: "empty", req: batch(0, 0, 0), wantCode: codes.OK, results: 0},
		{name: "at the limit", req: batch(4, 3, 3), wantCode: codes.OK, results: 10},
		{name: "one over, kinds together", req: batch(4, 4, 3), wantCode: codes.InvalidArgument},
		{name: "far over", req: batch(100, 0, 0), wantCode: codes.InvalidArgument},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := r.client.Submit(ctx, tc.req)
			if status.Code(err) != tc.wantCode {
				t.Fatalf("Submit: %v, want code %s", err, tc.wantCode)
			}
			if err == nil && len(resp.GetResults()) != tc.results {
				t.Errorf("%d results, want %d", len(resp.GetResults()), tc.results)
			}
			if tc.wantCode == codes.InvalidArgument && !strings.Contains(status.Convert(err).Message(), "exceeds the limit of 10") {
				t.Errorf("message %q does not name the limit", status.Convert(err).Message())
			}
		})
	}
	// Nothing of the failed batches was produced.
	if n := len(readTopic(t, k.Addr(), topic.Visits)); n != 4 {
		t.Errorf("%s holds %d records, want 4", topic.Visits, n)
	}
}

// TestSubmitConcurrentSameID submits one record from many clients at once:
// exactly one is ACCEPTED and the topic holds exactly one copy.
func TestSubmitConcurrentSameID(t *testing.T) {
	k := devtest.Kafka(t)
	r := startIngest(t, k.Addr())
	ctx := testCtx(t, 30*time.Second)
	const clients = 16
	for round := range 5 {
		v := validVisit(t)
		var (
			wg       sync.WaitGroup
			mu       sync.Mutex
			statuses = map[canvassv1.Status]int{}
		)
		start := make(chan struct{})
		for range clients {
			wg.Go(func() {
				<-start
				resp, err := r.client.Submit(ctx, &canvassv1.SubmitRequest{Visits: []*canvassv1.Visit{proto.Clone(v).(*canvassv1.Visit), validVisit(t)}})
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					t.Errorf("Submit: %v", err)
					return
				}
				statuses[resp.GetResults()[0].GetStatus()]++
			})
		}
		close(start)
		wg.Wait()
		if statuses[canvassv1.Status_STATUS_ACCEPTED] != 1 || statuses[canvassv1.Status_STATUS_DUPLICATE] != clients-1 {
			t.Errorf("round %d: statuses %v, want 1 ACCEPTED and %d DUPLICATE", round, statuses, clients-1)
		}
	}
	copies := map[string]int{}
	for _, m := range readTopic(t, k.Addr(), topic.Visits) {
		got, _ := topic.Decode(m.Topic, m.Value)
		meta, _ := topic.MetaOf(got)
		copies[meta.ID]++
	}
	if len(copies) != 5*(clients+1) {
		t.Errorf("%d distinct records on the topic, want %d", len(copies), 5*(clients+1))
	}
	for id, n := range copies {
		if n != 1 {
			t.Errorf("record %s produced %d times", id, n)
		}
	}
}

// rawCodec sends and receives bytes as they are, to put malformed protobuf
// on the wire.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(data []byte, v any) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

var _ encoding.Codec = rawCodec{}

// TestSubmitMalformed sends bytes that are not a SubmitRequest, and invalid
// UTF-8 in a string field: the call fails, the server keeps serving.
func TestSubmitMalformed(t *testing.T) {
	k := devtest.Kafka(t)
	r := startIngest(t, k.Addr())
	ctx := testCtx(t, 30*time.Second)

	validBytes, err := proto.Marshal(&canvassv1.SubmitRequest{Visits: []*canvassv1.Visit{validVisit(t)}})
	if err != nil {
		t.Fatal(err)
	}
	// A visit whose dwelling_id (field 2) holds invalid UTF-8.
	badVisit := []byte{0x12, 0x02, 0xff, 0xfe}
	badUTF8 := append([]byte{0x0a, byte(len(badVisit))}, badVisit...)
	tests := []struct {
		name  string
		body  []byte
		codes []codes.Code // acceptable codes
	}{
		{name: "garbage", body: []byte("this is not protobuf \xff\xff\xff\xff"), codes: []codes.Code{codes.Internal, codes.InvalidArgument}},
		{name: "truncated", body: validBytes[:len(validBytes)/2], codes: []codes.Code{codes.Internal, codes.InvalidArgument}},
		{name: "invalid utf-8 in a string", body: badUTF8, codes: []codes.Code{codes.Internal, codes.InvalidArgument}},
		{name: "length past the end", body: []byte{0x0a, 0x7f, 0x01}, codes: []codes.Code{codes.Internal, codes.InvalidArgument}},
		// protobuf keeps a field of the wrong wire type as an unknown field.
		{name: "wrong wire type is unknown", body: []byte{0x08, 0x01}, codes: []codes.Code{codes.OK}},
		{name: "empty body is an empty batch", body: []byte{}, codes: []codes.Code{codes.OK}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out []byte
			err := r.conn.Invoke(ctx, canvassv1.IngestService_Submit_FullMethodName, &tc.body, &out, grpc.ForceCodec(rawCodec{}))
			if !slices.Contains(tc.codes, status.Code(err)) {
				t.Errorf("Invoke: %v, want one of %v", err, tc.codes)
			}
		})
	}
	// Still serving.
	resp, err := r.client.Submit(ctx, &canvassv1.SubmitRequest{Visits: []*canvassv1.Visit{validVisit(t)}})
	if err != nil || resp.GetResults()[0].GetStatus() != canvassv1.Status_STATUS_ACCEPTED {
		t.Fatalf("Submit after malformed calls: %v %v", resp, err)
	}
}

// TestSubmitKafkaDown stops the broker: Submit answers UNAVAILABLE within a
// few seconds and accepts nothing; a new broker on the same address and data
// directory brings Submit back by itself, and every accepted record is on
// the topic.
func TestSubmitKafkaDown(t *testing.T) {
	dir := t.TempDir()
	cfg := devstack.KafkaConfig{Addr: "127.0.0.1:0", DataDir: dir, Partitions: 12}
	k, err := devstack.StartKafka(cfg)
	if err != nil {
		t.Fatalf("starting kafka: %v", err)
	}
	cfg.Addr = k.Addr()
	closed := false
	t.Cleanup(func() {
		if !closed {
			_ = k.Close()
		}
	})
	r := startIngest(t, k.Addr(), func(c *Config) { c.ProduceTimeout = 2 * time.Second })
	ctx := testCtx(t, 60*time.Second)

	var accepted []string
	submit := func() (*canvassv1.SubmitResponse, []string, error) {
		req := &canvassv1.SubmitRequest{}
		var ids []string
		for range 20 {
			v := validVisit(t)
			v.Location.Longitude += float64(len(ids)) * 0.01 // spread over partitions
			req.Visits = append(req.Visits, v)
			ids = append(ids, v.Id)
		}
		resp, err := r.client.Submit(ctx, req)
		return resp, ids, err
	}
	resp, ids, err := submit()
	if err != nil {
		t.Fatalf("Submit before the outage: %v", err)
	}
	for _, res := range resp.GetResults() {
		if res.GetStatus() != canvassv1.Status_STATUS_ACCEPTED {
			t.Fatalf("before the outage: %v", res)
		}
	}
	accepted = append(accepted, ids...)

	if err := k.Close(); err != nil {
		t.Fatalf("closing kafka: %v", err)
	}
	closed = true
	var lost []string
	for i := range 2 {
		start := time.Now()
		_, ids, err := submit()
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("Submit %d with kafka down: %v, want UNAVAILABLE", i, err)
		}
		if d := time.Since(start); d > 4*time.Second {
			t.Errorf("UNAVAILABLE took %v, want a few seconds at most", d)
		}
		lost = append(lost, ids...)
	}

	k2, err := devstack.StartKafka(cfg)
	if err != nil {
		t.Fatalf("restarting kafka on %s: %v", cfg.Addr, err)
	}
	t.Cleanup(func() { _ = k2.Close() })

	// Ingest recovers by itself; the first calls may still see the old
	// connections fail.
	restarted := time.Now()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, ids, err := submit()
		if err == nil {
			for _, res := range resp.GetResults() {
				if res.GetStatus() != canvassv1.Status_STATUS_ACCEPTED {
					t.Fatalf("after recovery: %v", res)
				}
			}
			accepted = append(accepted, ids...)
			t.Logf("accepting again %v after the broker restarted", time.Since(restarted).Round(time.Millisecond))
			break
		}
		if status.Code(err) != codes.Unavailable || time.Now().After(deadline) {
			t.Fatalf("Submit after kafka came back: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// A client retrying what failed during the outage gets it accepted.
	retry := &canvassv1.SubmitRequest{}
	for _, id := range lost[:5] {
		v := validVisit(t)
		v.Id = id
		retry.Visits = append(retry.Visits, v)
	}
	resp, err = r.client.Submit(ctx, retry)
	if err != nil {
		t.Fatalf("retrying records of the outage: %v", err)
	}
	for _, res := range resp.GetResults() {
		if res.GetStatus() != canvassv1.Status_STATUS_ACCEPTED {
			t.Errorf("retried record answered %v, want ACCEPTED", res)
		}
		accepted = append(accepted, res.GetId())
	}

	onTopic := map[string]bool{}
	for _, m := range readTopic(t, k2.Addr(), topic.Visits) {
		got, _ := topic.Decode(m.Topic, m.Value)
		meta, _ := topic.MetaOf(got)
		onTopic[meta.ID] = true
	}
	for _, id := range accepted {
		if !onTopic[id] {
			t.Errorf("accepted record %s missing from %s", id, topic.Visits)
		}
	}
}

// TestNotReadyUntilTopics checks that the gRPC port stays closed and ingest
// not ready while Kafka is unreachable, and both come up once it is.
func TestNotReadyUntilTopics(t *testing.T) {
	free := devtest.Kafka(t) // reserve a port, then free it
	addr := free.Addr()
	_ = free.Close()

	svc, stop := runService(t, testConfig(addr))
	ctx := testCtx(t, 60*time.Second)
	time.Sleep(300 * time.Millisecond) // a few failed attempts; nothing to poll for
	if err := svc.Ready(); err == nil {
		t.Fatal("ready without kafka")
	}
	resp, err := svc.Submit(ctx, &canvassv1.SubmitRequest{Visits: []*canvassv1.Visit{validVisit(t)}})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("Submit before ready: %v %v, want UNAVAILABLE", resp, err)
	}
	k, err := devstack.StartKafka(devstack.KafkaConfig{Addr: addr, Partitions: 12})
	if err != nil {
		t.Fatalf("starting kafka on %s: %v", addr, err)
	}
	defer k.Close()
	wctx, wcancel := context.WithTimeout(ctx, 15*time.Second)
	defer wcancel()
	if err := svc.WaitReady(wctx); err != nil {
		t.Fatal(err)
	}
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// TestGRPCWebSubmit posts a gRPC-web call with plain net/http and checks
// the framed answer; and a CORS preflight.
func TestGRPCWebSubmit(t *testing.T) {
	k := devtest.Kafka(t)
	r := startIngest(t, k.Addr())
	ctx := testCtx(t, 30*time.Second)

	v := validVisit(t)
	body, err := proto.Marshal(&canvassv1.SubmitRequest{Visits: []*canvassv1.Visit{v}})
	if err != nil {
		t.Fatal(err)
	}
	frame := make([]byte, 5+len(body))
	binary.BigEndian.PutUint32(frame[1:5], uint32(len(body)))
	copy(frame[5:], body)
	url := "http://" + r.addr + "/" + canvassv1.IngestService_ServiceDesc.ServiceName + "/Submit"
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(frame))
	req.Header.Set("Content-Type", "application/grpc-web+proto")
	req.Header.Set("X-Grpc-Web", "1")
	req.Header.Set("Origin", "http://localhost:5173")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST: %v", err)
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	if res.StatusCode != 200 || !strings.HasPrefix(res.Header.Get("Content-Type"), "application/grpc-web") {
		t.Fatalf("status %d, content-type %q: %q", res.StatusCode, res.Header.Get("Content-Type"), raw)
	}
	if res.Header.Get("Access-Control-Allow-Origin") == "" {
		t.Errorf("no Access-Control-Allow-Origin on a cross-origin call")
	}
	msg, trailer := parseGRPCWeb(t, raw)
	var out canvassv1.SubmitResponse
	if err := proto.Unmarshal(msg, &out); err != nil {
		t.Fatalf("decoding response: %v", err)
	}
	if len(out.GetResults()) != 1 || out.GetResults()[0].GetStatus() != canvassv1.Status_STATUS_ACCEPTED || out.GetResults()[0].GetId() != v.Id {
		t.Errorf("response %v, want %s ACCEPTED", &out, v.Id)
	}
	if !strings.Contains(strings.ToLower(trailer), "grpc-status: 0") {
		t.Errorf("trailer %q lacks grpc-status: 0", trailer)
	}

	pre, _ := http.NewRequestWithContext(ctx, http.MethodOptions, url, nil)
	pre.Header.Set("Origin", "https://canvass.example.org")
	pre.Header.Set("Access-Control-Request-Method", "POST")
	pre.Header.Set("Access-Control-Request-Headers", "content-type,x-grpc-web,x-trace-id")
	pres, err := http.DefaultClient.Do(pre)
	if err != nil {
		t.Fatalf("preflight: %v", err)
	}
	pres.Body.Close()
	if pres.StatusCode >= 300 || pres.Header.Get("Access-Control-Allow-Origin") != "https://canvass.example.org" {
		t.Errorf("preflight: status %d, allow-origin %q", pres.StatusCode, pres.Header.Get("Access-Control-Allow-Origin"))
	}
	allowed := strings.ToLower(pres.Header.Get("Access-Control-Allow-Headers"))
	for _, h := range []string{"content-type", "x-grpc-web", "x-trace-id"} {
		if !strings.Contains(allowed, h) {
			t.Errorf("preflight allows headers %q, missing %s", allowed, h)
		}
	}

	// Native gRPC on the same port still works, health included.
	hc, err := healthpb.NewHealthClient(r.conn).Check(ctx, &healthpb.HealthCheckRequest{Service: canvassv1.IngestService_ServiceDesc.ServiceName})
	if err != nil || hc.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health of IngestService: %v %v", hc, err)
	}
}

// parseGRPCWeb splits a gRPC-web response body into its message and trailer.
func parseGRPCWeb(t *testing.T, b []byte) (msg []byte, trailer string) {
	t.Helper()
	for len(b) >= 5 {
		flag, n := b[0], int(binary.BigEndian.Uint32(b[1:5]))
		if len(b) < 5+n {
			t.Fatalf("short gRPC-web frame: %d < %d", len(b), 5+n)
		}
		if flag&0x80 != 0 {
			trailer = string(b[5 : 5+n])
		} else {
			msg = b[5 : 5+n]
		}
		b = b[5+n:]
	}
	if len(b) != 0 {
		t.Fatalf("trailing %d bytes", len(b))
	}
	return msg, trailer
}

// TestRunStopsCleanly checks that Run returns nil when cancelled, and that
// a Submit after shutdown is UNAVAILABLE, not a crash.
func TestRunStopsCleanly(t *testing.T) {
	k := devtest.Kafka(t)
	svc, err := New(testConfig(k.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	wctx, wcancel := context.WithTimeout(ctx, 15*time.Second)
	defer wcancel()
	if err := svc.WaitReady(wctx); err != nil {
		t.Fatal(err)
	}
	resp, err := svc.Submit(wctx, &canvassv1.SubmitRequest{Visits: []*canvassv1.Visit{validVisit(t)}})
	if err != nil || resp.GetResults()[0].GetStatus() != canvassv1.Status_STATUS_ACCEPTED {
		t.Fatalf("Submit: %v %v", resp, err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return within 10s of cancel")
	}
	_, err = svc.Submit(context.Background(), &canvassv1.SubmitRequest{Visits: []*canvassv1.Visit{validVisit(t)}})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("Submit after shutdown: %v, want UNAVAILABLE", err)
	}
}

// TestTopicsLost restarts an in-memory broker, which comes back without
// topics: ingest answers UNAVAILABLE, creates the topics again by itself
// and accepts records once they exist.
func TestTopicsLost(t *testing.T) {
	k := devtest.Kafka(t)
	r := startIngest(t, k.Addr())
	ctx := testCtx(t, 60*time.Second)
	submit := func() (*canvassv1.SubmitResponse, error) {
		return r.client.Submit(ctx, &canvassv1.SubmitRequest{Visits: []*canvassv1.Visit{validVisit(t)}})
	}
	if _, err := submit(); err != nil {
		t.Fatalf("Submit: %v", err)
	}
	if err := k.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := k.Start(ctx); err != nil {
		t.Fatal(err)
	}
	sawUnavailable := false
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := submit()
		if err == nil {
			if resp.GetResults()[0].GetStatus() != canvassv1.Status_STATUS_ACCEPTED {
				t.Fatalf("after recovery: %v", resp)
			}
			break
		}
		if status.Code(err) != codes.Unavailable || time.Now().After(deadline) {
			t.Fatalf("Submit after the broker lost its topics: %v", err)
		}
		sawUnavailable = true
		time.Sleep(100 * time.Millisecond)
	}
	if !sawUnavailable {
		t.Log("the broker kept or auto-created the topics; nothing to recover")
	}
	for _, name := range topic.All {
		if n := len(readTopic(t, k.Addr(), name)); name == topic.Visits && n != 1 {
			t.Errorf("%s holds %d records after the restart, want 1", name, n)
		}
	}
}
