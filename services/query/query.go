// Package query serves the read side of the locality timelines: GetChunk
// answers the newest records and counters of the 25 localities of a chunk
// from Redis, WatchChunk streams a chunk's state and then every record the
// timeline sink materialises in it. Both read the keys and news channels of
// pipelines/timeline.
package query

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/singleflight"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/chapper/chapper/pipelines/timeline"
	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"github.com/chapper/chapper/proto/locality"
)

// pageScript reads one page of one locality; see page.lua.
//
//go:embed page.lua
var pageScript string

// MaxChunk is the largest chunk index: the last chunk of the north pole row.
const MaxChunk = (locality.MaxRow/locality.ChunkSize)*locality.ChunkCols + locality.ChunkCols - 1

// fetchTimeout bounds one shared Redis read; it does not depend on the
// request that happened to start it.
const fetchTimeout = 5 * time.Second

// Errors Ready returns while the service cannot serve watches.
var (
	ErrNotRunning    = errors.New("query service not running")
	ErrPubSubDown    = errors.New("redis pub/sub connection down")
	ErrServiceClosed = errors.New("query service stopped")
)

// Service implements canvassv1.QueryServiceServer over the Redis timelines.
// Its methods are safe for concurrent use. WatchChunk and the cache's
// invalidation need Run to be running.
type Service struct {
	canvassv1.UnimplementedQueryServiceServer

	client redis.UniversalClient
	cfg    Config
	log    *slog.Logger
	script *redis.Script
	group  singleflight.Group

	running   atomic.Bool
	connected atomic.Bool
	done      chan struct{} // closed when Run returns
	opsReady  chan struct{} // a subscribe or unsubscribe is queued

	pollNow chan struct{} // read the prefix control keys now

	mu        sync.Mutex
	prefix    string // the active key prefix
	chunks    map[int64]*chunkState
	byChannel map[string]*chunkState
	ops       []subOp
	stopped   bool
	gen       uint64 // last chunk generation handed out
}

// New returns a query service reading through client. It does no I/O; Run
// opens the news subscription. The caller owns and closes client, after Run
// returned.
func New(client redis.UniversalClient, cfg Config) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Service{
		client:    client,
		cfg:       cfg,
		log:       log.With("part", "query"),
		script:    redis.NewScript(pageScript),
		done:      make(chan struct{}),
		opsReady:  make(chan struct{}, 1),
		pollNow:   make(chan struct{}, 1),
		prefix:    cfg.Prefix,
		chunks:    make(map[int64]*chunkState),
		byChannel: make(map[string]*chunkState),
	}, nil
}

// Ready returns nil while Run is running and its Redis Pub/Sub connection
// is up, otherwise why not.
func (s *Service) Ready() error {
	switch {
	case !s.running.Load():
		return ErrNotRunning
	case !s.connected.Load():
		return ErrPubSubDown
	}
	return nil
}

// GetChunk returns one page of the newest entries and the counters of the
// localities of a chunk, named by a point in it or by its index. The first
// page lists every locality of the chunk; a later page (page_token) lists
// only the localities that had older entries. Errors: INVALID_ARGUMENT for a
// bad request (the message names the field), UNAVAILABLE when Redis cannot
// be read.
func (s *Service) GetChunk(ctx context.Context, req *canvassv1.GetChunkRequest) (resp *canvassv1.GetChunkResponse, err error) {
	defer func() { observeRequest("GetChunk", err) }()
	chunk, err := chunkOf(req.GetLocation(), req.GetChunk())
	if err != nil {
		return nil, err
	}
	size := int(req.GetPageSize())
	switch {
	case size < 0:
		return nil, invalidArgument("page_size", fmt.Sprintf("must not be negative, got %d", size))
	case size == 0:
		size = s.cfg.PageSize
	case size > MaxPageSize:
		size = MaxPageSize
	}
	var cursors []cursor
	if token := req.GetPageToken(); token != "" {
		if cursors, err = decodeToken(token, chunk, len(locality.ChunkLocalities(chunk))); err != nil {
			return nil, invalidArgument("page_token", err.Error())
		}
	}
	resp, err = s.page(ctx, chunk, size, req.GetPageToken(), cursors)
	if err != nil {
		return nil, s.unavailable(ctx, fmt.Sprintf("reading chunk %d", chunk), err)
	}
	return resp, nil
}

