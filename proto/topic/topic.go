// Package topic holds the Kafka side of the contract: topic names, header
// names, the three record kinds and how each maps to its topic and protobuf
// message. Every producer and consumer takes these names from here.
package topic

import (
	"fmt"
	"time"

	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Topic names (DESIGN.md, names and ports).
const (
	Visits     = "canvass.visits.v1"
	Intentions = "canvass.intentions.v1"
	Followups  = "canvass.followups.v1"
	DeadLetter = "canvass.deadletter.v1"
)

// All lists every topic created at start-up.
var All = []string{Visits, Intentions, Followups, DeadLetter}

// Record headers set by ingest.
const (
	HeaderSchema     = "schema"      // message full name, e.g. canvass.v1.Visit
	HeaderClientID   = "client-id"   // canvasser or client that submitted
	HeaderReceivedAt = "received-at" // RFC 3339, UTC, nanoseconds
	HeaderTraceID    = "trace-id"
)

// Dead-letter headers, added to the original record's headers.
const (
	HeaderOriginTopic     = "origin-topic"
	HeaderOriginPartition = "origin-partition"
	HeaderOriginOffset    = "origin-offset"
	HeaderSink            = "sink"
	HeaderError           = "error"
	// HeaderRedriveOf is set by `chapper deadletter redrive` on what it
	// re-drives: the dead letter's <partition>:<offset>.
	HeaderRedriveOf = "redrive-of"
	// HeaderAttempt counts deliveries of a re-driven record: 2 on its first
	// redrive, and so on. A dead letter without it is the first attempt.
	HeaderAttempt = "attempt"
	// HeaderRedriveTo is set on the marker record redrive writes to the
	// dead-letter topic after a successful redrive: "sink" or "origin".
	HeaderRedriveTo = "redrive-to"
)

// Consumer group ids.
const (
	GroupTimeline = "chapper-timeline"
	GroupPersist  = "chapper-persist"
	GroupSearch   = "chapper-search"
)

// Kind is a record kind; its value is the plural name used in Redis
// counters, Postgres tables and Elasticsearch index names.
type Kind string

// The record kinds.
const (
	KindVisits     Kind = "visits"
	KindIntentions Kind = "intentions"
	KindFollowups  Kind = "followups"
)

// Kinds lists the record kinds in result order.
var Kinds = []Kind{KindVisits, KindIntentions, KindFollowups}

// Topic returns the topic that carries records of kind k.
func (k Kind) Topic() string {
	switch k {
	case KindVisits:
		return Visits
	case KindIntentions:
		return Intentions
	case KindFollowups:
		return Followups
	}
	return ""
}

// New returns an empty message of kind k.
func (k Kind) New() proto.Message {
	switch k {
	case KindVisits:
		return &canvassv1.Visit{}
	case KindIntentions:
		return &canvassv1.Intention{}
	case KindFollowups:
		return &canvassv1.FollowupRequest{}
	}
	return nil
}

// KindOfTopic returns the kind a topic carries; ok is false for any other topic.
func KindOfTopic(topic string) (k Kind, ok bool) {
	for _, k := range Kinds {
		if k.Topic() == topic {
			return k, true
		}
	}
	return "", false
}

// KindOf returns the kind of a record message; ok is false for any other message.
func KindOf(m proto.Message) (k Kind, ok bool) {
	switch m.(type) {
	case *canvassv1.Visit:
		return KindVisits, true
	case *canvassv1.Intention:
		return KindIntentions, true
	case *canvassv1.FollowupRequest:
		return KindFollowups, true
	}
	return "", false
}

// Decode unmarshals a record value read from topic.
func Decode(topic string, value []byte) (proto.Message, error) {
	k, ok := KindOfTopic(topic)
	if !ok {
		return nil, fmt.Errorf("topic %q carries no record kind", topic)
	}
	m := k.New()
	if err := proto.Unmarshal(value, m); err != nil {
		return nil, fmt.Errorf("decoding %s: %w", m.ProtoReflect().Descriptor().FullName(), err)
	}
	return m, nil
}

// TimestampOf returns a record's own time (visited_at or recorded_at), nil
// when it is unset or m is not a record message.
func TimestampOf(m proto.Message) *timestamppb.Timestamp {
	switch r := m.(type) {
	case *canvassv1.Visit:
		return r.GetVisitedAt()
	case *canvassv1.Intention:
		return r.GetRecordedAt()
	case *canvassv1.FollowupRequest:
		return r.GetRecordedAt()
	}
	return nil
}

// Meta is what every record kind has in common.
type Meta struct {
	Kind        Kind
	ID          string
	Location    *canvassv1.Location
	Time        time.Time // the record's own time (visited_at or recorded_at)
	CanvasserID string
}

// MetaOf returns the common fields of a record message; ok is false for any
// other message.
func MetaOf(m proto.Message) (meta Meta, ok bool) {
	switch r := m.(type) {
	case *canvassv1.Visit:
		return Meta{KindVisits, r.GetId(), r.GetLocation(), r.GetVisitedAt().AsTime(), r.GetCanvasserId()}, true
	case *canvassv1.Intention:
		return Meta{KindIntentions, r.GetId(), r.GetLocation(), r.GetRecordedAt().AsTime(), r.GetCanvasserId()}, true
	case *canvassv1.FollowupRequest:
		return Meta{KindFollowups, r.GetId(), r.GetLocation(), r.GetRecordedAt().AsTime(), r.GetCanvasserId()}, true
	}
	return Meta{}, false
}
