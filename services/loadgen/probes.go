package loadgen

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"time"

	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"github.com/chapper/chapper/proto/topic"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/segmentio/kafka-go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// ProbeConfig says how a campaign measures freshness (Submit to readable in
// each store) and pipeline lag. A probe is one extra visit, sent alone,
// then looked for in each configured store; probes run one at a time.
type ProbeConfig struct {
	// Every is the time between probes; 0 turns them off.
	Every time.Duration
	// QueryAddr is the query service's gRPC address for WatchChunk; empty:
	// the ingest address (one port in chapper dev).
	QueryAddr string
	// RouterURL is the Postgres router database; empty: Postgres is not probed.
	RouterURL string
	// SearchURL is an Elasticsearch URL; empty: search is not probed.
	SearchURL string
	// IndexPrefix is the search indices' prefix (alias <prefix>-visits).
	IndexPrefix string
	// KafkaBrokers, when set, are read for each pipeline's consumer lag.
	KafkaBrokers string
	// Timeout bounds the wait for one probe in one store.
	Timeout time.Duration
}

// RegisterFlags registers the probes' flags on fs under prefix.
func (c *ProbeConfig) RegisterFlags(prefix string, fs *flag.FlagSet) {
	fs.DurationVar(&c.Every, prefix+".probe-every", time.Second, "Campaign mode: time between freshness probes (0: none).")
	fs.StringVar(&c.QueryAddr, prefix+".query-addr", "", "Campaign mode: query service gRPC address for WatchChunk probes (default: -loadgen.addr).")
	fs.StringVar(&c.RouterURL, prefix+".router-url", "", "Campaign mode: Postgres router URL to probe freshness in (empty: not probed).")
	fs.StringVar(&c.SearchURL, prefix+".search-url", "", "Campaign mode: Elasticsearch URL to probe freshness in (empty: not probed).")
	fs.StringVar(&c.IndexPrefix, prefix+".index-prefix", "canvass", "Campaign mode: search index prefix (alias <prefix>-visits).")
	fs.StringVar(&c.KafkaBrokers, prefix+".kafka-brokers", "", "Campaign mode: Kafka brokers to read each pipeline's consumer lag from (empty: not measured).")
	fs.DurationVar(&c.Timeout, prefix+".probe-timeout", 30*time.Second, "Campaign mode: longest wait for a probe in one store.")
}

// probes runs the freshness probes and reads lag.
type probes struct {
	cfg    ProbeConfig
	ingest canvassv1.IngestServiceClient
	query  canvassv1.QueryServiceClient
	conn   *grpc.ClientConn
	pg     *pgx.Conn
	kafka  *kafka.Client
	// transport is the kafka client's own, so stop can close its pooled
	// connections (each holds a goroutine).
	transport *kafka.Transport
	token     func(string) (string, error)
	stats     *stats
	cancel    context.CancelFunc
	wg        sync.WaitGroup

	mu      sync.Mutex
	lastLag [3]int64 // the newest lag reading, -1 where unknown
}

func startProbes(ctx context.Context, cfg ProbeConfig, addr string, ingest canvassv1.IngestServiceClient, token func(string) (string, error), st *stats) (*probes, error) {
	p := &probes{cfg: cfg, ingest: ingest, token: token, stats: st, lastLag: [3]int64{-1, -1, -1}}
	if cfg.Timeout <= 0 {
		p.cfg.Timeout = 30 * time.Second
	}
	pctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	if cfg.KafkaBrokers != "" {
		p.transport = &kafka.Transport{}
		p.kafka = &kafka.Client{Addr: kafka.TCP(strings.Split(cfg.KafkaBrokers, ",")...), Timeout: 5 * time.Second, Transport: p.transport}
		// Lag is read in its own loop, so a slow broker never delays the
		// samples; each sample takes the newest reading.
		p.wg.Go(func() { p.lagLoop(pctx, st.interval) })
	}
	if cfg.Every <= 0 {
		return p, nil
	}
	qaddr := cfg.QueryAddr
	if qaddr == "" {
		qaddr = addr
	}
	conn, err := grpc.NewClient(qaddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("connecting to the query service at %s: %w", qaddr, err)
	}
	p.conn, p.query = conn, canvassv1.NewQueryServiceClient(conn)
	if cfg.RouterURL != "" {
		if p.pg, err = pgx.Connect(ctx, cfg.RouterURL); err != nil {
			conn.Close()
			p.stop()
			return nil, fmt.Errorf("connecting to the router database: %w", err)
		}
	}
	p.wg.Go(func() { p.loop(pctx) })
	return p, nil
}

func (p *probes) stop() {
	p.cancel()
	p.wg.Wait()
	if p.transport != nil {
		p.transport.CloseIdleConnections()
	}
	if p.conn != nil {
		p.conn.Close()
	}
	if p.pg != nil {
		p.pg.Close(context.Background())
	}
}

func (p *probes) loop(ctx context.Context) {
	rng := rand.New(rand.NewPCG(99, 99))
	t := time.NewTicker(p.cfg.Every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := p.probe(ctx, rng); err != nil && ctx.Err() == nil {
				p.stats.mu.Lock()
				if p.stats.res.FirstError == nil {
					p.stats.res.FirstError = fmt.Errorf("freshness probe: %w", err)
				}
				p.stats.mu.Unlock()
			}
		}
	}
}

