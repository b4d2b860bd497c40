package shardmap

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/chapper/chapper/proto/locality"
)

func TestDefaultMap(t *testing.T) {
	m := Default()
	if m.Bits != 6 || len(m.Shards) != 64 {
		t.Fatalf("default map: %d bits, %d shards; want 6, 64", m.Bits, len(m.Shards))
	}
	if err := m.Resolve("postgres://postgres@127.0.0.1:15432/chapper_router?sslmode=disable"); err != nil {
		t.Fatal(err)
	}
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	// DESIGN.md's test vectors: the shard, and the database of the dev map.
	tests := []struct {
		name     string
		lat, lon float64
		shard    int
		db       string
	}{
		{name: "Edinburgh", lat: 55.9533, lon: -3.1883, shard: 24, db: "chapper_shard_0"},
		{name: "Glasgow", lat: 55.8642, lon: -4.2518, shard: 61, db: "chapper_shard_1"},
		{name: "Stirling", lat: 56.1165, lon: -3.9369, shard: 48, db: "chapper_shard_1"},
		{name: "cell edge", lat: 55.032, lon: -4.0, shard: 0, db: "chapper_shard_0"},
		{name: "antimeridian east", lat: 0, lon: 179.9999, shard: 15, db: "chapper_shard_0"},
		{name: "north pole", lat: 90, lon: 0, shard: 8, db: "chapper_shard_0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			idx, err := locality.Of(tt.lat, tt.lon)
			if err != nil {
				t.Fatal(err)
			}
			if got := m.ShardOf(idx); got != tt.shard {
				t.Errorf("ShardOf = %d, want %d", got, tt.shard)
			}
			if got := m.Shards[m.ShardOf(idx)]; got != tt.db {
				t.Errorf("database = %s, want %s", got, tt.db)
			}
		})
	}
	d, _ := m.Database("chapper_shard_1")
	if want := "host=127.0.0.1 port=15432 user=postgres dbname=chapper_shard_1 sslmode=disable"; d.Conninfo != want {
		t.Errorf("resolved conninfo = %q, want %q", d.Conninfo, want)
	}
}

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		text    string
		wantErr bool
		check   func(t *testing.T, m *Map)
	}{
		{name: "even and odd", text: "bits 2\ndatabase a\ndatabase b host=h dbname=b\nshards 0 a\nshards 2 a\nshards 1 b\nshards 3 b\n",
			check: func(t *testing.T, m *Map) {
				if !slices.Equal(m.Shards, []string{"a", "b", "a", "b"}) {
					t.Errorf("shards = %v", m.Shards)
				}
				if d, _ := m.Database("b"); d.Conninfo != "host=h dbname=b" {
					t.Errorf("b conninfo = %q", d.Conninfo)
				}
				if got := m.ShardsOn("a"); !slices.Equal(got, []int{0, 2}) {
					t.Errorf("ShardsOn(a) = %v", got)
				}
			}},
		{name: "URL conninfo and comments", text: "# map\nbits 1 # two\ndatabase x postgres://u:p%20w@db.example:5433/x?sslmode=require\nshards 0-1 x\n",
			check: func(t *testing.T, m *Map) {
				if d, _ := m.Database("x"); d.Conninfo != "host=db.example port=5433 user=u password='p w' dbname=x sslmode=require" {
					t.Errorf("x conninfo = %q", d.Conninfo)
				}
			}},
		{name: "round trip", text: Default().String(),
			check: func(t *testing.T, m *Map) {
				if !slices.Equal(m.Shards, Default().Shards) {
					t.Errorf("String then Parse changed the map")
				}
			}},
		{name: "shard unassigned", text: "bits 1\ndatabase a\nshards 0 a\n", wantErr: true},
		{name: "shard twice", text: "bits 1\ndatabase a\nshards 0-1 a\nshards 1 a\n", wantErr: true},
		{name: "undeclared database", text: "bits 1\ndatabase a\nshards 0 a\nshards 1 b\n", wantErr: true},
		{name: "out of range", text: "bits 1\ndatabase a\nshards 0-2 a\n", wantErr: true},
		{name: "no bits", text: "database a\nshards 0 a\n", wantErr: true},
		{name: "too many bits", text: "bits 13\n", wantErr: true},
		{name: "unknown keyword", text: "bits 0\ndatabase a\nshards 0 a\nreplicas 3\n", wantErr: true},
		{name: "database twice", text: "bits 0\ndatabase a\ndatabase a\nshards 0 a\n", wantErr: true},
		{name: "backwards range", text: "bits 1\ndatabase a\nshards 1-0 a\n", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := Parse(strings.NewReader(tt.text))
			if tt.wantErr {
				if !errors.Is(err, ErrInvalid) {
					t.Errorf("Parse = %v, want ErrInvalid", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, m)
		})
	}
}

func TestConninfo(t *testing.T) {
	tests := []struct {
		name, in, want string
		db             string // WithDatabase argument; "" tests Conninfo
		wantErr        bool
	}{
		{name: "URL", in: "postgres://postgres@127.0.0.1:15432/chapper_router?sslmode=disable",
			want: "host=127.0.0.1 port=15432 user=postgres dbname=chapper_router sslmode=disable"},
		{name: "postgresql scheme", in: "postgresql://h/d", want: "host=h dbname=d"},
		{name: "key=value reordered", in: "sslmode=disable dbname=d host=h", want: "host=h dbname=d sslmode=disable"},
		{name: "quoted values", in: `host=h password='it''s' dbname = 'my db'`, wantErr: true},
		{name: "escaped quote", in: `host=h password='it\'s' dbname='my db'`, want: `host=h password='it\'s' dbname='my db'`},
		{name: "with database", in: "postgres://u@h:1/router?sslmode=disable", db: "chapper_shard_0",
			want: "host=h port=1 user=u dbname=chapper_shard_0 sslmode=disable"},
		{name: "key=value with database", in: "host=h dbname=router", db: "s", want: "host=h dbname=s"},
		{name: "unterminated quote", in: "host='h", wantErr: true},
		{name: "not key=value", in: "hello", wantErr: true},
		{name: "multi-host URL", in: "postgres://a:1,b:2/d", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got string
			var err error
			if tt.db == "" {
				got, err = Conninfo(tt.in)
			} else {
				got, err = WithDatabase(tt.in, tt.db)
			}
			if tt.wantErr {
				if err == nil {
					t.Errorf("got %q, want an error", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
			// and it parses back to itself
			if again, err := Conninfo(got); err != nil || again != got {
				t.Errorf("Conninfo(%q) = %q, %v; want it unchanged", got, again, err)
			}
		})
	}
}
