package ingest

import (
	"testing"
	"time"

	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"github.com/chapper/chapper/services/devstack/devtest"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// TestErrorDetails checks the google.rpc details beside the reasons: a
// batch over the limit carries a BadRequest, and a response with rejected
// records a BadRequest trailer naming each rejected field.
func TestErrorDetails(t *testing.T) {
	k := devtest.Kafka(t)
	r := startIngest(t, k.Addr(), func(c *Config) { c.BatchLimit = 2 })
	ctx := testCtx(t, 30*time.Second)

	_, err := r.client.Submit(ctx, &canvassv1.SubmitRequest{Visits: []*canvassv1.Visit{validVisit(t), validVisit(t), validVisit(t)}})
	var br *errdetails.BadRequest
	for _, d := range status.Convert(err).Details() {
		if b, ok := d.(*errdetails.BadRequest); ok {
			br = b
		}
	}
	if status.Code(err) != codes.InvalidArgument || br == nil || br.GetFieldViolations()[0].GetField() != "visits" {
		t.Errorf("over the limit: %v with details %v, want INVALID_ARGUMENT with a BadRequest on visits", err, br)
	}

	bad := validVisit(t)
	bad.Location.Latitude = 91
	var trailer metadata.MD
	resp, err := r.client.Submit(ctx, &canvassv1.SubmitRequest{Visits: []*canvassv1.Visit{validVisit(t), bad}}, grpc.Trailer(&trailer))
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetResults()[1].GetStatus() != canvassv1.Status_STATUS_REJECTED {
		t.Fatalf("results %v", resp)
	}
	vals := trailer.Get(MetadataFieldViolations)
	if len(vals) != 1 {
		t.Fatalf("trailer %v lacks %s", trailer, MetadataFieldViolations)
	}
	var got errdetails.BadRequest
	if err := proto.Unmarshal([]byte(vals[0]), &got); err != nil {
		t.Fatal(err)
	}
	if len(got.GetFieldViolations()) != 1 || got.GetFieldViolations()[0].GetField() != "visits[1].location.latitude" {
		t.Errorf("field violations = %v, want one on visits[1].location.latitude", got.GetFieldViolations())
	}
}
