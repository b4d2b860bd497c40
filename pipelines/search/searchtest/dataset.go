package searchtest

import (
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/chapper/chapper/pipelines/runtime"
	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"github.com/chapper/chapper/proto/locality"
	"github.com/chapper/chapper/proto/topic"
)

// The generated data spans DataFrom to DataTo, across a month boundary, so
// its records land in two indices per kind. Period is the report period
// the tests ask about: part of the data lies outside it on both sides.
var (
	DataFrom   = time.Date(2026, 10, 28, 0, 0, 0, 0, time.UTC)
	DataTo     = time.Date(2026, 11, 12, 0, 0, 0, 0, time.UTC)
	PeriodFrom = time.Date(2026, 10, 30, 0, 0, 0, 0, time.UTC)
	PeriodTo   = time.Date(2026, 11, 9, 0, 0, 0, 0, time.UTC)
)

// Area is where the records are: twelve 0.1° regions around Edinburgh.
var Area = struct{ South, West, North, East float64 }{55.85, -3.35, 56.05, -3.05}

// KnockBox is a 20 × 20-locality box inside Area where a third of the
// visits fall, some exactly on cell edges, so that most but not all of
// its localities are knocked.
var KnockBox = struct{ South, West, North, East float64 }{55.95, -3.2, 55.97, -3.18}

// Options, Issues, Outcomes and Methods are the values the generator uses.
var (
	Options  = []string{"yes", "no", "undecided"}
	Issues   = []string{"housing", "transport", "schools", "health", "energy", "parking"}
	Outcomes = []canvassv1.Outcome{
		canvassv1.Outcome_OUTCOME_ANSWERED, canvassv1.Outcome_OUTCOME_NO_ANSWER, canvassv1.Outcome_OUTCOME_REFUSED,
		canvassv1.Outcome_OUTCOME_MOVED, canvassv1.Outcome_OUTCOME_UNSPECIFIED,
	}
	Methods = []canvassv1.Method{
		canvassv1.Method_METHOD_TELEPHONE, canvassv1.Method_METHOD_EMAIL, canvassv1.Method_METHOD_POST,
		canvassv1.Method_METHOD_UNSPECIFIED,
	}
)

// Dataset is a generated set of records whose true report answers a test
// computes itself.
type Dataset struct {
	Visits     []*canvassv1.Visit
	Intentions []*canvassv1.Intention
	Followups  []*canvassv1.FollowupRequest
	// ReceivedAt is the received-at time of each record, by id.
	ReceivedAt map[string]time.Time
}

