package search

import (
	"errors"
	"fmt"
	"strings"
	"time"

	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"github.com/chapper/chapper/proto/locality"
	"github.com/chapper/chapper/proto/topic"

	"github.com/chapper/chapper/pipelines/runtime"
)

// Errors for records that can never become a document. The sink reports
// them in a *runtime.PermanentError.
var (
	ErrNoMessage  = errors.New("record carries no canvassing message")
	ErrNoID       = errors.New("record has no id")
	ErrNoLocation = errors.New("record has no location")
	ErrTime       = errors.New("record time is missing or out of range")
)

// TimeFormat is how every date field is written: UTC, milliseconds.
const TimeFormat = "2006-01-02T15:04:05.000Z"

// GeoPoint is a geo_point in object form.
type GeoPoint struct {
	Lat float64 `json:"lat"`
	Lon float64 `json:"lon"`
}

// Document is the indexed form of one record, denormalised for reporting:
// the proto fields in snake_case, enums as their lower-case names without
// prefix ("answered", "telephone"), plus the locality cells, the time the
// record was received and `@timestamp`, the record's own time again for
// data views spanning kinds. Fields a kind lacks are left out.
type Document struct {
	ID          string   `json:"id"`
	Kind        string   `json:"kind"`
	Timestamp   string   `json:"@timestamp"`
	CanvasserID string   `json:"canvasser_id,omitempty"`
	Location    GeoPoint `json:"location"`
	Locality    int64    `json:"locality"`
	Chunk       int64    `json:"chunk"`
	Region      int64    `json:"region"`
	Shard       int64    `json:"shard"`
	ReceivedAt  string   `json:"received_at,omitempty"`
	// ReplacesID is the record a correction replaces (replaces_id).
	ReplacesID string `json:"replaces_id,omitempty"`
	// Replaced is set once a correction replaced the record, or a newer
	// correction of the same record outdid this one; the aliases do not
	// show such documents (CurrentFilter).
	Replaced bool `json:"replaced,omitempty"`

	// Visits.
	DwellingID string `json:"dwelling_id,omitempty"`
	Address    string `json:"address,omitempty"`
	VisitedAt  string `json:"visited_at,omitempty"`
	Outcome    string `json:"outcome,omitempty"`

	// Intentions and follow-ups.
	VisitID    string `json:"visit_id,omitempty"`
	ElectorID  string `json:"elector_id,omitempty"`
	Option     string `json:"option,omitempty"`
	Issue      string `json:"issue,omitempty"`
	Method     string `json:"method,omitempty"`
	RecordedAt string `json:"recorded_at,omitempty"`
}

// EnumName returns an enum value's name in lower case without its type
// prefix: OUTCOME_NO_ANSWER → "no_answer", METHOD_TELEPHONE → "telephone".
func EnumName(name, prefix string) string {
	return strings.ToLower(strings.TrimPrefix(name, prefix))
}

// NewDocument builds the document of rec. kind is the record's kind and t
// its own time, which choose the index. An error (ErrNoMessage, ErrNoID,
// ErrNoLocation, ErrTime or a locality error) means the record can never be
// indexed.
func NewDocument(rec runtime.Record, shardBits uint) (doc Document, kind topic.Kind, t time.Time, err error) {
	msg := rec.Message
	if msg == nil {
		if msg, err = topic.Decode(rec.Topic, rec.Value); err != nil {
			return Document{}, "", time.Time{}, fmt.Errorf("%w: %w", ErrNoMessage, err)
		}
	}
	meta, ok := topic.MetaOf(msg)
	if !ok {
		return Document{}, "", time.Time{}, fmt.Errorf("%w: got %T", ErrNoMessage, msg)
	}
	if meta.ID == "" {
		return Document{}, "", time.Time{}, ErrNoID
	}
	if meta.Location == nil {
		return Document{}, "", time.Time{}, ErrNoLocation
	}
	lat, lon := meta.Location.GetLatitude(), meta.Location.GetLongitude()
	loc, err := locality.Of(lat, lon)
	if err != nil {
		return Document{}, "", time.Time{}, fmt.Errorf("locating record: %w", err)
	}
	if err := topic.TimestampOf(msg).CheckValid(); err != nil {
		return Document{}, "", time.Time{}, fmt.Errorf("%w: %w", ErrTime, err)
	}
	t = meta.Time.UTC()
	doc = Document{
		ID:          meta.ID,
		Kind:        string(meta.Kind),
		Timestamp:   t.Format(TimeFormat),
		CanvasserID: meta.CanvasserID,
		Location:    GeoPoint{Lat: lat, Lon: lon},
		Locality:    int64(loc),
		Chunk:       loc.Chunk(),
		Region:      loc.Region(),
		Shard:       loc.Shard(shardBits),
	}
	if h := rec.Header(topic.HeaderReceivedAt); h != nil {
		// A malformed header is not worth losing the record over: the field
		// is left out.
		if rt, err := time.Parse(time.RFC3339Nano, string(h)); err == nil {
			doc.ReceivedAt = rt.UTC().Format(TimeFormat)
		}
	}
	switch m := msg.(type) {
	case *canvassv1.Visit:
		doc.DwellingID = m.GetDwellingId()
		doc.Address = m.GetAddress()
		doc.VisitedAt = doc.Timestamp
		doc.Outcome = EnumName(m.GetOutcome().String(), "OUTCOME_")
		doc.ReplacesID = m.GetReplacesId()
	case *canvassv1.Intention:
		doc.VisitID = m.GetVisitId()
		doc.ElectorID = m.GetElectorId()
		doc.Option = m.GetOption()
		doc.RecordedAt = doc.Timestamp
		doc.ReplacesID = m.GetReplacesId()
	case *canvassv1.FollowupRequest:
		doc.VisitID = m.GetVisitId()
		doc.ElectorID = m.GetElectorId()
		doc.Issue = m.GetIssue()
		doc.Method = EnumName(m.GetMethod().String(), "METHOD_")
		doc.RecordedAt = doc.Timestamp
		doc.ReplacesID = m.GetReplacesId()
	}
	if doc.ReplacesID == doc.ID {
		doc.ReplacesID = "" // a record cannot replace itself
	}
	return doc, meta.Kind, t, nil
}
