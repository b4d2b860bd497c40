package ingest

import (
	"hash/fnv"
	"math/rand/v2"
	"testing"
)

// TestFNV64a checks the inlined hash against hash/fnv's: stamps stored in
// the shared id store by an earlier version must still compare equal.
func TestFNV64a(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for n := range 300 {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		h := fnv.New64a()
		_, _ = h.Write(b)
		if got, want := fnv64a(b), h.Sum64(); got != want {
			t.Fatalf("fnv64a of %d bytes = %x, want %x", n, got, want)
		}
	}
}
