package loadgen

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"github.com/chapper/chapper/proto/locality"
	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// CampaignConfig describes a simulated campaign: canvassers in teams, each
// team working neighbouring localities, knocking a door every few minutes
// and recording a visit and, when the door is answered, intentions and
// follow-up requests. Knocks arrive at a fixed rate (open loop), so a slow
// server shows up as latency and backlog, never as less offered load.
type CampaignConfig struct {
	// Canvassers is how many canvassers are out at once.
	Canvassers int
	// Duration is how long the campaign runs (wall time).
	Duration time.Duration
	// TeamSize is the number of canvassers per team; a team's knocks fall
	// in one chunk and its neighbours.
	TeamSize int
	// KnockEvery is the mean time between two knocks of one canvasser, in
	// campaign time. With the default mix (about 2 records per knock),
	// 100s gives 700 records/s per 35,000 canvassers (DESIGN.md's sizing).
	KnockEvery time.Duration
	// Speedup compresses time: campaign seconds per wall second. 10 with
	// 3,500 canvassers offers what 35,000 would.
	Speedup float64
	// OfflineShare is the share of phones offline at any moment; OfflineFor
	// is the mean length of an offline spell (campaign time). An offline
	// phone queues its records and flushes them when back online.
	OfflineShare float64
	OfflineFor   time.Duration
	// BadShare is the share of records made invalid (rejected by ingest),
	// RetryShare the share of answered Submits resent as if the answer had
	// been lost (all DUPLICATE), CorrectionShare the share of knocks that
	// correct the canvasser's previous intention (replaces_id).
	BadShare, RetryShare, CorrectionShare float64
	// Connections is the number of gRPC connections the phones share.
	Connections int
	// MaxInFlight bounds concurrent Submits; MaxBacklog bounds the Submits
	// waiting for a slot. Past the backlog a Submit is shed and counted.
	MaxInFlight, MaxBacklog int
	// Plot, when set, is the file the run's plot is written to (.png).
	Plot string
	// Seed makes the campaign reproducible.
	Seed uint64
	// Probes measures freshness to each store; see ProbeConfig.
	Probes ProbeConfig
	// Token, when set, returns the bearer token of a canvasser (one per
	// simulated canvasser when authentication is on); nil sends none.
	Token func(canvasserID string) (string, error) `json:"-"`
}

// RegisterFlags registers the campaign's flags on fs under prefix.
func (c *CampaignConfig) RegisterFlags(prefix string, fs *flag.FlagSet) {
	fs.IntVar(&c.Canvassers, prefix+".canvassers", 3500, "Campaign mode: canvassers out at once.")
	fs.DurationVar(&c.Duration, prefix+".duration", time.Minute, "Campaign mode: how long to run (wall time).")
	fs.IntVar(&c.TeamSize, prefix+".team-size", 8, "Campaign mode: canvassers per team (a team works one chunk and its neighbours).")
	fs.DurationVar(&c.KnockEvery, prefix+".knock-every", 100*time.Second, "Campaign mode: mean time between one canvasser's knocks, campaign time (100s: about 700 records/s per 35,000 canvassers).")
	fs.Float64Var(&c.Speedup, prefix+".speedup", 1, "Campaign mode: campaign seconds per wall second.")
	fs.Float64Var(&c.OfflineShare, prefix+".offline-share", 0.05, "Campaign mode: share of phones offline at any moment (they queue and flush later).")
	fs.DurationVar(&c.OfflineFor, prefix+".offline-for", 10*time.Minute, "Campaign mode: mean offline spell of a phone, campaign time.")
	fs.Float64Var(&c.BadShare, prefix+".bad-share", 0.005, "Campaign mode: share of records made invalid.")
	fs.Float64Var(&c.RetryShare, prefix+".retry-share", 0.02, "Campaign mode: share of answered Submits resent as if the answer was lost.")
	fs.Float64Var(&c.CorrectionShare, prefix+".correction-share", 0.01, "Campaign mode: share of knocks that correct the previous intention.")
	fs.IntVar(&c.Connections, prefix+".connections", 8, "Campaign mode: gRPC connections shared by the phones.")
	fs.IntVar(&c.MaxInFlight, prefix+".max-in-flight", 512, "Campaign mode: most Submits in flight at once.")
	fs.IntVar(&c.MaxBacklog, prefix+".max-backlog", 100000, "Campaign mode: most Submits waiting for a slot; more are shed and counted.")
	fs.StringVar(&c.Plot, prefix+".plot", "", "Campaign mode: write a PNG plot over time of rate, latency, lag and freshness to this file.")
	fs.Uint64Var(&c.Seed, prefix+".seed", 1, "Campaign mode: random seed.")
	c.Probes.RegisterFlags(prefix, fs)
}

