package search

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	_ "time/tzdata" // time_zone names must resolve on machines without a zoneinfo database
)

// Dates are held as int64 milliseconds since the epoch, UTC, as
// Elasticsearch's date type does.

const defaultDateFormat = "strict_date_optional_time||epoch_millis"

var errDateSyntax = errors.New("date does not match the format")

// dateFormat parses and prints one date format of a mapping's or a
// request's `format` (one of the parts separated by ||).
//
// parse with roundUp fills the components a value leaves out the way
// Elasticsearch does for gt and lte bounds: the time of day becomes
// 23:59:59.999999999 (missing minutes, seconds and fraction likewise), while
// a missing month or day stays 01.
type dateFormat interface {
	parse(s string, loc *time.Location, roundUp bool) (int64, error)
	format(ms int64, loc *time.Location) string
}

// dateFormats is a `format` value: its parsers are tried in order and the
// first one prints.
type dateFormats struct {
	raw  string
	list []dateFormat
}

func (f *dateFormats) parse(s string, loc *time.Location, roundUp bool) (int64, error) {
	var first error
	for _, p := range f.list {
		ms, err := p.parse(s, loc, roundUp)
		if err == nil {
			return ms, nil
		}
		if first == nil {
			first = err
		}
	}
	return 0, fmt.Errorf("failed to parse date field [%s] with format [%s]", s, f.raw)
}

func (f *dateFormats) format(ms int64, loc *time.Location) string {
	return f.list[0].format(ms, loc)
}

// parseDateFormats parses a `format` value such as
// "strict_date_optional_time||epoch_millis" or "yyyy-MM-dd HH:mm:ss".
func parseDateFormats(raw string) (*dateFormats, error) {
	if raw == "" {
		raw = defaultDateFormat
	}
	f := &dateFormats{raw: raw}
	for _, part := range strings.Split(raw, "||") {
		p, err := parseOneDateFormat(strings.TrimSpace(part))
		if err != nil {
			return nil, err
		}
		f.list = append(f.list, p)
	}
	return f, nil
}

func parseOneDateFormat(name string) (dateFormat, error) {
	switch name {
	case "strict_date_optional_time", "date_optional_time", "strict_date_optional_time_nanos", "date_optional_time_nanos":
		return isoFormat{}, nil
	case "epoch_millis":
		return epochFormat{unit: 1}, nil
	case "epoch_second":
		return epochFormat{unit: 1000}, nil
	case "strict_date_time", "date_time":
		return javaPattern("yyyy-MM-dd'T'HH:mm:ss.SSSXXX")
	case "strict_date_time_no_millis", "date_time_no_millis":
		return javaPattern("yyyy-MM-dd'T'HH:mm:ssXXX")
	case "strict_date", "date":
		return javaPattern("yyyy-MM-dd")
	case "strict_date_hour_minute_second", "date_hour_minute_second":
		return javaPattern("yyyy-MM-dd'T'HH:mm:ss")
	case "strict_date_hour_minute_second_millis", "date_hour_minute_second_millis", "strict_date_hour_minute_second_fraction", "date_hour_minute_second_fraction":
		return javaPattern("yyyy-MM-dd'T'HH:mm:ss.SSS")
	case "strict_date_hour_minute", "date_hour_minute":
		return javaPattern("yyyy-MM-dd'T'HH:mm")
	case "strict_date_hour", "date_hour":
		return javaPattern("yyyy-MM-dd'T'HH")
	case "strict_year_month", "year_month":
		return javaPattern("yyyy-MM")
	case "strict_year", "year":
		return javaPattern("yyyy")
	case "basic_date":
		return javaPattern("yyyyMMdd")
	case "":
		return nil, errors.New("empty date format")
	}
	if isNamedFormat(name) {
		return nil, fmt.Errorf("date format [%s] is unsupported", name)
	}
	return javaPattern(name)
}

// isNamedFormat reports whether name looks like one of Elasticsearch's
// built-in format names (lower case with underscores) rather than a pattern.
func isNamedFormat(name string) bool {
	return strings.Contains(name, "_") || name == "iso8601"
}

