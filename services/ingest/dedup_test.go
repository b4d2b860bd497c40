package ingest

import (
	"slices"
	"testing"

	"github.com/google/uuid"
)

// TestDedup walks the life of ids through claim and finish: in flight,
// failed (the waiter produces it itself), acknowledged (duplicate), evicted.
func TestDedup(t *testing.T) {
	d, err := newDedup(2)
	if err != nil {
		t.Fatal(err)
	}
	a, b, c := uuid.New(), uuid.New(), uuid.New()
	// A claims a and b.
	mine, dups, _, waiting, _, flightA := d.claim([]uuid.UUID{a, b})
	if !slices.Equal(mine, []int{0, 1}) || len(dups) != 0 || len(waiting) != 0 || flightA == nil {
		t.Fatalf("first claim: mine %v dups %v waiting %v", mine, dups, waiting)
	}
	// B wants b and c while A is producing: c is B's, b is waited for.
	mine, dups, _, waiting, waits, flightB := d.claim([]uuid.UUID{b, c})
	if !slices.Equal(mine, []int{1}) || len(dups) != 0 || !slices.Equal(waiting, []int{0}) {
		t.Fatalf("concurrent claim: mine %v dups %v waiting %v", mine, dups, waiting)
	}
	// A's produce fails for b (its second id) but not a: a is acknowledged.
	d.finish(flightA, []uuid.UUID{a, b}, func(k int) string {
		if k == 0 {
			return "stamp-a"
		}
		return ""
	}, true)
	select {
	case <-waits[0].f.done:
	default:
		t.Fatal("flight of b not finished")
	}
	if waits[0].Value() != "" {
		t.Fatal("flight of b reports ok after a failed produce")
	}
	// B claims b again (its retry round) and now owns it.
	mine, _, _, waiting, _, flightB2 := d.claim([]uuid.UUID{b})
	if !slices.Equal(mine, []int{0}) || len(waiting) != 0 {
		t.Fatalf("retry claim: mine %v waiting %v", mine, waiting)
	}
	d.finish(flightB, []uuid.UUID{c}, func(int) string { return "stamp-c" }, true)
	d.finish(flightB2, []uuid.UUID{b}, func(int) string { return "stamp-b" }, true)
	// a, c, b acknowledged in that order; the set holds two: a is gone.
	mine, dups, vals, _, _, _ := d.claim([]uuid.UUID{b, c, a})
	if !slices.Equal(dups, []int{0, 1}) || !slices.Equal(mine, []int{2}) || !slices.Equal(vals, []string{"stamp-b", "stamp-c"}) {
		t.Fatalf("after ack: dups %v (stamps %v) mine %v, want b, c acknowledged with their stamps and a evicted", dups, vals, mine)
	}
	if len(d.inFlight) != 1 {
		t.Fatalf("%d ids in flight, want 1 (a)", len(d.inFlight))
	}
}

// TestRecent checks the bounds of the acknowledged set: every id is kept
// for at least size/2 later additions, never more than size ids are held,
// and a hit keeps an id.
func TestRecent(t *testing.T) {
	const size = 100
	r := newRecent(size)
	ids := make([]uuid.UUID, 1000)
	for i := range ids {
		ids[i] = uuid.New()
	}
	for i, id := range ids {
		r.add(id, "s")
		if n := len(r.cur) + len(r.prev); n > size {
			t.Fatalf("after %d additions the set holds %d ids, more than %d", i+1, n, size)
		}
		for j := max(0, i-size/2+1); j <= i; j++ {
			if !r.has(ids[j]) {
				t.Fatalf("id %d forgotten after %d later additions (< %d)", j, i-j, size/2)
			}
		}
	}
	if r.has(ids[0]) {
		t.Error("id 0 still remembered after 999 later additions")
	}
	// A hit keeps an id alive across turnovers.
	keep := uuid.New()
	r.add(keep, "s")
	for i := range 10 * size {
		r.add(uuid.New(), "s")
		if i%10 == 0 && !r.has(keep) {
			t.Fatalf("refreshed id forgotten after %d additions", i)
		}
	}
}

func (r *recent) has(id uuid.UUID) bool {
	_, ok := r.get(id)
	return ok
}
