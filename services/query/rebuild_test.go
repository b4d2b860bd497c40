package query_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/chapper/chapper/pipelines/runtime"
	"github.com/chapper/chapper/pipelines/timeline"
	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"github.com/chapper/chapper/proto/locality"
	"github.com/chapper/chapper/proto/topic"
)

// liveWriter writes one visit per batch through the live sink until
// stopped, and remembers every id whose write returned.
type liveWriter struct {
	mu   sync.Mutex
	ids  []string
	msgs []proto.Message
	stop chan struct{}
	done chan error
}

func startWriter(t *testing.T, e *env, locs []locality.Index) *liveWriter {
	t.Helper()
	w := &liveWriter{stop: make(chan struct{}), done: make(chan error, 1)}
	go func() {
		for i := 0; ; i++ {
			select {
			case <-w.stop:
				w.done <- nil
				return
			default:
			}
			v := visit(locs[i%len(locs)], time.Now(), canvassv1.Outcome_OUTCOME_ANSWERED)
			value, _ := proto.Marshal(v)
			kind, _ := topic.KindOf(v)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			err := e.sink.Write(ctx, []runtime.Record{{Topic: kind.Topic(), Value: value, Message: v, Time: time.Now()}})
			cancel()
			if err != nil {
				w.done <- err
				return
			}
			w.mu.Lock()
			w.ids = append(w.ids, v.Id)
			w.msgs = append(w.msgs, v)
			w.mu.Unlock()
			time.Sleep(2 * time.Millisecond) // a steady stream, not a flood
		}
	}()
	return w
}

func (w *liveWriter) written() ([]string, []proto.Message) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.ids), slices.Clone(w.msgs)
}

func (w *liveWriter) waitWrites(t *testing.T, n int) {
	t.Helper()
	eventually(t, 20*time.Second, fmt.Sprintf("%d live writes", n), func() error {
		if ids, _ := w.written(); len(ids) < n {
			return fmt.Errorf("%d written", len(ids))
		}
		return nil
	})
}

