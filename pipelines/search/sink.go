// Package search is the Elasticsearch sink: it indexes every canvassing
// record as a document, denormalised for reporting, into one index per kind
// and month of the record's own time (canvass-<kind>-<yyyy.mm>), read
// through the aliases canvass-visits, canvass-intentions and
// canvass-followups. The document id is the record id, so re-delivery and
// replay overwrite a document with itself and change no count.
package search

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/chapper/chapper/proto/topic"
	"github.com/elastic/go-elasticsearch/v8"
	"github.com/elastic/go-elasticsearch/v8/esapi"
	"github.com/elastic/go-elasticsearch/v8/esutil"

	"github.com/chapper/chapper/pipelines/runtime"
)

// ErrNotIndexed is wrapped by the transient error Write returns when some
// documents were not acknowledged (server unreachable, 429 or 5xx): the
// runtime retries the whole batch.
var ErrNotIndexed = errors.New("documents not acknowledged by Elasticsearch")

// Sink indexes records into Elasticsearch. It is safe for concurrent use.
type Sink struct {
	cfg   Config
	es    *elasticsearch.Client
	names Names
	// fixed: write names.Generation only, without reading the control
	// document (Config.Fixed).
	fixed bool
	bi    esutil.BulkIndexer
	log   *slog.Logger
}

// New connects to Elasticsearch, installs the index templates (Setup) and
// returns the sink. It fails if the server cannot be reached or refuses a
// template; ctx bounds that set-up only. Unless cfg.Fixed, the sink
// follows the generation control document (ReadGenerations) at every
// batch, and its templates are the active generation's.
func New(ctx context.Context, cfg Config) (*Sink, error) {
	es, err := NewClient(cfg)
	if err != nil {
		return nil, err
	}
	if err := CheckGeneration(cfg.Generation); err != nil {
		return nil, err
	}
	s := &Sink{cfg: cfg, es: es, names: Names{Prefix: cfg.IndexPrefix, Generation: cfg.Generation}, fixed: cfg.Fixed, log: cfg.logger()}
	if !s.fixed {
		g, err := ReadGenerations(ctx, es, cfg.IndexPrefix)
		if err != nil {
			return nil, err
		}
		s.names.Generation = g.Active
	}
	if err := s.Setup(ctx); err != nil {
		return nil, err
	}
	s.bi, err = esutil.NewBulkIndexer(esutil.BulkIndexerConfig{
		Client:     es,
		NumWorkers: cfg.Workers,
		FlushBytes: cfg.FlushBytes,
		// Write flushes explicitly; the timer only matters if it never does.
		FlushInterval: time.Hour,
		OnFlushStart: func(ctx context.Context) context.Context {
			return context.WithValue(ctx, flushStartKey{}, time.Now())
		},
		OnFlushEnd: func(ctx context.Context) {
			if t, ok := ctx.Value(flushStartKey{}).(time.Time); ok {
				bulkSeconds.Observe(time.Since(t).Seconds())
			}
		},
	})
	if err != nil {
		return nil, fmt.Errorf("creating bulk indexer: %w", err)
	}
	return s, nil
}

type flushStartKey struct{}

// Name returns "search".
func (s *Sink) Name() string { return "search" }

// Client returns the sink's Elasticsearch client.
func (s *Sink) Client() *elasticsearch.Client { return s.es }

// Names returns the index, alias and template names of the generation the
// sink was set up for.
func (s *Sink) Names() Names { return s.names }