// unavailable turns a read error into the status the client sees and logs
// it, unless the client went away.
func (s *Service) unavailable(ctx context.Context, doing string, err error) error {
	if ctx.Err() != nil {
		return status.FromContextError(ctx.Err()).Err()
	}
	s.log.Error(doing, "err", err)
	return status.Errorf(codes.Unavailable, "%s: redis unavailable: %v", doing, err)
}

// chunkOf returns the chunk a request names: by a point in it, or by its
// index. Index 0 (the south pole corner) can be named by a point only.
func chunkOf(loc *canvassv1.Location, chunk int64) (int64, error) {
	switch {
	case loc != nil && chunk != 0:
		return 0, invalidArgument("location", "give location or chunk, not both")
	case loc != nil:
		i, err := locality.Of(loc.GetLatitude(), loc.GetLongitude())
		if err != nil {
			return 0, invalidArgument("location", err.Error())
		}
		return i.Chunk(), nil
	case chunk < 0 || chunk > MaxChunk:
		return 0, invalidArgument("chunk", fmt.Sprintf("%d is out of range [0, %d]", chunk, int64(MaxChunk)))
	case chunk == 0:
		return 0, invalidArgument("location", "one of location or chunk is required")
	}
	return chunk, nil
}

// invalidArgument returns an INVALID_ARGUMENT status naming field, with a
// BadRequest detail.
func invalidArgument(field, desc string) error {
	st := status.Newf(codes.InvalidArgument, "%s: %s", field, desc)
	if d, err := st.WithDetails(&errdetails.BadRequest{
		FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: field, Description: desc}},
	}); err == nil {
		st = d
	}
	return st.Err()
}

// page answers one page of a chunk: from the cache, from a Redis round trip
// another request already started for the same page, or from a new one.
func (s *Service) page(ctx context.Context, chunk int64, size int, token string, cursors []cursor) (*canvassv1.GetChunkResponse, error) {
	key := pageKey{size: size, token: token}
	resp, gen, prefix := s.cached(chunk, key)
	if resp != nil {
		cacheHitsTotal.Inc()
		return resp, nil
	}
	cacheMissesTotal.Inc()
	// The news generation is part of the key: a request that arrives after
	// news never joins a read that may have started before it.
	sfKey := prefix + "/" + strconv.FormatInt(chunk, 10) + "/" + strconv.Itoa(size) + "/" + strconv.FormatUint(gen, 10) + "/" + token
	ch := s.group.DoChan(sfKey, func() (any, error) {
		// The read is shared, so it must not fail because the request that
		// happened to start it was cancelled.
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), fetchTimeout)
		defer cancel()
		resp, err := s.fetch(fctx, prefix, chunk, size, cursors)
		if err == nil {
			s.store(chunk, key, gen, resp)
		}
		return resp, err
	})
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case r := <-ch:
		if r.Shared {
			singleflightSharedTotal.Inc()
		}
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.(*canvassv1.GetChunkResponse), nil
	}
}

// fetch reads one page of a chunk in one pipelined round trip: one script
// call per locality (timeline page, bodies, counters), split by slot on a
// cluster. Without cursors it reads every locality from the newest entry.
func (s *Service) fetch(ctx context.Context, prefix string, chunk int64, size int, cursors []cursor) (*canvassv1.GetChunkResponse, error) {
	locs := locality.ChunkLocalities(chunk)
	if cursors == nil {
		cursors = make([]cursor, len(locs))
		for i := range locs {
			cursors[i] = cursor{slot: i}
		}
	}
	cmds, err := s.readPipeline(ctx, prefix, locs, size, cursors)
	if err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
		// Redis lost the script (restart, SCRIPT FLUSH, failover).
		if err := s.script.Load(ctx, s.client).Err(); err != nil {
			return nil, fmt.Errorf("loading page script into redis: %w", err)
		}
		cmds, err = s.readPipeline(ctx, prefix, locs, size, cursors)
	}
	if err != nil {
		return nil, err
	}
	resp := &canvassv1.GetChunkResponse{
		Chunk:      chunk,
		Localities: make([]*canvassv1.LocalityTimeline, 0, len(cursors)),
	}
	var next []cursor
	for i, c := range cursors {
		loc := int64(locs[c.slot])
		lt, more, err := decodePage(loc, cmds[i].Val())
		if err != nil {
			return nil, fmt.Errorf("reading locality %d: %w", loc, err)
		}
		resp.Localities = append(resp.Localities, lt)
		if more && len(lt.Entries) > 0 {
			last := lt.Entries[len(lt.Entries)-1]
			next = append(next, cursor{slot: c.slot, score: last.GetTime().AsTime().UnixMilli(), id: last.GetId()})
		}
	}
	resp.NextPageToken = encodeToken(chunk, next)
	return resp, nil
}

