// Package loadgen submits generated canvassing records to an ingest
// endpoint at a chosen rate from several concurrent clients and measures
// what came back: accepted records per second and ack latency percentiles.
// `chapper loadgen` and the ingest benchmark use it.
package loadgen

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Config says what load to put on which endpoint.
type Config struct {
	// Mode is closed (the default: Records records from Clients clients,
	// each waiting for its answer) or campaign (see CampaignConfig).
	Mode      string
	Campaign  CampaignConfig
	Addr      string
	Records   int
	Rate      float64
	Clients   int
	BatchSize int
	Kind      string
	Timeout   time.Duration
	// Pregenerate builds and encodes every request before the clock
	// starts, so the measurement holds the server's work and the wire, not
	// the clients' record generation (the benchmark's raw baseline also
	// sends pre-encoded records). It holds all requests in memory.
	Pregenerate bool
	// Requests, when set, are the pre-encoded SubmitRequests to send, in
	// order, instead of generated ones (see Encode); Records is then the
	// number of records they hold.
	Requests [][]byte
	// Token, when set, is sent as "authorization: Bearer <Token>" with
	// every Submit (ingest with authentication on).
	Token string
}

// RegisterFlags registers the load generator's flags on fs under prefix.
func (c *Config) RegisterFlags(prefix string, fs *flag.FlagSet) {
	fs.StringVar(&c.Mode, prefix+".mode", "closed", "closed: -loadgen.records records from -loadgen.clients clients, each waiting for its answer; campaign: simulated canvassers at a fixed arrival rate (the -loadgen.canvassers ... flags).")
	fs.StringVar(&c.Addr, prefix+".addr", "127.0.0.1:7070", "Ingest gRPC address to submit to.")
	fs.IntVar(&c.Records, prefix+".records", 100000, "Records to submit in all.")
	fs.Float64Var(&c.Rate, prefix+".rate", 0, "Records per second offered, spread over the clients; 0 submits as fast as the clients can.")
	fs.IntVar(&c.Clients, prefix+".clients", 16, "Concurrent clients, each with its own connection.")
	fs.IntVar(&c.BatchSize, prefix+".batch-size", 100, "Records per Submit.")
	fs.StringVar(&c.Token, prefix+".token", "", "Bearer token sent with every Submit (chapper token issue), for ingest with authentication on.")
	fs.StringVar(&c.Kind, prefix+".kind", "visits", "Records to generate: visits, intentions, followups or mixed.")
	fs.DurationVar(&c.Timeout, prefix+".timeout", 10*time.Second, "Deadline of each Submit.")
	fs.BoolVar(&c.Pregenerate, prefix+".pregenerate", false, "Build and encode every request before starting the clock (memory: about 300 bytes per record).")
	c.Campaign.RegisterFlags(prefix, fs)
}

// Validate reports the first problem with the configuration.
func (c *Config) Validate() error {
	switch c.Mode {
	case "", "closed":
	case "campaign":
		if c.Addr == "" {
			return errors.New("loadgen: no address")
		}
		return c.Campaign.Validate()
	default:
		return fmt.Errorf("loadgen: unknown mode %q (want closed or campaign)", c.Mode)
	}
	switch {
	case c.Addr == "":
		return errors.New("loadgen: no address")
	case c.Records < 1 || c.Clients < 1 || c.BatchSize < 1:
		return errors.New("loadgen: records, clients and batch size must be at least 1")
	case c.Rate < 0:
		return errors.New("loadgen: rate must not be negative")
	case c.Timeout <= 0:
		return errors.New("loadgen: timeout must be positive")
	}
	switch c.Kind {
	case "visits", "intentions", "followups", "mixed":
		return nil
	}
	return fmt.Errorf("loadgen: unknown kind %q (want visits, intentions, followups or mixed)", c.Kind)
}

// Result is what a run measured.
type Result struct {
	Submitted, Accepted, Duplicate, Rejected int
	// Failed counts records of Submits that returned an error.
	Failed int
	// FirstError is the first Submit error, if any.
	FirstError error
	Elapsed    time.Duration
	// Latencies holds each successful Submit's latency, sorted. With a rate
	// set, latency runs from the call's scheduled start, so a client that
	// fell behind shows up in it (no coordinated omission).
	Latencies []time.Duration
}

// PerSecond returns accepted records per second.
func (r Result) PerSecond() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Accepted) / r.Elapsed.Seconds()
}

