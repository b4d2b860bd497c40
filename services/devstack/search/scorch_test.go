package search

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestScorchOptionsValidate(t *testing.T) {
	for _, o := range []ScorchOptions{DefaultScorchOptions(), BleveScorchOptions()} {
		if err := o.Validate(); err != nil {
			t.Errorf("%+v: %v", o, err)
		}
	}
	cases := []struct {
		field string
		edit  func(*ScorchOptions)
	}{
		{"MaxSegmentsPerTier", func(o *ScorchOptions) { o.MergePlan.MaxSegmentsPerTier = 0 }},
		{"SegmentsPerMergeTask", func(o *ScorchOptions) { o.MergePlan.SegmentsPerMergeTask = 1 }},
		{"FloorSegmentSize", func(o *ScorchOptions) { o.MergePlan.FloorSegmentSize = 0 }},
		{"MaxSegmentSize", func(o *ScorchOptions) { o.MergePlan.MaxSegmentSize = 1 << 40 }},
		{"TierGrowth", func(o *ScorchOptions) { o.MergePlan.TierGrowth = 1 }},
		{"PersisterNapTimeMSec", func(o *ScorchOptions) { o.Persister.PersisterNapTimeMSec = -1 }},
		{"PersisterNapUnderNumFiles", func(o *ScorchOptions) { o.Persister.PersisterNapUnderNumFiles = -1 }},
		{"NumPersisterWorkers", func(o *ScorchOptions) { o.Persister.NumPersisterWorkers = 0 }},
		{"MaxSizeInMemoryMergePerWorker", func(o *ScorchOptions) { o.Persister.NumPersisterWorkers = 2 }},
	}
	for _, c := range cases {
		o := DefaultScorchOptions()
		c.edit(&o)
		err := o.Validate()
		if err == nil || !strings.Contains(err.Error(), c.field) {
			t.Errorf("%s: got %v, want an error naming the field", c.field, err)
		}
		if _, err := New(Config{DataDir: t.TempDir(), Addr: "127.0.0.1:0", Scorch: o}); err == nil || !strings.Contains(err.Error(), c.field) {
			t.Errorf("New with bad %s: got %v, want an error naming the field", c.field, err)
		}
	}
}

func TestScorchEnv(t *testing.T) {
	t.Setenv(ScorchEnv, "fast")
	if _, err := New(Config{DataDir: t.TempDir(), Addr: "127.0.0.1:0"}); err == nil || !strings.Contains(err.Error(), ScorchEnv) {
		t.Errorf("New with %s=fast: got %v, want an error naming %s", ScorchEnv, err, ScorchEnv)
	}
	t.Setenv(ScorchEnv, "default")
	s := startServer(t, "")
	if s.cfg.Scorch != BleveScorchOptions() {
		t.Errorf("%s=default gave %+v, want Bleve's own %+v", ScorchEnv, s.cfg.Scorch, BleveScorchOptions())
	}
	t.Setenv(ScorchEnv, "")
	s = startServer(t, "")
	if s.cfg.Scorch != DefaultScorchOptions() {
		t.Errorf("%s unset gave %+v, want %+v", ScorchEnv, s.cfg.Scorch, DefaultScorchOptions())
	}
	t.Setenv(ScorchEnv, `{"MergePlan":{"MaxSegmentsPerTier":20},"Persister":{"PersisterNapTimeMSec":5}}`)
	s = startServer(t, "")
	want := DefaultScorchOptions()
	want.MergePlan.MaxSegmentsPerTier, want.Persister.PersisterNapTimeMSec = 20, 5
	if s.cfg.Scorch != want {
		t.Errorf("%s as JSON gave %+v, want %+v", ScorchEnv, s.cfg.Scorch, want)
	}
	for _, bad := range []string{`{"MergePlan":{"MaxSegmentsPerTeir":20}}`, `{"MergePlan":{"TierGrowth":0.5}}`} {
		t.Setenv(ScorchEnv, bad)
		if _, err := New(Config{DataDir: t.TempDir(), Addr: "127.0.0.1:0"}); err == nil || !strings.Contains(err.Error(), ScorchEnv) {
			t.Errorf("New with %s=%s: got %v, want an error naming %s", ScorchEnv, bad, err, ScorchEnv)
		}
	}
}

// scorchStat reads a counter of index's scorch stats.
func scorchStat(t *testing.T, s *Server, index, name string) uint64 {
	t.Helper()
	s.mu.RLock()
	ix := s.indices[index]
	s.mu.RUnlock()
	if ix == nil {
		t.Fatalf("no index %s", index)
	}
	st, _ := ix.bi.StatsMap()["index"].(map[string]any)
	v, ok := st[name].(uint64)
	if !ok {
		t.Fatalf("scorch stats of %s have no %s: %v", index, name, st)
	}
	return v
}

// TestScorchOptionsReachScorch writes one durable document at a time
// (a file segment each) under a merge plan that lets 1000 segments of a
// document be (FloorSegmentSize 1; Bleve's own plan counts every segment
// under 2000 documents as 2000 and so merges a second segment of one
// document at once) and checks that scorch planned no merge (NewUsing's
// config), then reopens the index with the server's options (Open's
// runtime config) and checks that scorch merges.
func TestScorchOptionsReachScorch(t *testing.T) {
	lax := DefaultScorchOptions()
	lax.MergePlan.MaxSegmentsPerTier, lax.MergePlan.FloorSegmentSize = 1000, 1
	eager := DefaultScorchOptions()

	const index = "scorch-options"
	dir := t.TempDir()
	s := startServerWith(t, dir, lax)
	for i := range 12 {
		callJSON(t, http.MethodPut, fmt.Sprintf("%s/%s/_doc/%d", s.URL(), index, i), `{"n":1}`, 201)
	}
	time.Sleep(time.Second) // the merger plans after each introduced segment
	if n := scorchStat(t, s, index, "TotFileMergePlanTasks"); n != 0 {
		t.Errorf("with MaxSegmentsPerTier 1000 and FloorSegmentSize 1 scorch planned %d merge tasks, want 0", n)
	}
	if n := scorchStat(t, s, index, "TotFileSegmentsAtRoot"); n < 12 {
		t.Errorf("with MaxSegmentsPerTier 1000 and FloorSegmentSize 1 the index has %d file segments, want at least 12", n)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = startServerWith(t, dir, eager)
	callJSON(t, http.MethodPut, fmt.Sprintf("%s/%s/_doc/x", s.URL(), index), `{"n":2}`, 201)
	deadline := time.Now().Add(20 * time.Second)
	for scorchStat(t, s, index, "TotFileMergePlanTasks") == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("reopened with the server's options, scorch planned no merge of %d file segments in 20 s",
				scorchStat(t, s, index, "TotFileSegmentsAtRoot"))
		}
		time.Sleep(50 * time.Millisecond)
	}
}