// readPipeline sends the script calls of one page and returns them in
// cursor order. The returned error prefers NOSCRIPT, so that fetch knows to
// load the script.
func (s *Service) readPipeline(ctx context.Context, prefix string, locs []locality.Index, size int, cursors []cursor) ([]*redis.Cmd, error) {
	pipe := s.client.Pipeline()
	cmds := make([]*redis.Cmd, len(cursors))
	for i, c := range cursors {
		loc := int64(locs[c.slot])
		keys := []string{timeline.TimelineKey(prefix, loc), timeline.RecordsKey(prefix, loc), timeline.CountersKey(prefix, loc)}
		cmds[i] = s.script.EvalSha(ctx, pipe, keys, size, c.id, c.score)
	}
	start := time.Now()
	_, err := pipe.Exec(ctx)
	redisRoundTripSeconds.Observe(time.Since(start).Seconds())
	if err == nil {
		return cmds, nil
	}
	for _, cmd := range cmds {
		if cerr := cmd.Err(); cerr != nil && redis.HasErrorPrefix(cerr, "NOSCRIPT") {
			err = cerr
			break
		}
	}
	return nil, fmt.Errorf("reading %d timelines: %w", len(cursors), err)
}

// decodePage turns one script reply into a LocalityTimeline; more reports
// whether older entries exist.
func decodePage(loc int64, reply any) (lt *canvassv1.LocalityTimeline, more bool, err error) {
	parts, ok := reply.([]any)
	if !ok || len(parts) != 4 {
		return nil, false, fmt.Errorf("unexpected script reply %T", reply)
	}
	flag, _ := parts[0].(int64)
	page, _ := parts[1].([]any)
	bodies, _ := parts[2].([]any)
	counters, _ := parts[3].([]any)
	lt = &canvassv1.LocalityTimeline{Locality: loc, Entries: make([]*canvassv1.TimelineEntry, 0, len(page)/2)}
	for i := 0; i+1 < len(page); i += 2 {
		id, _ := page[i].(string)
		score, err := parseScore(page[i+1])
		if err != nil {
			return nil, false, err
		}
		var body string
		if j := i / 2; j < len(bodies) {
			body, _ = bodies[j].(string)
		}
		lt.Entries = append(lt.Entries, newEntry(id, loc, score, body))
	}
	if len(counters) > 0 {
		lt.Counters = make(map[string]int64, len(counters)/2)
		for i := 0; i+1 < len(counters); i += 2 {
			field, _ := counters[i].(string)
			v, _ := counters[i+1].(string)
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return nil, false, fmt.Errorf("counter %q: %w", field, err)
			}
			lt.Counters[field] = n
		}
	}
	return lt, flag == 1, nil
}

// parseScore reads a score as the script returns it (a decimal string).
func parseScore(v any) (int64, error) {
	switch v := v.(type) {
	case string:
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			return 0, fmt.Errorf("bad score %q", v)
		}
		return int64(f), nil
	case int64:
		return v, nil
	}
	return 0, fmt.Errorf("bad score %T", v)
}

// newEntry builds a timeline entry from its id, score and stored body. A
// body that is missing (trimmed between the range and the read) or does not
// decode leaves the entry without its record: the id and time still say the
// dwelling was seen.
func newEntry(id string, loc, score int64, body string) *canvassv1.TimelineEntry {
	e := &canvassv1.TimelineEntry{Id: id, Locality: loc, Time: timestamppb.New(time.UnixMilli(score))}
	if body != "" {
		r := &canvassv1.Record{}
		if err := proto.Unmarshal([]byte(body), r); err == nil {
			e.Record = r
		}
	}
	return e
}