// probe sends one visit and measures when it is readable in each store.
func (p *probes) probe(ctx context.Context, rng *rand.Rand) error {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.Timeout)
	defer cancel()
	if p.token != nil {
		tok, err := p.token("loadgen-probe")
		if err != nil {
			return err
		}
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
	}
	loc := &canvassv1.Location{Latitude: 56.3 + rng.Float64()*0.2, Longitude: -3.4 + rng.Float64()*0.2}
	li := localityOf(loc)
	watch, err := p.query.WatchChunk(ctx, &canvassv1.WatchChunkRequest{Location: loc})
	if err != nil {
		return fmt.Errorf("watching chunk %d: %w", li.Chunk(), err)
	}
	if _, err := watch.Recv(); err != nil { // the snapshot
		return fmt.Errorf("watching chunk %d: %w", li.Chunk(), err)
	}
	v := &canvassv1.Visit{
		Id: uuid.Must(uuid.NewV7()).String(), DwellingId: "loadgen-probe", Address: "1 Probe Road",
		Location: loc, CanvasserId: "loadgen-probe", VisitedAt: timestamppb.Now(), Outcome: canvassv1.Outcome_OUTCOME_ANSWERED,
	}
	sent := time.Now()
	resp, err := p.ingest.Submit(ctx, &canvassv1.SubmitRequest{Visits: []*canvassv1.Visit{v}})
	if err != nil {
		return fmt.Errorf("submitting a probe: %w", err)
	}
	if st := resp.GetResults()[0].GetStatus(); st != canvassv1.Status_STATUS_ACCEPTED {
		return fmt.Errorf("probe answered %v: %s", st, resp.GetResults()[0].GetReason())
	}
	var wg sync.WaitGroup
	errs := make([]error, 3)
	wg.Go(func() {
		for {
			ev, err := watch.Recv()
			if err != nil {
				errs[0] = fmt.Errorf("waiting for the probe on WatchChunk: %w", err)
				return
			}
			if ev.GetRecord().GetId() == v.Id {
				p.stats.freshness(0, time.Since(sent))
				return
			}
		}
	})
	if p.pg != nil {
		wg.Go(func() {
			errs[1] = poll(ctx, func(ctx context.Context) (bool, error) {
				var n int
				err := p.pg.QueryRow(ctx, "SELECT count(*) FROM visits_by_locality($1, $2, $3) WHERE id = $4",
					int64(li), sent.Add(-time.Hour), sent.Add(time.Hour), v.Id).Scan(&n)
				return n > 0, err
			})
			if errs[1] == nil {
				p.stats.freshness(1, time.Since(sent))
			}
		})
	}
	if p.cfg.SearchURL != "" {
		wg.Go(func() {
			url := strings.TrimRight(p.cfg.SearchURL, "/") + "/" + p.cfg.IndexPrefix + "-visits/_count"
			body := fmt.Sprintf(`{"query":{"term":{"id":%q}}}`, v.Id)
			errs[2] = poll(ctx, func(ctx context.Context) (bool, error) { return searchCount(ctx, url, body) })
			if errs[2] == nil {
				p.stats.freshness(2, time.Since(sent))
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// poll calls found every 20ms until it reports true, fails or ctx is done.
func poll(ctx context.Context, found func(context.Context) (bool, error)) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		ok, err := found(ctx)
		if ok {
			return nil
		}
		if err != nil && !errors.Is(err, errNotYet) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

var errNotYet = errors.New("not there yet")

func searchCount(ctx context.Context, url, body string) (bool, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewBufferString(body))
	if err != nil {
		return false, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false, fmt.Errorf("counting the probe in search: %w", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == http.StatusNotFound {
		return false, errNotYet // the month's index is not there yet
	}
	if resp.StatusCode != http.StatusOK {
		return false, fmt.Errorf("counting the probe in search: %s: %s", resp.Status, b)
	}
	var out struct{ Count int }
	if err := json.Unmarshal(b, &out); err != nil {
		return false, fmt.Errorf("decoding a _count answer: %w", err)
	}
	return out.Count > 0, nil
}

// latestLag returns the newest lag reading.
func (p *probes) latestLag() [3]int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.lastLag
}

func (p *probes) lagLoop(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every / 2)
	defer t.Stop()
	for {
		l := p.readLag(ctx)
		p.mu.Lock()
		p.lastLag = l
		p.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// readLag returns each pipeline's consumer lag in records, summed over the
// record topics' partitions (-1 where it could not be read).
func (p *probes) readLag(ctx context.Context) [3]int64 {
	out := [3]int64{-1, -1, -1}
	if p.kafka == nil {
		return out
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	topics := []string{topic.Visits, topic.Intentions, topic.Followups}
	md, err := p.kafka.Metadata(ctx, &kafka.MetadataRequest{Topics: topics})
	if err != nil {
		return out
	}
	req := &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{}}
	parts := map[string][]int{}
	for _, t := range md.Topics {
		for _, pt := range t.Partitions {
			req.Topics[t.Name] = append(req.Topics[t.Name], kafka.LastOffsetOf(pt.ID))
			parts[t.Name] = append(parts[t.Name], pt.ID)
		}
	}
	lo, err := p.kafka.ListOffsets(ctx, req)
	if err != nil {
		return out
	}
	high := map[string]map[int]int64{}
	for t, ps := range lo.Topics {
		high[t] = map[int]int64{}
		for _, po := range ps {
			high[t][po.Partition] = po.LastOffset
		}
	}
	for i, group := range [...]string{topic.GroupTimeline, topic.GroupPersist, topic.GroupSearch} {
		f, err := p.kafka.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: group, Topics: parts})
		if err != nil {
			continue
		}
		var sum int64
		for t, ps := range f.Topics {
			for _, po := range ps {
				// A group that never committed a partition starts at 0.
				committed := max(po.CommittedOffset, 0)
				sum += max(high[t][po.Partition]-committed, 0)
			}
		}
		out[i] = sum
	}
	return out
}
