package search

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"

	"github.com/chapper/chapper/proto/topic"
)

// Corrections (DESIGN.md, "Conflicts and corrections"): a correction is a
// new record whose replaces_id names the record of the same kind it
// replaces. In search, a document stops counting by being marked
// `replaced: true`, which the aliases filter out (CurrentFilter): the
// replaced record, and of several corrections of one record every one but
// the newest (the one received last by ingest, ties broken by the higher
// id, as the Postgres current_* views decide). A chain (A replaced by B, B
// by C) leaves only C.
//
// The replaced record's index (its month) is not known to its
// correction, and the two may arrive in any order, on different
// partitions and consumers. So every generation keeps a ledger index,
// <prefix>-corrections[-<generation>], with one entry per correction:
// {key: <kind>:<replaced id>, by: <correction id>, by_received, by_index}.
// Each Write, per generation:
//
//  1. reads the ledger entries of every id of the batch and of every id a
//     correction of the batch replaces, and writes each document with
//     `replaced` as they say (so a redelivered or replayed record never
//     counts again, not even for a moment);
//  2. after the documents were acknowledged, adds the entries of the
//     batch's corrections, refreshes the ledger and reads it again;
//  3. marks what the second read says no longer counts: a document of
//     the batch written unmarked, the records the batch's corrections
//     replace, and the corrections a newer one outdid (found by id in the
//     generation's indices after a refresh).
//
// A record and its correction meet whatever the order: if the record's
// second read (2) misses the correction's entry, that entry was added
// after the record's document was acknowledged, so the correction's
// search (3) finds the document. Marks only ever go from counting to not
// counting, so every writer may apply them, again and in any order.

// ledgerEntry is one correction of one record in the ledger.
type ledgerEntry struct {
	Key        string `json:"key"` // <kind>:<replaced id>
	Kind       string `json:"kind"`
	Replaced   string `json:"replaced"`
	By         string `json:"by"`
	ByReceived string `json:"by_received,omitempty"`
	ByIndex    string `json:"by_index"`
}

func ledgerKey(kind, id string) string { return kind + ":" + id }

// ledgerMappings are the ledger index's mappings.
func ledgerMappings() map[string]any {
	props := map[string]any{}
	for _, f := range []string{"key", "kind", "replaced", "by", "by_received", "by_index"} {
		props[f] = map[string]any{"type": "keyword"}
	}
	return map[string]any{"dynamic": "strict", "properties": props}
}

// ledgerTemplateBody is the index template of every generation's ledger
// under a prefix.
func (n Names) ledgerTemplateBody() []byte {
	b, err := json.Marshal(map[string]any{
		"index_patterns": []string{n.Prefix + "-corrections*"},
		"priority":       firstPriority,
		"template":       map[string]any{"mappings": ledgerMappings()},
		"_meta":          map[string]any{"managed_by": "chapper"},
	})
	if err != nil {
		panic(fmt.Sprintf("encoding the ledger template: %v", err)) // static data; cannot fail
	}
	return b
}

// ledger is what the ledger holds for some keys.
type ledger map[string][]ledgerEntry

// newer reports whether correction (aRecv, aID) is newer than (bRecv,
// bID). Received times are TimeFormat strings, so they order as text; a
// missing one is the oldest.
func newer(aRecv, aID, bRecv, bID string) bool {
	if aRecv != bRecv {
		return aRecv > bRecv
	}
	return aID > bID
}

// replaced reports whether doc no longer counts: a correction replaced it,
// or it is a correction and a newer correction of the same record exists.
func (l ledger) replaced(doc *Document) bool {
	if len(l[ledgerKey(doc.Kind, doc.ID)]) > 0 {
		return true
	}
	if doc.ReplacesID == "" {
		return false
	}
	for _, e := range l[ledgerKey(doc.Kind, doc.ReplacesID)] {
		if e.By != doc.ID && newer(e.ByReceived, e.By, doc.ReceivedAt, doc.ID) {
			return true
		}
	}
	return false
}

// outdone returns the corrections under key that a newer one outdid.
func (l ledger) outdone(key string) []string {
	entries := l[key]
	if len(entries) < 2 {
		return nil
	}
	newest := entries[0]
	for _, e := range entries[1:] {
		if newer(e.ByReceived, e.By, newest.ByReceived, newest.By) {
			newest = e
		}
	}
	var out []string
	for _, e := range entries {
		if e.By != newest.By {
			out = append(out, e.By)
		}
	}
	return out
}

// maxSearchHits bounds the hits of one search of the ledger or of the
// documents to mark (Elasticsearch's default max_result_window).
const maxSearchHits = 10000

