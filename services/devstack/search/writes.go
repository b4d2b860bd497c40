package search

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	index "github.com/blevesearch/bleve_index_api"
)

// execWrites performs ops (already parsed) and fills in their outcomes.
// Ops on different indices run concurrently; ops on one index apply in
// request order as one bleve batch.
func (s *Server) execWrites(ops []*writeOp) {
	targets := map[string]*esIndex{}
	targetErr := map[string]*esError{}
	groups := map[*esIndex][]*writeOp{}
	var order []*esIndex
	for _, op := range ops {
		if op.err != nil {
			continue
		}
		if op.id == "" {
			op.id = newDocID()
		}
		if len(op.id) > 512 {
			op.err = newError(http.StatusBadRequest, "illegal_argument_exception", "id [%s] is too long, must be no longer than 512 bytes but was: %d", op.id, len(op.id))
			continue
		}
		if op.requireAlias && !s.isAlias(op.indexName) {
			op.err = indexNotFound(op.indexName)
			op.err.reason = fmt.Sprintf("no such index [%s] and [require_alias] request flag is [true] and [%s] is not an alias", op.indexName, op.indexName)
			continue
		}
		ix, ok := targets[op.indexName]
		if !ok {
			if e, failed := targetErr[op.indexName+"\x00"+op.action]; failed {
				op.err = e
				continue
			}
			var err *esError
			ix, err = s.writeIndex(op.indexName, op.action != "delete")
			if err != nil {
				targetErr[op.indexName+"\x00"+op.action] = err
				op.err = err
				continue
			}
			targets[op.indexName] = ix
		}
		op.ix = ix
		if op.action != "delete" {
			doc, err := decodeObject(op.source)
			if err != nil {
				op.err = newError(http.StatusBadRequest, "document_parsing_exception", "failed to parse: %s", err.reason)
				continue
			}
			op.doc = doc
		}
		if _, seen := groups[ix]; !seen {
			order = append(order, ix)
		}
		groups[ix] = append(groups[ix], op)
	}
	var wg sync.WaitGroup
	for _, ix := range order {
		wg.Add(1)
		go func(ix *esIndex, ops []*writeOp) {
			defer wg.Done()
			s.applyGroup(ix, ops)
		}(ix, groups[ix])
	}
	wg.Wait()
}

func (s *Server) isAlias(name string) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.aliasExists(name)
}

// applyGroup applies the ops of one index as one batch.
func (s *Server) applyGroup(ix *esIndex, ops []*writeOp) {
	failAll := func(e *esError) {
		for _, op := range ops {
			if op.err == nil {
				op.err = e
			}
		}
	}
	ix.life.RLock()
	defer ix.life.RUnlock()
	if ix.closed {
		failAll(indexNotFound(ix.name))
		return
	}
	ids := make([]string, 0, len(ops))
	for _, op := range ops {
		ids = append(ids, op.id)
	}
	// Batches run concurrently unless they share an id: a batch waits for
	// in-flight batches holding any of its ids, so outcomes and versions
	// are decided on the final state of earlier writes, in order.
	ix.wmu.Lock()
	for ix.pendingAny(ids) {
		ix.wcond.Wait()
	}
	unlocked := false
	defer func() {
		if !unlocked {
			ix.wmu.Unlock()
		}
	}()
	versions, err := existingVersions(ix.ii, ids)
	if err != nil {
		s.log.Error("looking up existing documents", "index", ix.name, "err", err)
		failAll(newError(http.StatusInternalServerError, "exception", "looking up existing documents: %v", err))
		return
	}

	var seqs map[string]uint64
	for _, op := range ops {
		if op.cas.usesSeqNo() {
			if seqs, err = existingSeqs(ix.ii, ids); err != nil {
				s.log.Error("looking up sequence numbers", "index", ix.name, "err", err)
				failAll(newError(http.StatusInternalServerError, "exception", "looking up sequence numbers: %v", err))
				return
			}
			break
		}
	}

	base := ix.mapping.Load()
	m := base
	batch := index.NewBatch()
	seq := ix.nextSeq
	for _, op := range ops {
		prev := versions[op.id]
		if e := op.cas.conflict(op.id, prev, seqs[op.id]); e != nil {
			op.err = e
			continue
		}
		switch op.action {
		case "delete":
			if prev == 0 {
				op.result, op.status, op.version = "not_found", http.StatusNotFound, 1
				if op.cas.external() {
					op.version = uint64(op.cas.version)
				}
			} else {
				op.result, op.status, op.version = "deleted", http.StatusOK, prev+1
				if op.cas.external() {
					op.version = uint64(op.cas.version)
				}
				versions[op.id] = 0
				batch.Delete(op.id)
			}
			op.seqNo = seq
			if seqs != nil {
				seqs[op.id] = seq
			}
			seq++
			continue
		case "create":
			if prev != 0 {
				op.err = newError(http.StatusConflict, "version_conflict_engine_exception",
					"[%s]: version conflict, document already exists (current version [%d])", op.id, prev)
				continue
			}
		}
		version := prev + 1
		if op.cas.external() {
			version = uint64(op.cas.version)
		}
		cand := m
		var built bool
		for attempt := 0; attempt < 1000; attempt++ {
			doc, add, derr := buildDocument(cand, op.id, op.doc, op.source, version, seq)
			if derr != nil {
				op.err = derr
				break
			}
			if add != nil {
				cand = cand.withAddition(add)
				continue
			}
			batch.Update(doc)
			built = true
			break
		}
		if !built {
			if op.err == nil {
				op.err = badRequest("too many dynamic fields in document [%s]", op.id)
			}
			continue
		}
		m = cand
		versions[op.id] = version
		op.version, op.seqNo = version, seq
		if seqs != nil {
			seqs[op.id] = seq
		}
		seq++
		if prev == 0 {
			op.result, op.status = "created", http.StatusCreated
		} else {
			op.result, op.status = "updated", http.StatusOK
		}
	}
	if seq == ix.nextSeq {
		return
	}
	if m != base {
		ix.mapping.Store(m)
		if err := s.persist(); err != nil {
			s.log.Error("saving search state after a dynamic mapping update", "index", ix.name, "err", err)
			ix.mapping.Store(base)
			failAll(newError(http.StatusInternalServerError, "exception", "saving mapping: %v", err))
			return
		}
	}
	seqBytes := make([]byte, 8)
	binary.BigEndian.PutUint64(seqBytes, seq)
	batch.SetInternal(seqKey, seqBytes)
	ix.nextSeq = seq
	for _, id := range ids {
		ix.pending[id] = struct{}{}
	}
	ix.wmu.Unlock()
	unlocked = true

	start := time.Now()
	err = s.writeBatch(ix.ii, batch)

	ix.wmu.Lock()
	for _, id := range ids {
		delete(ix.pending, id)
	}
	ix.wcond.Broadcast()
	ix.wmu.Unlock()
	if err != nil {
		s.log.Error("writing batch", "index", ix.name, "err", err)
		e := newError(http.StatusInternalServerError, "exception", "writing batch: %v", err)
		for _, op := range ops {
			if op.err == nil {
				op.err = e
			}
		}
		return
	}
	metricBatchSeconds.Observe(time.Since(start).Seconds())
	metricDocs.Add(float64(len(batch.IndexOps)))
}

