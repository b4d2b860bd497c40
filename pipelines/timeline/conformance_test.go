package timeline_test

import (
	"strconv"
	"testing"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"

	"github.com/chapper/chapper/pipelines/runtime"
	"github.com/chapper/chapper/pipelines/runtime/sinktest"
	"github.com/chapper/chapper/pipelines/timeline"
	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"github.com/chapper/chapper/proto/locality"
	"github.com/chapper/chapper/proto/topic"
)

func TestConformance(t *testing.T) {
	sinktest.Run(t, sinktest.Harness{
		New: func(t testing.TB) (runtime.Sink, sinktest.Store) {
			e := newEnv(t, timeline.Config{})
			return e.sink, store{e}
		},
		Poison: func(int) proto.Message {
			// Ingest never accepts it, but a record without a location can
			// reach the topic from another producer.
			return &canvassv1.Visit{Id: uuid.NewString(), DwellingId: "d1", Address: "nowhere"}
		},
	})
}

// store reads a test's namespace in the shared Redis.
type store struct{ e *env }

// Has reports whether the record is counted, on its timeline at its time,
// and has a body.
func (s store) Has(t testing.TB, rec proto.Message) bool {
	t.Helper()
	meta, ok := topic.MetaOf(rec)
	if !ok {
		t.Fatalf("%T is not a record", rec)
	}
	loc, err := locality.Of(meta.Location.GetLatitude(), meta.Location.GetLongitude())
	if err != nil || meta.Location == nil {
		return false
	}
	ctx, l := ctxT(t), int64(loc)
	pipe := s.e.client.Pipeline()
	seen := pipe.SIsMember(ctx, timeline.SeenKey(s.e.prefix, l), meta.ID)
	score := pipe.ZScore(ctx, timeline.TimelineKey(s.e.prefix, l), meta.ID)
	body := pipe.HExists(ctx, timeline.RecordsKey(s.e.prefix, l), meta.ID)
	if _, err := pipe.Exec(ctx); err != nil && err != redis.Nil {
		t.Fatalf("reading record %s: %v", meta.ID, err)
	}
	return seen.Val() && score.Err() == nil && score.Val() == float64(meta.Time.UnixMilli()) && body.Val()
}

// Total sums the per-kind counters of every locality.
func (s store) Total(t testing.TB) int {
	t.Helper()
	ctx := ctxT(t)
	total := 0
	iter := s.e.client.Scan(ctx, 0, s.e.prefix+"ct:*", 1000).Iterator()
	for iter.Next(ctx) {
		vals, err := s.e.client.HMGet(ctx, iter.Val(), "visits", "intentions", "followups").Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range vals {
			if v != nil {
				n, err := strconv.Atoi(v.(string))
				if err != nil {
					t.Fatalf("counter of %s = %q", iter.Val(), v)
				}
				total += n
			}
		}
	}
	if err := iter.Err(); err != nil {
		t.Fatal(err)
	}
	return total
}
