package ingest

import (
	"context"
	"fmt"

	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"github.com/chapper/chapper/proto/topic"
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Keeping each record's wire bytes. Submit used to decode the request and
// then encode every accepted record again for Kafka. A request that
// arrives over gRPC (or gRPC-web) is now decoded by wireCodec into a
// wireRequest, which keeps, beside the decoded request, the bytes each
// record came in; the Kafka value is those bytes with the fields ingest
// changed (ids made lower case, canvasser_id set from the token) appended.
// Protobuf's rule for a singular scalar field seen twice is that the last
// one wins, so every consumer decodes exactly the record the old encoding
// gave (TestWireValue checks it field by field, for every kind).
//
// The stamps (stamp.go) must not change: they are stored with each id and
// compared across instances and versions. They hash each field's encoding
// as proto.Marshal writes it, so the wire bytes are used only when they
// are in that form field by field (canonicalRecord); a client that writes
// a default value out, a field twice, an unknown field among the record's
// numbers or a nested message in another order gets its record encoded
// again, as before.

func init() {
	// Every other message goes to gRPC's own protobuf codec unchanged.
	encoding.RegisterCodecV2(wireCodec{base: encoding.GetCodecV2(grpcproto.Name)})
}

// wireCodec is gRPC's protobuf codec, except that a wireRequest also keeps
// its records' bytes.
type wireCodec struct{ base encoding.CodecV2 }

func (c wireCodec) Name() string { return c.base.Name() }

func (c wireCodec) Marshal(v any) (mem.BufferSlice, error) { return c.base.Marshal(v) }

func (c wireCodec) Unmarshal(data mem.BufferSlice, v any) error {
	w, ok := v.(*wireRequest)
	if !ok {
		return c.base.Unmarshal(data, v)
	}
	// Our own copy: gRPC recycles data's buffers once this returns, and the
	// records' bytes are kept until the Submit ends.
	return w.decode(data.Materialize())
}

// wireRequest is a SubmitRequest and, for each kind (visits, intentions,
// followups, in SubmitRequest's order), the bytes of its records in
// request order; a kind's slice is nil when its records could not be
// matched to their bytes. It is a proto.Message (through the embedded
// request), so interceptors and other codecs see a SubmitRequest.
type wireRequest struct {
	*canvassv1.SubmitRequest
	wire [3][][]byte
}

// decode unmarshals b, as gRPC's codec does (same errors), and indexes the
// records' bytes in b, which must not change afterwards.
func (w *wireRequest) decode(b []byte) error {
	if err := proto.Unmarshal(b, w.SubmitRequest); err != nil {
		return err
	}
	want := [3]int{len(w.Visits), len(w.Intentions), len(w.Followups)}
	for k, n := range want {
		if n > 0 {
			w.wire[k] = make([][]byte, 0, n)
		}
	}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			w.wire = [3][][]byte{}
			return nil
		}
		b = b[n:]
		if typ == protowire.BytesType && num >= 1 && num <= 3 {
			// Fields 1-3 are the repeated visits, intentions and followups:
			// each occurrence is one record.
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				w.wire = [3][][]byte{}
				return nil
			}
			w.wire[num-1] = append(w.wire[num-1], v[:len(v):len(v)])
			b = b[n:]
			continue
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			w.wire = [3][][]byte{}
			return nil
		}
		b = b[n:]
	}
	for k, n := range want {
		if len(w.wire[k]) != n {
			w.wire[k] = nil
		}
	}
	return nil
}

// submitDesc is canvassv1.IngestService_ServiceDesc with a Submit handler
// that decodes into a wireRequest.
var submitDesc = func() grpc.ServiceDesc {
	d := canvassv1.IngestService_ServiceDesc
	d.Methods = []grpc.MethodDesc{{MethodName: "Submit", Handler: submitHandler}}
	return d
}()

// submitHandler is the generated Submit handler with a wireRequest.
func submitHandler(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
	in := &wireRequest{SubmitRequest: new(canvassv1.SubmitRequest)}
	if err := dec(in); err != nil {
		return nil, err
	}
	s := srv.(*Service)
	if interceptor == nil {
		return s.submitWire(ctx, in)
	}
	info := &grpc.UnaryServerInfo{Server: srv, FullMethod: canvassv1.IngestService_Submit_FullMethodName}
	return interceptor(ctx, in, info, func(ctx context.Context, req any) (any, error) {
		if w, ok := req.(*wireRequest); ok {
			return s.submitWire(ctx, w)
		}
		// An interceptor replaced the request.
		return s.Submit(ctx, req.(*canvassv1.SubmitRequest))
	})
}

