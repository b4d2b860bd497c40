// Package ingest is Chapper's IngestService: it validates submitted records,
// computes each one's locality index and produces the accepted ones to their
// Kafka topic (key = locality in decimal ASCII, murmur2 partitioning as the
// Java client, acks=all), answering only after the broker acknowledged them.
package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"

	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"github.com/chapper/chapper/proto/topic"
	"github.com/chapper/chapper/services/auth"
	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"
	"github.com/segmentio/kafka-go"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// Metadata keys a client may send with Submit.
const (
	// MetadataTraceID carries the caller's trace id; it becomes the records'
	// trace-id header and is echoed in the response header. When absent,
	// ingest makes one up.
	MetadataTraceID = "x-trace-id"
	// MetadataClientID names the submitting client (app and version, say);
	// it becomes the client-id header. When absent, the record's
	// canvasser_id is used, or "anonymous".
	MetadataClientID = "x-client-id"
)

// ErrNotReady is returned by Ready until the service finished its setup.
var ErrNotReady = errors.New("topics not ready yet")

// errStopping answers Submits that arrive after shutdown began.
var errStopping = errors.New("ingest is shutting down")

// Service implements canvassv1.IngestServiceServer. Create it with New, run
// it with Run (which creates the topics) and register it on a gRPC server;
// Submit answers UNAVAILABLE until Run finished its setup. Service is safe
// for concurrent use.
type Service struct {
	canvassv1.UnimplementedIngestServiceServer

	cfg       Config
	log       *slog.Logger
	writer    *kafka.Writer
	client    *kafka.Client
	transport *kafka.Transport
	dedup     *dedup
	store     *idStore // nil: ids in this process only
	limits    *limits
	now       func() time.Time

	ready     chan struct{} // closed when the topics exist
	readyOnce sync.Once
	// topicsGone asks Run to create the topics again: a produce found one
	// missing (a broker that lost its data, an operator's mistake).
	topicsGone chan struct{}

	mu       sync.Mutex
	stopping bool
	active   sync.WaitGroup // Submits in progress
}

// New returns a Service producing to cfg.Brokers. It does not contact Kafka;
// Run does.
func New(cfg Config) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("validating ingest config: %w", err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("part", "ingest")
	d, err := newDedup(cfg.DedupSize)
	if err != nil {
		return nil, fmt.Errorf("building dedup cache: %w", err)
	}
	transport := &kafka.Transport{
		ClientID:    cfg.KafkaClientID,
		DialTimeout: cfg.ProduceTimeout,
	}
	w := newWriter(cfg, transport, log)
	var store *idStore
	if addrs := splitAddrs(cfg.RedisAddrs); len(addrs) > 0 {
		client := redis.NewUniversalClient(&redis.UniversalOptions{
			Addrs: addrs, DialTimeout: 2 * time.Second, ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second,
			MaxRetries: 1, PoolSize: 64,
		})
		// The claim TTL is longer than any produce: a claim outlives its
		// Submit only when that instance died.
		store = newIDStore(client, cfg.RedisPrefix, cfg.IDTTL, 3*cfg.ProduceTimeout+5*time.Second)
	}
	return &Service{
		store:     store,
		limits:    newLimits(cfg),
		cfg:       cfg,
		log:       log,
		writer:    w,
		transport: transport,
		client:    &kafka.Client{Addr: kafka.TCP(cfg.Brokers...), Timeout: 10 * time.Second, Transport: transport},
		dedup:     d,
		now:       time.Now,
		ready:     make(chan struct{}),

		topicsGone: make(chan struct{}, 1),
	}, nil
}

