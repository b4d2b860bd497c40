// Package shardmap is Chapper's shard map: which physical Postgres database
// holds each of the 2^N logical shards. The logical shard of a record is its
// region mod 2^N (locality.Index.Shard), fixed forever; the map from logical
// shards to databases is versioned, kept in the router database, and changed
// only by publishing a new version (chapper shards move).
//
// The map is seeded from a file (Parse; Default is the dev map, two
// databases on the router's server). Writers of shard rows hold WriteLock in
// shared mode on the router while they write a batch and re-read the map
// when its version changed; a shard move holds it in exclusive mode while it
// copies the last rows and switches the map, so no batch is written to a
// shard's old database after the switch.
package shardmap

import (
	"bufio"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/chapper/chapper/proto/locality"
)

// MaxBits is the largest supported shard bit count (4096 logical shards).
const MaxBits = 12

// DefaultBits is the default shard bit count: 64 logical shards.
const DefaultBits = 6

// Errors returned for an unusable map.
var (
	ErrInvalid    = errors.New("invalid shard map")
	ErrNoMap      = errors.New("the router database holds no shard map")
	ErrBits       = errors.New("shard bit count does not match the shard map")
	ErrNoDatabase = errors.New("no such shard database")
)

// Database is one physical database that can hold logical shards.
type Database struct {
	// Name identifies the database in the map and in `chapper shards`.
	Name string
	// Conninfo is its key=value connection string, used by the persister
	// and by PL/Proxy on the router alike, so it must be reachable from
	// both. Empty in a parsed file until Resolve fills it in.
	Conninfo string
}

// Map assigns every logical shard to a database. A Map is a value: methods
// do not modify it except Resolve, and it is safe for concurrent reads.
type Map struct {
	// Version is the map's version in the router (0: not published yet).
	Version int64
	// Bits gives the number of logical shards, 2^Bits.
	Bits uint
	// Databases lists the known databases, sorted by name: those holding
	// shards and those registered as targets of a move.
	Databases []Database
	// Shards[s] is the name of the database holding logical shard s.
	Shards []string
}

//go:embed default.shardmap
var defaultFile string

// Default returns the default dev map: logical shards 0-31 in
// chapper_shard_0 and 32-63 in chapper_shard_1, both on the router's server
// (call Resolve with the router's connection string).
func Default() *Map {
	m, err := Parse(strings.NewReader(defaultFile))
	if err != nil {
		panic(fmt.Sprintf("embedded default shard map: %v", err))
	}
	return m
}

// ParseFile reads a shard map file (see Parse).
func ParseFile(path string) (*Map, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading shard map: %w", err)
	}
	defer f.Close()
	m, err := Parse(f)
	if err != nil {
		return nil, fmt.Errorf("reading shard map %s: %w", path, err)
	}
	return m, nil
}

// Parse reads a shard map file. Blank lines and text after # are ignored;
// the lines are
//
//	bits N                    2^N logical shards
//	database NAME [CONNINFO]  a database (CONNINFO: URL or key=value)
//	shards FIRST[-LAST] NAME  logical shards FIRST..LAST live in NAME
//
// Every logical shard must be assigned exactly once. A database without
// CONNINFO is resolved by Resolve.
func Parse(r io.Reader) (*Map, error) {
	m := &Map{}
	bitsSet := false
	type span struct {
		first, last int
		db          string
		line        int
	}
	var spans []span
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		bad := func(format string, args ...any) error {
			return fmt.Errorf("%w: line %d: %s", ErrInvalid, n, fmt.Sprintf(format, args...))
		}
		switch fields[0] {
		case "bits":
			if len(fields) != 2 {
				return nil, bad("want: bits N")
			}
			b, err := strconv.ParseUint(fields[1], 10, 8)
			if err != nil || b > MaxBits {
				return nil, bad("bits must be an integer in [0, %d], got %q", MaxBits, fields[1])
			}
			m.Bits, bitsSet = uint(b), true
		case "database":
			if len(fields) < 2 {
				return nil, bad("want: database NAME [CONNINFO]")
			}
			db := Database{Name: fields[1]}
			if len(fields) > 2 {
				rest := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(line), "database"))
				rest = strings.TrimSpace(strings.TrimPrefix(rest, fields[1]))
				ci, err := Conninfo(rest)
				if err != nil {
					return nil, bad("%v", err)
				}
				db.Conninfo = ci
			}
			if _, ok := m.Database(db.Name); ok {
				return nil, bad("database %s declared twice", db.Name)
			}
			m.Databases = append(m.Databases, db)
		case "shards":
			if len(fields) != 3 {
				return nil, bad("want: shards FIRST[-LAST] NAME")
			}
			lo, hi, isRange := strings.Cut(fields[1], "-")
			if !isRange {
				hi = lo
			}
			first, err1 := strconv.Atoi(lo)
			last, err2 := strconv.Atoi(hi)
			if err1 != nil || err2 != nil || first < 0 || last < first {
				return nil, bad("bad shard range %q", fields[1])
			}
			spans = append(spans, span{first, last, fields[2], n})
		default:
			return nil, bad("unknown keyword %q", fields[0])
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if !bitsSet {
		return nil, fmt.Errorf("%w: no bits line", ErrInvalid)
	}
	m.Shards = make([]string, 1<<m.Bits)
	for _, s := range spans {
		if s.last >= len(m.Shards) {
			return nil, fmt.Errorf("%w: line %d: shard %d out of range [0, %d)", ErrInvalid, s.line, s.last, len(m.Shards))
		}
		for i := s.first; i <= s.last; i++ {
			if m.Shards[i] != "" {
				return nil, fmt.Errorf("%w: line %d: shard %d assigned twice", ErrInvalid, s.line, i)
			}
			m.Shards[i] = s.db
		}
	}
	slices.SortFunc(m.Databases, func(a, b Database) int { return strings.Compare(a.Name, b.Name) })
	if err := m.validate(false); err != nil {
		return nil, err
	}
	return m, nil
}

