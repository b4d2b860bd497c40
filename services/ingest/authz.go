package ingest

import (
	"github.com/chapper/chapper/proto/locality"
	"github.com/chapper/chapper/services/auth"
)

// ownRecord applies the caller's token to a validated record at path: the
// record's canvasser_id becomes the token's canvasser (a canvasser may not
// submit as someone else; an operator may name any canvasser, and gets its
// own id when it names none), and the record must lie inside the token's
// area when it has one. It returns the rejection, or nil. With
// authentication off (no claims) records keep what they say.
func ownRecord(path string, c *auth.Claims, canvasserID *string, loc locality.Index) *FieldError {
	if c == nil {
		return nil
	}
	switch {
	case *canvasserID == "":
		*canvasserID = c.CanvasserID()
	case *canvasserID != c.CanvasserID() && c.Role != auth.RoleOperator:
		return fieldError(path, "canvasser_id", "must be empty or the token's canvasser %s, got %s", quote(c.CanvasserID()), quote(*canvasserID))
	}
	if !c.Area.AllowsLocality(loc) {
		return fieldError(path, "location", "locality %d is outside the token's area", loc)
	}
	return nil
}