// Validate reports the first problem with the configuration.
func (c *CampaignConfig) Validate() error {
	switch {
	case c.Canvassers < 1:
		return errors.New("loadgen: canvassers must be at least 1")
	case c.Duration <= 0:
		return errors.New("loadgen: duration must be positive")
	case c.Duration > 24*time.Hour:
		return errors.New("loadgen: duration is bounded to 24h")
	case c.TeamSize < 1:
		return errors.New("loadgen: team size must be at least 1")
	case c.KnockEvery <= 0 || c.Speedup <= 0:
		return errors.New("loadgen: knock-every and speedup must be positive")
	case c.OfflineShare < 0 || c.OfflineShare >= 1:
		return errors.New("loadgen: offline-share must be in [0, 1)")
	case c.OfflineShare > 0 && c.OfflineFor <= 0:
		return errors.New("loadgen: offline-for must be positive when phones go offline")
	case outside01(c.BadShare) || outside01(c.RetryShare) || outside01(c.CorrectionShare):
		return errors.New("loadgen: bad-share, retry-share and correction-share must be in [0, 1]")
	case c.Connections < 1 || c.MaxInFlight < 1 || c.MaxBacklog < 0:
		return errors.New("loadgen: connections and max-in-flight must be at least 1")
	}
	return nil
}

func outside01(f float64) bool { return f < 0 || f > 1 || math.IsNaN(f) }

// The knock mix: a visit per knock; an answered door (AnsweredShare) gives
// Electors intentions on average and a follow-up with FollowupShare.
const (
	AnsweredShare = 0.45
	MeanElectors  = 2.0
	FollowupShare = 0.25
)

// RecordsPerKnock is the mean number of records one knock produces.
const RecordsPerKnock = 1 + AnsweredShare*(MeanElectors+FollowupShare)

// OfferedRate returns the records per wall second the campaign offers.
func (c *CampaignConfig) OfferedRate() float64 {
	return float64(c.Canvassers) / c.KnockEvery.Seconds() * c.Speedup * RecordsPerKnock
}

// canvasser is one simulated phone. Only the scheduler goroutine touches it.
type canvasser struct {
	id           string
	team         int
	offlineUntil time.Time // wall time; zero when online
	onlineUntil  time.Time
	queue        *canvassv1.SubmitRequest // records waiting while offline
	lastIntent   *canvassv1.Intention     // the newest intention, for corrections
}

// team is where a team canvasses: the centre of its chunk.
type team struct{ lat, lon float64 }

// campaign is one run.
type campaign struct {
	cfg     CampaignConfig
	start   time.Time
	rng     *rand.Rand // used by the scheduler goroutine only
	people  []*canvasser
	teams   []team
	clients []canvassv1.IngestServiceClient
	sem     chan struct{}
	backlog atomic.Int64
	next    atomic.Uint64
	stats   *stats
	probes  *probes
	wg      sync.WaitGroup
}