// readLedger returns the ledger entries of keys in generation n.
func (s *Sink) readLedger(ctx context.Context, n Names, keys []string) (ledger, error) {
	l := ledger{}
	if len(keys) == 0 {
		return l, nil
	}
	var hits []hit
	err := s.searchHits(ctx, n.Ledger(), map[string]any{"terms": map[string]any{"key": keys}}, &hits)
	if err != nil {
		return nil, fmt.Errorf("reading the corrections ledger %s: %w", n.Ledger(), err)
	}
	for _, h := range hits {
		var e ledgerEntry
		if err := json.Unmarshal(h.Source, &e); err != nil {
			return nil, fmt.Errorf("decoding ledger entry %s: %w", h.ID, err)
		}
		l[e.Key] = append(l[e.Key], e)
	}
	return l, nil
}

// hit is one search hit.
type hit struct {
	Index  string          `json:"_index"`
	ID     string          `json:"_id"`
	Source json.RawMessage `json:"_source"`
}

// searchHits runs a search of query on index (missing indices are
// empty) and decodes every hit into hits; more than maxSearchHits is an
// error.
func (s *Sink) searchHits(ctx context.Context, index string, query map[string]any, hits *[]hit) error {
	body, err := json.Marshal(map[string]any{"size": maxSearchHits, "track_total_hits": true, "query": query})
	if err != nil {
		return err
	}
	res, err := s.es.Search(s.es.Search.WithContext(ctx), s.es.Search.WithIndex(index), s.es.Search.WithBody(bytes.NewReader(body)),
		s.es.Search.WithIgnoreUnavailable(true), s.es.Search.WithAllowNoIndices(true))
	if err != nil {
		return fmt.Errorf("%w: %w", ErrNotIndexed, err)
	}
	defer res.Body.Close()
	if res.StatusCode == http.StatusNotFound {
		_, _ = io.Copy(io.Discard, res.Body)
		return nil
	}
	if res.IsError() {
		b, _ := io.ReadAll(io.LimitReader(res.Body, 4096))
		return fmt.Errorf("%w: %w", ErrNotIndexed, &StatusError{Status: res.StatusCode, Body: string(b)})
	}
	var out struct {
		Hits struct {
			Total struct {
				Value int `json:"value"`
			} `json:"total"`
			Hits []hit `json:"hits"`
		} `json:"hits"`
	}
	if err := json.NewDecoder(res.Body).Decode(&out); err != nil {
		return fmt.Errorf("decoding search response: %w", err)
	}
	if out.Hits.Total.Value > len(out.Hits.Hits) {
		return fmt.Errorf("search of %s matched %d documents, more than the %d one search returns", index, out.Hits.Total.Value, len(out.Hits.Hits))
	}
	*hits = out.Hits.Hits
	return nil
}

// refresh makes what was acknowledged on index searchable.
func (s *Sink) refresh(ctx context.Context, index string) error {
	res, err := s.es.Indices.Refresh(s.es.Indices.Refresh.WithContext(ctx), s.es.Indices.Refresh.WithIndex(index),
		s.es.Indices.Refresh.WithIgnoreUnavailable(true), s.es.Indices.Refresh.WithAllowNoIndices(true))
	if err := responseError(res, err); err != nil {
		var st *StatusError
		if errors.As(err, &st) && st.Status == http.StatusNotFound {
			return nil
		}
		return fmt.Errorf("%w: refreshing %s: %w", ErrNotIndexed, index, err)
	}
	return nil
}

// bulkOp is one action of a _bulk request the sink sends itself.
type bulkOp struct {
	index, id string
	source    []byte
}

// bulk sends ops in one _bulk request; any item not acknowledged makes it
// a transient error (wrapping ErrNotIndexed), so the runtime retries the
// batch.
func (s *Sink) bulk(ctx context.Context, ops []bulkOp) error {
	if len(ops) == 0 {
		return nil
	}
	var b bytes.Buffer
	for _, op := range ops {
		meta, _ := json.Marshal(map[string]any{"index": map[string]any{"_index": op.index, "_id": op.id}})
		b.Write(meta)
		b.WriteByte('\n')
		b.Write(op.source)
		b.WriteByte('\n')
	}
	res, err := s.es.Bulk(bytes.NewReader(b.Bytes()), s.es.Bulk.WithContext(ctx))
	if err != nil {
		return fmt.Errorf("%w: %w", ErrNotIndexed, err)
	}
	defer res.Body.Close()
	if res.IsError() {
		msg, _ := io.ReadAll(io.LimitReader(res.Body, 4096))
		return fmt.Errorf("%w: %w", ErrNotIndexed, &StatusError{Status: res.StatusCode, Body: string(msg)})
	}
	var out struct {
		Errors bool                  `json:"errors"`
		Items  []map[string]bulkItem `json:"items"`
	}
	if err := json.NewDecoder(res.Body).Decode(&out); err != nil {
		return fmt.Errorf("%w: decoding bulk response: %w", ErrNotIndexed, err)
	}
	if !out.Errors {
		return nil
	}
	var bad []string
	for _, it := range out.Items {
		for _, r := range it {
			if r.Status/100 != 2 {
				bad = append(bad, fmt.Sprintf("%s/%s: status %d: %s: %s", r.Index, r.ID, r.Status, r.Error.Type, r.Error.Reason))
			}
		}
	}
	return fmt.Errorf("%w: %d of %d marks and ledger entries, first: %s", ErrNotIndexed, len(bad), len(ops), strings.Join(bad[:min(1, len(bad))], ""))
}