// isoFormat is strict_date_optional_time: yyyy[-MM[-dd]] then optionally
// 'T'HH[:mm[:ss[.fraction]]] and a zone (Z, ±HH:mm, ±HHmm, ±HH). Without a
// zone the time is in the request's time zone (UTC by default). It prints
// yyyy-MM-dd'T'HH:mm:ss.SSSZ.
type isoFormat struct{}

func (isoFormat) parse(s string, loc *time.Location, roundUp bool) (int64, error) {
	t, err := isoTime(s, loc, roundUp)
	if err != nil {
		return 0, err
	}
	return t.UnixMilli(), nil
}

// isoTime parses strict_date_optional_time to the nanosecond.
func isoTime(s string, loc *time.Location, roundUp bool) (time.Time, error) {
	p := 0
	num := func(n int) (int, bool) {
		if p+n > len(s) {
			return 0, false
		}
		v := 0
		for i := 0; i < n; i++ {
			c := s[p+i]
			if c < '0' || c > '9' {
				return 0, false
			}
			v = v*10 + int(c-'0')
		}
		p += n
		return v, true
	}
	year, ok := num(4)
	if !ok {
		return time.Time{}, errDateSyntax
	}
	month, day := 1, 1
	hour, minute, sec, nanos := 0, 0, 0, 0
	level := 0 // the finest component given: 3 hour, 4 minute, 5 second, 6 fraction
	if p < len(s) && s[p] == '-' {
		p++
		if month, ok = num(2); !ok {
			return time.Time{}, errDateSyntax
		}
		if p < len(s) && s[p] == '-' {
			p++
			if day, ok = num(2); !ok {
				return time.Time{}, errDateSyntax
			}
		}
	}
	var zone *time.Location
	if p < len(s) && s[p] == 'T' {
		p++
		if hour, ok = num(2); !ok {
			return time.Time{}, errDateSyntax
		}
		level = 3
		if p < len(s) && s[p] == ':' {
			p++
			if minute, ok = num(2); !ok {
				return time.Time{}, errDateSyntax
			}
			level = 4
			if p < len(s) && s[p] == ':' {
				p++
				if sec, ok = num(2); !ok {
					return time.Time{}, errDateSyntax
				}
				level = 5
				if p < len(s) && (s[p] == '.' || s[p] == ',') {
					level = 6
					p++
					start := p
					for p < len(s) && s[p] >= '0' && s[p] <= '9' && p-start < 9 {
						nanos = nanos*10 + int(s[p]-'0')
						p++
					}
					if p == start {
						return time.Time{}, errDateSyntax
					}
					for i := p - start; i < 9; i++ {
						nanos *= 10
					}
				}
			}
		}
		if p < len(s) {
			z, n, err := parseZone(s[p:])
			if err != nil {
				return time.Time{}, err
			}
			zone = z
			p += n
		}
	}
	if p != len(s) {
		return time.Time{}, errDateSyntax
	}
	if month < 1 || month > 12 || day < 1 || day > daysIn(year, month) || hour > 23 || minute > 59 || sec > 59 {
		return time.Time{}, errDateSyntax
	}
	if zone == nil {
		zone = loc
	}
	if roundUp {
		if level < 3 {
			hour = 23
		}
		if level < 4 {
			minute = 59
		}
		if level < 5 {
			sec = 59
		}
		if level < 6 {
			nanos = 999999999
		}
	}
	return time.Date(year, time.Month(month), day, hour, minute, sec, nanos, zone), nil
}

func (isoFormat) format(ms int64, loc *time.Location) string {
	return time.UnixMilli(ms).In(loc).Format("2006-01-02T15:04:05.000Z07:00")
}

func daysIn(year, month int) int {
	return time.Date(year, time.Month(month)+1, 0, 0, 0, 0, 0, time.UTC).Day()
}

