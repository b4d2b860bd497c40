package search

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"github.com/chapper/chapper/proto/locality"
	"github.com/chapper/chapper/proto/topic"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/chapper/chapper/pipelines/runtime"
)

var edinburgh = &canvassv1.Location{Latitude: 55.9533, Longitude: -3.1883}

func record(m proto.Message, headers ...runtime.Header) runtime.Record {
	k, _ := topic.KindOf(m)
	v, _ := proto.Marshal(m)
	return runtime.Record{Topic: k.Topic(), Value: v, Message: m, Headers: headers}
}

func TestNewDocument(t *testing.T) {
	at := time.Date(2026, 11, 3, 10, 4, 5, 123456789, time.UTC)
	received := runtime.Header{Key: topic.HeaderReceivedAt, Value: []byte("2026-11-03T10:04:06.5Z")}
	tests := []struct {
		name      string
		rec       runtime.Record
		wantIndex string
		want      map[string]any
		wantErr   error
	}{
		{
			name: "visit",
			rec: record(&canvassv1.Visit{Id: "0190a0a0-0000-7000-8000-000000000001", DwellingId: "d1", Address: "1 High St",
				Location: edinburgh, CanvasserId: "c1", VisitedAt: timestamppb.New(at), Outcome: canvassv1.Outcome_OUTCOME_NO_ANSWER}, received),
			wantIndex: "canvass-visits-2026.11",
			want: map[string]any{
				"id": "0190a0a0-0000-7000-8000-000000000001", "kind": "visits", "dwelling_id": "d1", "address": "1 High St",
				"canvasser_id": "c1", "visited_at": "2026-11-03T10:04:05.123Z", "@timestamp": "2026-11-03T10:04:05.123Z",
				"outcome": "no_answer", "location": map[string]any{"lat": 55.9533, "lon": -3.1883},
				"locality": float64(52543256811), "chunk": float64(2101715362), "region": float64(5254168), "shard": float64(24),
				"received_at": "2026-11-03T10:04:06.500Z",
			},
		},
		{
			name: "intention decoded from the value, no header",
			rec: func() runtime.Record {
				r := record(&canvassv1.Intention{Id: "i1", VisitId: "v1", ElectorId: "e1", Option: "Yes",
					Location: edinburgh, RecordedAt: timestamppb.New(at)})
				r.Message = nil
				return r
			}(),
			wantIndex: "canvass-intentions-2026.11",
			want: map[string]any{
				"id": "i1", "kind": "intentions", "visit_id": "v1", "elector_id": "e1", "option": "Yes",
				"recorded_at": "2026-11-03T10:04:05.123Z", "@timestamp": "2026-11-03T10:04:05.123Z",
				"location": map[string]any{"lat": 55.9533, "lon": -3.1883},
				"locality": float64(52543256811), "chunk": float64(2101715362), "region": float64(5254168), "shard": float64(24),
			},
		},
		{
			name: "follow-up, unspecified method, bad header left out",
			rec: record(&canvassv1.FollowupRequest{Id: "f1", VisitId: "v1", ElectorId: "e1", Issue: "housing",
				Location: edinburgh, RecordedAt: timestamppb.New(at.AddDate(0, 1, 0)), CanvasserId: "c2"},
				runtime.Header{Key: topic.HeaderReceivedAt, Value: []byte("yesterday")}),
			wantIndex: "canvass-followups-2026.12",
			want: map[string]any{
				"id": "f1", "kind": "followups", "visit_id": "v1", "elector_id": "e1", "issue": "housing", "method": "unspecified",
				"canvasser_id": "c2", "recorded_at": "2026-12-03T10:04:05.123Z", "@timestamp": "2026-12-03T10:04:05.123Z",
				"location": map[string]any{"lat": 55.9533, "lon": -3.1883},
				"locality": float64(52543256811), "chunk": float64(2101715362), "region": float64(5254168), "shard": float64(24),
			},
		},
		{name: "no id", rec: record(&canvassv1.Visit{Location: edinburgh, VisitedAt: timestamppb.New(at)}), wantErr: ErrNoID},
		{name: "no location", rec: record(&canvassv1.Visit{Id: "x", VisitedAt: timestamppb.New(at)}), wantErr: ErrNoLocation},
		{
			name:    "latitude out of range",
			rec:     record(&canvassv1.Visit{Id: "x", Location: &canvassv1.Location{Latitude: 91}, VisitedAt: timestamppb.New(at)}),
			wantErr: locality.ErrLatitude,
		},
		{name: "no time", rec: record(&canvassv1.Intention{Id: "x", Location: edinburgh}), wantErr: ErrTime},
		{
			name:    "time past year 9999",
			rec:     record(&canvassv1.Intention{Id: "x", Location: edinburgh, RecordedAt: &timestamppb.Timestamp{Seconds: 253402300800}}),
			wantErr: ErrTime,
		},
		{name: "undecodable value", rec: runtime.Record{Topic: topic.Visits, Value: []byte{0xff, 0xff}}, wantErr: ErrNoMessage},
		{name: "not a record topic", rec: runtime.Record{Topic: topic.DeadLetter}, wantErr: ErrNoMessage},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			doc, kind, at, err := NewDocument(tt.rec, 6)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := (Names{Prefix: "canvass"}).Index(kind, at); got != tt.wantIndex {
				t.Errorf("index = %s, want %s", got, tt.wantIndex)
			}
			b, _ := json.Marshal(doc)
			var got map[string]any
			_ = json.Unmarshal(b, &got)
			gb, _ := json.Marshal(got)
			wb, _ := json.Marshal(tt.want)
			if string(gb) != string(wb) {
				t.Errorf("document\n got %s\nwant %s", gb, wb)
			}
			// Every field of the document is mapped for its kind.
			for f := range got {
				found := false
				for _, m := range Fields(kind) {
					found = found || m.Name == f
				}
				if !found {
					t.Errorf("field %s is not in the %s mappings", f, kind)
				}
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	ok := Config{Addresses: []string{"http://x"}, IndexPrefix: "canvass", FlushBytes: 1 << 20, Workers: 1, RequestTimeout: time.Second, ShardBits: 6}
	tests := []struct {
		name    string
		edit    func(*Config)
		wantErr error
	}{
		{name: "ok", edit: func(*Config) {}},
		{name: "no address", edit: func(c *Config) { c.Addresses = nil }, wantErr: ErrNoAddresses},
		{name: "upper-case prefix", edit: func(c *Config) { c.IndexPrefix = "Canvass" }, wantErr: ErrIndexPrefix},
		{name: "prefix with a star", edit: func(c *Config) { c.IndexPrefix = "can*" }, wantErr: ErrIndexPrefix},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := ok
			tt.edit(&c)
			if err := c.Validate(); !errors.Is(err, tt.wantErr) {
				t.Fatalf("Validate() = %v, want %v", err, tt.wantErr)
			}
		})
	}
}