// Setup installs (or replaces) the index template of every kind in the
// sink's generation, with the aliases unless the sink is Fixed (a
// rebuild's generation joins the aliases at the switch), and the
// corrections ledger's template. It adds the fields of corrections
// (replaces_id, replaced) to the kinds' existing indices and, on indices
// behind an alias that lacks the CurrentFilter, puts the filter on the
// alias (both are no-ops once done). It is idempotent. A changed template
// applies to indices created after it, that is from the next month on, or
// after a rebuild.
func (s *Sink) Setup(ctx context.Context) error {
	put := func(name string, body []byte) error {
		res, err := s.es.Indices.PutIndexTemplate(name, bytes.NewReader(body), s.es.Indices.PutIndexTemplate.WithContext(ctx))
		if err := responseError(res, err); err != nil {
			return fmt.Errorf("installing index template %s: %w", name, err)
		}
		return nil
	}
	for _, k := range topic.Kinds {
		if err := put(s.names.Template(k), s.names.TemplateBody(k, !s.fixed)); err != nil {
			return err
		}
	}
	if err := put(s.names.Prefix+"-corrections", s.names.ledgerTemplateBody()); err != nil {
		return err
	}
	if err := s.upgrade(ctx); err != nil {
		return err
	}
	s.log.Debug("search index templates installed", "prefix", s.names.Prefix, "generation", s.names.Generation)
	return nil
}

// upgrade brings indices made before corrections up to date: the two
// fields in their mappings, and the CurrentFilter on their aliases.
func (s *Sink) upgrade(ctx context.Context) error {
	props, _ := json.Marshal(map[string]any{"properties": map[string]any{
		"replaces_id": map[string]any{"type": "keyword"}, "replaced": map[string]any{"type": "boolean"},
	}})
	for _, k := range topic.Kinds {
		res, err := s.es.Indices.PutMapping([]string{s.names.Alias(k) + "-*"}, bytes.NewReader(props),
			s.es.Indices.PutMapping.WithContext(ctx), s.es.Indices.PutMapping.WithAllowNoIndices(true),
			s.es.Indices.PutMapping.WithIgnoreUnavailable(true))
		if err := responseError(res, err); err != nil {
			var st *StatusError
			if errors.As(err, &st) && st.Status == http.StatusNotFound {
				continue
			}
			return fmt.Errorf("adding the correction fields to %s indices: %w", s.names.Alias(k), err)
		}
	}
	if s.fixed {
		return nil
	}
	behind, err := AliasIndices(ctx, s.es, s.names.Prefix)
	if err != nil {
		return err
	}
	var actions []any
	for k, list := range behind {
		for _, ix := range list {
			if !ix.Filtered {
				actions = append(actions, map[string]any{"add": map[string]any{"index": ix.Name, "alias": s.names.Alias(k), "filter": CurrentFilter()}})
			}
		}
	}
	if len(actions) == 0 {
		return nil
	}
	s.log.Info("search aliases: adding the filter of replaced documents", "indices", len(actions))
	return UpdateAliases(ctx, s.es, actions)
}

// itemResult is what the bulk indexer reported for one record.
type itemResult struct {
	done   bool
	ok     bool
	status int
	typ    string
	reason string
	err    error
}

// Write indexes every record of batch and returns once each one was
// acknowledged or failed. Unless the sink is Fixed, it first reads the
// generation control document and writes the batch to the active
// generation and, while a rebuild is set, to the rebuild's generation too.
// Records that can never be indexed (no id,
// location or time; a document the mapping rejects: an item error of type
// document_parsing_exception, mapper_parsing_exception,
// strict_dynamic_mapping_exception or an illegal_argument_exception about a
// field's value) come back in a *runtime.PermanentError with the rest
// indexed. Any other item error that is not a 429 or 5xx (a 403
// security_exception, an index_not_found_exception, ...) is about the
// cluster, not the document: Write returns a *runtime.FatalError wrapping
// ErrNotIndexed and dead-letters nothing. If any document was not
// acknowledged for a reason that may pass (no connection, a 429 or 5xx for
// the request or the item), Write returns an error wrapping ErrNotIndexed
// and the runtime retries the batch. Corrections are settled as
// corrections.go describes. Cancelling ctx stops the
// wait; documents already sent may still be indexed, which a retry
// overwrites with the same content.
func (s *Sink) Write(ctx context.Context, batch []runtime.Record) error {
	start := time.Now()
	defer func() { writeSeconds.Observe(time.Since(start).Seconds()) }()

	gens := []string{s.names.Generation}
	if !s.fixed {
		g, err := ReadGenerations(ctx, s.es, s.names.Prefix)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrNotIndexed, err)
		}
		gens = g.Writes()
	}
	var first *runtime.PermanentError
	for i, gen := range gens {
		err := s.write(ctx, Names{Prefix: s.names.Prefix, Generation: gen}, batch, i == 0)
		var perm *runtime.PermanentError
		switch {
		case err == nil:
		case errors.As(err, &perm):
			if first == nil {
				first = perm
			}
		default:
			return err
		}
	}
	if first != nil {
		return first
	}
	return nil
}

