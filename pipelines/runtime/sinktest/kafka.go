package sinktest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/segmentio/kafka-go"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/chapper/chapper/pipelines/runtime"
	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"github.com/chapper/chapper/proto/locality"
	"github.com/chapper/chapper/proto/topic"
)

// RecordTopics are the topics the suite's consumers read.
var RecordTopics = []string{topic.Visits, topic.Intentions, topic.Followups}

// Partitions is the partition count of the topics CreateTopics makes: few,
// so that small test batches still span several records per partition.
const Partitions = 4

// ConsumerConfig returns a runtime configuration for tests against the
// broker at addr: the record topics, the standard dead-letter topic, small
// batches, short backoffs and drain timeout, and consumer group timings
// short enough for rebalances to take milliseconds.
func ConsumerConfig(addr, group string) runtime.Config {
	return runtime.Config{
		Brokers:           []string{addr},
		GroupID:           group,
		Topics:            RecordTopics,
		BatchSize:         50,
		Linger:            20 * time.Millisecond,
		DeadLetterTopic:   topic.DeadLetter,
		MinBackoff:        10 * time.Millisecond,
		MaxBackoff:        100 * time.Millisecond,
		DrainTimeout:      300 * time.Millisecond,
		SessionTimeout:    6 * time.Second,
		HeartbeatInterval: 200 * time.Millisecond,
		RebalanceTimeout:  2 * time.Second,
		JoinGroupBackoff:  100 * time.Millisecond,
	}
}

// CreateTopics creates the record topics, the dead-letter topic and any
// extra topics on the broker at addr, Partitions partitions each.
func CreateTopics(t testing.TB, addr string, extra ...string) {
	t.Helper()
	CreateTopicsN(t, addr, Partitions, extra...)
}

// CreateTopicsN is CreateTopics with n partitions per topic.
func CreateTopicsN(t testing.TB, addr string, n int, extra ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client := newClient(addr)
	defer closeClient(client)
	req := &kafka.CreateTopicsRequest{}
	for _, name := range append(append(RecordTopics[:len(RecordTopics):len(RecordTopics)], topic.DeadLetter), extra...) {
		req.Topics = append(req.Topics, kafka.TopicConfig{Topic: name, NumPartitions: n, ReplicationFactor: 1})
	}
	resp, err := client.CreateTopics(ctx, req)
	if err != nil {
		t.Fatalf("creating topics: %v", err)
	}
	for name, err := range resp.Errors {
		if err != nil && !errors.Is(err, kafka.TopicAlreadyExists) {
			t.Fatalf("creating topic %s: %v", name, err)
		}
	}
}

// Records returns n valid records of all three kinds (about 60% visits, 25%
// intentions, 15% follow-ups) with fresh UUIDv7 ids, spread over a few
// hundred localities around Edinburgh, Glasgow and Stirling, with record
// times a second apart. The same seed gives the same mix and places.
func Records(seed uint64, n int) []proto.Message {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	towns := []struct{ lat, lon float64 }{{55.9533, -3.1883}, {55.8642, -4.2518}, {56.1165, -3.9369}}
	start := time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)
	outcomes := []canvassv1.Outcome{canvassv1.Outcome_OUTCOME_ANSWERED, canvassv1.Outcome_OUTCOME_NO_ANSWER,
		canvassv1.Outcome_OUTCOME_REFUSED, canvassv1.Outcome_OUTCOME_MOVED, canvassv1.Outcome_OUTCOME_UNSPECIFIED}
	options := []string{"Green", "Labour", "SNP", "undecided"}
	methods := []canvassv1.Method{canvassv1.Method_METHOD_TELEPHONE, canvassv1.Method_METHOD_EMAIL, canvassv1.Method_METHOD_POST}
	out := make([]proto.Message, n)
	for i := range out {
		town := towns[rng.IntN(len(towns))]
		loc := &canvassv1.Location{Latitude: town.lat + rng.Float64()*0.01, Longitude: town.lon + rng.Float64()*0.02}
		when := timestamppb.New(start.Add(time.Duration(i) * time.Second))
		id := uuid.Must(uuid.NewV7()).String()
		canvasser := "canvasser-" + strconv.Itoa(rng.IntN(50))
		switch k := rng.IntN(100); {
		case k < 60:
			out[i] = &canvassv1.Visit{Id: id, DwellingId: "dwelling-" + strconv.Itoa(rng.IntN(100000)),
				Address: strconv.Itoa(rng.IntN(200)+1) + " High Street", Location: loc, CanvasserId: canvasser,
				VisitedAt: when, Outcome: outcomes[rng.IntN(len(outcomes))]}
		case k < 85:
			out[i] = &canvassv1.Intention{Id: id, VisitId: uuid.Must(uuid.NewV7()).String(),
				ElectorId: "elector-" + strconv.Itoa(rng.IntN(100000)), Option: options[rng.IntN(len(options))],
				Location: loc, RecordedAt: when, CanvasserId: canvasser}
		default:
			out[i] = &canvassv1.FollowupRequest{Id: id, VisitId: uuid.Must(uuid.NewV7()).String(),
				ElectorId: "elector-" + strconv.Itoa(rng.IntN(100000)), Issue: "bin collections",
				Method: methods[rng.IntN(len(methods))], Location: loc, RecordedAt: when, CanvasserId: canvasser}
		}
	}
	return out
}