// newWriter returns the producer ingest uses: murmur2 partitioning as the
// Java client, acks=all, short linger. The benchmark builds its raw
// baseline with it too.
func newWriter(cfg Config, transport *kafka.Transport, log *slog.Logger) *kafka.Writer {
	codec, _ := cfg.codec()
	return &kafka.Writer{
		Addr:     kafka.TCP(cfg.Brokers...),
		Balancer: &kafka.Murmur2Balancer{},
		// Submit waits for the acknowledgement, so a batch leaves as soon as
		// the linger ends or it is full.
		BatchTimeout:    cfg.BatchTimeout,
		BatchSize:       writerBatchSize,
		RequiredAcks:    kafka.RequireAll,
		Compression:     codec,
		MaxAttempts:     cfg.MaxAttempts,
		WriteBackoffMin: 50 * time.Millisecond,
		WriteBackoffMax: 500 * time.Millisecond,
		WriteTimeout:    cfg.ProduceTimeout,
		ReadTimeout:     cfg.ProduceTimeout,
		Transport:       transport,
		ErrorLogger: kafka.LoggerFunc(func(msg string, args ...any) {
			// Failures reach Submit, which logs them once; this is detail.
			log.Debug("kafka producer: " + fmt.Sprintf(msg, args...))
		}),
	}
}

// writerBatchSize bounds a partition's produce batch in records. kafka-go
// allocates (and zeroes) room for this many messages, 152 bytes each, for
// every partition batch however few records it ends up with: at 1000 that
// was 152 KB per batch, 58% of all allocation in the ingest benchmarks and
// most of the CPU per record at low rates, where a 1 ms linger collects a
// few records per partition. A batch reaching this size leaves at once,
// so a smaller bound costs no latency; at 270,000 records/s over 12
// partitions a 1 ms linger collects about 22 per partition.
const writerBatchSize = 128

// Register registers s on a gRPC server, with a Submit handler that keeps
// each record's wire bytes (wire.go).
func (s *Service) Register(r grpc.ServiceRegistrar) { r.RegisterService(&submitDesc, s) }

// Run makes sure every topic of topic.All exists (creating missing ones when
// configured to), retrying until Kafka answers, then reports ready and serves
// until ctx is done. On shutdown it refuses new Submits, waits for those in
// progress (each bounded by the produce timeout) and closes the producer. It
// returns nil on a clean shutdown.
func (s *Service) Run(ctx context.Context) error {
	if err := s.setUp(ctx); err != nil {
		if ctx.Err() != nil {
			return s.close()
		}
		return err
	}
	s.readyOnce.Do(func() { close(s.ready) })
	idStore := "this process only"
	if s.store != nil {
		idStore = "redis " + s.cfg.RedisAddrs
	}
	s.log.Info("ingest ready", "brokers", s.cfg.Brokers, "topics", topic.All, "id_store", idStore)
	for {
		select {
		case <-ctx.Done():
			return s.close()
		case <-s.topicsGone:
			if err := s.setUp(ctx); err == nil {
				s.log.Info("topics created again")
			}
		}
	}
}

// setUp waits for Kafka and the topics, with backoff, until ctx is done.
func (s *Service) setUp(ctx context.Context) error {
	backoff := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := s.ensureTopics(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		s.log.Warn("waiting for kafka topics", "attempt", attempt, "retry_in", backoff, "err", err)
		// The transport remembers a failed bootstrap for its metadata TTL;
		// start the next attempt afresh so a broker that just came up is
		// seen at once.
		s.transport.CloseIdleConnections()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 2*time.Second)
	}
}

// close stops taking Submits, waits for the ones in progress and closes the
// producer.
func (s *Service) close() error {
	s.mu.Lock()
	s.stopping = true
	s.mu.Unlock()
	s.active.Wait()
	var err error
	if s.store != nil {
		err = s.store.client.Close()
	}
	werr := s.writer.Close()
	// The writer does not own the transport: close its pooled connections
	// (and their goroutines) too.
	s.transport.CloseIdleConnections()
	if werr != nil {
		return fmt.Errorf("closing kafka producer: %w", werr)
	}
	if err != nil {
		return fmt.Errorf("closing the id store client: %w", err)
	}
	return nil
}

// splitAddrs splits a comma-separated address list.
func splitAddrs(s string) []string {
	var out []string
	for _, a := range strings.Split(s, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}

// Ready returns nil once Run finished its setup (every topic exists), or
// ErrNotReady.
func (s *Service) Ready() error {
	select {
	case <-s.ready:
		return nil
	default:
		return ErrNotReady
	}
}

// WaitReady blocks until the service is ready or ctx is done.
func (s *Service) WaitReady(ctx context.Context) error {
	select {
	case <-s.ready:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for ingest to be ready: %w", ctx.Err())
	}
}

// enter registers a Submit in progress; false means the service is stopping.
func (s *Service) enter() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopping {
		return false
	}
	s.active.Add(1)
	return true
}

