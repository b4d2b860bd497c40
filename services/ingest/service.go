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
	"sync"
	"time"

	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"github.com/chapper/chapper/proto/topic"
	"github.com/google/uuid"
	"github.com/segmentio/kafka-go"
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
	return &Service{
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
		// the linger ends; the size bound only splits very large bursts.
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

// writerBatchSize bounds a partition's produce batch in records.
const writerBatchSize = 1000

// Register registers s on a gRPC server.
func (s *Service) Register(r grpc.ServiceRegistrar) { canvassv1.RegisterIngestServiceServer(r, s) }

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
	s.log.Info("ingest ready", "brokers", s.cfg.Brokers, "topics", topic.All)
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
	// the transport's connections (shared by the writer and the topic
	// client) each hold a goroutine until closed
	defer s.transport.CloseIdleConnections()
	if err := s.writer.Close(); err != nil {
		return fmt.Errorf("closing kafka producer: %w", err)
	}
	return nil
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
	result *canvassv1.RecordResult
	uid    uuid.UUID
	msg    kafka.Message
}

// Submit validates each record of req and produces the valid, new ones. It
// answers one result per record in request order (visits, intentions,
// follow-ups). It fails the whole request with INVALID_ARGUMENT when the
// batch is over the limit and with UNAVAILABLE when the broker did not
// acknowledge within the produce timeout (nothing of that request was
// reported accepted; a retry is safe).
func (s *Service) Submit(ctx context.Context, req *canvassv1.SubmitRequest) (*canvassv1.SubmitResponse, error) {
	resp, err := s.submit(ctx, req)
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
	todo    []pending
	inBatch map[uuid.UUID]struct{}
	kinds   []topic.Kind
	buf     []byte // every value, back to back

	clientID   string // from the request metadata; "" when none
	receivedAt []byte
	traceID    []byte
	// headers of the last record per kind, reused while the client id
	// stays the same.
	lastHeaders map[topic.Kind][]kafka.Header
}

// add answers one validated record: rejected, duplicate within the batch,
// or pending production.
func (b *batch) add(kind topic.Kind, given string, m proto.Message, canvasserID string, rec record, fe *FieldError) error {
	res := &canvassv1.RecordResult{Id: given}
	b.resp.Results = append(b.resp.Results, res)
	b.kinds = append(b.kinds, kind)
	if fe != nil {
		res.Status, res.Reason = canvassv1.Status_STATUS_REJECTED, fe.Error()
		rejectionsTotal.WithLabelValues(string(kind), fe.Field).Inc()
		return nil
	}
	res.Locality = int64(rec.locality)
	if _, dup := b.inBatch[rec.uid]; dup {
		res.Status = canvassv1.Status_STATUS_DUPLICATE
		return nil
	}
	b.inBatch[rec.uid] = struct{}{}
	start := len(b.buf)
	var err error
	b.buf, err = proto.MarshalOptions{}.MarshalAppend(b.buf, m)
	if err != nil {
		return fmt.Errorf("encoding %s %s: %w", kind, rec.id, err)
	}
	cid := b.clientID
	if cid == "" {
		cid = canvasserID
	}
	if cid == "" {
		cid = "anonymous"
	}
	h := b.lastHeaders[kind]
	if h == nil || string(h[1].Value) != cid {
		h = []kafka.Header{
			{Key: topic.HeaderSchema, Value: schemas[kind]},
			{Key: topic.HeaderClientID, Value: []byte(cid)},
			{Key: topic.HeaderReceivedAt, Value: b.receivedAt},
			{Key: topic.HeaderTraceID, Value: b.traceID},
		}
		b.lastHeaders[kind] = h
	}
	b.todo = append(b.todo, pending{result: res, uid: rec.uid, msg: kafka.Message{
		Topic: kind.Topic(),
		Key:   strconv.AppendInt(make([]byte, 0, 12), int64(rec.locality), 10),
		// Full slice expression: a later append to buf must not write here.
		Value:   b.buf[start:len(b.buf):len(b.buf)],
		Headers: h,
	}})
	return nil
}

