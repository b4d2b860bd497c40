package report

import (
	"errors"
	"flag"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/chapper/chapper/proto/locality"
)

// Errors returned for bad parameters.
var (
	ErrUnknownReport = errors.New("unknown report")
	ErrNoBox         = errors.New("report needs a bounding box (-bbox) or a region (-region)")
	ErrBoxTooLarge   = errors.New("bounding box covers too many localities")
	ErrBox           = errors.New("bounding box must be south,west,north,east in degrees with south <= north and west <= east")
	ErrTimeRange     = errors.New("report period must end after it starts")
	ErrNoIndexPrefix = errors.New("index prefix not set")
)

// MaxBoxLocalities caps the localities of the un-knocked report's box: one
// region (0.1° × 0.1°) holds exactly this many.
const MaxBoxLocalities = locality.RegionSize * locality.RegionSize

// Box is a latitude/longitude rectangle. Boxes crossing the antimeridian
// are not supported: split them in two.
type Box struct {
	South, West, North, East float64
}

// IsZero reports whether b is unset.
func (b Box) IsZero() bool { return b == Box{} }

// String formats b as the -bbox flag takes it.
func (b Box) String() string {
	if b.IsZero() {
		return ""
	}
	return fmt.Sprintf("%g,%g,%g,%g", b.South, b.West, b.North, b.East)
}

// ParseBox parses "south,west,north,east".
func ParseBox(s string) (Box, error) {
	f := strings.Split(s, ",")
	if len(f) != 4 {
		return Box{}, fmt.Errorf("%w: got %q", ErrBox, s)
	}
	var v [4]float64
	for i := range f {
		x, err := strconv.ParseFloat(strings.TrimSpace(f[i]), 64)
		if err != nil {
			return Box{}, fmt.Errorf("%w: %q: %w", ErrBox, s, err)
		}
		v[i] = x
	}
	b := Box{South: v[0], West: v[1], North: v[2], East: v[3]}
	return b, b.validate()
}

func (b Box) validate() error {
	if b.South > b.North || b.West > b.East {
		return fmt.Errorf("%w: got %s", ErrBox, b)
	}
	if _, err := locality.CellOf(b.South, b.West); err != nil {
		return fmt.Errorf("%w: %w", ErrBox, err)
	}
	if _, err := locality.CellOf(b.North, b.East); err != nil {
		return fmt.Errorf("%w: %w", ErrBox, err)
	}
	return nil
}

// Params are the inputs every report takes. The zero Region is a real
// region, so "every region" is -1.
type Params struct {
	// From and To bound the period by the records' own time: [From, To).
	From, To time.Time
	// Region limits a report to one 0.1° region; -1 means every region. For
	// the un-knocked report a region without a box is the box.
	Region int64
	// Box limits a report to records inside it; the un-knocked report needs
	// it (or a region).
	Box Box
	// Size is the number of rows (regions, issues, canvassers) a report
	// keeps, the largest first.
	Size int
	// IndexPrefix is the search sink's index prefix; the reports read the
	// aliases <prefix>-visits, <prefix>-intentions, <prefix>-followups.
	IndexPrefix string
}

// RegisterFlags registers -from, -to, -region, -bbox and -size under prefix
// ("" for none, as the report subcommand does). IndexPrefix is not a flag:
// the caller copies it from the search configuration.
func (p *Params) RegisterFlags(prefix string, fs *flag.FlagSet) {
	name := func(n string) string {
		if prefix == "" {
			return n
		}
		return prefix + "." + n
	}
	now := time.Now()
	fs.Var(&timeValue{t: &p.From, now: now}, name("from"),
		`Start of the period: RFC 3339, YYYY-MM-DD (UTC), "now" or a duration relative to now such as -168h.`)
	_ = fs.Lookup(name("from")).Value.Set("-168h")
	fs.Lookup(name("from")).DefValue = "-168h"
	fs.Var(&timeValue{t: &p.To, now: now}, name("to"), `End of the period (exclusive), same forms as -from.`)
	_ = fs.Lookup(name("to")).Value.Set("now")
	fs.Lookup(name("to")).DefValue = "now"
	fs.Int64Var(&p.Region, name("region"), -1, "Only this region (0.1° tile index, as in the region field); -1 means every region.")
	fs.Func(name("bbox"), "Bounding box south,west,north,east in degrees; required by unknocked unless -region is set.", func(s string) error {
		b, err := ParseBox(s)
		if err != nil {
			return err
		}
		p.Box = b
		return nil
	})
	fs.IntVar(&p.Size, name("size"), 10, "Rows per report (regions, issues, canvassers), the largest first.")
}

// Validate reports the first parameter error.
func (p *Params) Validate() error {
	if !p.To.After(p.From) {
		return fmt.Errorf("%w: from %s, to %s", ErrTimeRange, p.From.Format(time.RFC3339), p.To.Format(time.RFC3339))
	}
	if p.Size < 1 {
		return fmt.Errorf("report size must be at least 1, got %d", p.Size)
	}
	if p.Region < -1 {
		return fmt.Errorf("report region must be -1 (every region) or a region index, got %d", p.Region)
	}
	if !p.Box.IsZero() {
		if err := p.Box.validate(); err != nil {
			return err
		}
	}
	if p.IndexPrefix == "" {
		return ErrNoIndexPrefix
	}
	return nil
}

// timeValue is a flag.Value for a point in time.
type timeValue struct {
	t    *time.Time
	now  time.Time
	spec string
}

func (v *timeValue) String() string { return v.spec }

func (v *timeValue) Set(s string) error {
	t, err := ParseTime(s, v.now)
	if err != nil {
		return err
	}
	*v.t, v.spec = t, s
	return nil
}

// ParseTime parses a report time: RFC 3339, YYYY-MM-DD (midnight UTC),
// "now", or a Go duration added to now ("-24h").
func ParseTime(s string, now time.Time) (time.Time, error) {
	s = strings.TrimSpace(s)
	if s == "now" {
		return now.UTC(), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t.UTC(), nil
	}
	if t, err := time.Parse(time.DateOnly, s); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		return now.Add(d).UTC(), nil
	}
	return time.Time{}, fmt.Errorf("parsing report time %q: want RFC 3339, YYYY-MM-DD, now or a duration such as -24h", s)
}
