package search

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
)

// casCheck is a write's optimistic concurrency condition, as Elasticsearch
// takes it: an external version (version + version_type external or
// external_gte), or if_seq_no + if_primary_term. The server has one
// primary term, 1.
type casCheck struct {
	version       int64
	hasVersion    bool
	versionType   string // internal, external, external_gte
	ifSeqNo       int64  // -2: unassigned
	ifPrimaryTerm int64  // 0: unassigned
}

// noCAS is a write without a condition.
var noCAS = casCheck{versionType: "internal", ifSeqNo: -2}

// set takes one of version, version_type, if_seq_no, if_primary_term from
// bulk metadata or a URL parameter.
func (c *casCheck) set(name string, v any) *esError {
	var str string
	switch x := v.(type) {
	case string:
		str = x
	case json.Number:
		str = string(x)
	default:
		return badRequest("[%s] must be a number, got [%v]", name, v)
	}
	if name == "version_type" {
		switch strings.ToLower(str) {
		case "internal", "external", "external_gte":
			c.versionType = strings.ToLower(str)
			return nil
		}
		return badRequest("No version type match [%s]", str)
	}
	n, err := strconv.ParseInt(str, 10, 64)
	if err != nil {
		return badRequest("Failed to parse value [%s] of [%s] as a number", str, name)
	}
	switch name {
	case "version":
		c.version, c.hasVersion = n, true
	case "if_seq_no":
		c.ifSeqNo = n
	case "if_primary_term":
		c.ifPrimaryTerm = n
	}
	return nil
}

// fromParams reads the condition from the URL parameters.
func (c *casCheck) fromParams(req *request) *esError {
	for _, p := range []string{"version", "version_type", "if_seq_no", "if_primary_term"} {
		if v, ok := req.params[p]; ok {
			if err := c.set(p, v[0]); err != nil {
				return err
			}
		}
	}
	return nil
}

// validate returns what Elasticsearch's request validation says about the
// condition of an action (index, create or delete), nothing if it is
// valid.
func (c *casCheck) validate(action string) []string {
	var bad []string
	if action == "create" {
		if c.versionType != "internal" {
			bad = append(bad, "create operations only support internal versioning. use index instead")
		}
		if c.ifSeqNo != -2 || c.ifPrimaryTerm != 0 {
			bad = append(bad, "create operations do not support compare and set. use index instead")
		}
	}
	if c.hasVersion && c.versionType != "internal" && c.version < 0 {
		bad = append(bad, fmt.Sprintf("illegal version value [%d] for version type [%s]", c.version, strings.ToUpper(c.versionType)))
	}
	if c.hasVersion && c.versionType == "internal" {
		bad = append(bad, "internal versioning can not be used for optimistic concurrency control. Please use `if_seq_no` and `if_primary_term` instead")
	}
	if c.ifSeqNo != -2 && (c.versionType != "internal" || c.hasVersion) {
		bad = append(bad, "compare and write operations can not use versioning")
	}
	if c.ifSeqNo != -2 && c.ifPrimaryTerm == 0 {
		bad = append(bad, "ifSeqNo is set, but primary term is [0]")
	}
	if c.ifSeqNo == -2 && c.ifPrimaryTerm != 0 {
		bad = append(bad, fmt.Sprintf("ifSeqNo is unassigned, but primary term is [%d]", c.ifPrimaryTerm))
	}
	return bad
}

// validationFailed is Elasticsearch's action_request_validation_exception
// for the collected reasons, or nil.
func validationFailed(reasons []string) *esError {
	if len(reasons) == 0 {
		return nil
	}
	var b strings.Builder
	b.WriteString("Validation Failed: ")
	for i, r := range reasons {
		fmt.Fprintf(&b, "%d: %s;", i+1, r)
	}
	return newError(http.StatusBadRequest, "action_request_validation_exception", "%s", b.String())
}

// external reports whether the write sets the document's version itself.
func (c *casCheck) external() bool { return c.hasVersion && c.versionType != "internal" }

// usesSeqNo reports whether the condition needs the document's _seq_no.
func (c *casCheck) usesSeqNo() bool { return c.ifSeqNo != -2 }

// conflict checks the condition against the document's current state
// (version 0: no document) and returns the 409 Elasticsearch gives.
func (c *casCheck) conflict(id string, curVersion, curSeq uint64) *esError {
	conflict := func(format string, args ...any) *esError {
		return newError(http.StatusConflict, "version_conflict_engine_exception", "[%s]: version conflict, "+format, append([]any{id}, args...)...)
	}
	if c.usesSeqNo() {
		if curVersion == 0 {
			return conflict("required seqNo [%d], primary term [%d]. but no document was found", c.ifSeqNo, c.ifPrimaryTerm)
		}
		if uint64(c.ifSeqNo) != curSeq || c.ifPrimaryTerm != 1 {
			return conflict("required seqNo [%d], primary term [%d]. current document has seqNo [%d] and primary term [1]", c.ifSeqNo, c.ifPrimaryTerm, curSeq)
		}
		return nil
	}
	if !c.external() || curVersion == 0 {
		return nil
	}
	v := uint64(c.version)
	switch c.versionType {
	case "external":
		if curVersion >= v {
			return conflict("current version [%d] is higher or equal to the one provided [%d]", curVersion, v)
		}
	case "external_gte":
		if curVersion > v {
			return conflict("current version [%d] is higher than the one provided [%d]", curVersion, v)
		}
	}
	return nil
}
