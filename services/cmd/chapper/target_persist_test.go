package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/timestamppb"

	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
)

// TestDevPersist runs `chapper dev -target=ingest,persist`, submits records
// at DESIGN.md's test points through ingest and finds each row in the shard
// database its region maps to and through the router's functions; then
// `chapper migrate` (changes nothing) and `chapper shards show` run against
// the same cluster.
func TestDevPersist(t *testing.T) {
	if testing.Short() {
		t.Skip("starts postgres and redis-server; skipped with -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dev := startDev(t, ctx, "-target=ingest,persist")
	grpcAddr, adminURL, pgAddr := dev.Endpoints["gRPC + gRPC-web"], dev.Endpoints["admin"], dev.Endpoints["Postgres"]
	// ready once the persister joined its consumer group
	if body := waitHTTP(t, ctx, adminURL+"/readyz", http.StatusOK); !strings.Contains(body, "persist: ok") {
		t.Errorf("/readyz = %q, want persist ok", body)
	}

	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	points := []struct {
		name     string
		lat, lon float64
		locality int64
		db       string // shard 24 → chapper_shard_0; 61, 48 → chapper_shard_1
	}{
		{"Edinburgh", 55.9533, -3.1883, 52543256811, "chapper_shard_0"},
		{"Glasgow", 55.8642, -4.2518, 52511215748, "chapper_shard_1"},
		{"Stirling", 56.1165, -3.9369, 52601936063, "chapper_shard_1"},
	}
	req := &canvassv1.SubmitRequest{}
	now := timestamppb.Now()
	for _, p := range points {
		loc := &canvassv1.Location{Latitude: p.lat, Longitude: p.lon}
		req.Visits = append(req.Visits, &canvassv1.Visit{Id: uuid.Must(uuid.NewV7()).String(), DwellingId: "d1",
			Address: "1 High St", Location: loc, VisitedAt: now, Outcome: canvassv1.Outcome_OUTCOME_ANSWERED})
		req.Intentions = append(req.Intentions, &canvassv1.Intention{Id: uuid.Must(uuid.NewV7()).String(),
			VisitId: uuid.Must(uuid.NewV7()).String(), ElectorId: "e1", Option: "yes", Location: loc, RecordedAt: now})
		req.Followups = append(req.Followups, &canvassv1.FollowupRequest{Id: uuid.Must(uuid.NewV7()).String(),
			VisitId: uuid.Must(uuid.NewV7()).String(), ElectorId: "e1", Issue: "bins", Location: loc, RecordedAt: now,
			Method: canvassv1.Method_METHOD_EMAIL})
	}
	resp, err := canvassv1.NewIngestServiceClient(conn).Submit(ctx, req)
	if err != nil {
		t.Fatalf("Submit: %v", err)
	}
	for _, r := range resp.GetResults() {
		if r.GetStatus() != canvassv1.Status_STATUS_ACCEPTED {
			t.Fatalf("Submit: %v", resp)
		}
	}

	routerURL := "postgres://postgres@" + pgAddr + "/chapper_router?sslmode=disable"
	router, err := pgx.Connect(ctx, routerURL)
	if err != nil {
		t.Fatal(err)
	}
	defer router.Close(context.Background())
	since, until := now.AsTime().Add(-time.Minute), now.AsTime().Add(time.Minute)
	for i, p := range points {
		for kind, id := range map[string]string{"visits": req.Visits[i].Id, "intentions": req.Intentions[i].Id, "followups": req.Followups[i].Id} {
			q := fmt.Sprintf("SELECT count(*) FROM %s_by_locality($1, $2, $3) WHERE id = $4", kind)
			for n := 0; n != 1; {
				if err := router.QueryRow(ctx, q, p.locality, since, until, id).Scan(&n); err != nil {
					t.Fatalf("%s: %v", q, err)
				}
				if n != 1 {
					select {
					case <-ctx.Done():
						t.Fatalf("%s %s of %s never readable through the router", kind, id, p.name)
					case <-time.After(50 * time.Millisecond):
					}
				}
			}
			shard, err := pgx.Connect(ctx, "postgres://postgres@"+pgAddr+"/"+p.db+"?sslmode=disable")
			if err != nil {
				t.Fatal(err)
			}
			var n int
			err = shard.QueryRow(ctx, fmt.Sprintf("SELECT count(*) FROM %s WHERE id = $1", kind), id).Scan(&n)
			shard.Close(context.Background())
			if err != nil || n != 1 {
				t.Errorf("%s of %s in %s: %d rows (%v), want 1", kind, p.name, p.db, n, err)
			}
		}
	}

	var out bytes.Buffer
	if err := run(ctx, []string{"migrate", "-log.level=warn", "-migrate.router-url=" + routerURL}, &out, io.Discard); err != nil {
		t.Errorf("chapper migrate on a migrated cluster: %v", err)
	}
	if !strings.Contains(out.String(), "shard map version 1 (64 logical shards)") {
		t.Errorf("chapper migrate said %q", out.String())
	}
	out.Reset()
	if err := run(ctx, []string{"shards", "show", "-shards.router-url=" + routerURL}, &out, io.Discard); err != nil {
		t.Errorf("chapper shards show: %v", err)
	}
	if !strings.Contains(out.String(), "shard map version 1") || !strings.Contains(out.String(), "chapper_shard_1  32-63 (32)") {
		t.Errorf("chapper shards show printed:\n%s", out.String())
	}
}