// write indexes batch into generation n; count says whether to count the
// documents in the metrics (once per batch, not per generation).
func (s *Sink) write(ctx context.Context, n Names, batch []runtime.Record, count bool) error {
	results := make([]itemResult, len(batch))
	kinds := make([]topic.Kind, len(batch))
	docs := make([]*Document, len(batch))
	indices := make([]string, len(batch))
	var failures []runtime.Failure
	var keys []string
	for i, rec := range batch {
		doc, kind, t, err := NewDocument(rec, s.cfg.ShardBits)
		if err != nil {
			if count {
				itemErrors.WithLabelValues("invalid_record").Inc()
			}
			failures = append(failures, runtime.Failure{Record: rec, Reason: err})
			results[i] = itemResult{done: true}
			continue
		}
		kinds[i], docs[i], indices[i] = kind, &doc, n.Index(kind, t)
		keys = append(keys, ledgerKey(doc.Kind, doc.ID))
		if doc.ReplacesID != "" {
			keys = append(keys, ledgerKey(doc.Kind, doc.ReplacesID))
		}
	}
	before, err := s.readLedger(ctx, n, keys)
	if err != nil {
		return err
	}
	added := 0
	for i, doc := range docs {
		if doc == nil {
			continue
		}
		doc.Replaced = before.replaced(doc)
		body, err := json.Marshal(doc)
		if err != nil {
			return fmt.Errorf("encoding document %s: %w", doc.ID, err)
		}
		res := &results[i]
		err = s.bi.Add(ctx, esutil.BulkIndexerItem{
			Index:      indices[i],
			Action:     "index",
			DocumentID: doc.ID,
			Body:       bytes.NewReader(body),
			OnSuccess: func(_ context.Context, _ esutil.BulkIndexerItem, r esutil.BulkIndexerResponseItem) {
				*res = itemResult{done: true, ok: true, status: r.Status}
			},
			OnFailure: func(_ context.Context, _ esutil.BulkIndexerItem, r esutil.BulkIndexerResponseItem, err error) {
				*res = itemResult{done: true, status: r.Status, typ: r.Error.Type, reason: itemReason(r), err: err}
			},
		})
		if err != nil {
			return fmt.Errorf("queueing document %s: %w", doc.ID, err)
		}
		added++
	}
	if added > 0 {
		if err := s.bi.Flush(ctx); err != nil {
			return fmt.Errorf("waiting for bulk requests: %w", err)
		}
	}

	var transient, fatal int
	var firstTransient, firstFatal string
	var acked []written
	for i, r := range results {
		switch {
		case r.ok:
			if count {
				docsIndexed.WithLabelValues(string(kinds[i])).Inc()
			}
			acked = append(acked, written{doc: docs[i], index: indices[i]})
		case kinds[i] == "":
			// already listed as an invalid record
		case r.typ != "" && documentError(r.typ, r.reason):
			itemErrors.WithLabelValues(r.typ).Inc()
			failures = append(failures, runtime.Failure{
				Record: batch[i],
				Reason: fmt.Errorf("elasticsearch rejected document (status %d): %s", r.status, r.reason),
			})
		case !r.done || r.err != nil || r.status == http.StatusTooManyRequests || r.status >= 500 || r.status == 0:
			transient++
			typ, why := "transport", "no response"
			switch {
			case r.err != nil:
				why = r.err.Error()
			case r.typ != "":
				typ, why = r.typ, fmt.Sprintf("status %d: %s", r.status, r.reason)
			case r.done:
				why = fmt.Sprintf("status %d", r.status)
			}
			itemErrors.WithLabelValues(typ).Inc()
			if firstTransient == "" {
				firstTransient = why
			}
		default:
			// Not about the document (a lost privilege, a missing index
			// where auto-creation is off, ...): dead-lettering would divert
			// the whole stream, and a retry cannot help.
			fatal++
			typ := r.typ
			if typ == "" {
				typ = "unknown"
			}
			itemErrors.WithLabelValues(typ).Inc()
			if firstFatal == "" {
				firstFatal = fmt.Sprintf("%s/%d@%d: status %d: %s", batch[i].Topic, batch[i].Partition, batch[i].Offset, r.status, r.reason)
			}
		}
	}
	if fatal > 0 {
		return runtime.Fatal(fmt.Errorf("%w: %d of %d items failed for a reason that is not about the document, first: %s",
			ErrNotIndexed, fatal, len(batch), firstFatal))
	}
	if transient > 0 {
		return fmt.Errorf("%w: %d of %d, first: %s", ErrNotIndexed, transient, len(batch), firstTransient)
	}
	if len(acked) > 0 {
		if err := s.settleCorrections(ctx, n, acked, keys, before); err != nil {
			return err
		}
	}
	if len(failures) > 0 {
		return &runtime.PermanentError{Failures: failures}
	}
	return nil
}