// pending is a valid, new record waiting to be produced.
type pending struct {
	result   *canvassv1.RecordResult
	uid      uuid.UUID
	msg      kafka.Message
	stamp    string    // see stamp.go
	path     string    // e.g. visits[3], for reasons
	replaces uuid.UUID // the record this one corrects; uuid.Nil when none
}

// Submit validates each record of req and produces the valid, new ones. It
// answers one result per record in request order (visits, intentions,
// follow-ups). It fails the whole request with INVALID_ARGUMENT when the
// batch is over the limit and with UNAVAILABLE when the broker did not
// acknowledge within the produce timeout (nothing of that request was
// reported accepted; a retry is safe).
func (s *Service) Submit(ctx context.Context, req *canvassv1.SubmitRequest) (*canvassv1.SubmitResponse, error) {
	resp, err := s.submit(ctx, req, nil)
	requestsTotal.WithLabelValues(status.Code(err).String()).Inc()
	return resp, err
}

// schemas holds each kind's schema header value.
var schemas = map[topic.Kind][]byte{
	topic.KindVisits:     []byte((&canvassv1.Visit{}).ProtoReflect().Descriptor().FullName()),
	topic.KindIntentions: []byte((&canvassv1.Intention{}).ProtoReflect().Descriptor().FullName()),
	topic.KindFollowups:  []byte((&canvassv1.FollowupRequest{}).ProtoReflect().Descriptor().FullName()),
}

// batch builds one request's results and messages.
type batch struct {
	resp    *canvassv1.SubmitResponse
	results []canvassv1.RecordResult // backs resp.Results: one allocation
	todo    []pending
	inBatch map[uuid.UUID]string // id → stamp
	kinds   []topic.Kind
	buf     []byte // the keys, and the values not produced from the wire bytes as they came

	clientID   string // from the request metadata; "" when none
	receivedAt []byte
	traceID    []byte
	// headers of the last record per kind, reused while the client id
	// stays the same.
	lastHeaders map[topic.Kind][]kafka.Header
	headers     []kafka.Header // backs the records' headers
	// violations are the rejected records' fields, for the
	// x-field-violations-bin trailer.
	violations []*errdetails.BadRequest_FieldViolation
	reencoded  int // records that came with wire bytes and were encoded again
}

// add answers one validated record: rejected, duplicate within the batch,
// or pending production. wire is the bytes the record came in (nil when
// unknown) and edits the fields Submit may have changed since.
func (b *batch) add(kind topic.Kind, path, given string, m proto.Message, canvasserID string, rec record, fe *FieldError, wire []byte, edits []edit) error {
	res := &b.results[len(b.resp.Results)]
	res.Id = given
	b.resp.Results = append(b.resp.Results, res)
	b.kinds = append(b.kinds, kind)
	if fe != nil {
		res.Status, res.Reason = canvassv1.Status_STATUS_REJECTED, fe.Error()
		rejectionsTotal.WithLabelValues(string(kind), fe.Field).Inc()
		b.violations = append(b.violations, &errdetails.BadRequest_FieldViolation{Field: fe.Path, Description: fe.Problem})
		return nil
	}
	res.Locality = int64(rec.locality)
	start := len(b.buf)
	var err error
	var value []byte
	var kept bool
	b.buf, value, kept, err = encodeRecord(b.buf, kind, m, wire, edits)
	if err != nil {
		return fmt.Errorf("%w (record %s)", err, rec.id)
	}
	if wire != nil && !kept {
		b.reencoded++
	}
	stamp, err := makeStamp(kind, canvasserID, value)
	if err != nil {
		return err
	}
	if earlier, dup := b.inBatch[rec.uid]; dup {
		b.buf = b.buf[:start]
		settle(res, stamp, earlier)
		return nil
	}
	b.inBatch[rec.uid] = stamp
	cid := b.clientID
	if cid == "" {
		cid = canvasserID
	}
	if cid == "" {
		cid = "anonymous"
	}
	h := b.lastHeaders[kind]
	if h == nil || string(h[1].Value) != cid {
		// From the batch's own slices: records naming many canvassers
		// (an operator's) get new headers each.
		at := len(b.buf)
		b.buf = append(b.buf, cid...)
		n := len(b.headers)
		b.headers = append(b.headers,
			kafka.Header{Key: topic.HeaderSchema, Value: schemas[kind]},
			kafka.Header{Key: topic.HeaderClientID, Value: b.buf[at:len(b.buf):len(b.buf)]},
			kafka.Header{Key: topic.HeaderReceivedAt, Value: b.receivedAt},
			kafka.Header{Key: topic.HeaderTraceID, Value: b.traceID},
		)
		h = b.headers[n:len(b.headers):len(b.headers)]
		b.lastHeaders[kind] = h
	}
	end := len(b.buf)
	b.buf = strconv.AppendInt(b.buf, int64(rec.locality), 10) // the key
	b.todo = append(b.todo, pending{result: res, uid: rec.uid, stamp: stamp, path: path, replaces: rec.replaces, msg: kafka.Message{
		Topic: kind.Topic(),
		// Full slice expressions: a later append to buf must not write here.
		Key:     b.buf[end:len(b.buf):len(b.buf)],
		Value:   value[:len(value):len(value)],
		Headers: h,
	}})
	return nil
}

