package devstack_test

import (
	"context"
	"errors"
	"flag"
	"io"
	"net/http"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/chapper/chapper/services/devstack"
	"github.com/chapper/chapper/services/devstack/devtest"
)

func TestStackConfig(t *testing.T) {
	var cfg devstack.StackConfig
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	cfg.RegisterFlags("dev", fs)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	want := devstack.StackConfig{Dir: "var", KafkaAddr: "127.0.0.1:19092", PostgresAddr: "127.0.0.1:15432", RedisAddr: "127.0.0.1:16379", IDsRedisAddr: "127.0.0.1:16380",
		SearchAddr: "127.0.0.1:19200", Partitions: 12, SearchProcess: true, SearchNice: 10}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("defaults = %+v, want %+v", cfg, want)
	}
	for _, name := range []string{"dev.dir", "dev.kafka-addr", "dev.postgres-addr", "dev.redis-addr", "dev.ids-redis-addr", "dev.partitions", "dev.kafka-fsync", "dev.search-process", "dev.search-nice"} {
		if fs.Lookup(name) == nil {
			t.Errorf("flag %s not registered", name)
		}
	}

	tests := []struct {
		name   string
		change func(*devstack.StackConfig)
		ok     bool
	}{
		{name: "defaults", change: func(*devstack.StackConfig) {}, ok: true},
		{name: "no dir", change: func(c *devstack.StackConfig) { c.Dir = "" }},
		{name: "no kafka address", change: func(c *devstack.StackConfig) { c.KafkaAddr = "" }},
		{name: "no postgres address", change: func(c *devstack.StackConfig) { c.PostgresAddr = "" }},
		{name: "no redis address", change: func(c *devstack.StackConfig) { c.RedisAddr = "" }},
		{name: "zero partitions", change: func(c *devstack.StackConfig) { c.Partitions = 0 }},
		{name: "negative search nice", change: func(c *devstack.StackConfig) { c.SearchNice = -1 }},
		{name: "search nice above 19", change: func(c *devstack.StackConfig) { c.SearchNice = 20 }},
		{name: "search nice unused in-process", change: func(c *devstack.StackConfig) { c.SearchProcess, c.SearchNice = false, 20 }, ok: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := want
			tc.change(&c)
			err := c.Validate()
			if tc.ok != (err == nil) {
				t.Fatalf("Validate() = %v, want ok %v", err, tc.ok)
			}
			if err != nil && !errors.Is(err, devstack.ErrStackConfig) {
				t.Errorf("Validate() = %v, want ErrStackConfig", err)
			}
		})
	}
}

func TestStackKeepsDataAcrossRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("starts postgres and redis-server")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cfg := devstack.StackConfig{
		Dir:          filepath.Join(t.TempDir(), "var"),
		KafkaAddr:    "127.0.0.1:0",
		PostgresAddr: "127.0.0.1:0",
		RedisAddr:    "127.0.0.1:0",
		IDsRedisAddr: "127.0.0.1:0",
		SearchAddr:   "127.0.0.1:0",
		Partitions:   3,
	}
	s, err := devstack.StartStack(ctx, cfg)
	if err != nil {
		t.Fatalf("starting the stack: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })

	createTopic(ctx, t, s.Kafka.Addr(), "canvass.visits.v1")
	produce(ctx, t, s.Kafka.Addr(), "canvass.visits.v1", "52543256811", "first")
	for _, db := range []string{"chapper_router", "chapper_shard_0", "chapper_shard_1"} {
		execSQL(ctx, t, s.Postgres, db, "CREATE TABLE marks (n int); INSERT INTO marks VALUES (1)")
	}
	redisSet(ctx, t, s.Redis.Addr(), "k", "v")
	// the id store's redis-server is another server, with data of its own
	redisSet(ctx, t, s.IDs.Addr(), "ids", "w")
	if v, err := redisGet(ctx, s.IDs.Addr(), "k"); !errors.Is(err, redis.Nil) {
		t.Errorf("GET k on the id store's redis-server = %q, %v; want no such key", v, err)
	}
	searchDo(ctx, t, http.MethodPut, s.SearchURL()+"/marks/_doc/1?refresh=true", `{"n":1}`, http.StatusCreated)

	if err := s.Close(); err != nil {
		t.Fatalf("closing the stack: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("closing the stack twice: %v", err)
	}

	s, err = devstack.StartStack(ctx, cfg)
	if err != nil {
		t.Fatalf("starting the stack again: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	got := consumeAll(ctx, t, s.Kafka.Addr(), "canvass.visits.v1", 1)
	if len(got) != 1 || string(got[0].Key) != "52543256811" || string(got[0].Value) != "first" {
		t.Errorf("records after restart = %v, want one (52543256811, first)", got)
	}
	if n := topicPartitions(ctx, t, s.Kafka.Addr(), "canvass.visits.v1"); n != 3 {
		t.Errorf("topic has %d partitions, want 3", n)
	}
	for _, db := range []string{"chapper_router", "chapper_shard_0", "chapper_shard_1"} {
		if n, err := count(ctx, s.Postgres, db); err != nil || n != 1 {
			t.Errorf("%s after restart: %d rows, err %v; want 1", db, n, err)
		}
	}
	if v, err := redisGet(ctx, s.Redis.Addr(), "k"); err != nil || v != "v" {
		t.Errorf("redis after restart: GET k = %q, %v; want v", v, err)
	}
	if v, err := redisGet(ctx, s.IDs.Addr(), "ids"); err != nil || v != "w" {
		t.Errorf("the id store's redis after restart: GET ids = %q, %v; want w", v, err)
	}
	searchDo(ctx, t, http.MethodGet, s.SearchURL()+"/marks/_doc/1", "", http.StatusOK)
}

// searchDo sends one request to the search server and checks its status.
func searchDo(ctx context.Context, t *testing.T, method, url, body string, want int) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != want {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("%s %s: status %d, want %d: %s", method, url, resp.StatusCode, want, b)
	}
}

func TestKafkaStopStart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	k, err := devstack.StartKafka(devstack.KafkaConfig{Addr: "127.0.0.1:0", DataDir: t.TempDir(), Partitions: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k.Close() })
	addr := k.Addr()
	createTopic(ctx, t, addr, "t")
	produce(ctx, t, addr, "t", "1", "before")
	if err := k.Stop(); err != nil {
		t.Fatal(err)
	}
	if answers(addr) {
		t.Fatal("a stopped broker accepts connections")
	}
	if err := k.Start(ctx); err != nil {
		t.Fatalf("starting again: %v", err)
	}
	if k.Addr() != addr {
		t.Errorf("address changed across a restart: %s, then %s", addr, k.Addr())
	}
	produce(ctx, t, addr, "t", "1", "after")
	got := consumeAll(ctx, t, addr, "t", 2)
	if len(got) != 2 {
		t.Fatalf("got %d records after restart, want 2", len(got))
	}
	if err := k.Close(); err != nil {
		t.Fatal(err)
	}
	if err := k.Start(ctx); !errors.Is(err, devstack.ErrClosed) {
		t.Errorf("Start after Close = %v, want ErrClosed", err)
	}
}

func TestDevtestKafkaIsPrivate(t *testing.T) {
	if a, b := devtest.Kafka(t), devtest.Kafka(t); a.Addr() == b.Addr() {
		t.Fatal("devtest.Kafka returned one broker twice")
	}
}

// kafkaClient returns a client of the broker at addr; the caller closes
// it (before the broker goes, or Close waits for reconnect attempts).
func kafkaClient(t *testing.T, addr string, opts ...kgo.Opt) *kgo.Client {
	t.Helper()
	c, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(addr)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// createTopic creates topic with the broker's default partition count.
func createTopic(ctx context.Context, t *testing.T, addr, topic string) {
	t.Helper()
	req := kmsg.NewPtrCreateTopicsRequest()
	rt := kmsg.NewCreateTopicsRequestTopic()
	rt.Topic, rt.NumPartitions, rt.ReplicationFactor = topic, -1, -1
	req.Topics = append(req.Topics, rt)
	c := kafkaClient(t, addr)
	defer c.Close()
	resp, err := req.RequestWith(ctx, c)
	if err != nil {
		t.Fatalf("creating topic %s: %v", topic, err)
	}
	if code := resp.Topics[0].ErrorCode; code != 0 {
		t.Fatalf("creating topic %s: error code %d", topic, code)
	}
}

func topicPartitions(ctx context.Context, t *testing.T, addr, topic string) int {
	t.Helper()
	req := kmsg.NewPtrMetadataRequest()
	rt := kmsg.NewMetadataRequestTopic()
	rt.Topic = kmsg.StringPtr(topic)
	req.Topics = append(req.Topics, rt)
	c := kafkaClient(t, addr)
	defer c.Close()
	resp, err := req.RequestWith(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	return len(resp.Topics[0].Partitions)
}

// produce writes one record with acks=all.
func produce(ctx context.Context, t *testing.T, addr, topic, key, value string) {
	t.Helper()
	c := kafkaClient(t, addr)
	defer c.Close()
	if err := c.ProduceSync(ctx, &kgo.Record{Topic: topic, Key: []byte(key), Value: []byte(value)}).FirstErr(); err != nil {
		t.Fatalf("producing to %s: %v", topic, err)
	}
}

// consumeAll reads topic from the start until it has n records.
func consumeAll(ctx context.Context, t *testing.T, addr, topic string, n int) []*kgo.Record {
	t.Helper()
	c := kafkaClient(t, addr, kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var recs []*kgo.Record
	for len(recs) < n {
		fs := c.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("consuming %s: got %d records of %d: %v", topic, len(recs), n, ctx.Err())
		}
		fs.EachRecord(func(r *kgo.Record) { recs = append(recs, r) })
	}
	return recs
}
