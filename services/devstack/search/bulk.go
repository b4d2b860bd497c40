package search

import (
	"bytes"
	"encoding/json"
	"net/http"
	"time"
)

// writeOp is one action of a bulk request (or a single-document request).
type writeOp struct {
	action       string // index, create, delete, update
	indexName    string
	id           string
	requireAlias bool
	source       []byte
	doc          map[string]any
	cas          casCheck // version / if_seq_no conditions
	hasEmptyID   bool     // "_id": "" (refused per item)

	forcedRefresh bool // refresh=true: rendered as forced_refresh

	ix  *esIndex
	err *esError // set when the op failed

	// outcome of a successful op
	result  string
	status  int
	version uint64
	seqNo   uint64
}

var shardsInfo = obj{{"total", 2}, {"successful", 1}, {"failed", 0}}

// item renders the op's entry of a bulk response.
func (op *writeOp) item() obj {
	name := op.indexName
	if op.ix != nil {
		name = op.ix.name
	}
	o := obj{{"_index", name}, {"_id", op.id}}
	if op.err != nil {
		errObj := op.err.object()
		if op.ix != nil && op.err.typ != "index_not_found_exception" {
			errObj = append(errObj, kv{"index_uuid", op.ix.uuid}, kv{"shard", "0"}, kv{"index", op.ix.name})
		}
		o = append(o, kv{"status", op.err.status}, kv{"error", errObj})
		return o
	}
	o = append(o, kv{"_version", op.version}, kv{"result", op.result})
	if op.forcedRefresh {
		o = append(o, kv{"forced_refresh", true})
	}
	o = append(o, kv{"_shards", shardsInfo},
		kv{"_seq_no", op.seqNo}, kv{"_primary_term", 1}, kv{"status", op.status})
	return o
}

// handleBulk answers POST /_bulk and /<index>/_bulk.
func (s *Server) handleBulk(req *request) *esError {
	refresh, err := req.refreshParam()
	if err != nil {
		return err
	}
	ops, err := parseBulk(req.body, req.arg("index"))
	if err != nil {
		return err
	}
	var invalid []string
	for _, op := range ops {
		if req.boolParam("require_alias") {
			op.requireAlias = true
		}
		op.forcedRefresh = refresh
		invalid = append(invalid, op.cas.validate(op.action)...)
	}
	if err := validationFailed(invalid); err != nil {
		return err
	}
	s.execWrites(ops)
	req.ok(bulkResponse(ops, time.Since(req.start)))
	return nil
}

// parseBulk splits an NDJSON bulk body into ops. defaultIndex is the index
// of the URL (/<index>/_bulk), if any. A malformed action line fails the
// whole request, as in Elasticsearch.
func parseBulk(body []byte, defaultIndex string) ([]*writeOp, *esError) {
	var ops []*writeOp
	lines := bytes.Split(body, []byte("\n"))
	for i := 0; i < len(lines); i++ {
		line := bytes.TrimSpace(lines[i])
		if len(line) == 0 {
			continue
		}
		var action map[string]map[string]any
		dec := json.NewDecoder(bytes.NewReader(line))
		dec.UseNumber()
		if err := dec.Decode(&action); err != nil || len(action) != 1 {
			return nil, badRequest("Malformed action/metadata line [%d], expected START_OBJECT with one action", i+1)
		}
		op := &writeOp{indexName: defaultIndex, cas: noCAS}
		var meta map[string]any
		for a, m := range action {
			op.action, meta = a, m
		}
		switch op.action {
		case "index", "create", "delete", "update":
		default:
			return nil, badRequest("Malformed action/metadata line [%d], expected one of [create, delete, index, update] but found [%s]", i+1, op.action)
		}
		for k, v := range meta {
			switch k {
			case "_index":
				s, ok := v.(string)
				if !ok {
					return nil, badRequest("Malformed action/metadata line [%d], [_index] must be a string", i+1)
				}
				op.indexName = s
			case "_id":
				switch id := v.(type) {
				case string:
					op.id = id
					op.hasEmptyID = id == ""
				case json.Number:
					op.id = string(id)
				case nil:
				default:
					return nil, badRequest("Malformed action/metadata line [%d], [_id] must be a string", i+1)
				}
			case "require_alias":
				b, _ := asBool(v)
				op.requireAlias = b
			case "op_type":
				switch v {
				case "create":
					if op.action == "index" {
						op.action = "create"
					}
				case "index":
				default:
					return nil, badRequest("opType must be 'create' or 'index', found: [%v]", v)
				}
			case "version", "version_type", "if_seq_no", "if_primary_term":
				if err := op.cas.set(k, v); err != nil {
					return nil, err
				}
			case "routing", "pipeline", "dynamic_templates", "retry_on_conflict", "_source", "list_executed_pipelines", "require_data_stream":
				if v == nil {
					continue
				}
				op.err = unsupported("illegal_argument_exception", "bulk parameter ["+k+"]")
			default:
				return nil, badRequest("Action/metadata line [%d] contains an unknown parameter [%s]", i+1, k)
			}
		}
		if op.action != "delete" {
			i++
			for i < len(lines) && len(bytes.TrimSpace(lines[i])) == 0 {
				i++
			}
			if i >= len(lines) {
				return nil, newError(http.StatusBadRequest, "action_request_validation_exception", "Validation Failed: 1: the bulk request is missing the source of action [%s] on line [%d];", op.action, len(lines))
			}
			op.source = bytes.TrimSpace(lines[i])
		}
		if op.indexName == "" {
			return nil, newError(http.StatusBadRequest, "action_request_validation_exception", "Validation Failed: 1: index is missing;")
		}
		if op.action == "update" && op.err == nil {
			op.err = unsupported("illegal_argument_exception", "bulk action [update]", "index", "create", "delete")
		}
		if op.hasEmptyID && op.action != "delete" && op.err == nil {
			op.err = badRequest("if _id is specified it must not be empty")
		}
		if op.action == "delete" && op.id == "" {
			return nil, newError(http.StatusBadRequest, "action_request_validation_exception", "Validation Failed: 1: id is missing;")
		}
		ops = append(ops, op)
	}
	if len(ops) == 0 {
		return nil, newError(http.StatusBadRequest, "action_request_validation_exception", "Validation Failed: 1: no requests added;")
	}
	return ops, nil
}

// bulkResponse renders the response of a bulk request.
func bulkResponse(ops []*writeOp, took time.Duration) obj {
	items := make([]any, len(ops))
	errors := false
	for i, op := range ops {
		if op.err != nil {
			errors = true
		}
		items[i] = obj{{op.action, op.item()}}
	}
	return obj{{"took", took.Milliseconds()}, {"errors", errors}, {"items", items}}
}