// The paths of the first records of each kind ("visits[3]"), built once:
// every record carries its path, for reasons it rarely needs.
var visitsPaths, intentionsPaths, followupsPaths = paths("visits"), paths("intentions"), paths("followups")

func paths(kind string) []string {
	out := make([]string, 1000)
	for i := range out {
		out[i] = kind + "[" + strconv.Itoa(i) + "]"
	}
	return out
}

// recordPath returns the path of record i of kind, from table when it
// holds it.
func recordPath(table []string, kind string, i int) string {
	if i < len(table) {
		return table[i]
	}
	return kind + "[" + strconv.Itoa(i) + "]"
}

// submit is Submit; wire, when not nil, holds the bytes of each kind's
// records (wireRequest.wire).
func (s *Service) submit(ctx context.Context, req *canvassv1.SubmitRequest, wire *[3][][]byte) (*canvassv1.SubmitResponse, error) {
	n := len(req.GetVisits()) + len(req.GetIntentions()) + len(req.GetFollowups())
	batchRecords.Observe(float64(n))
	if n > s.cfg.BatchLimit {
		return nil, invalidArgument("visits", fmt.Sprintf("batch of %d records (visits, intentions and followups together) exceeds the limit of %d", n, s.cfg.BatchLimit))
	}
	if err := s.Ready(); err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	release, err := s.limits.enter()
	if err != nil {
		return nil, err
	}
	defer release()
	now := s.now()
	if err := s.limits.allow(ctx, n, now); err != nil {
		return nil, err
	}
	if !s.enter() {
		return nil, status.Error(codes.Unavailable, errStopping.Error())
	}
	defer s.active.Done()

	traceID, clientID := requestIDs(ctx)
	// The trace id goes back to the caller, so a support request can name it.
	_ = grpc.SetHeader(ctx, metadata.Pairs(MetadataTraceID, traceID))

	v := validator{now: now, maxFuture: s.cfg.MaxFuture}
	b := &batch{
		resp:    &canvassv1.SubmitResponse{Results: make([]*canvassv1.RecordResult, 0, n)},
		results: make([]canvassv1.RecordResult, n),
		todo:    make([]pending, 0, n),
		inBatch: make(map[uuid.UUID]string, n),
		kinds:   make([]topic.Kind, 0, n),
		buf:     make([]byte, 0, 32*n), // keys, client ids; values when edited or encoded
		headers: make([]kafka.Header, 0, 4*n),

		clientID:    clientID,
		receivedAt:  now.UTC().AppendFormat(nil, receivedAtLayout),
		traceID:     []byte(traceID),
		lastHeaders: make(map[topic.Kind][]kafka.Header, 3),
	}
	claims, _ := auth.FromContext(ctx)
	var wires [3][][]byte
	if wire != nil {
		wires = *wire
	}
	// recordWire is the bytes of record i of a kind, nil when unknown.
	recordWire := func(kind, i int) []byte {
		if wires[kind] == nil {
			return nil
		}
		return wires[kind][i]
	}
	var edits [4]edit
	ed := editables[topic.KindVisits]
	for i, r := range req.GetVisits() {
		given := r.GetId()
		edits = [4]edit{{ed.id, given, ""}, {ed.replacesID, r.GetReplacesId(), ""}, {ed.canvasserID, r.GetCanvasserId(), ""}}
		path := recordPath(visitsPaths, "visits", i)
		rec, fe := v.visit(path, r)
		if fe == nil {
			fe = ownRecord(path, claims, &r.CanvasserId, rec.locality)
		}
		edits[0].is, edits[1].is, edits[2].is = r.GetId(), r.GetReplacesId(), r.GetCanvasserId()
		if err := b.add(topic.KindVisits, path, given, r, r.GetCanvasserId(), rec, fe, recordWire(0, i), edits[:3]); err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
	}
	ed = editables[topic.KindIntentions]
	for i, r := range req.GetIntentions() {
		given := r.GetId()
		edits = [4]edit{{ed.id, given, ""}, {ed.visitID, r.GetVisitId(), ""}, {ed.replacesID, r.GetReplacesId(), ""}, {ed.canvasserID, r.GetCanvasserId(), ""}}
		path := recordPath(intentionsPaths, "intentions", i)
		rec, fe := v.intention(path, r)
		if fe == nil {
			fe = ownRecord(path, claims, &r.CanvasserId, rec.locality)
		}
		edits[0].is, edits[1].is, edits[2].is, edits[3].is = r.GetId(), r.GetVisitId(), r.GetReplacesId(), r.GetCanvasserId()
		if err := b.add(topic.KindIntentions, path, given, r, r.GetCanvasserId(), rec, fe, recordWire(1, i), edits[:]); err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
	}
	ed = editables[topic.KindFollowups]
	for i, r := range req.GetFollowups() {
		given := r.GetId()
		edits = [4]edit{{ed.id, given, ""}, {ed.visitID, r.GetVisitId(), ""}, {ed.replacesID, r.GetReplacesId(), ""}, {ed.canvasserID, r.GetCanvasserId(), ""}}
		path := recordPath(followupsPaths, "followups", i)
		rec, fe := v.followup(path, r)
		if fe == nil {
			fe = ownRecord(path, claims, &r.CanvasserId, rec.locality)
		}
		edits[0].is, edits[1].is, edits[2].is, edits[3].is = r.GetId(), r.GetVisitId(), r.GetReplacesId(), r.GetCanvasserId()
		if err := b.add(topic.KindFollowups, path, given, r, r.GetCanvasserId(), rec, fe, recordWire(2, i), edits[:]); err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
	}
	if b.reencoded > 0 {
		reencodedTotal.Add(float64(b.reencoded))
	}

	todo, err := s.checkCorrections(ctx, b, claims)
	if err != nil {
		return nil, err
	}
	if err := s.produce(ctx, todo, traceID); err != nil {
		return nil, err
	}
	setViolations(ctx, b.violations)
	countResults(b.kinds, b.resp.Results)
	return b.resp, nil
}

