package search

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
)

// esError is an error shaped like Elasticsearch's: an HTTP status, a type
// (illegal_argument_exception, index_not_found_exception, ...) and a reason.
// Every failure the server reports goes out as one, so clients that parse
// Elasticsearch errors (the official ones do) understand it.
type esError struct {
	status int
	typ    string
	reason string
	// extra fields of the error object, in order (index, resource.id, ...).
	extra obj
	// causedBy, when set, is rendered as caused_by.
	causedBy *esError
	// rootCause, when set, replaces the error itself in root_cause (search
	// wraps per-index failures in search_phase_execution_exception).
	rootCause *esError
}

func (e *esError) Error() string { return e.typ + ": " + e.reason }

// object renders the error object without status and root_cause.
func (e *esError) object() obj {
	o := obj{{"type", e.typ}, {"reason", e.reason}}
	o = append(o, e.extra...)
	if e.causedBy != nil {
		o = append(o, kv{"caused_by", e.causedBy.object()})
	}
	return o
}

// body renders the response body {"error": {...}, "status": N}.
func (e *esError) body() obj {
	root := e
	if e.rootCause != nil {
		root = e.rootCause
	}
	rc := obj{{"type", root.typ}, {"reason", root.reason}}
	rc = append(rc, root.extra...)
	top := obj{{"root_cause", []any{rc}}}
	top = append(top, e.object()...)
	return obj{{"error", top}, {"status", e.status}}
}

func newError(status int, typ, format string, args ...any) *esError {
	return &esError{status: status, typ: typ, reason: fmt.Sprintf(format, args...)}
}

// badRequest is a 400 illegal_argument_exception.
func badRequest(format string, args ...any) *esError {
	return newError(http.StatusBadRequest, "illegal_argument_exception", format, args...)
}

// parsingError is a 400 parsing_exception, what Elasticsearch answers for a
// malformed query or aggregation.
func parsingError(format string, args ...any) *esError {
	return newError(http.StatusBadRequest, "parsing_exception", format, args...)
}

// unsupported is the 400 answered for anything Elasticsearch supports and
// this server does not. The reason always names the unsupported thing and
// says "unsupported", so a caller never mistakes it for a wrong answer.
func unsupported(typ, what string, supported ...string) *esError {
	reason := "unsupported by the embedded search server: " + what
	if len(supported) > 0 {
		reason += " (supported: " + strings.Join(supported, ", ") + ")"
	}
	return newError(http.StatusBadRequest, typ, "%s", reason)
}

func indexNotFound(name string) *esError {
	e := newError(http.StatusNotFound, "index_not_found_exception", "no such index [%s]", name)
	e.extra = obj{{"resource.type", "index_or_alias"}, {"resource.id", name}, {"index_uuid", "_na_"}, {"index", name}}
	return e
}

// searchPhaseError wraps a per-index failure the way Elasticsearch reports
// shard failures: search_phase_execution_exception with the cause as root.
func searchPhaseError(cause *esError) *esError {
	if cause.status != http.StatusBadRequest {
		return cause
	}
	return &esError{
		status:    cause.status,
		typ:       "search_phase_execution_exception",
		reason:    "all shards failed",
		extra:     obj{{"phase", "query"}, {"grouped", true}},
		causedBy:  cause,
		rootCause: cause,
	}
}

// kv is one member of an ordered JSON object.
type kv struct {
	K string
	V any
}

// obj is a JSON object that keeps its members in order, so responses read
// like Elasticsearch's (took, timed_out, _shards, hits, ...).
type obj []kv

// MarshalJSON renders the members in order.
func (o obj) MarshalJSON() ([]byte, error) {
	var b strings.Builder
	b.WriteByte('{')
	for i, m := range o {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(m.K)
		b.Write(k)
		b.WriteByte(':')
		v, err := json.Marshal(m.V)
		if err != nil {
			return nil, err
		}
		b.Write(v)
	}
	b.WriteByte('}')
	return []byte(b.String()), nil
}