// parseZone parses Z, ±HH:mm, ±HHmm or ±HH at the start of s and returns how
// many bytes it used.
func parseZone(s string) (*time.Location, int, error) {
	if s[0] == 'Z' {
		return time.UTC, 1, nil
	}
	if s[0] != '+' && s[0] != '-' {
		return nil, 0, errDateSyntax
	}
	digits := func(i int) (int, bool) {
		if i+2 > len(s) || s[i] < '0' || s[i] > '9' || s[i+1] < '0' || s[i+1] > '9' {
			return 0, false
		}
		return int(s[i]-'0')*10 + int(s[i+1]-'0'), true
	}
	h, ok := digits(1)
	if !ok {
		return nil, 0, errDateSyntax
	}
	n, m := 3, 0
	if len(s) > 3 && s[3] == ':' {
		if m, ok = digits(4); !ok {
			return nil, 0, errDateSyntax
		}
		n = 6
	} else if len(s) > 3 {
		if m, ok = digits(3); !ok {
			return nil, 0, errDateSyntax
		}
		n = 5
	}
	if h > 18 || m > 59 {
		return nil, 0, errDateSyntax
	}
	off := h*3600 + m*60
	if s[0] == '-' {
		off = -off
	}
	return time.FixedZone("", off), n, nil
}

// epochFormat is epoch_millis (unit 1) or epoch_second (unit 1000).
type epochFormat struct{ unit int64 }

func (f epochFormat) parse(s string, _ *time.Location, _ bool) (int64, error) {
	if s == "" {
		return 0, errDateSyntax
	}
	if i, err := strconv.ParseInt(s, 10, 64); err == nil {
		if (i > 0 && i > math.MaxInt64/f.unit) || (i < 0 && i < math.MinInt64/f.unit) {
			return 0, errDateSyntax
		}
		return i * f.unit, nil
	}
	// epoch_millis accepts a fraction of a millisecond, dropped like
	// Elasticsearch does for the date (millisecond) type.
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) || strings.ContainsAny(s, "eExX") {
		return 0, errDateSyntax
	}
	return int64(math.Floor(v * float64(f.unit))), nil
}

func (f epochFormat) format(ms int64, _ *time.Location) string {
	if f.unit == 1 {
		return strconv.FormatInt(ms, 10)
	}
	return strconv.FormatInt(floorDiv(ms, f.unit), 10)
}

// goLayout is a Java-style pattern (yyyy-MM-dd HH:mm:ss) translated to a Go
// time layout.
type goLayout struct {
	pattern                       string
	layout                        string
	hasZone                       bool
	hasHour, hasMin, hasSec, hasS bool
}

// javaPattern translates the pattern letters Chapper's reports and common
// mappings use; anything else is refused so a date is never misread.
func javaPattern(p string) (dateFormat, error) {
	var b strings.Builder
	g := goLayout{pattern: p}
	for i := 0; i < len(p); {
		c := p[i]
		if c == '\'' {
			j := strings.IndexByte(p[i+1:], '\'')
			if j < 0 {
				return nil, fmt.Errorf("unterminated quote in date format [%s]", p)
			}
			lit := p[i+1 : i+1+j]
			if strings.ContainsAny(lit, "0123456789") || containsGoToken(lit) {
				return nil, fmt.Errorf("date format [%s]: literal [%s] is unsupported", p, lit)
			}
			b.WriteString(lit)
			i += j + 2
			continue
		}
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			if c >= '0' && c <= '9' {
				return nil, fmt.Errorf("date format [%s]: digit literals are unsupported", p)
			}
			b.WriteByte(c)
			i++
			continue
		}
		n := 1
		for i+n < len(p) && p[i+n] == c {
			n++
		}
		tok := p[i : i+n]
		var out string
		switch {
		case (c == 'y' || c == 'u') && n == 4:
			out = "2006"
		case (c == 'y' || c == 'u') && n == 2:
			out = "06"
		case c == 'M' && n == 2:
			out = "01"
		case c == 'M' && n == 1:
			out = "1"
		case c == 'M' && n == 3:
			out = "Jan"
		case c == 'M' && n == 4:
			out = "January"
		case c == 'd' && n == 2:
			out = "02"
		case c == 'd' && n == 1:
			out = "2"
		case c == 'H' && n == 2:
			out, g.hasHour = "15", true
		case c == 'h' && n == 2:
			out, g.hasHour = "03", true
		case c == 'h' && n == 1:
			out, g.hasHour = "3", true
		case c == 'm' && n == 2:
			out, g.hasMin = "04", true
		case c == 'm' && n == 1:
			out, g.hasMin = "4", true
		case c == 's' && n == 2:
			out, g.hasSec = "05", true
		case c == 's' && n == 1:
			out, g.hasSec = "5", true
		case c == 'S' && n <= 9:
			s := b.String()
			if !strings.HasSuffix(s, ".") && !strings.HasSuffix(s, ",") {
				return nil, fmt.Errorf("date format [%s]: fraction [%s] must follow '.' or ','", p, tok)
			}
			out, g.hasS = strings.Repeat("0", n), true
		case c == 'a' && n == 1:
			out = "PM"
		case c == 'E' && n == 3:
			out = "Mon"
		case c == 'E' && n == 4:
			out = "Monday"
		case c == 'Z' && n == 1:
			out, g.hasZone = "-0700", true
		case c == 'Z' && n == 2:
			out, g.hasZone = "-07:00", true
		case c == 'X' && n == 1:
			out, g.hasZone = "Z07", true
		case c == 'X' && n == 2:
			out, g.hasZone = "Z0700", true
		case c == 'X' && n == 3:
			out, g.hasZone = "Z07:00", true
		default:
			return nil, fmt.Errorf("date format [%s]: pattern [%s] is unsupported", p, tok)
		}
		b.WriteString(out)
		i += n
	}
	g.layout = b.String()
	return g, nil
}