// documentErrorTypes are the item error types that concern the document
// itself: the same document would fail the same way forever, so it is
// dead-lettered. Every other item error (security_exception,
// index_not_found_exception, ...) is about the cluster and stops the
// consumer instead.
var documentErrorTypes = map[string]bool{
	"document_parsing_exception":       true,
	"mapper_parsing_exception":         true,
	"strict_dynamic_mapping_exception": true,
}

// documentError reports whether an item error of type typ with reason
// reason (as itemReason renders it, cause included) concerns the document:
// one of documentErrorTypes, or an illegal_argument_exception about a
// field's value or the document id.
func documentError(typ, reason string) bool {
	if documentErrorTypes[typ] {
		return true
	}
	if typ != "illegal_argument_exception" {
		return false
	}
	r := strings.ToLower(reason)
	for _, about := range []string{"field", "value", "failed to parse", "id ["} {
		if strings.Contains(r, about) {
			return true
		}
	}
	return false
}

func itemReason(r esutil.BulkIndexerResponseItem) string {
	var b strings.Builder
	b.WriteString(r.Error.Type)
	if r.Error.Reason != "" {
		b.WriteString(": ")
		b.WriteString(r.Error.Reason)
	}
	if r.Error.Cause.Type != "" || r.Error.Cause.Reason != "" {
		fmt.Fprintf(&b, " (caused by %s: %s)", r.Error.Cause.Type, r.Error.Cause.Reason)
	}
	return b.String()
}

// Close flushes and stops the bulk indexer. The sink must not be used after.
func (s *Sink) Close(ctx context.Context) error {
	if err := s.bi.Close(ctx); err != nil {
		return fmt.Errorf("closing bulk indexer: %w", err)
	}
	return nil
}

// responseError turns a failed request or an error response into an error,
// and closes the body.
func responseError(res *esapi.Response, err error) error {
	if err != nil {
		return err
	}
	defer res.Body.Close()
	if res.IsError() {
		b, _ := io.ReadAll(io.LimitReader(res.Body, 4096))
		return &StatusError{Status: res.StatusCode, Body: string(b)}
	}
	_, _ = io.Copy(io.Discard, res.Body)
	return nil
}

// StatusError is an error response from Elasticsearch.
type StatusError struct {
	Status int
	Body   string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("elasticsearch answered %d: %s", e.Status, e.Body)
}