// Message returns the Kafka message ingest would produce for a record: its
// kind's topic, key = locality index in decimal, value = protobuf bytes, and
// the standard headers. A record without a valid location gets key "0".
func Message(t testing.TB, m proto.Message) kafka.Message {
	t.Helper()
	value, err := proto.Marshal(m)
	if err != nil {
		t.Fatalf("encoding record: %v", err)
	}
	meta, _ := topic.MetaOf(m)
	kind, ok := topic.KindOf(m)
	if !ok {
		t.Fatalf("%T is not a record message", m)
	}
	loc, err := locality.Of(meta.Location.GetLatitude(), meta.Location.GetLongitude())
	if err != nil || meta.Location == nil {
		loc = 0
	}
	return kafka.Message{
		Topic: kind.Topic(),
		Key:   []byte(strconv.FormatInt(int64(loc), 10)),
		Value: value,
		Headers: []kafka.Header{
			{Key: topic.HeaderSchema, Value: []byte(m.ProtoReflect().Descriptor().FullName())},
			{Key: topic.HeaderClientID, Value: []byte(meta.CanvasserID)},
			{Key: topic.HeaderReceivedAt, Value: []byte(time.Now().UTC().Format(time.RFC3339Nano))},
			{Key: topic.HeaderTraceID, Value: []byte(uuid.NewString())},
		},
	}
}

// Produce writes msgs (each naming its topic) to the broker at addr,
// partitioned by key with murmur2 as ingest does, and waits for acks=all.
func Produce(t testing.TB, addr string, msgs ...kafka.Message) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	transport := &kafka.Transport{}
	defer transport.CloseIdleConnections()
	w := &kafka.Writer{
		Addr:         kafka.TCP(addr),
		Transport:    transport,
		Balancer:     &kafka.Murmur2Balancer{},
		RequiredAcks: kafka.RequireAll,
		BatchSize:    1000,
		BatchBytes:   64 << 20,
		BatchTimeout: 5 * time.Millisecond,
	}
	defer w.Close()
	for len(msgs) > 0 {
		n := min(len(msgs), 10000)
		if err := w.WriteMessages(ctx, msgs[:n]...); err != nil {
			t.Fatalf("producing %d messages: %v", n, err)
		}
		msgs = msgs[n:]
	}
}

// ProduceRecords produces each record as Message makes it.
func ProduceRecords(t testing.TB, addr string, recs ...proto.Message) {
	t.Helper()
	msgs := make([]kafka.Message, len(recs))
	for i, r := range recs {
		msgs[i] = Message(t, r)
	}
	Produce(t, addr, msgs...)
}

// TopicPartition names a partition.
type TopicPartition struct {
	Topic     string
	Partition int
}

// EndOffsets returns the next offset to be written on every partition of
// the record topics.
func EndOffsets(t testing.TB, addr string) map[TopicPartition]int64 {
	t.Helper()
	return endOffsets(t, addr, RecordTopics...)
}