// submitWire is Submit for a request that kept its records' bytes.
func (s *Service) submitWire(ctx context.Context, w *wireRequest) (*canvassv1.SubmitResponse, error) {
	resp, err := s.submit(ctx, w.SubmitRequest, &w.wire)
	requestsTotal.WithLabelValues(status.Code(err).String()).Inc()
	return resp, err
}

// edit is a string field of a record that Submit may change: its number,
// its value as the client sent it and as it is now.
type edit struct {
	num     protowire.Number
	was, is string
}

// applyEdits applies the fields that changed to buf[start:], a record's
// bytes, and returns buf: a
// field the client left out (the token's canvasser_id) is appended; a
// field it sent once is overwritten in place when the new value has the
// same length (an id made lower case), so the record stays in canonical
// form. It returns false when neither applies; the caller then encodes
// the record again.
func applyEdits(buf []byte, start int, edits []edit) ([]byte, bool) {
	for _, e := range edits {
		switch {
		case e.was == e.is:
		case e.was == "":
			buf = protowire.AppendTag(buf, e.num, protowire.BytesType)
			buf = protowire.AppendString(buf, e.is)
		case len(e.was) == len(e.is):
			at, ok := stringField(buf[start:], e.num, e.was)
			if !ok {
				return buf, false
			}
			copy(buf[start+at:], e.is)
		default:
			return buf, false
		}
	}
	return buf, true
}

// stringField returns the offset in rec of field num's value when rec
// holds that field exactly once, length-delimited, with value was.
func stringField(rec []byte, num protowire.Number, was string) (int, bool) {
	at, found := 0, 0
	for off := 0; off < len(rec); {
		n, typ, tn := protowire.ConsumeTag(rec[off:])
		if tn < 0 {
			return 0, false
		}
		fn := protowire.ConsumeFieldValue(n, typ, rec[off+tn:])
		if fn < 0 {
			return 0, false
		}
		if n == num {
			v, vn := protowire.ConsumeBytes(rec[off+tn:])
			if typ != protowire.BytesType || vn < 0 || string(v) != was {
				return 0, false
			}
			at, found = off+tn+vn-len(v), found+1
		}
		off += tn + fn
	}
	return at, found == 1
}

// editable holds the numbers of the fields Submit may change, per kind.
type editable struct{ id, visitID, replacesID, canvasserID protowire.Number }

var editables = func() map[topic.Kind]editable {
	num := func(kind topic.Kind, name protoreflect.Name) protowire.Number {
		f := descriptors[kind].Fields().ByName(name)
		if f == nil {
			return 0
		}
		return f.Number()
	}
	out := map[topic.Kind]editable{}
	for _, k := range topic.Kinds {
		out[k] = editable{num(k, "id"), num(k, "visit_id"), num(k, "replaces_id"), num(k, "canvasser_id")}
	}
	return out
}()

// shape is how a field is encoded, as far as canonicalRecord knows.
type shape uint8

const (
	shapeNone     shape = iota // no such field
	shapeOther                 // a field of a kind canonicalRecord does not check
	shapeString                // string: length-delimited, never empty
	shapeVarint32              // enum or int32: a varint of the sign-extended value, never 0
	shapeVarint64              // int64: a varint, never 0
	shapeDouble                // double: fixed64, never +0.0
	shapeMessage               // a nested message, itself canonical
)

// msgShape is a message's field shapes by number; nested[n] is field n's
// when it is a message.
type msgShape struct {
	fields []shape
	nested []*msgShape
}

func newMsgShape(md protoreflect.MessageDescriptor) *msgShape {
	fields := md.Fields()
	n := 0
	for i := range fields.Len() {
		n = max(n, int(fields.Get(i).Number()))
	}
	if n >= 64 { // canonical's bitmask
		return &msgShape{}
	}
	m := &msgShape{fields: make([]shape, n+1), nested: make([]*msgShape, n+1)}
	for i := range fields.Len() {
		f := fields.Get(i)
		sh := shapeOther
		switch {
		case f.IsList() || f.IsMap() || f.HasPresence() && f.Kind() != protoreflect.MessageKind:
		case f.Kind() == protoreflect.StringKind:
			sh = shapeString
		case f.Kind() == protoreflect.EnumKind || f.Kind() == protoreflect.Int32Kind:
			sh = shapeVarint32
		case f.Kind() == protoreflect.Int64Kind:
			sh = shapeVarint64
		case f.Kind() == protoreflect.DoubleKind:
			sh = shapeDouble
		case f.Kind() == protoreflect.MessageKind:
			sh = shapeMessage
			m.nested[f.Number()] = newMsgShape(f.Message())
		}
		m.fields[f.Number()] = sh
	}
	return m
}