// MetadataFieldViolations is the response trailer that carries, when some
// records were REJECTED, a google.rpc.BadRequest naming each rejected
// field (e.g. visits[3].location.latitude) and its problem, beside the
// per-record reasons, for clients that show the field.
const MetadataFieldViolations = "x-field-violations-bin"

// setViolations sets the MetadataFieldViolations trailer.
func setViolations(ctx context.Context, v []*errdetails.BadRequest_FieldViolation) {
	if len(v) == 0 {
		return
	}
	raw, err := proto.Marshal(&errdetails.BadRequest{FieldViolations: v})
	if err != nil {
		return
	}
	_ = grpc.SetTrailer(ctx, metadata.Pairs(MetadataFieldViolations, string(raw)))
}

// invalidArgument is INVALID_ARGUMENT with a google.rpc.BadRequest naming
// the field.
func invalidArgument(field, desc string) error {
	st := status.New(codes.InvalidArgument, field+": "+desc)
	if d, err := st.WithDetails(&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: field, Description: desc}}}); err == nil {
		st = d
	}
	return st.Err()
}

// countResults adds a request's results to recordsTotal, one counter
// update per kind and result rather than per record.
func countResults(kinds []topic.Kind, results []*canvassv1.RecordResult) {
	type key struct {
		kind   topic.Kind
		status canvassv1.Status
	}
	counts := make(map[key]int, 3)
	for i, r := range results {
		counts[key{kinds[i], r.GetStatus()}]++
	}
	for k, n := range counts {
		recordsTotal.WithLabelValues(string(k.kind), resultLabel(k.status)).Add(float64(n))
	}
}