func containsGoToken(s string) bool {
	for _, t := range []string{"Jan", "Mon", "MST", "PM", "pm"} {
		if strings.Contains(s, t) {
			return true
		}
	}
	return false
}

func (g goLayout) parse(s string, loc *time.Location, roundUp bool) (int64, error) {
	t, err := time.ParseInLocation(g.layout, s, loc)
	if err != nil {
		return 0, errDateSyntax
	}
	if roundUp {
		// components the pattern leaves out parsed as zero
		y, mo, d := t.Date()
		h, mi, sec := t.Clock()
		ns := t.Nanosecond()
		if !g.hasHour {
			h = 23
		}
		if !g.hasMin {
			mi = 59
		}
		if !g.hasSec {
			sec = 59
		}
		if !g.hasS {
			ns = 999999999
		}
		t = time.Date(y, mo, d, h, mi, sec, ns, t.Location())
	}
	return t.UnixMilli(), nil
}

func (g goLayout) format(ms int64, loc *time.Location) string {
	return time.UnixMilli(ms).In(loc).Format(g.layout)
}

// parseTimeZone parses a time_zone parameter: an offset (+01:00, -0800, Z)
// or a zone name (UTC, Europe/London).
func parseTimeZone(s string) (*time.Location, error) {
	if s == "" || s == "UTC" || s == "Z" || s == "utc" || s == "GMT" || s == "Etc/UTC" {
		return time.UTC, nil
	}
	if s[0] == '+' || s[0] == '-' {
		z, n, err := parseZone(s)
		if err != nil || n != len(s) {
			return nil, fmt.Errorf("invalid time zone [%s]", s)
		}
		return z, nil
	}
	loc, err := time.LoadLocation(s)
	if err != nil {
		return nil, fmt.Errorf("unknown time zone [%s]", s)
	}
	return loc, nil
}

