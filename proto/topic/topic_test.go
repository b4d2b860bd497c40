package topic

import (
	"testing"
	"time"

	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func TestKindRoundTrip(t *testing.T) {
	at := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	loc := &canvassv1.Location{Latitude: 55.9533, Longitude: -3.1883}
	tests := []struct {
		name string
		msg  proto.Message
		kind Kind
	}{
		{name: "visit", msg: &canvassv1.Visit{Id: "a", Location: loc, VisitedAt: timestamppb.New(at), CanvasserId: "c"}, kind: KindVisits},
		{name: "intention", msg: &canvassv1.Intention{Id: "b", Location: loc, RecordedAt: timestamppb.New(at), CanvasserId: "c"}, kind: KindIntentions},
		{name: "followup", msg: &canvassv1.FollowupRequest{Id: "d", Location: loc, RecordedAt: timestamppb.New(at), CanvasserId: "c"}, kind: KindFollowups},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, ok := KindOf(tt.msg)
			if !ok || k != tt.kind {
				t.Fatalf("KindOf = %q, %v; want %q", k, ok, tt.kind)
			}
			if back, ok := KindOfTopic(k.Topic()); !ok || back != k {
				t.Fatalf("KindOfTopic(%q) = %q, %v", k.Topic(), back, ok)
			}
			raw, err := proto.Marshal(tt.msg)
			if err != nil {
				t.Fatal(err)
			}
			got, err := Decode(k.Topic(), raw)
			if err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(got, tt.msg) {
				t.Errorf("Decode = %v, want %v", got, tt.msg)
			}
			meta, ok := MetaOf(got)
			if !ok || meta.Kind != k || !meta.Time.Equal(at) || meta.CanvasserID != "c" || !proto.Equal(meta.Location, loc) {
				t.Errorf("MetaOf = %+v", meta)
			}
		})
	}
}

func TestDecodeErrors(t *testing.T) {
	if _, err := Decode(DeadLetter, nil); err == nil {
		t.Error("Decode of the dead-letter topic succeeded")
	}
	if _, err := Decode(Visits, []byte{0xff, 0xff, 0xff}); err == nil {
		t.Error("Decode of garbage succeeded")
	}
}