// RunCampaign runs a campaign against addr and returns what it measured.
// It stops after cfg.Duration or when ctx is done, then waits for the
// Submits in flight (each bounded by timeout).
func RunCampaign(ctx context.Context, addr string, timeout time.Duration, cfg CampaignConfig) (*CampaignResult, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c := &campaign{cfg: cfg, rng: rand.New(rand.NewPCG(cfg.Seed, 0x63686170)), sem: make(chan struct{}, cfg.MaxInFlight)}
	for range cfg.Connections {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return nil, fmt.Errorf("connecting to %s: %w", addr, err)
		}
		defer conn.Close()
		conn.Connect()
		c.clients = append(c.clients, canvassv1.NewIngestServiceClient(conn))
	}
	c.placeTeams()
	interval := max(time.Second, cfg.Duration/maxPoints)
	c.start = time.Now()
	c.stats = newStats(c.start, interval)
	var err error
	if c.probes, err = startProbes(ctx, cfg.Probes, addr, c.clients[0], cfg.Token, c.stats); err != nil {
		return nil, err
	}
	runCtx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	go c.stats.sampleEvery(runCtx, c.probes)
	c.schedule(runCtx, timeout)
	c.wg.Wait()
	c.probes.stop()
	res := c.stats.result(time.Since(c.start), cfg)
	for _, p := range c.people {
		res.Queued += count(p.queue)
	}
	if cfg.Plot != "" {
		if err := writePlot(cfg.Plot, res); err != nil {
			return res, err
		}
	}
	if err := ctx.Err(); err != nil {
		return res, err
	}
	return res, nil
}

// placeTeams spreads the teams over central Scotland, each on a chunk.
func (c *campaign) placeTeams() {
	n := (c.cfg.Canvassers + c.cfg.TeamSize - 1) / c.cfg.TeamSize
	c.teams = make([]team, n)
	for i := range c.teams {
		c.teams[i] = team{lat: 55.6 + c.rng.Float64()*0.9, lon: -4.6 + c.rng.Float64()*1.6}
	}
	c.people = make([]*canvasser, c.cfg.Canvassers)
	for i := range c.people {
		c.people[i] = &canvasser{id: fmt.Sprintf("canvasser-%d", i), team: i / c.cfg.TeamSize}
	}
}

// schedule draws knocks as a Poisson process until ctx is done. Each knock
// keeps its scheduled time: when the scheduler falls behind it catches up
// without sleeping, and latency counts from the scheduled time.
func (c *campaign) schedule(ctx context.Context, timeout time.Duration) {
	knocksPerSec := float64(c.cfg.Canvassers) / c.cfg.KnockEvery.Seconds() * c.cfg.Speedup
	at := c.start
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		at = at.Add(time.Duration(c.rng.ExpFloat64() / knocksPerSec * float64(time.Second)))
		if d := time.Until(at); d > 0 {
			timer.Reset(d)
			select {
			case <-timer.C:
			case <-ctx.Done():
				return
			}
		} else if ctx.Err() != nil {
			return
		}
		c.knock(at, c.people[c.rng.IntN(len(c.people))], timeout)
	}
}

// knock records one door for p at scheduled time at and sends it, or
// queues it while p's phone is offline.
func (c *campaign) knock(at time.Time, p *canvasser, timeout time.Duration) {
	req := c.records(p, at)
	n := count(req)
	c.stats.offered(at, n)
	if c.offline(p, at) {
		p.queue = merge(p.queue, req)
		return
	}
	if p.queue != nil {
		// Back online: the queue goes first, in Submits of at most
		// flushLimit records (under ingest's batch limit).
		for _, q := range split(p.queue, flushLimit) {
			c.send(at, p.id, q, false, timeout)
		}
		p.queue = nil
	}
	c.send(at, p.id, req, c.rng.Float64() < c.cfg.RetryShare, timeout)
}

// flushLimit is the most records an offline phone sends in one Submit.
const flushLimit = 200

// split cuts req into requests of at most limit records, kinds in order.
func split(req *canvassv1.SubmitRequest, limit int) []*canvassv1.SubmitRequest {
	var out []*canvassv1.SubmitRequest
	cur := &canvassv1.SubmitRequest{}
	add := func() {
		if count(cur) == limit {
			out = append(out, cur)
			cur = &canvassv1.SubmitRequest{}
		}
	}
	for _, v := range req.GetVisits() {
		cur.Visits = append(cur.Visits, v)
		add()
	}
	for _, in := range req.GetIntentions() {
		cur.Intentions = append(cur.Intentions, in)
		add()
	}
	for _, f := range req.GetFollowups() {
		cur.Followups = append(cur.Followups, f)
		add()
	}
	if count(cur) > 0 {
		out = append(out, cur)
	}
	return out
}