func endOffsets(t testing.TB, addr string, topics ...string) map[TopicPartition]int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client := newClient(addr)
	defer closeClient(client)
	req := &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{}}
	for name, n := range partitions(ctx, t, client, topics...) {
		for p := range n {
			req.Topics[name] = append(req.Topics[name], kafka.LastOffsetOf(p))
		}
	}
	resp, err := client.ListOffsets(ctx, req)
	if err != nil {
		t.Fatalf("listing end offsets: %v", err)
	}
	out := map[TopicPartition]int64{}
	for name, parts := range resp.Topics {
		for _, p := range parts {
			if p.Error != nil {
				t.Fatalf("listing end offset of %s/%d: %v", name, p.Partition, p.Error)
			}
			out[TopicPartition{name, p.Partition}] = p.LastOffset
		}
	}
	return out
}

// partitions returns the partition count of each topic.
func partitions(ctx context.Context, t testing.TB, client *kafka.Client, topics ...string) map[string]int {
	t.Helper()
	resp, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: topics})
	if err != nil {
		t.Fatalf("reading topic metadata: %v", err)
	}
	out := map[string]int{}
	for _, tm := range resp.Topics {
		if tm.Error != nil {
			t.Fatalf("reading metadata of topic %s: %v", tm.Name, tm.Error)
		}
		out[tm.Name] = len(tm.Partitions)
	}
	return out
}

// Committed returns the offsets group committed on the record topics (the
// next offset it will read; -1 where it committed nothing).
func Committed(t testing.TB, addr, group string) map[TopicPartition]int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client := newClient(addr)
	defer closeClient(client)
	req := &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{}}
	for name, n := range partitions(ctx, t, client, RecordTopics...) {
		for p := range n {
			req.Topics[name] = append(req.Topics[name], p)
		}
	}
	out := map[TopicPartition]int64{}
	resp, err := client.OffsetFetch(ctx, req)
	if err == nil {
		err = resp.Error
	}
	if errors.Is(err, kafka.GroupIdNotFound) {
		// Not joined yet: nothing committed.
		return out
	}
	if err != nil {
		t.Fatalf("fetching committed offsets of %s: %v", group, err)
	}
	for name, parts := range resp.Topics {
		for _, p := range parts {
			out[TopicPartition{name, p.Partition}] = p.CommittedOffset
		}
	}
	return out
}

// WaitCommitted waits until group has committed everything on the record
// topics, failing t after timeout.
func WaitCommitted(t testing.TB, addr, group string, timeout time.Duration) {
	t.Helper()
	end := EndOffsets(t, addr)
	Eventually(t, timeout, func() error {
		got := Committed(t, addr, group)
		for tp, want := range end {
			if want > 0 && got[tp] != want {
				return fmt.Errorf("%s/%d committed %d of %d", tp.Topic, tp.Partition, got[tp], want)
			}
		}
		return nil
	})
}

// ReadTopic returns every message currently on topic, partition by
// partition in offset order.
func ReadTopic(t testing.TB, addr, name string) []kafka.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out []kafka.Message
	for tp, end := range endOffsets(t, addr, name) {
		if end == 0 {
			continue
		}
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{addr}, Topic: name, Partition: tp.Partition, MaxWait: 100 * time.Millisecond})
		for {
			m, err := r.ReadMessage(ctx)
			if err != nil {
				r.Close()
				t.Fatalf("reading %s/%d: %v", name, tp.Partition, err)
			}
			out = append(out, m)
			if m.Offset >= end-1 {
				break
			}
		}
		r.Close()
	}
	return out
}

// Eventually calls cond until it returns nil, failing t with cond's last
// error after timeout.
func Eventually(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("still not true after %v: %v", timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// newClient returns a client with its own connection pool, so that the
// helpers leave no idle connections (and their goroutines) behind; close it
// with closeClient.
func newClient(addr string) *kafka.Client {
	return &kafka.Client{Addr: kafka.TCP(addr), Transport: &kafka.Transport{}}
}

func closeClient(c *kafka.Client) { c.Transport.(*kafka.Transport).CloseIdleConnections() }

// Client returns a Kafka client for the broker at addr with its own
// connection pool, closed when t ends (kafka-go's default pool would keep
// idle connections, which goleak reports).
func Client(t testing.TB, addr string) *kafka.Client {
	c := newClient(addr)
	t.Cleanup(func() { closeClient(c) })
	return c
}