// Generate returns about n records (60% visits, 25% intentions, 15%
// follow-ups) drawn from a generator seeded with seed: the same seed gives
// the same records.
func Generate(seed uint64, n int) *Dataset {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	d := &Dataset{ReceivedAt: map[string]time.Time{}}
	id := func() string {
		return fmt.Sprintf("%08x-%04x-7%03x-8%03x-%012x", rng.Uint32(), rng.Uint32()&0xffff,
			rng.Uint32()&0xfff, rng.Uint32()&0xfff, rng.Uint64()&0xffffffffffff)
	}
	// Canvasser k visits about k times as often as canvasser 1, so the
	// busiest come first without ties; 5% of the records have none.
	canvasser := func() string {
		if rng.IntN(20) == 0 {
			return ""
		}
		const n = 15
		x := rng.IntN(n * (n + 1) / 2)
		for k := 1; ; k++ {
			if x < k {
				return "canvasser-" + strconv.Itoa(k)
			}
			x -= k
		}
	}
	when := func() time.Time {
		span := DataTo.Sub(DataFrom)
		return DataFrom.Add(time.Duration(rng.Int64N(int64(span)))).Truncate(time.Millisecond)
	}
	where := func() *canvassv1.Location {
		return &canvassv1.Location{
			Latitude:  Area.South + rng.Float64()*(Area.North-Area.South),
			Longitude: Area.West + rng.Float64()*(Area.East-Area.West),
		}
	}
	inBox := func() *canvassv1.Location {
		if rng.IntN(8) == 0 {
			// On a cell's south-west corner, where rounding decides the cell.
			return &canvassv1.Location{
				Latitude:  KnockBox.South + float64(rng.IntN(20))/1000,
				Longitude: KnockBox.West + float64(rng.IntN(20))/1000,
			}
		}
		return &canvassv1.Location{
			Latitude:  KnockBox.South + rng.Float64()*(KnockBox.North-KnockBox.South),
			Longitude: KnockBox.West + rng.Float64()*(KnockBox.East-KnockBox.West),
		}
	}
	pick := func(weights ...int) int {
		total := 0
		for _, w := range weights {
			total += w
		}
		x := rng.IntN(total)
		for i, w := range weights {
			if x < w {
				return i
			}
			x -= w
		}
		return len(weights) - 1
	}
	for range n {
		at := when()
		switch pick(60, 25, 15) {
		case 0:
			loc := where()
			if rng.IntN(3) == 0 {
				loc = inBox()
			}
			v := &canvassv1.Visit{
				Id: id(), DwellingId: "dwelling-" + strconv.Itoa(rng.IntN(5000)), Address: strconv.Itoa(1+rng.IntN(200)) + " High Street",
				Location: loc, CanvasserId: canvasser(), VisitedAt: timestamppb.New(at),
				Outcome: Outcomes[pick(50, 30, 10, 5, 5)],
			}
			d.Visits = append(d.Visits, v)
			d.ReceivedAt[v.Id] = at.Add(time.Duration(rng.IntN(3600)) * time.Second)
		case 1:
			it := &canvassv1.Intention{
				Id: id(), VisitId: id(), ElectorId: "elector-" + strconv.Itoa(rng.IntN(3000)),
				Option: Options[pick(45, 35, 20)], Location: where(), RecordedAt: timestamppb.New(at), CanvasserId: canvasser(),
			}
			d.Intentions = append(d.Intentions, it)
			d.ReceivedAt[it.Id] = at.Add(time.Second)
		default:
			f := &canvassv1.FollowupRequest{
				Id: id(), VisitId: id(), ElectorId: "elector-" + strconv.Itoa(rng.IntN(600)),
				Issue: Issues[pick(30, 25, 20, 12, 8, 5)], Method: Methods[pick(40, 30, 20, 10)],
				Location: where(), RecordedAt: timestamppb.New(at), CanvasserId: canvasser(),
			}
			d.Followups = append(d.Followups, f)
			d.ReceivedAt[f.Id] = at.Add(time.Second)
		}
	}
	return d
}

// Messages returns every record, visits first.
func (d *Dataset) Messages() []proto.Message {
	out := make([]proto.Message, 0, len(d.Visits)+len(d.Intentions)+len(d.Followups))
	for _, v := range d.Visits {
		out = append(out, v)
	}
	for _, v := range d.Intentions {
		out = append(out, v)
	}
	for _, v := range d.Followups {
		out = append(out, v)
	}
	return out
}

// Records returns every record as the runtime hands it to a sink: topic,
// key, value, headers (schema, received-at) and the decoded message, with
// made-up offsets.
func (d *Dataset) Records() []runtime.Record {
	msgs := d.Messages()
	out := make([]runtime.Record, len(msgs))
	for i, m := range msgs {
		out[i] = Record(m, d.ReceivedAt[IDOf(m)], int64(i))
	}
	return out
}

// Record returns the runtime record of m, received at receivedAt.
func Record(m proto.Message, receivedAt time.Time, offset int64) runtime.Record {
	meta, _ := topic.MetaOf(m)
	value, err := proto.Marshal(m)
	if err != nil {
		panic(fmt.Sprintf("encoding record: %v", err)) // generated messages always encode
	}
	key := "0"
	if l, err := locality.Of(meta.Location.GetLatitude(), meta.Location.GetLongitude()); err == nil {
		key = strconv.FormatInt(int64(l), 10)
	}
	return runtime.Record{
		Topic:  meta.Kind.Topic(),
		Offset: offset,
		Key:    []byte(key),
		Value:  value,
		Headers: []runtime.Header{
			{Key: topic.HeaderSchema, Value: []byte(m.ProtoReflect().Descriptor().FullName())},
			{Key: topic.HeaderReceivedAt, Value: []byte(receivedAt.UTC().Format(time.RFC3339Nano))},
		},
		Time:    receivedAt,
		Message: m,
	}
}

// IDOf returns a record message's id.
func IDOf(m proto.Message) string {
	meta, _ := topic.MetaOf(m)
	return meta.ID
}
