package loadgen

import (
	"context"
	"fmt"
	"io"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
)

// maxPoints bounds the samples of a run's time series: the sampling
// interval grows with the duration, so memory stays constant however long
// the campaign runs.
const maxPoints = 600

// Stores, in the order of Point.Lag and Point.Fresh.
var Stores = [3]string{"timeline", "persist", "search"}

// Point is one sample of a campaign's time series.
type Point struct {
	At                time.Duration // since the start
	Offered, Accepted float64       // records per second in the interval
	// P50, P99 and P999 are the ack latencies of the interval's Submits.
	P50, P99, P999 time.Duration
	// Lag is each pipeline's consumer lag in records (-1: not measured).
	Lag [3]int64
	// Fresh is each store's newest freshness sample (0: none in the interval).
	Fresh [3]time.Duration
}

// CampaignResult is what a campaign measured.
type CampaignResult struct {
	Elapsed                                 time.Duration
	OfferedRate                             float64 // records per second the configuration offers
	Offered                                 int     // records generated (sent or still queued offline)
	Sent                                    int     // records in answered or failed Submits
	Queued                                  int     // records still queued on offline phones at the end
	Accepted, Duplicate, Rejected, Conflict int
	// Failed counts records of Submits that returned an error; Shed those
	// the load generator dropped because its backlog was full.
	Failed, Shed int
	// RetryDuplicate counts records of resent batches answered DUPLICATE;
	// RetryWrong those answered otherwise (ACCEPTED twice is a lost
	// duplicate check).
	RetryDuplicate, RetryWrong int
	FirstError                 error
	// Latency is the ack latency histogram of every answered Submit,
	// measured from its scheduled time.
	Latency *hdrhistogram.Histogram
	// Fresh holds, per store, the time from a probe's Submit to its record
	// being readable there.
	Fresh  [3]*hdrhistogram.Histogram
	Points []Point
}

func newHist() *hdrhistogram.Histogram {
	// 1 µs to 5 minutes, 3 significant digits: about 40 KB each.
	return hdrhistogram.New(1, int64(5*time.Minute/time.Microsecond), 3)
}

func us(h *hdrhistogram.Histogram, q float64) time.Duration {
	return time.Duration(h.ValueAtQuantile(q)) * time.Microsecond
}

// stats collects a campaign's counts and histograms. It is safe for
// concurrent use.
type stats struct {
	mu       sync.Mutex
	start    time.Time
	interval time.Duration
	res      CampaignResult
	window   *hdrhistogram.Histogram
	winOff   int
	winAcc   int
	fresh    [3]time.Duration
}

func newStats(start time.Time, interval time.Duration) *stats {
	s := &stats{start: start, interval: interval, window: newHist()}
	s.res.Latency = newHist()
	for i := range s.res.Fresh {
		s.res.Fresh[i] = newHist()
	}
	return s
}

func (s *stats) offered(_ time.Time, n int) {
	s.mu.Lock()
	s.res.Offered += n
	s.winOff += n
	s.mu.Unlock()
}

func (s *stats) shed(n int) {
	s.mu.Lock()
	s.res.Shed += n
	s.mu.Unlock()
}

func (s *stats) failed(n int, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.res.Sent += n
	s.res.Failed += n
	if s.res.FirstError == nil {
		s.res.FirstError = err
	}
}