// Resolve fills in the connection string of every database that has none:
// routerConninfo (the router database's URL or key=value string) with
// dbname set to the database's name.
func (m *Map) Resolve(routerConninfo string) error {
	for i, d := range m.Databases {
		if d.Conninfo != "" {
			continue
		}
		ci, err := WithDatabase(routerConninfo, d.Name)
		if err != nil {
			return fmt.Errorf("resolving shard database %s: %w", d.Name, err)
		}
		m.Databases[i].Conninfo = ci
	}
	return nil
}

// Validate checks that every logical shard names a declared database with a
// connection string.
func (m *Map) Validate() error { return m.validate(true) }

func (m *Map) validate(needConninfo bool) error {
	if m.Bits > MaxBits {
		return fmt.Errorf("%w: bits %d > %d", ErrInvalid, m.Bits, MaxBits)
	}
	if len(m.Shards) != 1<<m.Bits {
		return fmt.Errorf("%w: %d shards for bits %d", ErrInvalid, len(m.Shards), m.Bits)
	}
	for s, name := range m.Shards {
		if name == "" {
			return fmt.Errorf("%w: shard %d has no database", ErrInvalid, s)
		}
		d, ok := m.Database(name)
		if !ok {
			return fmt.Errorf("%w: shard %d names undeclared database %s", ErrInvalid, s, name)
		}
		if needConninfo && d.Conninfo == "" {
			return fmt.Errorf("%w: database %s has no connection string", ErrInvalid, name)
		}
	}
	return nil
}

// Database returns the database named name.
func (m *Map) Database(name string) (Database, bool) {
	for _, d := range m.Databases {
		if d.Name == name {
			return d, true
		}
	}
	return Database{}, false
}

// ShardOf returns the logical shard of a locality: its region mod 2^Bits.
func (m *Map) ShardOf(idx locality.Index) int { return int(idx.Shard(m.Bits)) }

// ShardsOn returns the logical shards held by database name, ascending.
func (m *Map) ShardsOn(name string) []int {
	var out []int
	for s, n := range m.Shards {
		if n == name {
			out = append(out, s)
		}
	}
	return out
}

// InUse returns the databases that hold at least one logical shard, sorted
// by name.
func (m *Map) InUse() []Database {
	var out []Database
	for _, d := range m.Databases {
		if slices.Contains(m.Shards, d.Name) {
			out = append(out, d)
		}
	}
	return out
}

// Clone returns a deep copy of m.
func (m *Map) Clone() *Map {
	c := *m
	c.Databases = slices.Clone(m.Databases)
	c.Shards = slices.Clone(m.Shards)
	return &c
}

// String renders m in the file format Parse reads (connection strings
// included, passwords too).
func (m *Map) String() string {
	var b strings.Builder
	if m.Version > 0 {
		fmt.Fprintf(&b, "# version %d\n", m.Version)
	}
	fmt.Fprintf(&b, "bits %d\n", m.Bits)
	for _, d := range m.Databases {
		fmt.Fprintf(&b, "database %s", d.Name)
		if d.Conninfo != "" {
			fmt.Fprintf(&b, " %s", d.Conninfo)
		}
		b.WriteByte('\n')
	}
	for first := 0; first < len(m.Shards); {
		last := first
		for last+1 < len(m.Shards) && m.Shards[last+1] == m.Shards[first] {
			last++
		}
		if first == last {
			fmt.Fprintf(&b, "shards %d %s\n", first, m.Shards[first])
		} else {
			fmt.Fprintf(&b, "shards %d-%d %s\n", first, last, m.Shards[first])
		}
		first = last + 1
	}
	return b.String()
}
