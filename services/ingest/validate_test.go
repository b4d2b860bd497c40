package ingest

import (
	"math"
	"strings"
	"testing"
	"time"

	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// TestValidate covers every rejection reason of every kind, and the edges
// that must be accepted.
func TestValidate(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	v := validator{now: now, maxFuture: 24 * time.Hour}
	ts := func(t time.Time) *timestamppb.Timestamp { return timestamppb.New(t) }
	long := func(n int) string { return strings.Repeat("é", n) } // multi-byte: bounds count characters

	tests := []struct {
		name string
		kind string // visit, intention, followup
		edit func(v *canvassv1.Visit, i *canvassv1.Intention, f *canvassv1.FollowupRequest)
		// want is the whole reason, or "" when the record must be accepted.
		want string
		// wantPrefix is used instead of want when the tail varies.
		wantPrefix string
		class      string // FieldError.Field
	}{
		// Accepted edges.
		{name: "valid visit", kind: "visit", edit: func(*canvassv1.Visit, *canvassv1.Intention, *canvassv1.FollowupRequest) {}},
		{name: "valid intention", kind: "intention", edit: func(*canvassv1.Visit, *canvassv1.Intention, *canvassv1.FollowupRequest) {}},
		{name: "valid followup", kind: "followup", edit: func(*canvassv1.Visit, *canvassv1.Intention, *canvassv1.FollowupRequest) {}},
		{name: "upper-case uuid", kind: "visit", edit: func(r *canvassv1.Visit, _ *canvassv1.Intention, _ *canvassv1.FollowupRequest) {
			r.Id = strings.ToUpper(r.Id)
		}},
		{name: "unspecified outcome", kind: "visit", edit: func(r *canvassv1.Visit, _ *canvassv1.Intention, _ *canvassv1.FollowupRequest) {
			r.Outcome = canvassv1.Outcome_OUTCOME_UNSPECIFIED
		}},
		{name: "unspecified method", kind: "followup", edit: func(_ *canvassv1.Visit, _ *canvassv1.Intention, r *canvassv1.FollowupRequest) {
			r.Method = canvassv1.Method_METHOD_UNSPECIFIED
		}},
		{name: "no canvasser id", kind: "intention", edit: func(_ *canvassv1.Visit, r *canvassv1.Intention, _ *canvassv1.FollowupRequest) {
			r.CanvasserId = ""
		}},
		{name: "north pole", kind: "visit", edit: func(r *canvassv1.Visit, _ *canvassv1.Intention, _ *canvassv1.FollowupRequest) {
			r.Location = &canvassv1.Location{Latitude: 90, Longitude: -180}
		}},
		{name: "time just inside future skew", kind: "visit", edit: func(r *canvassv1.Visit, _ *canvassv1.Intention, _ *canvassv1.FollowupRequest) {
			r.VisitedAt = ts(now.Add(24 * time.Hour))
		}},
		{name: "time exactly MinRecordTime", kind: "visit", edit: func(r *canvassv1.Visit, _ *canvassv1.Intention, _ *canvassv1.FollowupRequest) {
			r.VisitedAt = ts(MinRecordTime)
		}},
		{name: "longest strings", kind: "followup", edit: func(_ *canvassv1.Visit, _ *canvassv1.Intention, r *canvassv1.FollowupRequest) {
			r.ElectorId, r.Issue, r.CanvasserId = long(MaxIDLen), long(MaxLabelLen), long(MaxIDLen)
		}},
		{name: "longest address with tab and CRLF", kind: "visit", edit: func(r *canvassv1.Visit, _ *canvassv1.Intention, _ *canvassv1.FollowupRequest) {
			r.Address = "1\tHigh St\r\n" + long(MaxAddressLen-11)
		}},

		// id and visit_id.
		{name: "id missing", kind: "visit", edit: func(r *canvassv1.Visit, _ *canvassv1.Intention, _ *canvassv1.FollowupRequest) { r.Id = "" },
			want: "visits[0].id: is required", class: "id"},
		{name: "id not a uuid", kind: "visit", edit: func(r *canvassv1.Visit, _ *canvassv1.Intention, _ *canvassv1.FollowupRequest) { r.Id = "visit-1" },
			want: `visits[0].id: must be a UUID in the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx, got "visit-1"`, class: "id"},
		{name: "id without hyphens", kind: "intention", edit: func(_ *canvassv1.Visit, r *canvassv1.Intention, _ *canvassv1.FollowupRequest) {
			r.Id = strings.ReplaceAll(r.Id, "-", "")
		}, wantPrefix: "intentions[0].id: must be a UUID in the form", class: "id"},
		{name: "id as urn", kind: "followup", edit: func(_ *canvassv1.Visit, _ *canvassv1.Intention, r *canvassv1.FollowupRequest) {
			r.Id = "urn:uuid:" + r.Id
		}, wantPrefix: "followups[0].id: must be a UUID in the form", class: "id"},
		{name: "id in braces", kind: "visit", edit: func(r *canvassv1.Visit, _ *canvassv1.Intention, _ *canvassv1.FollowupRequest) {
			r.Id = "{" + r.Id + "}"
		}, wantPrefix: "visits[0].id: must be a UUID in the form", class: "id"},
		{name: "id nil uuid", kind: "visit", edit: func(r *canvassv1.Visit, _ *canvassv1.Intention, _ *canvassv1.FollowupRequest) {
			r.Id = "00000000-0000-0000-0000-000000000000"
		}, want: "visits[0].id: must not be the nil UUID", class: "id"},
		{name: "huge id is quoted cut", kind: "visit", edit: func(r *canvassv1.Visit, _ *canvassv1.Intention, _ *canvassv1.FollowupRequest) {
			r.Id = strings.Repeat("x", 10000)
		}, want: `visits[0].id: must be a UUID in the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx, got "` + strings.Repeat("x", 64) + `"...`, class: "id"},
		{name: "intention visit_id missing", kind: "intention", edit: func(_ *canvassv1.Visit, r *canvassv1.Intention, _ *canvassv1.FollowupRequest) { r.VisitId = "" },
			want: "intentions[0].visit_id: is required", class: "visit_id"},
		{name: "followup visit_id not a uuid", kind: "followup", edit: func(_ *canvassv1.Visit, _ *canvassv1.Intention, r *canvassv1.FollowupRequest) { r.VisitId = "v1" },
			want: `followups[0].visit_id: must be a UUID in the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx, got "v1"`, class: "visit_id"},

		// Strings.
		{name: "dwelling_id missing", kind: "visit", edit: func(r *canvassv1.Visit, _ *canvassv1.Intention, _ *canvassv1.FollowupRequest) { r.DwellingId = "" },
			want: "visits[0].dwelling_id: is required", class: "dwelling_id"},
		{name: "dwelling_id too long", kind: "visit", edit: func(r *canvassv1.Visit, _ *canvassv1.Intention, _ *canvassv1.FollowupRequest) {
			r.DwellingId = long(MaxIDLen + 1)
		},
			want: "visits[0].dwelling_id: must be at most 256 characters, got 257", class: "dwelling_id"},
		{name: "dwelling_id blank", kind: "visit", edit: func(r *canvassv1.Visit, _ *canvassv1.Intention, _ *canvassv1.FollowupRequest) { r.DwellingId = " \t " },
			want: "visits[0].dwelling_id: must not be blank", class: "dwelling_id"},
		{name: "dwelling_id NUL", kind: "visit", edit: func(r *canvassv1.Visit, _ *canvassv1.Intention, _ *canvassv1.FollowupRequest) {
			r.DwellingId = "a\x00b"
		},
			want: "visits[0].dwelling_id: must not contain control characters, got U+0000", class: "dwelling_id"},
		{name: "dwelling_id newline", kind: "visit", edit: func(r *canvassv1.Visit, _ *canvassv1.Intention, _ *canvassv1.FollowupRequest) { r.DwellingId = "a\nb" },
			want: "visits[0].dwelling_id: must not contain control characters, got U+000A", class: "dwelling_id"},
		{name: "dwelling_id invalid utf-8", kind: "visit", edit: func(r *canvassv1.Visit, _ *canvassv1.Intention, _ *canvassv1.FollowupRequest) {
			r.DwellingId = "a\xffb"
		},
			want: "visits[0].dwelling_id: must be valid UTF-8", class: "dwelling_id"},
		{name: "address missing", kind: "visit", edit: func(r *canvassv1.Visit, _ *canvassv1.Intention, _ *canvassv1.FollowupRequest) { r.Address = "" },
			want: "visits[0].address: is required", class: "address"},
		{name: "address too long", kind: "visit", edit: func(r *canvassv1.Visit, _ *canvassv1.Intention, _ *canvassv1.FollowupRequest) {
			r.Address = long(MaxAddressLen + 1)
		},
			want: "visits[0].address: must be at most 512 characters, got 513", class: "address"},
		{name: "address escape char", kind: "visit", edit: func(r *canvassv1.Visit, _ *canvassv1.Intention, _ *canvassv1.FollowupRequest) {
			r.Address = "1 High St\x1b[31m"
		},
			want: "visits[0].address: must not contain control characters, got U+001B", class: "address"},
		{name: "canvasser_id too long", kind: "visit", edit: func(r *canvassv1.Visit, _ *canvassv1.Intention, _ *canvassv1.FollowupRequest) {
			r.CanvasserId = long(MaxIDLen + 1)
		},
			want: "visits[0].canvasser_id: must be at most 256 characters, got 257", class: "canvasser_id"},
		{name: "canvasser_id blank", kind: "followup", edit: func(_ *canvassv1.Visit, _ *canvassv1.Intention, r *canvassv1.FollowupRequest) { r.CanvasserId = "  " },
			want: "followups[0].canvasser_id: must not be blank", class: "canvasser_id"},
		{name: "elector_id missing", kind: "intention", edit: func(_ *canvassv1.Visit, r *canvassv1.Intention, _ *canvassv1.FollowupRequest) { r.ElectorId = "" },
			want: "intentions[0].elector_id: is required", class: "elector_id"},
		{name: "followup elector_id too long", kind: "followup", edit: func(_ *canvassv1.Visit, _ *canvassv1.Intention, r *canvassv1.FollowupRequest) {
			r.ElectorId = long(MaxIDLen + 1)
		},
			want: "followups[0].elector_id: must be at most 256 characters, got 257", class: "elector_id"},
		{name: "option missing", kind: "intention", edit: func(_ *canvassv1.Visit, r *canvassv1.Intention, _ *canvassv1.FollowupRequest) { r.Option = "" },
			want: "intentions[0].option: is required", class: "option"},
		{name: "option too long", kind: "intention", edit: func(_ *canvassv1.Visit, r *canvassv1.Intention, _ *canvassv1.FollowupRequest) {
			r.Option = long(MaxLabelLen + 1)
		},
			want: "intentions[0].option: must be at most 128 characters, got 129", class: "option"},
		{name: "issue missing", kind: "followup", edit: func(_ *canvassv1.Visit, _ *canvassv1.Intention, r *canvassv1.FollowupRequest) { r.Issue = "" },
			want: "followups[0].issue: is required", class: "issue"},
		{name: "issue too long", kind: "followup", edit: func(_ *canvassv1.Visit, _ *canvassv1.Intention, r *canvassv1.FollowupRequest) {
			r.Issue = long(MaxLabelLen + 1)
		},
			want: "followups[0].issue: must be at most 128 characters, got 129", class: "issue"},

		// Location.
		{name: "location missing", kind: "visit", edit: func(r *canvassv1.Visit, _ *canvassv1.Intention, _ *canvassv1.FollowupRequest) { r.Location = nil },
			want: "visits[0].location: is required", class: "location"},
		{name: "latitude above 90", kind: "visit", edit: func(r *canvassv1.Visit, _ *canvassv1.Intention, _ *canvassv1.FollowupRequest) {
			r.Location.Latitude = 91
		},
			want: "visits[0].location.latitude: must be a finite number in [-90, 90], got 91", class: "latitude"},
		{name: "latitude below -90", kind: "intention", edit: func(_ *canvassv1.Visit, r *canvassv1.Intention, _ *canvassv1.FollowupRequest) {
			r.Location.Latitude = -90.0001
		},
			want: "intentions[0].location.latitude: must be a finite number in [-90, 90], got -90.0001", class: "latitude"},
		{name: "latitude NaN", kind: "followup", edit: func(_ *canvassv1.Visit, _ *canvassv1.Intention, r *canvassv1.FollowupRequest) {
			r.Location.Latitude = math.NaN()
		},
			want: "followups[0].location.latitude: must be a finite number in [-90, 90], got NaN", class: "latitude"},
		{name: "latitude +Inf", kind: "visit", edit: func(r *canvassv1.Visit, _ *canvassv1.Intention, _ *canvassv1.FollowupRequest) {
			r.Location.Latitude = math.Inf(1)
		},
			want: "visits[0].location.latitude: must be a finite number in [-90, 90], got +Inf", class: "latitude"},
		{name: "longitude 180", kind: "visit", edit: func(r *canvassv1.Visit, _ *canvassv1.Intention, _ *canvassv1.FollowupRequest) {
			r.Location.Longitude = 180
		},
			want: "visits[0].location.longitude: must be a finite number in [-180, 180), got 180", class: "longitude"},
		{name: "longitude below -180", kind: "intention", edit: func(_ *canvassv1.Visit, r *canvassv1.Intention, _ *canvassv1.FollowupRequest) {
			r.Location.Longitude = -180.5
		},
			want: "intentions[0].location.longitude: must be a finite number in [-180, 180), got -180.5", class: "longitude"},
		{name: "longitude -Inf", kind: "followup", edit: func(_ *canvassv1.Visit, _ *canvassv1.Intention, r *canvassv1.FollowupRequest) {
			r.Location.Longitude = math.Inf(-1)
		},
			want: "followups[0].location.longitude: must be a finite number in [-180, 180), got -Inf", class: "longitude"},
		{name: "longitude NaN", kind: "visit", edit: func(r *canvassv1.Visit, _ *canvassv1.Intention, _ *canvassv1.FollowupRequest) {
			r.Location.Longitude = math.NaN()
		},
			want: "visits[0].location.longitude: must be a finite number in [-180, 180), got NaN", class: "longitude"},

		// Times.
		{name: "visited_at missing", kind: "visit", edit: func(r *canvassv1.Visit, _ *canvassv1.Intention, _ *canvassv1.FollowupRequest) { r.VisitedAt = nil },
			want: "visits[0].visited_at: is required", class: "visited_at"},
		{name: "visited_at invalid nanos", kind: "visit", edit: func(r *canvassv1.Visit, _ *canvassv1.Intention, _ *canvassv1.FollowupRequest) {
			r.VisitedAt = &timestamppb.Timestamp{Seconds: now.Unix(), Nanos: -1}
		}, wantPrefix: "visits[0].visited_at: must be a valid timestamp", class: "visited_at"},
		{name: "visited_at before 2000", kind: "visit", edit: func(r *canvassv1.Visit, _ *canvassv1.Intention, _ *canvassv1.FollowupRequest) {
			r.VisitedAt = ts(MinRecordTime.Add(-time.Nanosecond))
		}, want: "visits[0].visited_at: must not be before 2000-01-01T00:00:00Z, got 1999-12-31T23:59:59.999999999Z", class: "visited_at"},
		{name: "visited_at zero (1970)", kind: "visit", edit: func(r *canvassv1.Visit, _ *canvassv1.Intention, _ *canvassv1.FollowupRequest) {
			r.VisitedAt = &timestamppb.Timestamp{}
		}, want: "visits[0].visited_at: must not be before 2000-01-01T00:00:00Z, got 1970-01-01T00:00:00Z", class: "visited_at"},
		{name: "visited_at too far ahead", kind: "visit", edit: func(r *canvassv1.Visit, _ *canvassv1.Intention, _ *canvassv1.FollowupRequest) {
			r.VisitedAt = ts(now.Add(24*time.Hour + time.Second))
		}, want: "visits[0].visited_at: must not be more than 24h0m0s in the future, got 2026-05-02T12:00:01Z (server time 2026-05-01T12:00:00Z)", class: "visited_at"},
		{name: "intention recorded_at missing", kind: "intention", edit: func(_ *canvassv1.Visit, r *canvassv1.Intention, _ *canvassv1.FollowupRequest) { r.RecordedAt = nil },
			want: "intentions[0].recorded_at: is required", class: "recorded_at"},
		{name: "followup recorded_at in year 3000", kind: "followup", edit: func(_ *canvassv1.Visit, _ *canvassv1.Intention, r *canvassv1.FollowupRequest) {
			r.RecordedAt = ts(time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC))
		}, wantPrefix: "followups[0].recorded_at: must not be more than 24h0m0s in the future", class: "recorded_at"},

		// Enums.
		{name: "unknown outcome", kind: "visit", edit: func(r *canvassv1.Visit, _ *canvassv1.Intention, _ *canvassv1.FollowupRequest) { r.Outcome = 9 },
			want: "visits[0].outcome: must be a known Outcome value, got 9", class: "outcome"},
		{name: "negative outcome", kind: "visit", edit: func(r *canvassv1.Visit, _ *canvassv1.Intention, _ *canvassv1.FollowupRequest) { r.Outcome = -1 },
			want: "visits[0].outcome: must be a known Outcome value, got -1", class: "outcome"},
		{name: "unknown method", kind: "followup", edit: func(_ *canvassv1.Visit, _ *canvassv1.Intention, r *canvassv1.FollowupRequest) { r.Method = 4 },
			want: "followups[0].method: must be a known Method value, got 4", class: "method"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			vis, in, fu := validVisit(t), validIntention(t), validFollowup(t)
			// The validator's clock is fixed; put the records' times before it.
			vis.VisitedAt, in.RecordedAt, fu.RecordedAt = ts(now.Add(-time.Hour)), ts(now.Add(-time.Hour)), ts(now.Add(-time.Hour))
			tc.edit(vis, in, fu)
			var (
				rec  record
				fe   *FieldError
				msg  proto.Message
				orig string
			)
			switch tc.kind {
			case "visit":
				orig, msg = vis.GetId(), vis
				rec, fe = v.visit("visits[0]", vis)
			case "intention":
				orig, msg = in.GetId(), in
				rec, fe = v.intention("intentions[0]", in)
			case "followup":
				orig, msg = fu.GetId(), fu
				rec, fe = v.followup("followups[0]", fu)
			}
			if tc.want == "" && tc.wantPrefix == "" {
				if fe != nil {
					t.Fatalf("rejected a valid record: %v", fe)
				}
				if rec.id != strings.ToLower(orig) {
					t.Errorf("canonical id = %q, want %q", rec.id, strings.ToLower(orig))
				}
				if _, err := proto.Marshal(msg); err != nil {
					t.Errorf("accepted record does not encode: %v", err)
				}
				return
			}
			if fe == nil {
				t.Fatalf("accepted; want rejection %q%q", tc.want, tc.wantPrefix)
			}
			if tc.want != "" && fe.Error() != tc.want {
				t.Errorf("reason\n got %q\nwant %q", fe.Error(), tc.want)
			}
			if tc.wantPrefix != "" && !strings.HasPrefix(fe.Error(), tc.wantPrefix) {
				t.Errorf("reason\n got %q\nwant prefix %q", fe.Error(), tc.wantPrefix)
			}
			if fe.Field != tc.class {
				t.Errorf("reason class = %q, want %q", fe.Field, tc.class)
			}
		})
	}
}

// TestValidateLocality checks the locality of an accepted record against
// DESIGN.md's test vectors.
func TestValidateLocality(t *testing.T) {
	v := validator{now: time.Now(), maxFuture: time.Hour}
	tests := []struct {
		name     string
		lat, lon float64
		want     int64
	}{
		{name: "Edinburgh", lat: 55.9533, lon: -3.1883, want: 52543256811},
		{name: "cell edge", lat: 55.032, lon: -4.0, want: 52211336000},
		{name: "antimeridian east", lat: 0, lon: 179.9999, want: 32400359999},
		{name: "south pole", lat: -90, lon: 0, want: 180000},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := validVisit(t)
			r.Location = &canvassv1.Location{Latitude: tc.lat, Longitude: tc.lon}
			rec, fe := v.visit("visits[0]", r)
			if fe != nil {
				t.Fatalf("rejected: %v", fe)
			}
			if int64(rec.locality) != tc.want {
				t.Errorf("locality = %d, want %d", rec.locality, tc.want)
			}
		})
	}
}
