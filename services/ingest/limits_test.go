package ingest

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

// TestLimitsSweep checks that a sweep drops the buckets idle long enough to
// be full again, keeps the others with what they took, and keeps the count.
func TestLimitsSweep(t *testing.T) {
	l := newLimits(Config{RatePerCanvasser: 10, RateBurst: 100})
	t0 := time.Now()
	refill := 10 * time.Second // burst / rate
	for i := range 50 {
		l.bucket(fmt.Sprint("idle-", i), t0).last.Store(t0.UnixNano())
	}
	busy := l.bucket("busy", t0)
	later := t0.Add(refill + time.Second)
	busy.last.Store(later.UnixNano())
	busy.lim.ReserveN(later, 100)

	l.sweep(later)
	if n := l.nBuckets.Load(); n != 1 {
		t.Errorf("after the sweep %d buckets are counted, want 1", n)
	}
	if _, ok := l.buckets.Load("idle-0"); ok {
		t.Error("an idle bucket survived the sweep")
	}
	if b := l.bucket("busy", later); b != busy || b.lim.TokensAt(later) > 1 {
		t.Errorf("the busy bucket was replaced or refilled (tokens %v)", b.lim.TokensAt(later))
	}
}

// TestLimitsConcurrentBuckets checks, under -race, that Submits of many
// canvassers at once each get one bucket per canvasser.
func TestLimitsConcurrentBuckets(t *testing.T) {
	l := newLimits(Config{RatePerCanvasser: 1000, RateBurst: 1000})
	now := time.Now()
	var wg sync.WaitGroup
	got := make([][]*bucket, 8)
	for g := range got {
		wg.Go(func() {
			for i := range 100 {
				got[g] = append(got[g], l.bucket(fmt.Sprint("c-", i), now))
			}
		})
	}
	wg.Wait()
	if n := l.nBuckets.Load(); n != 100 {
		t.Errorf("%d buckets counted, want 100", n)
	}
	for g := range got {
		for i, b := range got[g] {
			if b != got[0][i] {
				t.Fatalf("goroutines %d and 0 got different buckets for canvasser %d", g, i)
			}
		}
	}
}