// parseDateMath evaluates a date or date-math expression as used in range
// queries: "now", "now-7d/d", "2024-01-01||+1M/d", or a date in one of the
// formats. roundUp selects the end of a rounded unit (gt and lte round up,
// gte and lt round down, as Elasticsearch documents).
func parseDateMath(expr string, f *dateFormats, roundUp bool, loc *time.Location, now time.Time) (int64, error) {
	var anchor time.Time
	var math string
	switch {
	case strings.HasPrefix(expr, "now"):
		anchor = now.In(loc)
		math = expr[3:]
	default:
		dateStr := expr
		if i := strings.Index(expr, "||"); i >= 0 {
			dateStr, math = expr[:i], expr[i+2:]
		}
		// a plain date rounds up its missing components; the anchor of
		// date math does not (the math's own rounding does)
		ms, err := f.parse(dateStr, loc, roundUp && math == "")
		if err != nil {
			return 0, err
		}
		if math == "" {
			return ms, nil
		}
		anchor = time.UnixMilli(ms).In(loc)
	}
	t := anchor
	for i := 0; i < len(math); {
		op := math[i]
		i++
		switch op {
		case '/':
			if i >= len(math) {
				return 0, fmt.Errorf("truncated date math [%s]", expr)
			}
			u := math[i]
			i++
			start, err := roundDown(t, u)
			if err != nil {
				return 0, fmt.Errorf("date math [%s]: %w", expr, err)
			}
			if roundUp {
				end, err := addUnit(start, u, 1)
				if err != nil {
					return 0, err
				}
				t = end.Add(-time.Millisecond)
			} else {
				t = start
			}
		case '+', '-':
			j := i
			for j < len(math) && math[j] >= '0' && math[j] <= '9' {
				j++
			}
			n := 1
			if j > i {
				v, err := strconv.Atoi(math[i:j])
				if err != nil {
					return 0, fmt.Errorf("date math [%s]: %w", expr, err)
				}
				n = v
			}
			if j >= len(math) {
				return 0, fmt.Errorf("truncated date math [%s]", expr)
			}
			if op == '-' {
				n = -n
			}
			var err error
			if t, err = addUnit(t, math[j], n); err != nil {
				return 0, fmt.Errorf("date math [%s]: %w", expr, err)
			}
			i = j + 1
		default:
			return 0, fmt.Errorf("date math [%s]: operator [%c] is unsupported", expr, op)
		}
	}
	return t.UnixMilli(), nil
}

// addUnit adds n date-math units (y M w d h H m s) to t in t's location.
func addUnit(t time.Time, unit byte, n int) (time.Time, error) {
	switch unit {
	case 'y':
		return addMonths(t, 12*n), nil
	case 'q':
		return addMonths(t, 3*n), nil
	case 'M':
		return addMonths(t, n), nil
	case 'w':
		return t.AddDate(0, 0, 7*n), nil
	case 'd':
		return t.AddDate(0, 0, n), nil
	case 'h', 'H':
		return t.Add(time.Duration(n) * time.Hour), nil
	case 'm':
		return t.Add(time.Duration(n) * time.Minute), nil
	case 's':
		return t.Add(time.Duration(n) * time.Second), nil
	}
	return t, fmt.Errorf("unit [%c] is unsupported", unit)
}

// addMonths adds n calendar months, clamping the day to the end of the
// target month as java.time does (Jan 31 + 1M = Feb 28/29), where Go's
// AddDate would overflow into March.
func addMonths(t time.Time, n int) time.Time {
	y, mo, d := t.Date()
	total := int(mo) - 1 + n
	ny := y + total/12
	nm := total % 12
	if nm < 0 {
		nm += 12
		ny--
	}
	if max := daysIn(ny, nm+1); d > max {
		d = max
	}
	return time.Date(ny, time.Month(nm+1), d, t.Hour(), t.Minute(), t.Second(), t.Nanosecond(), t.Location())
}

// roundDown truncates t to the start of its unit in t's location; weeks
// start on Monday as in ISO 8601.
func roundDown(t time.Time, unit byte) (time.Time, error) {
	y, mo, d := t.Date()
	loc := t.Location()
	switch unit {
	case 'y':
		return time.Date(y, 1, 1, 0, 0, 0, 0, loc), nil
	case 'q':
		return time.Date(y, ((mo-1)/3)*3+1, 1, 0, 0, 0, 0, loc), nil
	case 'M':
		return time.Date(y, mo, 1, 0, 0, 0, 0, loc), nil
	case 'w':
		wd := (int(t.Weekday()) + 6) % 7
		return time.Date(y, mo, d-wd, 0, 0, 0, 0, loc), nil
	case 'd':
		return time.Date(y, mo, d, 0, 0, 0, 0, loc), nil
	case 'h', 'H':
		return time.Date(y, mo, d, t.Hour(), 0, 0, 0, loc), nil
	case 'm':
		return time.Date(y, mo, d, t.Hour(), t.Minute(), 0, 0, loc), nil
	case 's':
		return time.Date(y, mo, d, t.Hour(), t.Minute(), t.Second(), 0, loc), nil
	}
	return t, fmt.Errorf("rounding unit [%c] is unsupported", unit)
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if (a%b != 0) && ((a < 0) != (b < 0)) {
		q--
	}
	return q
}
