package ingest

import (
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"github.com/chapper/chapper/proto/topic"
	"github.com/chapper/chapper/services/auth"
	"github.com/chapper/chapper/services/devstack/devtest"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/testing/protocmp"
)

// TestWireValue checks, for every kind and for records encoded in many
// ways, that the Kafka value built from a record's wire bytes decodes to
// exactly the record proto.Marshal gave before (ids made lower case and
// canvasser_id set from the token, as Submit does) and has the same stamp,
// and that the wire bytes are kept exactly when they are in Marshal's
// form field by field.
func TestWireValue(t *testing.T) {
	kinds := []struct {
		kind topic.Kind
		msg  func() proto.Message
		text protoreflect.Name // a required string field
	}{
		{topic.KindVisits, func() proto.Message { return validVisit(t) }, "dwelling_id"},
		{topic.KindIntentions, func() proto.Message { return validIntention(t) }, "elector_id"},
		{topic.KindFollowups, func() proto.Message { return validFollowup(t) }, "elector_id"},
	}
	marshal := func(t *testing.T, m proto.Message) []byte {
		t.Helper()
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	field := func(m proto.Message, name protoreflect.Name) protoreflect.FieldDescriptor {
		return m.ProtoReflect().Descriptor().Fields().ByName(name)
	}
	// without returns m's encoding without field name, and that field's
	// encoding alone.
	without := func(t *testing.T, m proto.Message, name protoreflect.Name) (rest, f []byte) {
		t.Helper()
		c := proto.Clone(m)
		c.ProtoReflect().Clear(field(c, name))
		only := m.ProtoReflect().Type().New()
		only.Set(field(m, name), m.ProtoReflect().Get(field(m, name)))
		return marshal(t, c), marshal(t, only.Interface())
	}
	for _, k := range kinds {
		locName := protoreflect.Name("location")
		tests := []struct {
			name  string
			body  func(t *testing.T, m proto.Message) []byte
			token bool // canvasser_id comes from the token
			kept  bool
		}{
			{name: "as marshalled", kept: true, body: func(t *testing.T, m proto.Message) []byte { return marshal(t, m) }},
			{name: "fields in reverse order", kept: true, body: func(t *testing.T, m proto.Message) []byte {
				var fields [][]byte
				for b := marshal(t, m); len(b) > 0; {
					_, _, n := protowire.ConsumeField(b)
					fields, b = append(fields, b[:n]), b[n:]
				}
				slices.Reverse(fields)
				return slices.Concat(fields...)
			}},
			{name: "upper-case ids", kept: true, body: func(t *testing.T, m proto.Message) []byte {
				r := m.ProtoReflect()
				r.Set(field(m, "replaces_id"), protoreflect.ValueOfString(newID(t)))
				for _, n := range []protoreflect.Name{"id", "visit_id", "replaces_id"} {
					if f := field(m, n); f != nil {
						r.Set(f, protoreflect.ValueOfString(strings.ToUpper(r.Get(f).String())))
					}
				}
				return marshal(t, m)
			}},
			{name: "canvasser from the token", token: true, kept: true, body: func(t *testing.T, m proto.Message) []byte {
				m.ProtoReflect().Clear(field(m, "canvasser_id"))
				return marshal(t, m)
			}},
			{name: "unknown field past the record's numbers", kept: true, body: func(t *testing.T, m proto.Message) []byte {
				b := protowire.AppendTag(nil, 100, protowire.VarintType)
				return append(protowire.AppendVarint(b, 7), marshal(t, m)...)
			}},
			{name: "empty string written out", body: func(t *testing.T, m proto.Message) []byte {
				b := marshal(t, m)
				b = protowire.AppendTag(b, field(m, "replaces_id").Number(), protowire.BytesType)
				return protowire.AppendString(b, "")
			}},
			{name: "a field twice, the last wins", body: func(t *testing.T, m proto.Message) []byte {
				b := protowire.AppendTag(nil, field(m, k.text).Number(), protowire.BytesType)
				return append(protowire.AppendString(b, "earlier"), marshal(t, m)...)
			}},
			{name: "a known number with another wire type", body: func(t *testing.T, m proto.Message) []byte {
				b := protowire.AppendTag(marshal(t, m), field(m, k.text).Number(), protowire.VarintType)
				return protowire.AppendVarint(b, 1)
			}},
			{name: "a length in a longer varint than needed", body: func(t *testing.T, m proto.Message) []byte {
				rest, f := without(t, m, k.text)
				_, _, n := protowire.ConsumeTag(f)
				v, _ := protowire.ConsumeBytes(f[n:])
				long := []byte{byte(len(v)) | 0x80, 0x00} // the same length in two bytes
				return slices.Concat(rest, f[:n], long, v)
			}},
			{name: "location's fields in reverse order", body: func(t *testing.T, m proto.Message) []byte {
				rest, _ := without(t, m, locName)
				loc := m.ProtoReflect().Get(field(m, locName)).Message().Interface().(*canvassv1.Location)
				inner := protowire.AppendTag(nil, 2, protowire.Fixed64Type)
				inner = protowire.AppendFixed64(inner, math.Float64bits(loc.GetLongitude()))
				inner = protowire.AppendTag(inner, 1, protowire.Fixed64Type)
				inner = protowire.AppendFixed64(inner, math.Float64bits(loc.GetLatitude()))
				b := protowire.AppendTag(rest, field(m, locName).Number(), protowire.BytesType)
				return protowire.AppendBytes(b, inner)
			}},
			{name: "location in two parts, merged", body: func(t *testing.T, m proto.Message) []byte {
				rest, _ := without(t, m, locName)
				loc := m.ProtoReflect().Get(field(m, locName)).Message().Interface().(*canvassv1.Location)
				num := field(m, locName).Number()
				b := protowire.AppendTag(rest, num, protowire.BytesType)
				b = protowire.AppendBytes(b, marshal(t, &canvassv1.Location{Latitude: loc.GetLatitude()}))
				b = protowire.AppendTag(b, num, protowire.BytesType)
				return protowire.AppendBytes(b, marshal(t, &canvassv1.Location{Longitude: loc.GetLongitude()}))
			}},
		}
		for _, tc := range tests {
			t.Run(string(k.kind)+"/"+tc.name, func(t *testing.T) {
				raw := tc.body(t, k.msg())
				m := k.msg().ProtoReflect().Type().New().Interface()
				if err := proto.Unmarshal(raw, m); err != nil {
					t.Fatalf("the test's bytes do not decode: %v", err)
				}
				// What Submit changes, and what it changed from.
				r := m.ProtoReflect()
				var edits []edit
				for _, n := range []protoreflect.Name{"id", "visit_id", "replaces_id", "canvasser_id"} {
					f := field(m, n)
					if f == nil {
						continue
					}
					was := r.Get(f).String()
					is := strings.ToLower(was)
					if n == "canvasser_id" && tc.token {
						is = "token-canvasser"
					}
					r.Set(f, protoreflect.ValueOfString(is))
					edits = append(edits, edit{num: f.Number(), was: was, is: is})
				}
				canvasser := r.Get(field(m, "canvasser_id")).String()
				want := marshal(t, m)
				buf, got, kept, err := encodeRecord([]byte("before"), k.kind, m, raw, edits)
				if err != nil {
					t.Fatal(err)
				}
				if string(buf[:6]) != "before" {
					t.Fatalf("encodeRecord overwrote what buf held: %q", buf[:6])
				}
				if kept != tc.kept {
					t.Errorf("kept the wire bytes: %v, want %v", kept, tc.kept)
				}
				gotMsg, wantMsg := r.Type().New().Interface(), r.Type().New().Interface()
				if err := proto.Unmarshal(got, gotMsg); err != nil {
					t.Fatalf("decoding the Kafka value: %v", err)
				}
				if err := proto.Unmarshal(want, wantMsg); err != nil {
					t.Fatal(err)
				}
				if d := cmp.Diff(wantMsg, gotMsg, protocmp.Transform()); d != "" {
					t.Errorf("Kafka value decodes to another record (-marshalled +got):\n%s", d)
				}
				gotStamp, err1 := makeStamp(k.kind, canvasser, got)
				wantStamp, err2 := makeStamp(k.kind, canvasser, want)
				if err1 != nil || err2 != nil {
					t.Fatal(err1, err2)
				}
				if gotStamp != wantStamp {
					same, reason, _ := compareStamps(gotStamp, wantStamp)
					t.Errorf("stamp differs from the marshalled record's (same %v): %s", same, reason)
				}
			})
		}
	}
}

// TestWireSubmit submits one record of each kind over gRPC, with
// upper-case ids and no canvasser_id under a canvasser's token, and checks
// that the records on the topics decode to the records as Submit made
// them, that their bytes were kept (nothing re-encoded) and that a
// resubmission is a DUPLICATE (the stamps agree).
func TestWireSubmit(t *testing.T) {
	k := devtest.Kafka(t)
	opts, is := testAuth(t)
	r := startIngestWith(t, k.Addr(), opts)
	ctx := withToken(t, testCtx(t, 60*time.Second), is, "c1", auth.RoleCanvasser, nil)

	v, i, f := validVisit(t), validIntention(t), validFollowup(t)
	v.CanvasserId, i.CanvasserId = "", ""
	v.Id, i.Id, i.VisitId, f.Id = strings.ToUpper(v.Id), strings.ToUpper(i.Id), strings.ToUpper(i.VisitId), strings.ToUpper(f.Id)
	req := &canvassv1.SubmitRequest{Visits: []*canvassv1.Visit{v}, Intentions: []*canvassv1.Intention{i}, Followups: []*canvassv1.FollowupRequest{f}}
	before := testutil.ToFloat64(reencodedTotal)
	for round, want := range []canvassv1.Status{canvassv1.Status_STATUS_ACCEPTED, canvassv1.Status_STATUS_DUPLICATE} {
		resp, err := r.client.Submit(ctx, req)
		if err != nil {
			t.Fatalf("Submit, round %d: %v", round, err)
		}
		for _, res := range resp.GetResults() {
			if res.GetStatus() != want {
				t.Errorf("round %d: %s is %v (%s), want %v", round, res.GetId(), res.GetStatus(), res.GetReason(), want)
			}
		}
	}
	if n := testutil.ToFloat64(reencodedTotal) - before; n != 0 {
		t.Errorf("%v records encoded again, want none", n)
	}
	lower := strings.ToLower
	wantV := proto.Clone(v).(*canvassv1.Visit)
	wantV.Id, wantV.CanvasserId = lower(v.Id), "c1"
	wantI := proto.Clone(i).(*canvassv1.Intention)
	wantI.Id, wantI.VisitId, wantI.CanvasserId = lower(i.Id), lower(i.VisitId), "c1"
	wantF := proto.Clone(f).(*canvassv1.FollowupRequest)
	wantF.Id, wantF.CanvasserId = lower(f.Id), "c1"
	for _, w := range []struct {
		topic string
		want  proto.Message
	}{{topic.Visits, wantV}, {topic.Intentions, wantI}, {topic.Followups, wantF}} {
		msgs := readTopic(t, k.Addr(), w.topic)
		if len(msgs) != 1 {
			t.Fatalf("%s holds %d records, want 1", w.topic, len(msgs))
		}
		got := w.want.ProtoReflect().Type().New().Interface()
		if err := proto.Unmarshal(msgs[0].Value, got); err != nil {
			t.Fatalf("decoding %s: %v", w.topic, err)
		}
		if d := cmp.Diff(w.want, got, protocmp.Transform()); d != "" {
			t.Errorf("%s record (-want +got):\n%s", w.topic, d)
		}
	}
}