// existingSeqs returns the current _seq_no of each id that exists, read
// from the stored documents (only writes with if_seq_no need it).
func existingSeqs(ii index.Index, ids []string) (map[string]uint64, error) {
	r, err := ii.Reader()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	out := make(map[string]uint64, len(ids))
	for _, id := range ids {
		doc, err := r.Document(id)
		if err != nil {
			return nil, err
		}
		if doc == nil {
			continue
		}
		doc.VisitFields(func(f indexField) {
			if f.Name() == fieldSeqNo {
				out[id] = beUint64(f.Value())
			}
		})
	}
	return out, nil
}

// existingVersions returns the current _version of each id that exists.
func existingVersions(ii index.Index, ids []string) (map[string]uint64, error) {
	out := make(map[string]uint64, len(ids))
	r, err := ii.Reader()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	dr, err := r.DocIDReaderOnly(ids)
	if err != nil {
		return nil, err
	}
	dvr, err := r.DocValueReader([]string{fieldVersion})
	if err != nil {
		return nil, err
	}
	for {
		iid, err := dr.Next()
		if err != nil {
			return nil, err
		}
		if iid == nil {
			break
		}
		ext, err := r.ExternalID(iid)
		if err != nil {
			return nil, err
		}
		var ver uint64 = 1
		err = dvr.VisitDocValues(iid, func(_ string, term []byte) {
			if len(term) >= dvLen {
				ver = uint64(decodeDV(term))
			}
		})
		if err != nil {
			return nil, err
		}
		out[ext] = ver
	}
	return out, nil
}

// minSplit is the smallest part a batch is split into for building on
// several cores.
const minSplit = 250

// building counts the Bleve batches being written across the server.
var building atomic.Int32

// splitWrites turns the parallel parts of writeBatch on;
// BenchmarkSingleWriter turns it off for its baseline.
var splitWrites = true

// writeBatch writes batch to ii and returns once it is durable. Bleve
// builds a batch's segment on the calling goroutine, so with splitWrites
// a large batch written while cores are idle (one bulk request at a time,
// as the search sink sends them) is split by document into parts written
// concurrently,
// each a segment of its own built on its own core. A _bulk request is
// not atomic in Elasticsearch either; the response waits for every part
// to be durable, and the sequence-number watermark goes with each part.
func (s *Server) writeBatch(ii index.Index, batch *index.Batch) error {
	n := len(batch.IndexOps)
	parts := min(runtime.GOMAXPROCS(0)-int(building.Load()), n/minSplit)
	if parts <= 1 || !splitWrites {
		building.Add(1)
		defer building.Add(-1)
		return ii.Batch(batch)
	}
	split := make([]*index.Batch, parts)
	for i := range split {
		split[i] = index.NewBatch()
		for k, v := range batch.InternalOps {
			split[i].SetInternal([]byte(k), v)
		}
	}
	i := 0
	for id, doc := range batch.IndexOps {
		b := split[i%parts]
		if doc == nil {
			b.Delete(id)
		} else {
			b.Update(doc)
		}
		i++
	}
	building.Add(int32(parts))
	defer building.Add(-int32(parts))
	errs := make([]error, parts)
	var wg sync.WaitGroup
	for i, b := range split {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = ii.Batch(b)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}