// settle answers a record whose id was acknowledged before with stamp
// theirs: DUPLICATE when it is the same record, CONFLICT naming the fields
// that differ otherwise.
func settle(res *canvassv1.RecordResult, mine, theirs string) {
	same, reason, fields := compareStamps(mine, theirs)
	if same {
		res.Status = canvassv1.Status_STATUS_DUPLICATE
		return
	}
	res.Status, res.Reason, res.ConflictingFields = canvassv1.Status_STATUS_CONFLICT, reason, fields
}

// produce produces the records of todo that are neither acknowledged already
// nor being produced by a concurrent Submit, waits for the concurrent ones
// and sets every result to ACCEPTED, DUPLICATE or CONFLICT. The in-process
// dedup settles what this instance knows; the shared id store, when
// configured, decides the rest, so two instances never both accept an id.
// It returns a gRPC status error when the broker did not acknowledge or
// the id store could not be reached.
func (s *Service) produce(ctx context.Context, todo []pending, traceID string) error {
	for len(todo) > 0 {
		ids := make([]uuid.UUID, len(todo))
		for i, p := range todo {
			ids[i] = p.uid
		}
		mine, acked, ackedVals, waiting, waits, own := s.dedup.claim(ids)
		for k, i := range acked {
			settle(todo[i].result, todo[i].stamp, ackedVals[k])
		}
		var again []pending
		if len(mine) > 0 {
			retry, err := s.produceMine(ctx, todo, mine, own, traceID)
			if err != nil {
				return err
			}
			again = append(again, retry...)
		}
		// Records another Submit of this instance was producing: settled by
		// its outcome if it succeeded, ours to produce in the next round if
		// it failed.
		for k, w := range waits {
			dedupWaitsTotal.Inc()
			select {
			case <-w.f.done:
			case <-ctx.Done():
				return status.FromContextError(ctx.Err()).Err()
			}
			p := todo[waiting[k]]
			if v := w.Value(); v != "" {
				settle(p.result, p.stamp, v)
			} else {
				again = append(again, p)
			}
		}
		todo = again
	}
	return nil
}

// produceMine produces todo[mine...], the ids this Submit claimed in the
// process (flight own): it claims them in the shared id store under a
// fresh owner token (a mark acknowledges one claim step's ids, so no two
// steps share an owner), produces those it won, settles those the store
// knew, waits for those another instance is producing, and ends the
// flight. It returns the
// records to try again (another instance's produce failed).
func (s *Service) produceMine(ctx context.Context, todo []pending, mine []int, own *flight, traceID string) (again []pending, err error) {
	owner := newOwner()
	ids := make([]uuid.UUID, len(mine))
	stamps := make([]string, len(mine))
	for k, i := range mine {
		ids[k], stamps[k] = todo[i].uid, todo[i].stamp
	}
	vals := make([]string, len(mine)) // stamp acknowledged per id, for the flight
	// This process remembers acknowledged ids itself only when the shared
	// store is off (or could not record them: ackInBackground).
	defer func() { s.dedup.finish(own, ids, func(k int) string { return vals[k] }, s.store == nil) }()

	produce := make([]int, 0, len(mine)) // positions in mine
	var elsewhere []int
	if s.store == nil {
		for k := range mine {
			produce = append(produce, k)
		}
	} else {
		answers, err := s.store.claim(ctx, owner, ids, stamps)
		if err != nil {
			return nil, s.storeUnavailable(ctx, err, traceID)
		}
		for k, a := range answers {
			switch a.state {
			case claimed:
				produce = append(produce, k)
			case acked:
				settle(todo[mine[k]].result, stamps[k], a.stamp)
				vals[k] = a.stamp
			default:
				elsewhere = append(elsewhere, k)
			}
		}
	}

	if len(produce) > 0 {
		msgs := make([]kafka.Message, len(produce))
		for j, k := range produce {
			msgs[j] = todo[mine[k]].msg
		}
		ok, werr := s.write(ctx, msgs, traceID)
		var ackIDs, relIDs []uuid.UUID
		var ackStamps []string
		for j, k := range produce {
			if ok(j) {
				vals[k] = stamps[k]
				ackIDs, ackStamps = append(ackIDs, ids[k]), append(ackStamps, stamps[k])
			} else {
				relIDs = append(relIDs, ids[k])
			}
		}
		if s.store != nil {
			if len(ackIDs) > 0 {
				s.ackInBackground(ctx, owner, len(relIDs) == 0, ackIDs, ackStamps, traceID)
			}
			if len(relIDs) > 0 {
				// Even when the caller went away: the ids must be free for
				// the retry.
				bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.ProduceTimeout)
				if err := s.store.release(bctx, owner, relIDs); err != nil {
					s.log.Warn("releasing ids whose produce failed", "ids", len(relIDs), "trace_id", traceID, "err", err)
				}
				cancel()
			}
		}
		if werr != nil {
			return nil, werr
		}
		for _, k := range produce {
			todo[mine[k]].result.Status = canvassv1.Status_STATUS_ACCEPTED
		}
	}

	if len(elsewhere) > 0 {
		wait := make([]uuid.UUID, len(elsewhere))
		for j, k := range elsewhere {
			wait[j] = ids[k]
		}
		answers, err := s.waitElsewhere(ctx, wait)
		if err != nil {
			return nil, s.storeUnavailable(ctx, err, traceID)
		}
		for j, k := range elsewhere {
			switch a := answers[j]; a.state {
			case acked:
				settle(todo[mine[k]].result, stamps[k], a.stamp)
				vals[k] = a.stamp
			default:
				again = append(again, todo[mine[k]])
			}
		}
	}
	return again, nil
}

