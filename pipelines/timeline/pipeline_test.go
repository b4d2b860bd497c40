package timeline_test

import (
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"

	"github.com/chapper/chapper/pipelines/runtime/sinktest"
	"github.com/chapper/chapper/pipelines/timeline"
	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"github.com/chapper/chapper/services/devstack/devtest"
)

// Redis stops while records arrive; the pipeline turns not-ready, retries
// without committing, and once Redis is back every record is there once.
func TestPipelineRedisDownThenUp(t *testing.T) {
	k := devtest.Kafka(t)
	sinktest.CreateTopics(t, k.Addr())
	r := devtest.NewRedis(t)
	client := redis.NewClient(&redis.Options{Addr: r.Addr(), MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	defer client.Close()
	sink, err := timeline.New(client, timeline.Config{})
	if err != nil {
		t.Fatal(err)
	}
	s := store{&env{client: client, sink: sink}}
	cfg := sinktest.ConsumerConfig(k.Addr(), "redis-down")
	c := sinktest.Start(t, cfg, sink)

	first := sinktest.Records(1, 200)
	sinktest.ProduceRecords(t, k.Addr(), first...)
	sinktest.WaitCommitted(t, k.Addr(), cfg.GroupID, 30*time.Second)

	if err := r.Stop(); err != nil {
		t.Fatal(err)
	}
	during := sinktest.Records(2, 300)
	sinktest.ProduceRecords(t, k.Addr(), during...)
	sinktest.Eventually(t, 30*time.Second, func() error {
		if c.Consumer.Ready() == nil {
			return errors.New("still ready with redis down")
		}
		return nil
	})
	committed, end := sinktest.Committed(t, k.Addr(), cfg.GroupID), sinktest.EndOffsets(t, k.Addr())
	behind := false
	for tp, e := range end {
		behind = behind || committed[tp] < e
	}
	if !behind {
		t.Fatal("everything committed while redis was down")
	}

	if err := r.Start(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	sinktest.WaitCommitted(t, k.Addr(), cfg.GroupID, 30*time.Second)
	all := append(first, during...)
	missing := 0
	for _, rec := range all {
		if !s.Has(t, rec) {
			missing++
		}
	}
	if got := s.Total(t); missing > 0 || got != len(all) {
		t.Errorf("after redis came back: %d records missing, %d counted; want 0 missing, %d counted", missing, got, len(all))
	}
	sinktest.Eventually(t, 30*time.Second, c.Consumer.Ready)
}

// A record produced to an idle pipeline is published on its chunk's news
// channel quickly (the end-to-end freshness benchmark lives in
// services/query; this guards the pipeline's share).
func TestPipelinePublishesPromptly(t *testing.T) {
	k := devtest.Kafka(t)
	sinktest.CreateTopics(t, k.Addr())
	e := newEnv(t, timeline.Config{})
	cfg := sinktest.ConsumerConfig(k.Addr(), "prompt")
	cfg.Linger = 5 * time.Millisecond
	c := sinktest.Start(t, cfg, e.sink)
	sinktest.Eventually(t, 30*time.Second, c.Consumer.Ready)

	sub := e.client.Subscribe(ctxT(t), timeline.NewsChannel(e.prefix, edChunk))
	defer sub.Close()
	if _, err := sub.Receive(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	var worst time.Duration
	for i := range 5 {
		v := visit(canvassv1.Outcome_OUTCOME_ANSWERED, t0.Add(time.Duration(i)*time.Second))
		start := time.Now()
		sinktest.ProduceRecords(t, k.Addr(), v)
		msg, err := sub.ReceiveMessage(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		worst = max(worst, time.Since(start))
		var got canvassv1.TimelineEntry
		if err := proto.Unmarshal([]byte(msg.Payload), &got); err != nil || got.GetId() != v.Id {
			t.Fatalf("news = %s (%v), want %s", got.GetId(), err, v.Id)
		}
	}
	t.Logf("slowest produce → news: %v", worst)
	if worst > 500*time.Millisecond {
		t.Errorf("slowest produce → news took %v, want well under a second", worst)
	}
}
