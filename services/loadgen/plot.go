package loadgen

import (
	"fmt"
	"image/color"
	"os"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

var palette = []color.Color{
	color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff},
	color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff},
	color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff},
	color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff},
}

// writePlot draws the run over time as a PNG of four panels: offered and
// achieved rate, ack latency percentiles, consumer lag per pipeline, and
// freshness per store.
func writePlot(path string, r *CampaignResult) error {
	type series struct {
		name string
		y    func(Point) (float64, bool)
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	panels := []struct {
		title, unit string
		series      []series
	}{
		{"Records per second", "records/s", []series{
			{"offered", func(p Point) (float64, bool) { return p.Offered, true }},
			{"accepted", func(p Point) (float64, bool) { return p.Accepted, true }},
		}},
		{"Ack latency (from the scheduled time)", "ms", []series{
			{"p50", func(p Point) (float64, bool) { return ms(p.P50), true }},
			{"p99", func(p Point) (float64, bool) { return ms(p.P99), true }},
			{"p99.9", func(p Point) (float64, bool) { return ms(p.P999), true }},
		}},
		{"Consumer lag", "records", lagSeries(func(i int) series {
			return series{Stores[i], func(p Point) (float64, bool) { return float64(p.Lag[i]), p.Lag[i] >= 0 }}
		})},
		{"Freshness: Submit to readable", "ms", lagSeries(func(i int) series {
			return series{map[int]string{0: "timeline (WatchChunk)", 1: "postgres (router)", 2: "search (alias)"}[i],
				func(p Point) (float64, bool) { return ms(p.Fresh[i]), p.Fresh[i] > 0 }}
		})},
	}
	const w, h = 10 * vg.Inch, 12 * vg.Inch
	img := vgimg.New(w, h)
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: len(panels), Cols: 1, PadX: vg.Millimeter, PadY: 4 * vg.Millimeter, PadTop: 2 * vg.Millimeter, PadBottom: 2 * vg.Millimeter}
	for i, pn := range panels {
		p := plot.New()
		p.Title.Text = pn.title
		p.X.Label.Text = "seconds since start"
		p.Y.Label.Text = pn.unit
		p.Y.Min = 0
		p.Legend.Top = true
		for j, s := range pn.series {
			var xy plotter.XYs
			for _, pt := range r.Points {
				if y, ok := s.y(pt); ok {
					xy = append(xy, plotter.XY{X: pt.At.Seconds(), Y: y})
				}
			}
			if len(xy) == 0 {
				continue
			}
			l, err := plotter.NewLine(xy)
			if err != nil {
				return fmt.Errorf("plotting %s: %w", s.name, err)
			}
			l.Color = palette[j%len(palette)]
			l.Width = vg.Points(1.5)
			p.Add(l)
			p.Legend.Add(s.name, l)
		}
		p.Draw(tiles.At(dc, 0, i))
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("writing the plot: %w", err)
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("writing the plot to %s: %w", path, err)
	}
	return f.Close()
}

func lagSeries[S any](f func(int) S) []S {
	out := make([]S, len(Stores))
	for i := range out {
		out[i] = f(i)
	}
	return out
}