// answered records a Submit scheduled at at.
func (s *stats) answered(at time.Time, n int, resp *canvassv1.SubmitResponse, err error) {
	took := max(time.Since(at), time.Microsecond)
	if err != nil {
		s.failed(n, err)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.res.Sent += n
	_ = s.res.Latency.RecordValue(int64(took / time.Microsecond))
	_ = s.window.RecordValue(int64(took / time.Microsecond))
	for _, r := range resp.GetResults() {
		switch r.GetStatus() {
		case canvassv1.Status_STATUS_ACCEPTED:
			s.res.Accepted++
			s.winAcc++
		case canvassv1.Status_STATUS_DUPLICATE:
			s.res.Duplicate++
		case canvassv1.Status_STATUS_CONFLICT:
			s.res.Conflict++
		default:
			s.res.Rejected++
		}
	}
}

// retried records the answer to a batch resent after a lost answer.
func (s *stats) retried(n int, resp *canvassv1.SubmitResponse, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		if s.res.FirstError == nil {
			s.res.FirstError = fmt.Errorf("resending a batch: %w", err)
		}
		s.res.RetryWrong += n
		return
	}
	for _, r := range resp.GetResults() {
		switch r.GetStatus() {
		case canvassv1.Status_STATUS_DUPLICATE, canvassv1.Status_STATUS_REJECTED:
			s.res.RetryDuplicate++
		default:
			s.res.RetryWrong++
		}
	}
}

// freshness records that a probe's record reached store i after d.
func (s *stats) freshness(i int, d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	_ = s.res.Fresh[i].RecordValue(int64(max(d, time.Microsecond) / time.Microsecond))
	s.fresh[i] = d
}

// sampleEvery adds a Point every interval until ctx is done.
func (s *stats) sampleEvery(ctx context.Context, p *probes) {
	t := time.NewTicker(s.interval)
	defer t.Stop()
	last := s.start
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			lag := p.latestLag()
			s.mu.Lock()
			secs := now.Sub(last).Seconds()
			pt := Point{
				At: now.Sub(s.start), Offered: float64(s.winOff) / secs, Accepted: float64(s.winAcc) / secs,
				P50: us(s.window, 50), P99: us(s.window, 99), P999: us(s.window, 99.9),
				Lag: lag, Fresh: s.fresh,
			}
			if len(s.res.Points) < maxPoints {
				s.res.Points = append(s.res.Points, pt)
			}
			s.window.Reset()
			s.winOff, s.winAcc, s.fresh, last = 0, 0, [3]time.Duration{}, now
			s.mu.Unlock()
		}
	}
}

func (s *stats) result(elapsed time.Duration, cfg CampaignConfig) *CampaignResult {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.res
	r.Elapsed = elapsed
	r.OfferedRate = cfg.OfferedRate()
	return &r
}

// AcceptedRate returns accepted records per second over the run.
func (r *CampaignResult) AcceptedRate() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Accepted) / r.Elapsed.Seconds()
}

// WriteTable prints the run's figures as a table.
func (r *CampaignResult) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	row := func(name, value string) { fmt.Fprintf(tw, "%s\t%s\t\n", name, value) }
	row("duration", r.Elapsed.Round(time.Millisecond).String())
	row("offered (configured)", fmt.Sprintf("%.0f records/s", r.OfferedRate))
	row("offered (generated)", fmt.Sprintf("%d records, %.0f/s", r.Offered, float64(r.Offered)/r.Elapsed.Seconds()))
	row("accepted", fmt.Sprintf("%d records, %.0f/s", r.Accepted, r.AcceptedRate()))
	row("duplicate / rejected / conflict", fmt.Sprintf("%d / %d / %d", r.Duplicate, r.Rejected, r.Conflict))
	row("failed / shed / left queued offline", fmt.Sprintf("%d / %d / %d", r.Failed, r.Shed, r.Queued))
	row("resent batches: duplicate / wrong", fmt.Sprintf("%d / %d", r.RetryDuplicate, r.RetryWrong))
	row("ack latency p50 / p99 / p99.9 / max", fmt.Sprintf("%v / %v / %v / %v", us(r.Latency, 50), us(r.Latency, 99), us(r.Latency, 99.9),
		time.Duration(r.Latency.Max())*time.Microsecond))
	for i, name := range Stores {
		h := r.Fresh[i]
		if h.TotalCount() == 0 {
			row("freshness "+name, "not measured")
			continue
		}
		row("freshness "+name+" p50 / p99", fmt.Sprintf("%v / %v (%d probes)", us(h, 50), us(h, 99), h.TotalCount()))
	}
	if r.FirstError != nil {
		row("first error", r.FirstError.Error())
	}
	return tw.Flush()
}
