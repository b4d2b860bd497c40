package ingest

import (
	"fmt"
	"math"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"github.com/chapper/chapper/proto/locality"
	"github.com/google/uuid"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Bounds of the string fields, in characters (Unicode code points).
const (
	MaxIDLen      = 256 // dwelling_id, elector_id, canvasser_id
	MaxAddressLen = 512
	MaxLabelLen   = 128 // option, issue
)

// MinRecordTime is the earliest record time accepted: nothing was canvassed
// with Chapper before it, so an earlier time is a broken clock or a zero value.
var MinRecordTime = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// FieldError says why a record was rejected: which field, and what is wrong
// with it. Its Error text is the RecordResult reason, e.g.
// "visits[3].location.latitude: must be a finite number in [-90, 90], got 91".
type FieldError struct {
	// Path is the field's path in the request, e.g. visits[3].location.latitude.
	Path string
	// Field is the field's name without position, e.g. latitude: a bounded
	// set of values, used as the reason class in metrics.
	Field string
	// Problem says what is wrong, e.g. "is required".
	Problem string
}

func (e *FieldError) Error() string { return e.Path + ": " + e.Problem }

// validator checks records against DESIGN.md's contract. The zero value is
// not usable: now and maxFuture must be set.
type validator struct {
	now       time.Time     // the request's receive time
	maxFuture time.Duration // how far a record's time may be ahead of now
}

// record is a validated record: its id, its locality and the record it
// corrects.
type record struct {
	id       string    // canonical (lower-case) UUID text
	uid      uuid.UUID // the same id as 16 bytes
	locality locality.Index
	replaces uuid.UUID // uuid.Nil when it corrects nothing
}

// checkReplaces checks replaces_id: empty, or a UUID other than the
// record's own id. It returns the UUID and its canonical text.
func checkReplaces(path, s string, id uuid.UUID) (uuid.UUID, string, *FieldError) {
	if s == "" {
		return uuid.Nil, "", nil
	}
	u, fe := checkUUID(path, "replaces_id", s)
	if fe != nil {
		return uuid.Nil, "", fe
	}
	if u == id {
		return uuid.Nil, "", fieldError(path, "replaces_id", "must not be the record's own id")
	}
	return u, canonical(s, u), nil
}

// visit validates a visit at path (e.g. "visits[3]") and canonicalises its
// ids in place.
func (v validator) visit(path string, r *canvassv1.Visit) (record, *FieldError) {
	uid, fe := checkUUID(path, "id", r.GetId())
	if fe != nil {
		return record{}, fe
	}
	if fe := checkText(path, "dwelling_id", r.GetDwellingId(), MaxIDLen, false); fe != nil {
		return record{}, fe
	}
	if fe := checkText(path, "address", r.GetAddress(), MaxAddressLen, true); fe != nil {
		return record{}, fe
	}
	loc, fe := checkLocation(path, "location", r.GetLocation())
	if fe != nil {
		return record{}, fe
	}
	if fe := checkOptionalText(path, "canvasser_id", r.GetCanvasserId(), MaxIDLen, false); fe != nil {
		return record{}, fe
	}
	if fe := v.checkTime(path, "visited_at", r.GetVisitedAt()); fe != nil {
		return record{}, fe
	}
	if fe := checkEnum(path, "outcome", r.GetOutcome()); fe != nil {
		return record{}, fe
	}
	rep, repText, fe := checkReplaces(path, r.GetReplacesId(), uid)
	if fe != nil {
		return record{}, fe
	}
	id := canonical(r.GetId(), uid)
	r.Id, r.ReplacesId = id, repText
	return record{id: id, uid: uid, locality: loc, replaces: rep}, nil
}

// intention validates an intention at path and canonicalises its ids in place.
func (v validator) intention(path string, r *canvassv1.Intention) (record, *FieldError) {
	uid, fe := checkUUID(path, "id", r.GetId())
	if fe != nil {
		return record{}, fe
	}
	visitUID, fe := checkUUID(path, "visit_id", r.GetVisitId())
	if fe != nil {
		return record{}, fe
	}
	if fe := checkText(path, "elector_id", r.GetElectorId(), MaxIDLen, false); fe != nil {
		return record{}, fe
	}
	if fe := checkText(path, "option", r.GetOption(), MaxLabelLen, false); fe != nil {
		return record{}, fe
	}
	loc, fe := checkLocation(path, "location", r.GetLocation())
	if fe != nil {
		return record{}, fe
	}
	if fe := v.checkTime(path, "recorded_at", r.GetRecordedAt()); fe != nil {
		return record{}, fe
	}
	if fe := checkOptionalText(path, "canvasser_id", r.GetCanvasserId(), MaxIDLen, false); fe != nil {
		return record{}, fe
	}
	rep, repText, fe := checkReplaces(path, r.GetReplacesId(), uid)
	if fe != nil {
		return record{}, fe
	}
	id := canonical(r.GetId(), uid)
	r.Id, r.VisitId, r.ReplacesId = id, canonical(r.GetVisitId(), visitUID), repText
	return record{id: id, uid: uid, locality: loc, replaces: rep}, nil
}

// followup validates a follow-up request at path and canonicalises its ids
// in place.
func (v validator) followup(path string, r *canvassv1.FollowupRequest) (record, *FieldError) {
	uid, fe := checkUUID(path, "id", r.GetId())
	if fe != nil {
		return record{}, fe
	}
	visitUID, fe := checkUUID(path, "visit_id", r.GetVisitId())
	if fe != nil {
		return record{}, fe
	}
	if fe := checkText(path, "elector_id", r.GetElectorId(), MaxIDLen, false); fe != nil {
		return record{}, fe
	}
	if fe := checkText(path, "issue", r.GetIssue(), MaxLabelLen, false); fe != nil {
		return record{}, fe
	}
	if fe := checkEnum(path, "method", r.GetMethod()); fe != nil {
		return record{}, fe
	}
	loc, fe := checkLocation(path, "location", r.GetLocation())
	if fe != nil {
		return record{}, fe
	}
	if fe := v.checkTime(path, "recorded_at", r.GetRecordedAt()); fe != nil {
		return record{}, fe
	}
	if fe := checkOptionalText(path, "canvasser_id", r.GetCanvasserId(), MaxIDLen, false); fe != nil {
		return record{}, fe
	}
	rep, repText, fe := checkReplaces(path, r.GetReplacesId(), uid)
	if fe != nil {
		return record{}, fe
	}
	id := canonical(r.GetId(), uid)
	r.Id, r.VisitId, r.ReplacesId = id, canonical(r.GetVisitId(), visitUID), repText
	return record{id: id, uid: uid, locality: loc, replaces: rep}, nil
}

func fieldError(path, field, format string, args ...any) *FieldError {
	return &FieldError{Path: path + "." + field, Field: field, Problem: fmt.Sprintf(format, args...)}
}

// checkUUID accepts a UUID of any version in the hyphenated 8-4-4-4-12 form,
// in either case. Callers store its canonical lower-case form (u.String()):
// stores key on the id as a string (Redis members, Elasticsearch _id), so
// one record must always carry the same spelling.
func checkUUID(path, field, s string) (uuid.UUID, *FieldError) {
	if s == "" {
		return uuid.Nil, fieldError(path, field, "is required")
	}
	if len(s) != 36 {
		return uuid.Nil, fieldError(path, field, "must be a UUID in the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx, got %s", quote(s))
	}
	u, err := uuid.Parse(s)
	if err != nil {
		return uuid.Nil, fieldError(path, field, "must be a UUID in the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx, got %s", quote(s))
	}
	if u == uuid.Nil {
		return uuid.Nil, fieldError(path, field, "must not be the nil UUID")
	}
	return u, nil
}

// canonical returns the lower-case text of u: s itself when it already is
// (the usual case, sparing an allocation), a new string otherwise.
func canonical(s string, u uuid.UUID) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 'A' && c <= 'Z' {
			return u.String()
		}
	}
	return s
}