// Percentile returns the p-th percentile latency (p in [0, 100]).
func (r Result) Percentile(p float64) time.Duration {
	if len(r.Latencies) == 0 {
		return 0
	}
	i := int(float64(len(r.Latencies)-1) * p / 100)
	return r.Latencies[i]
}

// String summarises r in one line.
func (r Result) String() string {
	s := fmt.Sprintf("%d records in %v: %.0f accepted/s (accepted %d, duplicate %d, rejected %d, failed %d); latency p50 %v p90 %v p99 %v max %v",
		r.Submitted, r.Elapsed.Round(time.Millisecond), r.PerSecond(), r.Accepted, r.Duplicate, r.Rejected, r.Failed,
		r.Percentile(50).Round(10*time.Microsecond), r.Percentile(90).Round(10*time.Microsecond),
		r.Percentile(99).Round(10*time.Microsecond), r.Percentile(100).Round(10*time.Microsecond))
	if r.FirstError != nil {
		s += fmt.Sprintf("; first error: %v", r.FirstError)
	}
	return s
}

// Run connects cfg.Clients clients to cfg.Addr and submits cfg.Records
// generated records in batches, paced to cfg.Rate when it is set. It returns
// when every batch was answered or ctx is done.
func Run(ctx context.Context, cfg Config) (Result, error) {
	if err := cfg.Validate(); err != nil {
		return Result{}, err
	}
	conns := make([]*grpc.ClientConn, cfg.Clients)
	for i := range conns {
		c, err := grpc.NewClient(cfg.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return Result{}, fmt.Errorf("connecting to %s: %w", cfg.Addr, err)
		}
		defer c.Close()
		c.Connect()
		conns[i] = c
	}

	batches := (cfg.Records + cfg.BatchSize - 1) / cfg.BatchSize
	var interval time.Duration
	if cfg.Rate > 0 {
		interval = time.Duration(float64(time.Second) * float64(cfg.BatchSize) / cfg.Rate)
	}
	type slot struct {
		n     int       // records in the batch
		start time.Time // scheduled start; zero when not paced
		body  []byte    // pre-encoded request when cfg.Pregenerate
	}
	slots := make(chan slot, batches)
	bodies := cfg.Requests
	if bodies == nil && cfg.Pregenerate {
		var err error
		if bodies, err = Encode(rand.New(rand.NewPCG(7, 7)), cfg.Kind, cfg.Records, cfg.BatchSize); err != nil {
			return Result{}, err
		}
	}
	if bodies != nil && len(bodies) != batches {
		return Result{}, fmt.Errorf("loadgen: %d pre-encoded requests for %d batches", len(bodies), batches)
	}

	var (
		mu        sync.Mutex
		res       Result
		latencies = make([]time.Duration, 0, batches)
		seq       atomic.Uint64
	)
	start := time.Now()
	go func() {
		defer close(slots)
		left := cfg.Records
		for i := 0; left > 0; i++ {
			n := min(left, cfg.BatchSize)
			left -= n
			s := slot{n: n}
			if bodies != nil {
				s.body = bodies[i]
			}
			if interval > 0 {
				s.start = start.Add(time.Duration(i) * interval)
				if d := time.Until(s.start); d > 0 {
					select {
					case <-time.After(d):
					case <-ctx.Done():
						return
					}
				}
			}
			select {
			case slots <- s:
			case <-ctx.Done():
				return
			}
		}
	}()

	var wg sync.WaitGroup
	for c := range cfg.Clients {
		conn := conns[c]
		client := canvassv1.NewIngestServiceClient(conn)
		rng := rand.New(rand.NewPCG(uint64(c), seq.Add(1)))
		wg.Go(func() {
			for s := range slots {
				begin := s.start
				if begin.IsZero() {
					begin = time.Now()
				}
				cctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
				if cfg.Token != "" {
					cctx = metadata.AppendToOutgoingContext(cctx, "authorization", "Bearer "+cfg.Token)
				}
				var (
					resp *canvassv1.SubmitResponse
					err  error
				)
				if s.body != nil {
					resp = &canvassv1.SubmitResponse{}
					err = conn.Invoke(cctx, canvassv1.IngestService_Submit_FullMethodName, s.body, resp, grpc.ForceCodecV2(preEncoded{}))
				} else {
					resp, err = client.Submit(cctx, Generate(rng, cfg.Kind, s.n, time.Now()))
				}
				cancel()
				took := time.Since(begin)
				mu.Lock()
				res.Submitted += s.n
				if err != nil {
					res.Failed += s.n
					if res.FirstError == nil {
						res.FirstError = err
					}
				} else {
					latencies = append(latencies, took)
					for _, r := range resp.GetResults() {
						switch r.GetStatus() {
						case canvassv1.Status_STATUS_ACCEPTED:
							res.Accepted++
						case canvassv1.Status_STATUS_DUPLICATE:
							res.Duplicate++
						default:
							res.Rejected++
						}
					}
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	slices.Sort(latencies)
	res.Latencies = latencies
	if err := ctx.Err(); err != nil {
		return res, err
	}
	return res, nil
}

// Encode generates records of kind and encodes them as SubmitRequests of
// batchSize records (the last may be smaller), for Config.Requests.
func Encode(rng *rand.Rand, kind string, records, batchSize int) ([][]byte, error) {
	now := time.Now()
	var out [][]byte
	for left := records; left > 0; left -= batchSize {
		b, err := proto.Marshal(Generate(rng, kind, min(left, batchSize), now))
		if err != nil {
			return nil, fmt.Errorf("encoding a request: %w", err)
		}
		out = append(out, b)
	}
	return out, nil
}

// Generate returns a SubmitRequest of n valid records of kind (visits,
// intentions, followups, or mixed for a third of each) with fresh UUIDv7
// ids, spread over the localities of central Scotland.
func Generate(rng *rand.Rand, kind string, n int, now time.Time) *canvassv1.SubmitRequest {
	req := &canvassv1.SubmitRequest{}
	for i := range n {
		k := kind
		if k == "mixed" {
			k = [...]string{"visits", "intentions", "followups"}[i%3]
		}
		loc := &canvassv1.Location{Latitude: 55.8 + rng.Float64()*0.3, Longitude: -4.3 + rng.Float64()*1.2}
		at := timestamppb.New(now.Add(-time.Duration(rng.IntN(3600)) * time.Second))
		id := uuid.Must(uuid.NewV7()).String()
		switch k {
		case "visits":
			req.Visits = append(req.Visits, &canvassv1.Visit{
				Id: id, DwellingId: fmt.Sprintf("dwelling-%d", rng.IntN(1_000_000)),
				Address:  fmt.Sprintf("%d High Street", 1+rng.IntN(300)),
				Location: loc, CanvasserId: fmt.Sprintf("canvasser-%d", rng.IntN(35000)),
				VisitedAt: at, Outcome: canvassv1.Outcome(rng.IntN(5)),
			})
		case "intentions":
			req.Intentions = append(req.Intentions, &canvassv1.Intention{
				Id: id, VisitId: uuid.Must(uuid.NewV7()).String(),
				ElectorId: fmt.Sprintf("elector-%d", rng.IntN(5_000_000)),
				Option:    [...]string{"yes", "no", "undecided"}[rng.IntN(3)],
				Location:  loc, RecordedAt: at, CanvasserId: fmt.Sprintf("canvasser-%d", rng.IntN(35000)),
			})
		case "followups":
			req.Followups = append(req.Followups, &canvassv1.FollowupRequest{
				Id: id, VisitId: uuid.Must(uuid.NewV7()).String(),
				ElectorId: fmt.Sprintf("elector-%d", rng.IntN(5_000_000)),
				Issue:     [...]string{"housing", "transport", "schools", "health"}[rng.IntN(4)],
				Method:    canvassv1.Method(rng.IntN(4)), Location: loc, RecordedAt: at,
			})
		}
	}
	return req
}

// preEncoded sends a request that is already protobuf bytes as it is and
// decodes the response as protobuf.
type preEncoded struct{}

func (preEncoded) Marshal(v any) (mem.BufferSlice, error) {
	b, ok := v.([]byte)
	if !ok {
		return nil, fmt.Errorf("pre-encoded codec: want []byte, got %T", v)
	}
	return mem.BufferSlice{mem.SliceBuffer(b)}, nil
}

func (preEncoded) Unmarshal(data mem.BufferSlice, v any) error {
	m, ok := v.(proto.Message)
	if !ok {
		return fmt.Errorf("pre-encoded codec: want a proto.Message, got %T", v)
	}
	return proto.Unmarshal(data.Materialize(), m)
}

func (preEncoded) Name() string { return "proto" }