// A timeline rebuild under live writes: the live sink writes to both
// prefixes while the rebuild is set, a replay fills the new prefix with what
// came before, the switch moves the query service (without a restart, its
// watch included) to the new prefix, and there every record written before,
// during and after is counted exactly once.
func TestRebuildSwitchUnderLiveWrites(t *testing.T) {
	e := newEnv(t, nil)
	base, next := e.prefix, e.prefix+"r1:"
	chunk := chunkOf(t, edinburghLat, edinburghLon)
	locs := locality.ChunkLocalities(chunk)
	w := openWatch(t, e.client, chunk)
	w.snapshot(t)

	lw := startWriter(t, e, locs)
	lw.waitWrites(t, 20)
	ctx := ctxT(t, time.Minute)
	if err := timeline.StartRebuild(ctx, e.rdb, base, next); err != nil {
		t.Fatal(err)
	}
	// Every write that started after StartRebuild goes to both prefixes;
	// the replay covers everything whose write returned by now (two more
	// writes: the one in flight at the SET has returned).
	ids, _ := lw.written()
	lw.waitWrites(t, len(ids)+2)
	_, replay := lw.written()
	fixed, err := timeline.New(e.rdb, timeline.Config{Prefix: next, Fixed: true})
	if err != nil {
		t.Fatal(err)
	}
	for chunkStart := 0; chunkStart < len(replay); chunkStart += 10 {
		var batch []runtime.Record
		for _, m := range replay[chunkStart:min(chunkStart+10, len(replay))] {
			value, _ := proto.Marshal(m)
			kind, _ := topic.KindOf(m)
			batch = append(batch, runtime.Record{Topic: kind.Topic(), Value: value, Message: m, Time: time.Now()})
		}
		if err := fixed.Write(ctx, batch); err != nil {
			t.Fatalf("replay: %v", err)
		}
	}
	if err := timeline.SwitchPrefix(ctx, e.rdb, base, next); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "query follows the switch", func() error {
		if p := e.svc.Prefix(); p != next {
			return fmt.Errorf("reads under %q", p)
		}
		return nil
	})
	atSwitch, _ := lw.written()
	lw.waitWrites(t, len(atSwitch)+20)
	close(lw.stop)
	if err := <-lw.done; err != nil {
		t.Fatalf("live write: %v", err)
	}
	all, _ := lw.written()

	// GetChunk: every record once, counted once, under the new prefix.
	resp, err := e.qc.GetChunk(ctxT(t, 10*time.Second), &canvassv1.GetChunkRequest{Chunk: chunk, PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	var visits int64
	for _, lt := range resp.GetLocalities() {
		visits += lt.GetCounters()["visits"]
		for _, en := range lt.GetEntries() {
			got = append(got, en.GetId())
		}
	}
	slices.Sort(got)
	want := slices.Sorted(slices.Values(all))
	if !slices.Equal(got, want) || visits != int64(len(all)) {
		t.Errorf("after the switch GetChunk shows %d entries (visits counter %d), want the %d written, each once",
			len(got), visits, len(all))
	}
	last := all[len(all)-1]
	old, err := e.rdb.SIsMember(ctx, timeline.SeenKey(base, int64(locs[(len(all)-1)%len(locs)])), last).Result()
	if err != nil || old {
		t.Errorf("a record written after the switch is under the old prefix too (%v)", err)
	}

	// The watch follows: a fresh snapshot after the switch, then news from
	// the new prefix's channel, until it holds every record.
	have := map[string]bool{}
	switched := false
	deadline := time.Now().Add(20 * time.Second)
	for len(have) < len(all) || !switched {
		if time.Now().After(deadline) {
			t.Fatalf("the watch holds %d of %d records (fresh snapshot seen: %v)", len(have), len(all), switched)
		}
		ev := w.next(t, 20*time.Second)
		if s := ev.GetSnapshot(); s != nil {
			clear(have)
			for _, ids := range entryIDs(s) {
				for _, id := range ids {
					have[id] = true
				}
			}
			switched = true // the switch is the only cause of a fresh snapshot here
			continue
		}
		have[ev.GetRecord().GetId()] = true
	}
}

// A correction reaches watchers as a fresh snapshot without the replaced
// record: in the same chunk, and in the chunk of the replaced record when
// the correction moved the location to another chunk.
func TestWatchCorrection(t *testing.T) {
	e := newEnv(t, nil)
	chunk := chunkOf(t, edinburghLat, edinburghLon)
	locs := locality.ChunkLocalities(chunk)
	otherChunk := chunksNear(t, 2)[1]
	tests := []struct {
		name string
		loc  locality.Index
	}{
		{name: "same chunk", loc: locs[3]},
		{name: "other chunk", loc: locality.ChunkLocalities(otherChunk)[0]},
	}
	w := openWatch(t, e.client, chunk)
	w.snapshot(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			orig := visit(locs[0], time.Now(), canvassv1.Outcome_OUTCOME_NO_ANSWER)
			e.write(t, orig)
			for {
				// The previous case may have left a second fresh snapshot
				// (news on both the correction's and the original's chunk).
				ev := w.next(t, 10*time.Second)
				if ev.GetRecord().GetId() == orig.Id || slices.Contains(entryIDs(ev.GetSnapshot())[int64(locs[0])], orig.Id) {
					break
				}
			}
			corr := visit(tt.loc, time.Now(), canvassv1.Outcome_OUTCOME_ANSWERED)
			corr.ReplacesId = orig.Id
			e.write(t, corr)
			{
				ev := w.next(t, 10*time.Second)
				if ev.GetRecord() != nil {
					t.Fatalf("correction sent as a plain record event %s; want a fresh snapshot", ev.GetRecord().GetId())
				}
				ids := entryIDs(ev.GetSnapshot())
				if slices.Contains(ids[int64(locs[0])], orig.Id) {
					t.Fatalf("fresh snapshot still shows the replaced record")
				}
				if tt.loc.Chunk() == chunk && !slices.Contains(ids[int64(tt.loc)], corr.Id) {
					t.Fatalf("fresh snapshot lacks the correction")
				}
			}
		})
	}
}