// ackInBackground records ids, which the broker acknowledged, as
// acknowledged in the shared id store, while Submit answers: with all,
// every id owner claimed is on Kafka and one mark acknowledges them all;
// otherwise each of ids is acknowledged on its own. The Submit
// does not wait for that round trip. Nothing is answered wrongly
// meanwhile: until the ack lands, the ids hold this Submit's claims, so
// another Submit of them (on any instance) sees them in flight and waits
// for the ack, and only an acknowledged id is ever answered DUPLICATE or
// CONFLICT. When the ack fails, the records are on Kafka and were answered
// ACCEPTED: their claims go stale after the claim TTL, and this instance
// remembers them itself so that it never produces them again. Shutdown
// waits for acks in progress (they count as active Submits).
func (s *Service) ackInBackground(ctx context.Context, owner string, all bool, ids []uuid.UUID, stamps []string, traceID string) {
	s.active.Add(1) // inside a Submit, which holds active: Wait cannot have returned
	go func() {
		defer s.active.Done()
		bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.ProduceTimeout)
		defer cancel()
		ack := func() error { return s.store.ack(bctx, ids, stamps) }
		if all {
			ack = func() error { return s.store.markDone(bctx, owner) }
		}
		if err := ack(); err != nil {
			s.dedup.remember(ids, stamps)
			s.log.Warn("recording acknowledged ids in the id store", "ids", len(ids), "trace_id", traceID, "err", err)
		}
	}()
}

// errStillInFlight is returned when another instance's produce of an id did
// not end within the produce timeout.
var errStillInFlight = errors.New("another ingest instance is still producing the record; retry")

// waitElsewhere polls the id store until no id of ids is in flight any
// more (each is acknowledged or released), at most the produce timeout
// plus a second: another instance's produce of them is bounded by its own
// produce timeout.
func (s *Service) waitElsewhere(ctx context.Context, ids []uuid.UUID) ([]idAnswer, error) {
	idStoreWaitsTotal.Add(float64(len(ids)))
	deadline := time.Now().Add(s.cfg.ProduceTimeout + time.Second)
	backoff := 10 * time.Millisecond
	for {
		answers, err := s.store.lookup(ctx, ids)
		if err != nil {
			return nil, err
		}
		done := true
		for _, a := range answers {
			done = done && a.state != inFlight
		}
		if done {
			return answers, nil
		}
		if time.Now().After(deadline) {
			return nil, errStillInFlight
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 200*time.Millisecond)
	}
}

