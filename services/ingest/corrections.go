package ingest

import (
	"context"

	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"github.com/chapper/chapper/services/auth"
	"github.com/google/uuid"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
)

// checkCorrections checks every record of b that corrects another
// (replaces_id set) against the record it replaces, when that one is known:
// in the same batch, in this instance's memory or in the shared id store.
// The replaced record must be of the same kind and, with authentication on,
// of the same canvasser unless the token's role is operator. A replaced
// record nobody knows (not submitted yet: phones send in any order; or
// older than the id store's TTL) is accepted: the correction stands on its
// own. It returns the records still to produce; the others are REJECTED
// with the reason.
func (s *Service) checkCorrections(ctx context.Context, b *batch, claims *auth.Claims) ([]pending, error) {
	var lookups []int // positions in b.todo to look up in the id store
	stamps := make([]string, len(b.todo))
	found := false
	for i, p := range b.todo {
		if p.replaces == uuid.Nil {
			continue
		}
		found = true
		if st, ok := b.inBatch[p.replaces]; ok {
			stamps[i] = st
		} else if st, ok := s.dedup.lookup(p.replaces); ok {
			stamps[i] = st
		} else if s.store != nil {
			lookups = append(lookups, i)
		}
	}
	if !found {
		return b.todo, nil
	}
	if len(lookups) > 0 {
		ids := make([]uuid.UUID, len(lookups))
		for k, i := range lookups {
			ids[k] = b.todo[i].replaces
		}
		answers, err := s.store.lookup(ctx, ids)
		if err != nil {
			return nil, s.storeUnavailable(ctx, err, "")
		}
		for k, i := range lookups {
			if answers[k].state != unknown {
				stamps[i] = answers[k].stamp
			}
		}
	}
	out := b.todo[:0:0]
	for i, p := range b.todo {
		if reason := correctionProblem(p.stamp, stamps[i], claims); reason != "" {
			p.result.Status, p.result.Reason = canvassv1.Status_STATUS_REJECTED, p.path+".replaces_id: "+reason
			b.violations = append(b.violations, &errdetails.BadRequest_FieldViolation{Field: p.path + ".replaces_id", Description: reason})
			rejectionsTotal.WithLabelValues(string(kindOfByte[p.stamp[0]]), "replaces_id").Inc()
			continue
		}
		out = append(out, p)
	}
	return out, nil
}

// correctionProblem says why a record stamped mine may not replace the
// record stamped theirs ("" when it may, or theirs is unknown).
func correctionProblem(mine, theirs string, claims *auth.Claims) string {
	if theirs == "" {
		return ""
	}
	m, ok1 := parseStamp(mine)
	o, ok2 := parseStamp(theirs)
	if !ok1 || !ok2 {
		return ""
	}
	if m.kind != o.kind {
		return "names " + singular[o.kind] + "; " + singular[m.kind] + " can only replace a record of its own kind"
	}
	if claims != nil && claims.Role != auth.RoleOperator && o.canvasser != claims.CanvasserID() {
		return "names a record of another canvasser; only an operator may correct it"
	}
	return ""
}
