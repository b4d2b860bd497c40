// Package locality computes Chapper's locality index and the cells built on
// it (chunk, region, logical shard), as DESIGN.md defines them. The key
// format is part of the contract: every implementation (Go, SQL, JavaScript)
// must put a point in the same cell, so row and column are computed in
// float64 exactly as written there.
package locality

import (
	"errors"
	"fmt"
	"math"
)

// Grid constants of the index.
const (
	// Cols is the number of columns (0.001° of longitude each) around the globe.
	Cols = 360000
	// MaxRow is the row of the north pole (lat = 90).
	MaxRow = 180000
	// ChunkSize is the side of a chunk in localities.
	ChunkSize = 5
	// ChunkCols is the number of chunk columns around the globe.
	ChunkCols = Cols / ChunkSize
	// RegionSize is the side of a region in localities (0.1°).
	RegionSize = 100
	// RegionCols is the number of region columns around the globe.
	RegionCols = Cols / RegionSize
)

// Errors returned by Of for a point that has no cell.
var (
	ErrLatitude  = errors.New("latitude must be a finite number in [-90, 90]")
	ErrLongitude = errors.New("longitude must be a finite number in [-180, 180)")
)

// Index is a locality index: row*Cols + col.
type Index int64

// Cell is a locality's row and column.
type Cell struct {
	Row, Col int64
}

// CellOf returns the row and column of a point, or ErrLatitude/ErrLongitude.
func CellOf(lat, lon float64) (Cell, error) {
	if math.IsNaN(lat) || math.IsInf(lat, 0) || lat < -90 || lat > 90 {
		return Cell{}, fmt.Errorf("%w: got %v", ErrLatitude, lat)
	}
	if math.IsNaN(lon) || math.IsInf(lon, 0) || lon < -180 || lon >= 180 {
		return Cell{}, fmt.Errorf("%w: got %v", ErrLongitude, lon)
	}
	row := int64(math.Floor((lat + 90) * 1000))
	col := int64(math.Floor((lon + 180) * 1000))
	// lon just below 180 can round up to col 360000 in float64; it belongs to
	// the last column, not a column past the antimeridian.
	if col >= Cols {
		col = Cols - 1
	}
	return Cell{Row: row, Col: col}, nil
}

// Of returns the locality index of a point.
func Of(lat, lon float64) (Index, error) {
	c, err := CellOf(lat, lon)
	if err != nil {
		return 0, err
	}
	return c.Index(), nil
}

// Index returns the cell's locality index.
func (c Cell) Index() Index { return Index(c.Row*Cols + c.Col) }

// Cell returns the row and column of the index.
func (i Index) Cell() Cell { return Cell{Row: int64(i) / Cols, Col: int64(i) % Cols} }

// Valid reports whether i names a cell of the grid.
func (i Index) Valid() bool { return i >= 0 && int64(i) <= MaxRow*Cols+Cols-1 }

// Chunk returns the index of the 5×5-locality chunk that holds i.
func (i Index) Chunk() int64 {
	c := i.Cell()
	return (c.Row/ChunkSize)*ChunkCols + c.Col/ChunkSize
}

// Region returns the index of the 0.1° region that holds i.
func (i Index) Region() int64 {
	c := i.Cell()
	return (c.Row/RegionSize)*RegionCols + c.Col/RegionSize
}

// Shard returns the logical shard of i among 2^bits shards: region mod 2^bits.
func (i Index) Shard(bits uint) int64 { return ShardOfRegion(i.Region(), bits) }

// ShardOfRegion returns region mod 2^bits, the logical shard of a region.
func ShardOfRegion(region int64, bits uint) int64 { return region & (1<<bits - 1) }

// East returns the neighbour to the east, wrapping at the antimeridian.
func (i Index) East() Index {
	c := i.Cell()
	c.Col = (c.Col + 1) % Cols
	return c.Index()
}

// West returns the neighbour to the west, wrapping at the antimeridian.
func (i Index) West() Index {
	c := i.Cell()
	c.Col = (c.Col + Cols - 1) % Cols
	return c.Index()
}

// North returns the neighbour to the north; ok is false at the north pole.
func (i Index) North() (n Index, ok bool) {
	c := i.Cell()
	if c.Row >= MaxRow {
		return 0, false
	}
	c.Row++
	return c.Index(), true
}

// South returns the neighbour to the south; ok is false at the south pole.
func (i Index) South() (s Index, ok bool) {
	c := i.Cell()
	if c.Row <= 0 {
		return 0, false
	}
	c.Row--
	return c.Index(), true
}

// Neighbours returns the up to eight cells around i (fewer at the poles),
// wrapping east/west at the antimeridian.
func (i Index) Neighbours() []Index {
	out := make([]Index, 0, 8)
	rows := []Index{i}
	if n, ok := i.North(); ok {
		rows = append(rows, n)
	}
	if s, ok := i.South(); ok {
		rows = append(rows, s)
	}
	for k, r := range rows {
		if k > 0 {
			out = append(out, r)
		}
		out = append(out, r.East(), r.West())
	}
	return out
}

// ChunkLocalities returns the localities of a chunk, row by row from the
// south-west corner. A chunk on the north pole row has fewer rows.
func ChunkLocalities(chunk int64) []Index {
	row0 := (chunk / ChunkCols) * ChunkSize
	col0 := (chunk % ChunkCols) * ChunkSize
	out := make([]Index, 0, ChunkSize*ChunkSize)
	for r := row0; r < row0+ChunkSize && r <= MaxRow; r++ {
		for c := col0; c < col0+ChunkSize; c++ {
			out = append(out, Cell{Row: r, Col: c}.Index())
		}
	}
	return out
}
