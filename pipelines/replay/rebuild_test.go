package replay_test

import (
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"

	"github.com/chapper/chapper/pipelines/replay"
	"github.com/chapper/chapper/pipelines/runtime/sinktest"
	"github.com/chapper/chapper/pipelines/timeline"
	"github.com/chapper/chapper/proto/topic"
	"github.com/chapper/chapper/services/devstack/devtest"
)

// counted sums the visits, intentions and followups counters of every
// locality under prefix: a record counted twice shows here.
func counted(t testing.TB, client *redis.Client, prefix string) int {
	ctx := timeoutCtx(t)
	n := 0
	iter := client.Scan(ctx, 0, prefix+"ct:{*", 1000).Iterator()
	for iter.Next(ctx) {
		vals, err := client.HMGet(ctx, iter.Val(), "visits", "intentions", "followups").Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range vals {
			if s, ok := v.(string); ok {
				c, _ := strconv.Atoi(s)
				n += c
			}
		}
	}
	return n
}

// TestRebuildTimeline rebuilds the timeline into a fresh prefix while the
// live timeline pipeline runs and records keep being produced before,
// during and after the rebuild: after the switch the new prefix holds
// every record exactly once (seen sets and counters), the live sink writes
// there, and CleanTimeline drops the old prefix's keys only.
func TestRebuildTimeline(t *testing.T) {
	ctx := timeoutCtx(t)
	k := devtest.Kafka(t)
	sinktest.CreateTopics(t, k.Addr())
	r := devtest.Redis(t)
	base := devtest.KeyPrefix(t)
	client := redis.NewClient(&redis.Options{Addr: r.Addr()})
	t.Cleanup(func() { _ = client.Close() })
	live, err := timeline.New(client, timeline.Config{Prefix: base})
	if err != nil {
		t.Fatal(err)
	}
	ccfg := sinktest.ConsumerConfig(k.Addr(), topic.GroupTimeline)
	running := sinktest.Start(t, ccfg, live)

	recs := sinktest.Records(51, 900)
	before, during, after := recs[:300], recs[300:700], recs[700:]
	sinktest.ProduceRecords(t, k.Addr(), before...)
	sinktest.WaitCommitted(t, k.Addr(), ccfg.GroupID, time.Minute)

	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < len(during); i += 10 {
			sinktest.ProduceRecords(t, k.Addr(), during[i:i+10]...)
			select {
			case <-stop:
				// the rest at once
				sinktest.ProduceRecords(t, k.Addr(), during[i+10:]...)
				return
			case <-time.After(15 * time.Millisecond):
			}
		}
	}()
	// let some of "during" go to the old prefix only, before the rebuild
	sinktest.Eventually(t, time.Minute, func() error {
		if n := counted(t, client, base); n < 320 {
			return fmt.Errorf("%d counted so far", n)
		}
		return nil
	})
	next, sum, err := replay.RebuildTimeline(ctx, client, timeline.Config{Prefix: base},
		replay.Config{Brokers: []string{k.Addr()}, BatchSize: 50, Linger: 10 * time.Millisecond})
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatalf("RebuildTimeline = %v (summary %+v)", err, sum)
	}
	p, err := timeline.ReadPrefixes(ctx, client, base)
	if err != nil || p.Active != next || p.Rebuild != "" {
		t.Fatalf("prefixes after the rebuild = %+v, %v; want active %q and no rebuild", p, err, next)
	}
	sinktest.ProduceRecords(t, k.Addr(), after...)
	sinktest.WaitCommitted(t, k.Addr(), ccfg.GroupID, time.Minute)
	running.Stop(t)

	st := timelineStore{client, next}
	if got := st.Total(t); got != len(recs) {
		t.Errorf("new prefix has %d ids in its seen sets, want %d", got, len(recs))
	}
	if got := counted(t, client, next); got != len(recs) {
		t.Errorf("new prefix counts %d records, want %d (each exactly once)", got, len(recs))
	}
	for _, part := range [][]proto.Message{before, during, after} {
		for i, m := range part {
			if i%13 == 0 && !st.Has(t, m) {
				t.Errorf("record %s missing from the new prefix", idOf(m))
			}
		}
	}
	// the old prefix stopped getting records at the switch
	oldSt := timelineStore{client, base}
	if got := counted(t, client, base); got < 320 || got > len(before)+len(during) {
		t.Errorf("old prefix counts %d, want between 320 and %d", got, len(before)+len(during))
	}
	for i, m := range after {
		if i%13 == 0 && oldSt.Has(t, m) {
			t.Errorf("record %s, produced after the switch, is in the old prefix", idOf(m))
		}
	}

	dropped, deleted, err := replay.CleanTimeline(ctx, client, base)
	if err != nil || len(dropped) != 1 || dropped[0] != base || deleted == 0 {
		t.Fatalf("CleanTimeline = %v, %d, %v; want the base prefix dropped", dropped, deleted, err)
	}
	if got := counted(t, client, base); got != 0 {
		t.Errorf("old prefix still counts %d after clean", got)
	}
	if got := counted(t, client, next); got != len(recs) {
		t.Errorf("clean touched the new prefix: it counts %d, want %d", got, len(recs))
	}
}

func idOf(m proto.Message) string {
	meta, _ := topic.MetaOf(m)
	return meta.ID
}
