package ingest

import (
	"errors"
	"sync"

	"github.com/google/uuid"
)

// dedup remembers the ids the broker acknowledged recently (a bounded,
// approximately least-recently-used set, each id with its record's stamp,
// so that a resubmission with other content is told apart) and the ids
// being produced right now (in flight), so that neither a resubmitted record
// nor two concurrent submits of one record are produced twice. It is the
// in-process fast path; across instances and restarts the shared id store
// (idstore.go) decides, and the acknowledged set holds only the ids the
// store failed to record (it answers for the others anyway, and probing a
// large set for every new id cost 5% of ingest's CPU), so that this
// instance still never produces one twice. An id enters the acknowledged
// set only after its acknowledgement: a record whose produce failed is
// produced again when the client retries. Ids are keyed as 16-byte UUIDs:
// cheaper to hash than their 36-character text.
type dedup struct {
	mu       sync.Mutex
	acked    *recent
	inFlight map[uuid.UUID]flightRef
}

// recent is a bounded set in two generations: ids go into the current map;
// once it holds half the capacity it becomes the previous generation and the
// older one is dropped whole. An id is remembered for at least size/2 and at
// most size later additions, and a hit moves it to the current generation,
// so a client retrying an id keeps it remembered.
//
// It replaces hashicorp/golang-lru's list-based LRU, measured here: at
// 100,000 ids with every submitted id new (the normal case), that LRU
// deletes one map entry per insert, and the tombstones this leaves in Go's
// swiss tables made lookups probe long chains. It cost 540 ns per new id
// against 140 ns for this set, and its map probing alone was 7% of all CPU
// in the ingest benchmark. Dropping maps whole leaves no tombstones.
type recent struct {
	cur, prev map[uuid.UUID]string
	half      int
}

func newRecent(size int) *recent {
	half := max(1, size/2)
	return &recent{cur: make(map[uuid.UUID]string, half), prev: map[uuid.UUID]string{}, half: half}
}

// get returns id's stamp when id is in the set, refreshing it.
func (r *recent) get(id uuid.UUID) (string, bool) {
	if len(r.cur) == 0 && len(r.prev) == 0 {
		// With the shared id store on, the set holds only the ids the store
		// failed to record: nearly always none. cur is allocated for half
		// the capacity, and probing that empty table for every id missed
		// the cache.
		return "", false
	}
	if v, ok := r.cur[id]; ok {
		return v, true
	}
	if v, ok := r.prev[id]; ok {
		r.add(id, v)
		return v, true
	}
	return "", false
}

// add puts id in the current generation, turning generations over when it
// is full.
func (r *recent) add(id uuid.UUID, stamp string) {
	if len(r.cur) >= r.half {
		r.prev, r.cur = r.cur, make(map[uuid.UUID]string, r.half)
	}
	r.cur[id] = stamp
}

// flight is one caller's produce of the ids it claimed. done is closed when
// it ends; val[k] (written before done is closed) is the stamp the k-th
// claimed id was acknowledged with, "" when it was not.
type flight struct {
	done chan struct{}
	val  []string
}

// flightRef names one id of a flight.
type flightRef struct {
	f *flight
	k int
}

// Value returns the stamp the id was acknowledged with, "" when its produce
// failed; call after f.done closed.
func (r flightRef) Value() string { return r.f.val[r.k] }

func newDedup(size int) (*dedup, error) {
	if size < 1 {
		return nil, errors.New("dedup size must be at least 1")
	}
	return &dedup{acked: newRecent(size), inFlight: make(map[uuid.UUID]flightRef)}, nil
}

// claim sorts ids into those this caller must produce (now in flight under
// its name, in the returned flight), those already acknowledged (acked,
// with their stamps in ackedVals) and those another caller is producing
// (the caller waits for waits[i].f.done, then reads waits[i].Value()).
// Each index slice holds positions in ids; own is nil when mine is empty.
func (d *dedup) claim(ids []uuid.UUID) (mine, acked []int, ackedVals []string, waiting []int, waits []flightRef, own *flight) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i, id := range ids {
		if v, ok := d.acked.get(id); ok {
			acked = append(acked, i)
			ackedVals = append(ackedVals, v)
			continue
		}
		if r, ok := d.inFlight[id]; ok {
			waiting = append(waiting, i)
			waits = append(waits, r)
			continue
		}
		if own == nil {
			own = &flight{done: make(chan struct{}), val: make([]string, 0, len(ids)-i)}
		}
		d.inFlight[id] = flightRef{own, len(own.val)}
		own.val = append(own.val, "")
		mine = append(mine, i)
	}
	return mine, acked, ackedVals, waiting, waits, own
}

// remember adds ids, acknowledged with stamps, to the acknowledged set.
func (d *dedup) remember(ids []uuid.UUID, stamps []string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for k, id := range ids {
		d.acked.add(id, stamps[k])
	}
}

// lookup returns id's stamp when it is acknowledged.
func (d *dedup) lookup(id uuid.UUID) (string, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.acked.get(id)
}

// finish ends the caller's flight f, whose k-th claimed id is ids[k]; val(k)
// is the stamp it was acknowledged with, "" when it was not. With remember,
// the acknowledged ids enter the acknowledged set; without (the shared id
// store recorded them and answers for them), only the flight's waiters
// learn their stamps.
func (d *dedup) finish(f *flight, ids []uuid.UUID, val func(k int) string, remember bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for k, id := range ids {
		delete(d.inFlight, id)
		if v := val(k); v != "" {
			f.val[k] = v
			if remember {
				d.acked.add(id, v)
			}
		}
	}
	close(f.done)
}