var shapes = map[topic.Kind]*msgShape{
	topic.KindVisits:     newMsgShape(descriptors[topic.KindVisits]),
	topic.KindIntentions: newMsgShape(descriptors[topic.KindIntentions]),
	topic.KindFollowups:  newMsgShape(descriptors[topic.KindFollowups]),
}

// canonicalRecord reports whether b, a record of kind, encodes every field
// of the record's numbers exactly as proto.Marshal does, so that
// makeStamp gives the same stamp for b as for the record encoded again:
// each such field once, with its wire type, minimal varints, no default
// value written out, nested messages with their fields in order and
// nothing unknown. Top-level fields may come in any order (the stamp
// hashes them one by one), and unknown fields past the record's numbers
// may appear anywhere (the stamp leaves them out; the Kafka value keeps
// them, as proto.Marshal does).
func canonicalRecord(kind topic.Kind, b []byte) bool {
	m := shapes[kind]
	return m != nil && m.canonical(b, true)
}

func (m *msgShape) canonical(b []byte, top bool) bool {
	var seen uint64
	var last protowire.Number
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 || n != protowire.SizeTag(num) {
			return false
		}
		b = b[n:]
		if int(num) >= len(m.fields) {
			if !top {
				return false
			}
			if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
				return false
			}
			b = b[n:]
			continue
		}
		if top {
			if seen&(1<<num) != 0 {
				return false
			}
			seen |= 1 << num
		} else if num <= last {
			return false
		}
		last = num
		switch m.fields[num] {
		case shapeString:
			v, n := protowire.ConsumeBytes(b)
			if typ != protowire.BytesType || n < 0 || len(v) == 0 || n != protowire.SizeBytes(len(v)) {
				return false
			}
			b = b[n:]
		case shapeVarint32, shapeVarint64:
			v, n := protowire.ConsumeVarint(b)
			if typ != protowire.VarintType || n < 0 || v == 0 || n != protowire.SizeVarint(v) {
				return false
			}
			if m.fields[num] == shapeVarint32 && v != uint64(int64(int32(v))) {
				return false
			}
			b = b[n:]
		case shapeDouble:
			v, n := protowire.ConsumeFixed64(b)
			if typ != protowire.Fixed64Type || n < 0 || v == 0 {
				return false
			}
			b = b[n:]
		case shapeMessage:
			v, n := protowire.ConsumeBytes(b)
			if typ != protowire.BytesType || n < 0 || n != protowire.SizeBytes(len(v)) || !m.nested[num].canonical(v, false) {
				return false
			}
			b = b[n:]
		default:
			return false
		}
	}
	return true
}

// encodeRecord returns a record's Kafka value: wire itself when it is in
// canonical form and Submit changed nothing, else its wire bytes with the
// edits applied, appended to buf, when they are (kept in both cases), else
// m encoded, appended to buf.
func encodeRecord(buf []byte, kind topic.Kind, m proto.Message, wire []byte, edits []edit) (out, value []byte, kept bool, err error) {
	if wire != nil {
		if !edited(edits) {
			if canonicalRecord(kind, wire) {
				return buf, wire, true, nil
			}
		} else {
			start := len(buf)
			var ok bool
			buf, ok = applyEdits(append(buf, wire...), start, edits)
			if ok && canonicalRecord(kind, buf[start:]) {
				return buf, buf[start:], true, nil
			}
			buf = buf[:start]
		}
	}
	start := len(buf)
	buf, err = proto.MarshalOptions{}.MarshalAppend(buf, m)
	if err != nil {
		return buf[:start], nil, false, fmt.Errorf("encoding %s: %w", kind, err)
	}
	return buf, buf[start:], false, nil
}

// edited reports whether an edit changes a field.
func edited(edits []edit) bool {
	for _, e := range edits {
		if e.was != e.is {
			return true
		}
	}
	return false
}