// offline updates p's online/offline spells at wall time now and reports
// whether the phone is offline. Spell lengths are exponential with means
// that give OfflineShare of phones offline in the steady state.
func (c *campaign) offline(p *canvasser, now time.Time) bool {
	if c.cfg.OfflineShare == 0 {
		return false
	}
	off := c.cfg.OfflineFor.Seconds() / c.cfg.Speedup
	on := off * (1 - c.cfg.OfflineShare) / c.cfg.OfflineShare
	spell := func(mean float64) time.Duration {
		return time.Duration(c.rng.ExpFloat64() * mean * float64(time.Second))
	}
	for {
		switch {
		case p.onlineUntil.IsZero() && p.offlineUntil.IsZero():
			// First knock: start in the steady state.
			if c.rng.Float64() < c.cfg.OfflineShare {
				p.offlineUntil = now.Add(spell(off))
			} else {
				p.onlineUntil = now.Add(spell(on))
			}
		case !p.offlineUntil.IsZero():
			if now.Before(p.offlineUntil) {
				return true
			}
			p.onlineUntil, p.offlineUntil = p.offlineUntil.Add(spell(on)), time.Time{}
		default:
			if now.Before(p.onlineUntil) {
				return false
			}
			p.offlineUntil, p.onlineUntil = p.onlineUntil.Add(spell(off)), time.Time{}
		}
	}
}

// send submits req in its own goroutine, so the scheduler never waits for
// the server; a slot of MaxInFlight bounds the concurrency and MaxBacklog
// the Submits waiting for one.
func (c *campaign) send(at time.Time, canvasserID string, req *canvassv1.SubmitRequest, retry bool, timeout time.Duration) {
	n := count(req)
	if c.backlog.Add(1) > int64(c.cfg.MaxInFlight+c.cfg.MaxBacklog) {
		c.backlog.Add(-1)
		c.stats.shed(n)
		return
	}
	client := c.clients[c.next.Add(1)%uint64(len(c.clients))]
	c.wg.Go(func() {
		defer c.backlog.Add(-1)
		c.sem <- struct{}{}
		defer func() { <-c.sem }()
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		if c.cfg.Token != nil {
			tok, err := c.cfg.Token(canvasserID)
			if err != nil {
				c.stats.failed(n, fmt.Errorf("signing a token for %s: %w", canvasserID, err))
				return
			}
			ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
		}
		resp, err := client.Submit(ctx, req)
		c.stats.answered(at, n, resp, err)
		if err == nil && retry {
			// The phone lost the answer and resends the same batch: every
			// record must come back DUPLICATE (or REJECTED again).
			again, err := client.Submit(ctx, req)
			c.stats.retried(n, again, err)
		}
	})
}

