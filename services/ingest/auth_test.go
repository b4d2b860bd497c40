package ingest

import (
	"context"
	"strings"
	"testing"
	"time"

	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"github.com/chapper/chapper/proto/topic"
	"github.com/chapper/chapper/services/auth"
	"github.com/chapper/chapper/services/auth/authtest"
	"github.com/chapper/chapper/services/devstack/devtest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// testAuth writes an ES256 key into a temporary directory and returns the
// server options checking tokens with it and an issuer for it.
func testAuth(t testing.TB) ([]grpc.ServerOption, *auth.Issuer) {
	t.Helper()
	_, v, is := authtest.Keys(t)
	return auth.NewInterceptors(v).ServerOptions(), is
}

// withToken returns ctx carrying a token for canvasser with role.
func withToken(t testing.TB, ctx context.Context, is *auth.Issuer, canvasser string, role auth.Role, area *auth.Area) context.Context {
	t.Helper()
	tok, err := is.Issue(canvasser, role, time.Hour, area)
	if err != nil {
		t.Fatal(err)
	}
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
}

// TestSubmitAuth checks that the token decides canvasser_id: empty or the
// token's own is accepted (and produced as the token's), another canvasser
// is REJECTED naming the field, an operator may name anyone, a record
// outside the token's area is REJECTED, and the wrong role or no token
// fails the call.
func TestSubmitAuth(t *testing.T) {
	k := devtest.Kafka(t)
	opts, is := testAuth(t)
	r := startIngestWith(t, k.Addr(), opts)
	ctx := testCtx(t, 60*time.Second)

	visit := func(canvasser string) *canvassv1.Visit {
		v := validVisit(t)
		v.CanvasserId = canvasser
		return v
	}
	c1 := withToken(t, ctx, is, "c1", auth.RoleCanvasser, nil)
	empty, own, other := visit(""), visit("c1"), visit("c2")
	resp, err := r.client.Submit(c1, &canvassv1.SubmitRequest{Visits: []*canvassv1.Visit{empty, own, other}})
	if err != nil {
		t.Fatalf("Submit: %v", err)
	}
	res := resp.GetResults()
	for i, want := range []canvassv1.Status{canvassv1.Status_STATUS_ACCEPTED, canvassv1.Status_STATUS_ACCEPTED, canvassv1.Status_STATUS_REJECTED} {
		if res[i].GetStatus() != want {
			t.Errorf("result %d = %v (%s), want %v", i, res[i].GetStatus(), res[i].GetReason(), want)
		}
	}
	if !strings.Contains(res[2].GetReason(), "visits[2].canvasser_id") || !strings.Contains(res[2].GetReason(), `"c1"`) {
		t.Errorf("reason = %q, want it to name visits[2].canvasser_id and the token's canvasser", res[2].GetReason())
	}
	got := map[string]string{}
	for _, m := range readTopic(t, k.Addr(), topic.Visits) {
		var v canvassv1.Visit
		if err := proto.Unmarshal(m.Value, &v); err != nil {
			t.Fatal(err)
		}
		got[v.GetId()] = v.GetCanvasserId()
	}
	if got[empty.Id] != "c1" || got[own.Id] != "c1" || len(got) != 2 {
		t.Errorf("produced canvassers = %v, want %s and %s as c1 and nothing else", got, empty.Id, own.Id)
	}

	op := withToken(t, ctx, is, "op", auth.RoleOperator, nil)
	resp, err = r.client.Submit(op, &canvassv1.SubmitRequest{Visits: []*canvassv1.Visit{visit("c2")}})
	if err != nil || resp.GetResults()[0].GetStatus() != canvassv1.Status_STATUS_ACCEPTED {
		t.Errorf("operator submitting as c2: %v %v", resp, err)
	}

	glasgow := &auth.Area{Regions: []int64{5250557}}
	area := withToken(t, ctx, is, "c1", auth.RoleCanvasser, glasgow)
	resp, err = r.client.Submit(area, &canvassv1.SubmitRequest{Visits: []*canvassv1.Visit{visit("")}})
	if err != nil || resp.GetResults()[0].GetStatus() != canvassv1.Status_STATUS_REJECTED || !strings.Contains(resp.GetResults()[0].GetReason(), "outside the token's area") {
		t.Errorf("record outside the area: %v %v, want REJECTED outside the token's area", resp, err)
	}

	reader := withToken(t, ctx, is, "c1", auth.RoleReader, nil)
	if _, err := r.client.Submit(reader, &canvassv1.SubmitRequest{Visits: []*canvassv1.Visit{visit("")}}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("reader Submit = %v, want PermissionDenied", err)
	}
	if _, err := r.client.Submit(ctx, &canvassv1.SubmitRequest{Visits: []*canvassv1.Visit{visit("")}}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("Submit without token = %v, want Unauthenticated", err)
	}
	bad := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer eyJhbGciOiJub25lIn0.e30.")
	if _, err := r.client.Submit(bad, &canvassv1.SubmitRequest{Visits: []*canvassv1.Visit{visit("")}}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("Submit with alg none token = %v, want Unauthenticated", err)
	}
}