// checkText checks a required string: valid UTF-8, at most max characters,
// not blank, no control characters (a NUL byte, for one, is a poison record
// for Postgres). multiline allows tab and line breaks (addresses).
func checkText(path, field, s string, max int, multiline bool) *FieldError {
	if s == "" {
		return fieldError(path, field, "is required")
	}
	return checkOptionalText(path, field, s, max, multiline)
}

// checkOptionalText is checkText for a string that may be empty.
func checkOptionalText(path, field, s string, max int, multiline bool) *FieldError {
	if s == "" {
		return nil
	}
	if !utf8.ValidString(s) {
		return fieldError(path, field, "must be valid UTF-8")
	}
	if n := utf8.RuneCountInString(s); n > max {
		return fieldError(path, field, "must be at most %d characters, got %d", max, n)
	}
	if strings.TrimSpace(s) == "" {
		return fieldError(path, field, "must not be blank")
	}
	for _, c := range s {
		if unicode.IsControl(c) && !(multiline && (c == '\n' || c == '\r' || c == '\t')) {
			return fieldError(path, field, "must not contain control characters, got %U", c)
		}
	}
	return nil
}

// checkLocation checks that a location is present and inside the grid, and
// returns its locality index.
func checkLocation(path, field string, l *canvassv1.Location) (locality.Index, *FieldError) {
	if l == nil {
		return 0, fieldError(path, field, "is required")
	}
	lat, lon := l.GetLatitude(), l.GetLongitude()
	if math.IsNaN(lat) || math.IsInf(lat, 0) || lat < -90 || lat > 90 {
		return 0, fieldError(path+"."+field, "latitude", "must be a finite number in [-90, 90], got %v", lat)
	}
	if math.IsNaN(lon) || math.IsInf(lon, 0) || lon < -180 || lon >= 180 {
		return 0, fieldError(path+"."+field, "longitude", "must be a finite number in [-180, 180), got %v", lon)
	}
	idx, err := locality.Of(lat, lon)
	if err != nil {
		// Unreachable after the checks above; kept so a change to the grid
		// surfaces as a rejection, not a bad key.
		return 0, fieldError(path, field, "%v", err)
	}
	return idx, nil
}