// storeUnavailable turns an id store failure into the Submit's error.
func (s *Service) storeUnavailable(ctx context.Context, err error, traceID string) error {
	if ctx.Err() != nil {
		return status.FromContextError(ctx.Err()).Err()
	}
	s.log.Warn("shared id store", "trace_id", traceID, "err", err)
	return status.Errorf(codes.Unavailable, "cannot tell new records from resubmitted ones: %v", err)
}

// write produces msgs and waits for the broker's acknowledgement. ok(j)
// says whether msgs[j] is on Kafka (all of them when err is nil; on a
// partial failure, those on partitions that acknowledged). err is a gRPC
// status error.
func (s *Service) write(ctx context.Context, msgs []kafka.Message, traceID string) (ok func(j int) bool, err error) {
	pctx, cancel := context.WithTimeout(ctx, s.cfg.ProduceTimeout)
	defer cancel()
	start := time.Now()
	err = s.writer.WriteMessages(pctx, msgs...)
	produceSeconds.Observe(time.Since(start).Seconds())

	var werrs kafka.WriteErrors
	partial := errors.As(err, &werrs) && len(werrs) == len(msgs)
	ok = func(j int) bool {
		// Records on partitions that did acknowledge are on Kafka: remember
		// them, so the client's retry gets DUPLICATE instead of a second copy.
		return err == nil || partial && werrs[j] == nil
	}
	if err == nil {
		return ok, nil
	}
	produceErrorsTotal.Inc()
	if ctx.Err() != nil {
		// The caller went away; nothing to log.
		return ok, status.FromContextError(ctx.Err()).Err()
	}
	if s.cfg.CreateTopics && topicMissing(err) {
		select {
		case s.topicsGone <- struct{}{}:
		default:
		}
	}
	serr := summarize(err)
	s.log.Warn("producing records", "records", len(msgs), "trace_id", traceID, "err", serr)
	return ok, status.Errorf(codes.Unavailable, "kafka did not acknowledge the records: %v", serr)
}

// topicMissing reports whether a produce failed because a topic does not
// exist, on its own or inside kafka-go's per-message WriteErrors.
func topicMissing(err error) bool {
	if errors.Is(err, kafka.UnknownTopicOrPartition) {
		return true
	}
	var werrs kafka.WriteErrors
	if errors.As(err, &werrs) {
		for _, e := range werrs {
			if errors.Is(e, kafka.UnknownTopicOrPartition) {
				return true
			}
		}
	}
	return false
}

// summarize shortens kafka-go's WriteErrors (one error per message) to a
// count and the first error.
func summarize(err error) error {
	var werrs kafka.WriteErrors
	if !errors.As(err, &werrs) {
		return err
	}
	for _, e := range werrs {
		if e != nil {
			return fmt.Errorf("%d of %d records failed, first: %w", werrs.Count(), len(werrs), e)
		}
	}
	return err
}

// receivedAtLayout is RFC 3339 in UTC with nanoseconds, fixed width.
const receivedAtLayout = "2006-01-02T15:04:05.000000000Z07:00"

// requestIDs returns the request's trace id (given or made up) and the
// client id the caller named ("" when none).
func requestIDs(ctx context.Context) (traceID, clientID string) {
	md, _ := metadata.FromIncomingContext(ctx)
	if vals := md.Get(MetadataTraceID); len(vals) > 0 && isToken(vals[0]) {
		traceID = vals[0]
	} else {
		traceID = fmt.Sprintf("%016x%016x", rand.Uint64(), rand.Uint64())
	}
	if vals := md.Get(MetadataClientID); len(vals) > 0 && isToken(vals[0]) {
		clientID = vals[0]
	}
	return traceID, clientID
}

// isToken reports whether s is a short printable-ASCII string, fit for a
// header value.
func isToken(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

func resultLabel(st canvassv1.Status) string {
	switch st {
	case canvassv1.Status_STATUS_ACCEPTED:
		return resultAccepted
	case canvassv1.Status_STATUS_DUPLICATE:
		return resultDuplicate
	case canvassv1.Status_STATUS_REJECTED:
		return resultRejected
	case canvassv1.Status_STATUS_CONFLICT:
		return resultConflict
	}
	return "unknown"
}
