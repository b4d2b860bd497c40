package router_test

import (
	"bytes"
	"context"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/chapper/chapper/pipelines/persist"
	"github.com/chapper/chapper/pipelines/persist/persisttest"
	"github.com/chapper/chapper/pipelines/persist/router"
	"github.com/chapper/chapper/pipelines/persist/shards"
	"github.com/chapper/chapper/pipelines/runtime"
	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"github.com/chapper/chapper/proto/locality"
	"github.com/chapper/chapper/proto/topic"
)

// received wraps messages as records whose received-at header is the
// given time plus one second per message, so that later messages were
// received later.
func received(at time.Time, msgs ...proto.Message) []runtime.Record {
	var out []runtime.Record
	for i, m := range msgs {
		k, _ := topic.KindOf(m)
		ts := at.Add(time.Duration(i) * time.Second).Format(time.RFC3339Nano)
		out = append(out, runtime.Record{Topic: k.Topic(), Offset: int64(i), Message: m,
			Headers: []runtime.Header{{Key: topic.HeaderReceivedAt, Value: []byte(ts)}}})
	}
	return out
}

// TestCorrectionsCountOnlyTheNewest writes records and corrections of them
// (one moved to a shard in the other database, a chain of two, two
// corrections of one record) through the persist sink, corrections first
// and everything twice, and checks every router function counts only the
// newest version; then moves the shard of the originals to a new database
// and checks again.
func TestCorrectionsCountOnlyTheNewest(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	env := persisttest.New(t)
	sink, err := persist.New(ctx, persist.Config{RouterURL: env.RouterURL, PoolSize: 2, ShardBits: 6})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	c := router.New(persisttest.Pool(t, env.RouterURL))

	at := timestamppb.New(day0.Add(10 * time.Hour))
	later := timestamppb.New(day0.Add(11 * time.Hour))
	v1 := &canvassv1.Visit{Id: id(), DwellingId: "d-1", Address: "1 High Street", Location: edinburgh,
		CanvasserId: "c-1", VisitedAt: at, Outcome: canvassv1.Outcome_OUTCOME_ANSWERED}
	// same dwelling, the outcome corrected
	v2 := proto.Clone(v1).(*canvassv1.Visit)
	v2.Id, v2.ReplacesId, v2.Outcome = id(), v1.Id, canvassv1.Outcome_OUTCOME_NO_ANSWER
	i1 := &canvassv1.Intention{Id: id(), ElectorId: "e-1", Option: "Green", Location: edinburgh,
		RecordedAt: at, CanvasserId: "c-1"}
	// the location corrected: Glasgow is in the other database
	i2 := proto.Clone(i1).(*canvassv1.Intention)
	i2.Id, i2.ReplacesId, i2.Option, i2.Location = id(), i1.Id, "Red", glasgow
	// and corrected again: a chain
	i3 := proto.Clone(i2).(*canvassv1.Intention)
	i3.Id, i3.ReplacesId, i3.Option, i3.RecordedAt = id(), i2.Id, "Blue", later
	f1 := &canvassv1.FollowupRequest{Id: id(), ElectorId: "e-1", Issue: "bins", Method: canvassv1.Method_METHOD_EMAIL,
		Location: edinburgh, RecordedAt: at, CanvasserId: "c-1"}
	// two corrections of the same record: the one received last counts
	f2 := proto.Clone(f1).(*canvassv1.FollowupRequest)
	f2.Id, f2.ReplacesId, f2.Method, f2.Location = id(), f1.Id, canvassv1.Method_METHOD_POST, glasgow
	f3 := proto.Clone(f1).(*canvassv1.FollowupRequest)
	f3.Id, f3.ReplacesId, f3.Method = id(), f1.Id, canvassv1.Method_METHOD_TELEPHONE
	// an uncorrected record beside them
	v9 := &canvassv1.Visit{Id: id(), DwellingId: "d-9", Address: "9 High Street", Location: glasgow,
		CanvasserId: "c-2", VisitedAt: at, Outcome: canvassv1.Outcome_OUTCOME_ANSWERED}

	// Corrections before the records they replace, each batch twice, the
	// later correction of f1 in an earlier batch than the other (received
	// times decide, not arrival).
	batches := [][]runtime.Record{
		received(day0.Add(13*time.Hour), i3, f3),
		received(day0.Add(12*time.Hour), v2, i2, f2),
		received(day0.Add(11*time.Hour), v1, i1, f1, v9),
	}
	for _, b := range append(batches, batches...) {
		if err := sink.Write(ctx, b); err != nil {
			t.Fatalf("writing: %v", err)
		}
	}

	since, until := day0, day0.Add(48*time.Hour)
	check := func(t *testing.T) {
		t.Helper()
		idsOf := func(ids ...string) []string { slices.Sort(ids); return ids }
		edi, _ := locality.Of(edinburgh.Latitude, edinburgh.Longitude)
		gla, _ := locality.Of(glasgow.Latitude, glasgow.Longitude)

		vs, err := c.VisitsByLocality(ctx, edi, since, until)
		if err != nil {
			t.Fatal(err)
		}
		if len(vs) != 1 || vs[0].ID != v2.Id || vs[0].Outcome != "no_answer" {
			t.Errorf("visits_by_locality(Edinburgh) = %+v, want only the correction %s (no_answer)", vs, v2.Id)
		}
		in, err := c.IntentionsByLocality(ctx, edi, since, until)
		if err != nil {
			t.Fatal(err)
		}
		if len(in) != 0 {
			t.Errorf("intentions_by_locality(Edinburgh) = %+v, want none (moved to Glasgow)", in)
		}
		in, err = c.IntentionsByLocality(ctx, gla, since, until)
		if err != nil {
			t.Fatal(err)
		}
		if len(in) != 1 || in[0].ID != i3.Id {
			t.Errorf("intentions_by_locality(Glasgow) = %+v, want only the newest %s", in, i3.Id)
		}
		fs, err := c.FollowupsByLocality(ctx, gla, since, until)
		if err != nil {
			t.Fatal(err)
		}
		if len(fs) != 0 {
			t.Errorf("followups_by_locality(Glasgow) = %+v, want none (outdone by a later correction)", fs)
		}

		regions, err := c.IntentionsByRegion(ctx, since, until)
		if err != nil {
			t.Fatal(err)
		}
		want := []router.RegionOption{{Region: gla.Region(), Option: "Blue", Intentions: 1}}
		if !slices.Equal(regions, want) {
			t.Errorf("intentions_by_region = %+v, want %+v", regions, want)
		}
		backlog, err := c.FollowupsOutstanding(ctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(backlog) != 1 || backlog[0].Outstanding != 1 || backlog[0].Telephone != 1 {
			t.Errorf("followups_outstanding = %+v, want bins: 1, by telephone", backlog)
		}
		sum, err := c.VisitSummary(ctx, since, until)
		if err != nil {
			t.Fatal(err)
		}
		if sum.Visits != 2 || sum.Answered != 1 || sum.Canvassers != 2 {
			t.Errorf("visit_summary = %+v, want 2 visits, 1 answered, 2 canvassers", sum)
		}
		act, err := c.CanvasserActivity(ctx, since, until, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range act {
			if a.Visits != 1 || (a.CanvasserID == "c-1" && a.Answered != 0) {
				t.Errorf("canvasser_activity %s = %+v, want 1 visit (c-1: none answered)", a.CanvasserID, a)
			}
		}
		el, err := c.IntentionsByElector(ctx, "e-1", 10)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, i := range el {
			got = append(got, i.ID)
		}
		if !slices.Equal(idsOf(got...), idsOf(i3.Id)) {
			t.Errorf("intentions_by_elector = %v, want [%s]", got, i3.Id)
		}
		old, err := c.OldestFollowups(ctx, "bins", 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(old) != 1 || old[0].ID != f3.Id {
			t.Errorf("oldest_followups(bins) = %+v, want only %s", old, f3.Id)
		}
	}
	t.Run("written", check)

	// Every row is stored, replaced or not: corrections hide, never delete.
	if got, want := env.Total(t), 9; got != want {
		t.Errorf("rows = %d, want %d", got, want)
	}

	// The originals' shard moves to a database that held none before: it
	// must know every correction too.
	target := env.AddShard(t)
	tool, err := shards.New(ctx, shards.Config{RouterURL: env.RouterURL, LockTimeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer tool.Close()
	var out bytes.Buffer
	if err := tool.Move(ctx, 24, target.Name, &out); err != nil {
		t.Fatalf("move: %v\n%s", err, out.String())
	}
	t.Run("after a shard move", check)
}