// checkTime checks a record's own time: present, a valid timestamp, not
// before MinRecordTime and not more than maxFuture ahead of now. Phones
// buffer records offline, so old records are normal; only absurd ones are
// rejected.
func (v validator) checkTime(path, field string, ts *timestamppb.Timestamp) *FieldError {
	if ts == nil {
		return fieldError(path, field, "is required")
	}
	if err := ts.CheckValid(); err != nil {
		return fieldError(path, field, "must be a valid timestamp (seconds %d, nanos %d)", ts.GetSeconds(), ts.GetNanos())
	}
	t := ts.AsTime()
	if t.Before(MinRecordTime) {
		return fieldError(path, field, "must not be before %s, got %s", MinRecordTime.Format(time.RFC3339), t.Format(time.RFC3339Nano))
	}
	if t.After(v.now.Add(v.maxFuture)) {
		return fieldError(path, field, "must not be more than %s in the future, got %s (server time %s)",
			v.maxFuture, t.Format(time.RFC3339Nano), v.now.UTC().Format(time.RFC3339))
	}
	return nil
}

// checkEnum accepts every value the enum declares (UNSPECIFIED included) and
// rejects any other number.
func checkEnum[E interface {
	~int32
	Descriptor() protoreflect.EnumDescriptor
}](path, field string, e E) *FieldError {
	d := e.Descriptor()
	if d.Values().ByNumber(protoreflect.EnumNumber(e)) == nil {
		return fieldError(path, field, "must be a known %s value, got %d", d.Name(), int32(e))
	}
	return nil
}

// quote quotes s for a reason text, cut to a bounded length so a reason never
// echoes a huge input back.
func quote(s string) string {
	const max = 64
	if len(s) > max {
		cut := max
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		return fmt.Sprintf("%q...", s[:cut])
	}
	return fmt.Sprintf("%q", s)
}
