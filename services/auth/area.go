package auth

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/chapper/chapper/proto/locality"
)

// Area is the part of the world a token's holder works in: a set of regions
// (0.1° tiles, DESIGN.md) or a bounding box, not both. A chunk is inside
// when it lies in one of the regions (a chunk never straddles two) or
// overlaps the box.
type Area struct {
	// Regions are region indexes.
	Regions []int64 `json:"regions,omitempty"`
	// BBox is [min_lat, min_lon, max_lat, max_lon] in degrees; it does not
	// wrap at the antimeridian.
	BBox []float64 `json:"bbox,omitempty"`
}

// Validate reports what is wrong with the area.
func (a *Area) Validate() error {
	switch {
	case len(a.Regions) > 0 && len(a.BBox) > 0:
		return errors.New("give regions or bbox, not both")
	case len(a.Regions) == 0 && len(a.BBox) == 0:
		return errors.New("give regions or bbox")
	case len(a.BBox) > 0:
		if len(a.BBox) != 4 {
			return fmt.Errorf("bbox must have 4 numbers (min_lat, min_lon, max_lat, max_lon), got %d", len(a.BBox))
		}
		minLat, minLon, maxLat, maxLon := a.BBox[0], a.BBox[1], a.BBox[2], a.BBox[3]
		for _, x := range a.BBox {
			if math.IsNaN(x) || math.IsInf(x, 0) {
				return errors.New("bbox numbers must be finite")
			}
		}
		if minLat < -90 || maxLat > 90 || minLat > maxLat {
			return fmt.Errorf("bbox latitudes must satisfy -90 <= min_lat <= max_lat <= 90, got %v and %v", minLat, maxLat)
		}
		if minLon < -180 || maxLon >= 180 || minLon > maxLon {
			return fmt.Errorf("bbox longitudes must satisfy -180 <= min_lon <= max_lon < 180, got %v and %v", minLon, maxLon)
		}
	default:
		maxRegion := locality.Index(locality.MaxRow*locality.Cols + locality.Cols - 1).Region()
		for _, r := range a.Regions {
			if r < 0 || r > maxRegion {
				return fmt.Errorf("region %d is outside [0, %d]", r, maxRegion)
			}
		}
	}
	return nil
}

// bboxCells returns the box's rows and columns of localities, inclusive.
func (a *Area) bboxCells() (rowMin, colMin, rowMax, colMax int64) {
	lo, _ := locality.CellOf(a.BBox[0], a.BBox[1])
	hiLat, hiLon := a.BBox[2], a.BBox[3]
	hi, err := locality.CellOf(hiLat, hiLon)
	if err != nil {
		hi = locality.Cell{Row: locality.MaxRow, Col: locality.Cols - 1}
	}
	return lo.Row, lo.Col, hi.Row, hi.Col
}

// AllowsChunk reports whether chunk is inside the area; a nil area allows
// everything.
func (a *Area) AllowsChunk(chunk int64) bool {
	if a == nil {
		return true
	}
	crow, ccol := chunk/locality.ChunkCols, chunk%locality.ChunkCols
	row, col := crow*locality.ChunkSize, ccol*locality.ChunkSize
	if len(a.Regions) > 0 {
		// 100 localities a region side, 5 a chunk side: a chunk lies in one region.
		return slices.Contains(a.Regions, locality.Cell{Row: row, Col: col}.Index().Region())
	}
	rowMin, colMin, rowMax, colMax := a.bboxCells()
	return row <= rowMax && row+locality.ChunkSize-1 >= rowMin && col <= colMax && col+locality.ChunkSize-1 >= colMin
}

// AllowsLocality reports whether the locality is inside the area; a nil
// area allows everything.
func (a *Area) AllowsLocality(idx locality.Index) bool {
	if a == nil {
		return true
	}
	if len(a.Regions) > 0 {
		return slices.Contains(a.Regions, idx.Region())
	}
	c := idx.Cell()
	rowMin, colMin, rowMax, colMax := a.bboxCells()
	return c.Row >= rowMin && c.Row <= rowMax && c.Col >= colMin && c.Col <= colMax
}

// ParseArea parses `regions:<r>,<r>...` or `bbox:<min_lat>,<min_lon>,<max_lat>,<max_lon>`.
func ParseArea(s string) (*Area, error) {
	kind, list, ok := strings.Cut(s, ":")
	if !ok {
		return nil, fmt.Errorf("area %q: want regions:<r>,... or bbox:<min_lat>,<min_lon>,<max_lat>,<max_lon>", s)
	}
	a := &Area{}
	for _, f := range strings.Split(list, ",") {
		f = strings.TrimSpace(f)
		switch kind {
		case "regions":
			r, err := strconv.ParseInt(f, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("area region %q: not an integer", f)
			}
			a.Regions = append(a.Regions, r)
		case "bbox":
			x, err := strconv.ParseFloat(f, 64)
			if err != nil {
				return nil, fmt.Errorf("area bbox %q: not a number", f)
			}
			a.BBox = append(a.BBox, x)
		default:
			return nil, fmt.Errorf("area kind %q: want regions or bbox", kind)
		}
	}
	if err := a.Validate(); err != nil {
		return nil, fmt.Errorf("area %q: %w", s, err)
	}
	return a, nil
}