func (s *Service) submit(ctx context.Context, req *canvassv1.SubmitRequest) (*canvassv1.SubmitResponse, error) {
	n := len(req.GetVisits()) + len(req.GetIntentions()) + len(req.GetFollowups())
	batchRecords.Observe(float64(n))
	if n > s.cfg.BatchLimit {
		return nil, status.Errorf(codes.InvalidArgument, "batch of %d records exceeds the limit of %d", n, s.cfg.BatchLimit)
	}
	if err := s.Ready(); err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	if !s.enter() {
		return nil, status.Error(codes.Unavailable, errStopping.Error())
	}
	defer s.active.Done()

	now := s.now()
	traceID, clientID := requestIDs(ctx)
	// The trace id goes back to the caller, so a support request can name it.
	_ = grpc.SetHeader(ctx, metadata.Pairs(MetadataTraceID, traceID))

	v := validator{now: now, maxFuture: s.cfg.MaxFuture}
	b := &batch{
		resp:        &canvassv1.SubmitResponse{Results: make([]*canvassv1.RecordResult, 0, n)},
		todo:        make([]pending, 0, n),
		inBatch:     make(map[uuid.UUID]struct{}, n),
		kinds:       make([]topic.Kind, 0, n),
		buf:         make([]byte, 0, 256*n),
		clientID:    clientID,
		receivedAt:  now.UTC().AppendFormat(nil, receivedAtLayout),
		traceID:     []byte(traceID),
		lastHeaders: make(map[topic.Kind][]kafka.Header, 3),
	}
	for i, r := range req.GetVisits() {
		given := r.GetId()
		rec, fe := v.visit("visits["+strconv.Itoa(i)+"]", r)
		if err := b.add(topic.KindVisits, given, r, r.GetCanvasserId(), rec, fe); err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
	}
	for i, r := range req.GetIntentions() {
		given := r.GetId()
		rec, fe := v.intention("intentions["+strconv.Itoa(i)+"]", r)
		if err := b.add(topic.KindIntentions, given, r, r.GetCanvasserId(), rec, fe); err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
	}
	for i, r := range req.GetFollowups() {
		given := r.GetId()
		rec, fe := v.followup("followups["+strconv.Itoa(i)+"]", r)
		if err := b.add(topic.KindFollowups, given, r, r.GetCanvasserId(), rec, fe); err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
	}

	if err := s.produce(ctx, b.todo, traceID); err != nil {
		return nil, err
	}
	countResults(b.kinds, b.resp.Results)
	return b.resp, nil
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

// produce produces the records of todo that are neither acknowledged already
// nor being produced by a concurrent Submit, waits for the concurrent ones
// and sets every result to ACCEPTED or DUPLICATE. It returns a gRPC status
// error when the broker did not acknowledge.
func (s *Service) produce(ctx context.Context, todo []pending, traceID string) error {
	for len(todo) > 0 {
		ids := make([]uuid.UUID, len(todo))
		for i, p := range todo {
			ids[i] = p.uid
		}
		mine, dups, waiting, waits, own := s.dedup.claim(ids)
		for _, i := range dups {
			todo[i].result.Status = canvassv1.Status_STATUS_DUPLICATE
		}
		if len(mine) > 0 {
			if err := s.write(ctx, todo, mine, own, traceID); err != nil {
				return err
			}
		}
		// Records another Submit was producing: theirs if it succeeded,
		// ours to produce in the next round if it failed.
		var again []pending
		for k, w := range waits {
			dedupWaitsTotal.Inc()
			select {
			case <-w.f.done:
			case <-ctx.Done():
				return status.FromContextError(ctx.Err()).Err()
			}
			p := todo[waiting[k]]
			if w.Ok() {
				p.result.Status = canvassv1.Status_STATUS_DUPLICATE
			} else {
				again = append(again, p)
			}
		}
		todo = again
	}
	return nil
}

// write produces todo[mine...], the ids of flight own, and waits for the
// broker's acknowledgement.
func (s *Service) write(ctx context.Context, todo []pending, mine []int, own *flight, traceID string) error {
	msgs := make([]kafka.Message, len(mine))
	ids := make([]uuid.UUID, len(mine))
	for k, i := range mine {
		msgs[k] = todo[i].msg
		ids[k] = todo[i].uid
	}
	pctx, cancel := context.WithTimeout(ctx, s.cfg.ProduceTimeout)
	defer cancel()
	start := time.Now()
	err := s.writer.WriteMessages(pctx, msgs...)
	produceSeconds.Observe(time.Since(start).Seconds())

	var werrs kafka.WriteErrors
	partial := errors.As(err, &werrs) && len(werrs) == len(msgs)
	s.dedup.finish(own, ids, func(k int) bool {
		if err == nil {
			return true
		}
		// Records on partitions that did acknowledge are on Kafka: remember
		// them, so the client's retry gets DUPLICATE instead of a second copy.
		return partial && werrs[k] == nil
	})
	if err != nil {
		produceErrorsTotal.Inc()
		if ctx.Err() != nil {
			// The caller went away; nothing to log.
			return status.FromContextError(ctx.Err()).Err()
		}
		if s.cfg.CreateTopics && topicMissing(err) {
			select {
			case s.topicsGone <- struct{}{}:
			default:
			}
		}
		err = summarize(err)
		s.log.Warn("producing records", "records", len(msgs), "trace_id", traceID, "err", err)
		return status.Errorf(codes.Unavailable, "kafka did not acknowledge the records: %v", err)
	}
	for _, i := range mine {
		todo[i].result.Status = canvassv1.Status_STATUS_ACCEPTED
	}
	return nil
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
	}
	return "unknown"
}
