package locality

import (
	"errors"
	"math"
	"slices"
	"testing"
)

func TestVectors(t *testing.T) {
	// DESIGN.md's test vectors; every implementation must reproduce them.
	tests := []struct {
		name                    string
		lat, lon                float64
		locality, chunk, region int64
		shard                   int64
	}{
		{name: "Edinburgh", lat: 55.9533, lon: -3.1883, locality: 52543256811, chunk: 2101715362, region: 5254168, shard: 24},
		{name: "Glasgow", lat: 55.8642, lon: -4.2518, locality: 52511215748, chunk: 2100419149, region: 5250557, shard: 61},
		{name: "Stirling", lat: 56.1165, lon: -3.9369, locality: 52601936063, chunk: 2104091212, region: 5261360, shard: 48},
		{name: "cell edge", lat: 55.032, lon: -4.0, locality: 52211336000, chunk: 2088467200, region: 5221760, shard: 0},
		{name: "antimeridian west", lat: 0, lon: -180, locality: 32400000000, chunk: 1296000000, region: 3240000, shard: 0},
		{name: "antimeridian east", lat: 0, lon: 179.9999, locality: 32400359999, chunk: 1296071999, region: 3243599, shard: 15},
		{name: "north pole", lat: 90, lon: 0, locality: 64800180000, chunk: 2592036000, region: 6481800, shard: 8},
		{name: "south pole", lat: -90, lon: 0, locality: 180000, chunk: 36000, region: 1800, shard: 8},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Of(tt.lat, tt.lon)
			if err != nil {
				t.Fatalf("Of(%v, %v): %v", tt.lat, tt.lon, err)
			}
			if int64(got) != tt.locality {
				t.Errorf("locality = %d, want %d", got, tt.locality)
			}
			if c := got.Chunk(); c != tt.chunk {
				t.Errorf("chunk = %d, want %d", c, tt.chunk)
			}
			if r := got.Region(); r != tt.region {
				t.Errorf("region = %d, want %d", r, tt.region)
			}
			if s := got.Shard(6); s != tt.shard {
				t.Errorf("shard(64) = %d, want %d", s, tt.shard)
			}
			if !got.Valid() {
				t.Errorf("Valid() = false for %d", got)
			}
		})
	}
}

func TestRejects(t *testing.T) {
	tests := []struct {
		name     string
		lat, lon float64
		want     error
	}{
		{name: "NaN latitude", lat: math.NaN(), lon: 0, want: ErrLatitude},
		{name: "+Inf latitude", lat: math.Inf(1), lon: 0, want: ErrLatitude},
		{name: "latitude above 90", lat: 90.0001, lon: 0, want: ErrLatitude},
		{name: "latitude below -90", lat: -91, lon: 0, want: ErrLatitude},
		{name: "NaN longitude", lat: 0, lon: math.NaN(), want: ErrLongitude},
		{name: "-Inf longitude", lat: 0, lon: math.Inf(-1), want: ErrLongitude},
		{name: "longitude 180", lat: 0, lon: 180, want: ErrLongitude},
		{name: "longitude below -180", lat: 0, lon: -180.5, want: ErrLongitude},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Of(tt.lat, tt.lon); !errors.Is(err, tt.want) {
				t.Errorf("Of(%v, %v) error = %v, want %v", tt.lat, tt.lon, err, tt.want)
			}
		})
	}
}

func TestNeighbours(t *testing.T) {
	mustOf := func(lat, lon float64) Index {
		t.Helper()
		i, err := Of(lat, lon)
		if err != nil {
			t.Fatal(err)
		}
		return i
	}
	east := mustOf(0, 179.9999) // col 359999
	west := mustOf(0, -180)     // col 0
	tests := []struct {
		name string
		got  Index
		want Index
	}{
		{name: "east of last column wraps to column 0", got: east.East(), want: west},
		{name: "west of column 0 wraps to last column", got: west.West(), want: east},
		{name: "east is +1", got: mustOf(55.9533, -3.1883).East(), want: 52543256812},
		{name: "west is -1", got: mustOf(55.9533, -3.1883).West(), want: 52543256810},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got != tt.want {
				t.Errorf("got %d, want %d", tt.got, tt.want)
			}
		})
	}

	ed := mustOf(55.9533, -3.1883)
	if n, ok := ed.North(); !ok || n != ed+Cols {
		t.Errorf("North = %d, %v; want %d", n, ok, ed+Cols)
	}
	if s, ok := ed.South(); !ok || s != ed-Cols {
		t.Errorf("South = %d, %v; want %d", s, ok, ed-Cols)
	}
	if _, ok := mustOf(90, 0).North(); ok {
		t.Error("north pole has a northern neighbour")
	}
	if _, ok := mustOf(-90, 0).South(); ok {
		t.Error("south pole has a southern neighbour")
	}
	if n := len(ed.Neighbours()); n != 8 {
		t.Errorf("len(Neighbours) = %d, want 8", n)
	}
	if n := len(mustOf(90, 0).Neighbours()); n != 5 {
		t.Errorf("len(Neighbours) at the pole = %d, want 5", n)
	}
	if !slices.Contains(east.Neighbours(), west) {
		t.Error("antimeridian neighbours do not include the cell across it")
	}
}

func TestChunkLocalities(t *testing.T) {
	ed := Index(52543256811)
	cells := ChunkLocalities(ed.Chunk())
	if len(cells) != 25 {
		t.Fatalf("len = %d, want 25", len(cells))
	}
	if !slices.Contains(cells, ed) {
		t.Errorf("chunk %d does not contain %d", ed.Chunk(), ed)
	}
	for _, c := range cells {
		if c.Chunk() != ed.Chunk() {
			t.Errorf("cell %d is in chunk %d, want %d", c, c.Chunk(), ed.Chunk())
		}
	}
	if n := len(ChunkLocalities(Index(64800180000).Chunk())); n != 5 {
		t.Errorf("pole chunk has %d cells, want 5", n)
	}
}