// records builds the records of one knock by p at time at.
func (c *campaign) records(p *canvasser, at time.Time) *canvassv1.SubmitRequest {
	r := c.rng
	t := c.teams[p.team]
	// A team works its chunk (5 x 5 localities) and the ring around it.
	loc := &canvassv1.Location{Latitude: t.lat + (r.Float64()-0.5)*0.015, Longitude: t.lon + (r.Float64()-0.5)*0.015}
	when := timestamppb.New(at.Add(-time.Duration(r.IntN(5000)) * time.Millisecond))
	visitID := uuid.Must(uuid.NewV7()).String()
	req := &canvassv1.SubmitRequest{}
	outcome := canvassv1.Outcome_OUTCOME_NO_ANSWER
	answered := r.Float64() < AnsweredShare
	if answered {
		outcome = canvassv1.Outcome_OUTCOME_ANSWERED
	} else if r.Float64() < 0.1 {
		outcome = canvassv1.Outcome(3 + r.IntN(2)) // refused or moved
	}
	req.Visits = append(req.Visits, &canvassv1.Visit{
		Id: visitID, DwellingId: fmt.Sprintf("dwelling-%d-%d", p.team, r.IntN(2000)),
		Address: fmt.Sprintf("%d Main Street", 1+r.IntN(300)), Location: loc,
		CanvasserId: p.id, VisitedAt: when, Outcome: outcome,
	})
	if answered {
		// Electors per answered door: 1 + Poisson-ish, mean MeanElectors.
		electors := 1 + poisson(r, MeanElectors-1)
		for range electors {
			in := &canvassv1.Intention{
				Id: uuid.Must(uuid.NewV7()).String(), VisitId: visitID,
				ElectorId: fmt.Sprintf("elector-%d", r.IntN(5_000_000)),
				Option:    [...]string{"yes", "no", "undecided"}[r.IntN(3)],
				Location:  loc, RecordedAt: when, CanvasserId: p.id,
			}
			req.Intentions = append(req.Intentions, in)
		}
		if r.Float64() < FollowupShare {
			req.Followups = append(req.Followups, &canvassv1.FollowupRequest{
				Id: uuid.Must(uuid.NewV7()).String(), VisitId: visitID,
				ElectorId: fmt.Sprintf("elector-%d", r.IntN(5_000_000)),
				Issue:     [...]string{"housing", "transport", "schools", "health"}[r.IntN(4)],
				Method:    canvassv1.Method(1 + r.IntN(3)), Location: loc, RecordedAt: when, CanvasserId: p.id,
			})
		}
	}
	prev := p.lastIntent
	if prev != nil && r.Float64() < c.cfg.CorrectionShare {
		// The canvasser corrects an intention recorded earlier: a new record
		// naming the one it replaces. It takes the place of this knock's
		// last intention in the mix, so the mean records per knock stay.
		fixed := &canvassv1.Intention{
			Id: uuid.Must(uuid.NewV7()).String(), VisitId: prev.GetVisitId(), ElectorId: prev.GetElectorId(),
			Option: "undecided", Location: prev.GetLocation(), RecordedAt: when, CanvasserId: p.id,
			ReplacesId: prev.GetId(),
		}
		if prev.GetOption() == "undecided" {
			fixed.Option = "yes"
		}
		if k := len(req.Intentions); k > 0 {
			req.Intentions[k-1] = fixed
		} else {
			req.Intentions = append(req.Intentions, fixed)
		}
	}
	if c.cfg.BadShare > 0 {
		for _, v := range req.Visits {
			if r.Float64() < c.cfg.BadShare {
				v.Location = &canvassv1.Location{Latitude: 91, Longitude: v.GetLocation().GetLongitude()}
			}
		}
		for _, in := range req.Intentions {
			if r.Float64() < c.cfg.BadShare {
				in.ElectorId = ""
			}
		}
	}
	// The next correction replaces the newest intention this phone sent
	// that ingest will accept.
	for _, in := range req.Intentions {
		if in.GetElectorId() != "" {
			p.lastIntent = in
		}
	}
	return req
}

// poisson draws a Poisson variate of mean lambda (Knuth; lambda is small).
func poisson(r *rand.Rand, lambda float64) int {
	l, k, p := math.Exp(-lambda), 0, 1.0
	for {
		p *= r.Float64()
		if p <= l {
			return k
		}
		k++
	}
}

func count(req *canvassv1.SubmitRequest) int {
	return len(req.GetVisits()) + len(req.GetIntentions()) + len(req.GetFollowups())
}

// merge appends b's records to a (a may be nil) and returns a.
func merge(a, b *canvassv1.SubmitRequest) *canvassv1.SubmitRequest {
	if a == nil {
		return b
	}
	a.Visits = append(a.Visits, b.Visits...)
	a.Intentions = append(a.Intentions, b.Intentions...)
	a.Followups = append(a.Followups, b.Followups...)
	return a
}

// localityOf returns the locality of a valid location.
func localityOf(l *canvassv1.Location) locality.Index {
	i, err := locality.Of(l.GetLatitude(), l.GetLongitude())
	if err != nil {
		panic(fmt.Sprintf("loadgen: generated an invalid location %v: %v", l, err))
	}
	return i
}