type bulkItem struct {
	Index  string `json:"_index"`
	ID     string `json:"_id"`
	Status int    `json:"status"`
	Error  struct {
		Type   string `json:"type"`
		Reason string `json:"reason"`
	} `json:"error"`
}

// written is a document of the batch that Elasticsearch acknowledged.
type written struct {
	doc   *Document
	index string
}

// settleCorrections is steps 2 and 3 above for the documents of one
// batch acknowledged in generation n; before is the ledger read of step 1.
func (s *Sink) settleCorrections(ctx context.Context, n Names, docs []written, keys []string, before ledger) error {
	var entries []bulkOp
	for _, w := range docs {
		d := w.doc
		if d.ReplacesID == "" {
			continue
		}
		key := ledgerKey(d.Kind, d.ReplacesID)
		if slices.ContainsFunc(before[key], func(e ledgerEntry) bool { return e.By == d.ID }) {
			continue // already there: a redelivery
		}
		src, _ := json.Marshal(ledgerEntry{Key: key, Kind: d.Kind, Replaced: d.ReplacesID, By: d.ID, ByReceived: d.ReceivedAt, ByIndex: w.index})
		entries = append(entries, bulkOp{index: n.Ledger(), id: key + ":" + d.ID, source: src})
	}
	if err := s.bulk(ctx, entries); err != nil {
		return fmt.Errorf("adding corrections to the ledger: %w", err)
	}
	// read again after the documents were acknowledged (see above)
	if err := s.refresh(ctx, n.Ledger()); err != nil {
		return err
	}
	after, err := s.readLedger(ctx, n, keys)
	if err != nil {
		return err
	}
	var marks []bulkOp
	inBatch := map[string]bool{}
	for _, w := range docs {
		inBatch[ledgerKey(w.doc.Kind, w.doc.ID)] = true
		if !w.doc.Replaced && after.replaced(w.doc) {
			d := *w.doc
			d.Replaced = true
			src, _ := json.Marshal(d)
			marks = append(marks, bulkOp{index: w.index, id: d.ID, source: src})
		}
	}
	// the records the batch's corrections replace and the corrections a
	// newer one outdid, outside the batch
	others := map[string][]string{} // kind → ids
	seen := map[string]bool{}
	for _, w := range docs {
		d := w.doc
		if d.ReplacesID == "" {
			continue
		}
		key := ledgerKey(d.Kind, d.ReplacesID)
		for _, id := range append([]string{d.ReplacesID}, after.outdone(key)...) {
			k := ledgerKey(d.Kind, id)
			if !inBatch[k] && !seen[k] {
				seen[k] = true
				others[d.Kind] = append(others[d.Kind], id)
			}
		}
	}
	for kind, ids := range others {
		found, err := s.currentDocs(ctx, n, kind, ids)
		if err != nil {
			return err
		}
		marks = append(marks, found...)
	}
	if err := s.bulk(ctx, marks); err != nil {
		return fmt.Errorf("marking replaced documents: %w", err)
	}
	return nil
}

// currentDocs finds the documents of ids of kind in generation n not yet
// marked replaced, and returns their marks.
func (s *Sink) currentDocs(ctx context.Context, n Names, kind string, ids []string) ([]bulkOp, error) {
	k := topic.Kind(kind)
	if err := s.refresh(ctx, n.Pattern(k)); err != nil {
		return nil, err
	}
	var hits []hit
	q := map[string]any{"bool": map[string]any{
		"filter":   []any{map[string]any{"ids": map[string]any{"values": ids}}},
		"must_not": []any{map[string]any{"term": map[string]any{"replaced": true}}},
	}}
	if err := s.searchHits(ctx, n.Pattern(k), q, &hits); err != nil {
		return nil, fmt.Errorf("finding replaced %s: %w", kind, err)
	}
	var marks []bulkOp
	for _, h := range hits {
		if !n.Owns(k, h.Index) {
			continue // a later generation's index, which the first generation's pattern matches too
		}
		var d Document
		if err := json.Unmarshal(h.Source, &d); err != nil {
			return nil, fmt.Errorf("decoding document %s: %w", h.ID, err)
		}
		d.Replaced = true
		src, _ := json.Marshal(d)
		marks = append(marks, bulkOp{index: h.Index, id: h.ID, source: src})
	}
	return marks, nil
}
