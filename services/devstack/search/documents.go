package search

import (
	"bytes"
	"net/http"
	"strconv"
	"strings"
)

// handleIndexDoc answers PUT/POST /<index>/_doc/<id>, POST /<index>/_doc
// (generated _id) and PUT/POST /<index>/_create/<id>.
func (s *Server) handleIndexDoc(req *request) *esError {
	action := "index"
	if req.path[1] == "_create" || req.arg("id") == "" || req.params.Get("op_type") == "create" {
		action = "create"
	}
	op := &writeOp{action: action, indexName: req.arg("index"), id: req.arg("id"), requireAlias: req.boolParam("require_alias")}
	if v := req.params.Get("op_type"); v != "" && v != "create" && v != "index" {
		return badRequest("opType must be 'create' or 'index', found: [%s]", v)
	}
	op.source = bytes.TrimSpace(req.body)
	if len(op.source) == 0 {
		return newError(http.StatusBadRequest, "action_request_validation_exception", "Validation Failed: 1: source is missing;")
	}
	return s.writeOne(req, op)
}

// handleDeleteDoc answers DELETE /<index>/_doc/<id>.
func (s *Server) handleDeleteDoc(req *request) *esError {
	op := &writeOp{action: "delete", indexName: req.arg("index"), id: req.arg("id"), requireAlias: req.boolParam("require_alias")}
	return s.writeOne(req, op)
}

// writeOne runs a single-document write and answers with its outcome.
func (s *Server) writeOne(req *request, op *writeOp) *esError {
	var err *esError
	if op.forcedRefresh, err = req.refreshParam(); err != nil {
		return err
	}
	op.cas = noCAS
	if err := op.cas.fromParams(req); err != nil {
		return err
	}
	if err := validationFailed(op.cas.validate(op.action)); err != nil {
		return err
	}
	s.execWrites([]*writeOp{op})
	if op.err != nil {
		if op.ix != nil && op.err.status == http.StatusConflict {
			op.err.extra = append(op.err.extra, kv{"index_uuid", op.ix.uuid}, kv{"shard", "0"}, kv{"index", op.ix.name})
		}
		return op.err
	}
	body := obj{}
	for _, m := range op.item() {
		if m.K != "status" {
			body = append(body, m)
		}
	}
	req.reply(op.status, body)
	return nil
}

// handleGetDoc answers GET/HEAD /<index>/_doc/<id> and /<index>/_source/<id>.
func (s *Server) handleGetDoc(req *request) *esError {
	target, id, sourceOnly := req.arg("index"), req.arg("id"), req.path[1] == "_source"
	list, err := s.resolve(target, resolveOpts{})
	if err != nil {
		return err
	}
	if len(list) != 1 {
		names := make([]string, len(list))
		for i, ix := range list {
			names[i] = ix.name
		}
		return badRequest("alias [%s] has more than one index associated with it [%s], can't execute a single index op", target, strings.Join(names, ", "))
	}
	release, err := acquire(list)
	if err != nil {
		return err
	}
	defer release()
	ix := list[0]
	r, rerr := ix.ii.Reader()
	if rerr != nil {
		return newError(http.StatusInternalServerError, "exception", "reading index: %v", rerr)
	}
	defer r.Close()
	doc, rerr := r.Document(id)
	if rerr != nil {
		return newError(http.StatusInternalServerError, "exception", "loading document: %v", rerr)
	}
	if doc == nil {
		if sourceOnly {
			return newError(http.StatusNotFound, "resource_not_found_exception", "Document not found [%s]/[%s]", ix.name, id)
		}
		req.reply(http.StatusNotFound, obj{{"_index", ix.name}, {"_id", id}, {"found", false}})
		return nil
	}
	var src []byte
	var version, seq uint64
	doc.VisitFields(func(f indexField) {
		switch f.Name() {
		case fieldSource:
			src = f.Value()
		case fieldVersion:
			if v := f.Value(); len(v) >= dvLen {
				version = uint64(decodeDV(v))
			}
		case fieldSeqNo:
			seq = beUint64(f.Value())
		}
	})
	if v := req.params.Get("version"); v != "" {
		want, perr := strconv.ParseInt(v, 10, 64)
		if perr != nil {
			return badRequest("Failed to parse value [%s] of [version] as a number", v)
		}
		if uint64(want) != version {
			e := newError(http.StatusConflict, "version_conflict_engine_exception",
				"[%s]: version conflict, current version [%d] is different than the one provided [%d]", id, version, want)
			e.extra = obj{{"index_uuid", ix.uuid}, {"shard", "0"}, {"index", ix.name}}
			return e
		}
	}
	sf := sourceFilter{}
	if v, ok := req.params["_source"]; ok {
		switch v[0] {
		case "false":
			sf.disabled = true
		case "true", "":
		default:
			sf.includes = strings.Split(v[0], ",")
		}
	}
	if v := req.params.Get("_source_includes"); v != "" {
		sf.includes = strings.Split(v, ",")
	}
	if v := req.params.Get("_source_excludes"); v != "" {
		sf.excludes = strings.Split(v, ",")
	}
	filtered, ferr := sf.apply(src)
	if ferr != nil {
		return ferr
	}
	if sourceOnly {
		req.ok(rawJSON(filtered))
		return nil
	}
	out := obj{{"_index", ix.name}, {"_id", id}, {"_version", version}, {"_seq_no", seq}, {"_primary_term", 1}, {"found", true}}
	if !sf.disabled {
		out = append(out, kv{"_source", rawJSON(filtered)})
	}
	req.ok(out)
	return nil
}
