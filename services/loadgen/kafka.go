package loadgen

import (
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/chapper/chapper/proto/locality"
	"github.com/chapper/chapper/proto/topic"
	"github.com/segmentio/kafka-go"
	"google.golang.org/protobuf/proto"
)

// KafkaBatches returns n batches of size generated visits as ingest
// produces them to canvass.visits.v1: the protobuf value, the locality key
// and the four record headers. Benchmarks write them with a bare kafka-go
// Writer as the raw baseline of the ingest path.
func KafkaBatches(rng *rand.Rand, n, size int) ([][]kafka.Message, error) {
	out := make([][]kafka.Message, n)
	now := time.Now()
	receivedAt := []byte(now.UTC().Format("2006-01-02T15:04:05.000000000Z07:00")) // as ingest stamps it
	for i := range out {
		req := Generate(rng, "visits", size, now)
		msgs := make([]kafka.Message, len(req.Visits))
		for j, v := range req.Visits {
			value, err := proto.Marshal(v)
			if err != nil {
				return nil, fmt.Errorf("encoding a visit: %w", err)
			}
			loc, err := locality.Of(v.GetLocation().GetLatitude(), v.GetLocation().GetLongitude())
			if err != nil {
				return nil, fmt.Errorf("locating a generated visit: %w", err)
			}
			msgs[j] = kafka.Message{
				Topic: topic.Visits,
				Key:   strconv.AppendInt(nil, int64(loc), 10),
				Value: value,
				Headers: []kafka.Header{
					{Key: topic.HeaderSchema, Value: []byte("canvass.v1.Visit")},
					{Key: topic.HeaderClientID, Value: []byte(v.GetCanvasserId())},
					{Key: topic.HeaderReceivedAt, Value: receivedAt},
					{Key: topic.HeaderTraceID, Value: []byte("0123456789abcdef0123456789abcdef")},
				},
			}
		}
		out[i] = msgs
	}
	return out, nil
}
