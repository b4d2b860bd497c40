// Package timeline is the sink that materialises every record kind into
// per-locality Redis timelines (DESIGN.md, Storage/Redis), the store the
// query service reads: a sorted set of the newest records, a set of every id
// counted, a hash of counters and a hash of record bodies, and a Pub/Sub
// message per new record on its chunk's news channel.
package timeline

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/chapper/chapper/pipelines/runtime"
	canvassv1 "github.com/chapper/chapper/proto/canvass/v1"
	"github.com/chapper/chapper/proto/locality"
	"github.com/chapper/chapper/proto/topic"
)

// Reasons a record is rejected permanently; Failure.Reason wraps one of them.
var (
	ErrNotRecord  = errors.New("message is not a canvassing record")
	ErrNoID       = errors.New("record has no id")
	ErrNoLocation = errors.New("record has no valid location")
)

// The scripts: batch.lua materialises many records and applies their
// corrections; id.lua keeps the per-id records. Both start with
// idrecord.lua, the id record's format and claim.
var (
	//go:embed idrecord.lua
	idRecordSource string
	//go:embed batch.lua
	batchOwn string
	//go:embed id.lua
	idOwn string

	batchSource = idRecordSource + batchOwn
	idSource    = idRecordSource + idOwn
)

// Sink writes records to Redis timelines. Write is idempotent: a record id
// already in its locality's seen set changes nothing and publishes nothing,
// so replaying a topic, even past the trim, leaves every key as it was. A
// record whose replaces_id names an earlier record of its kind is a
// correction: the replaced record stops counting and leaves its timeline,
// whatever the order the two arrive in (docs/pipelines.md). Unless
// Config.Fixed, every batch goes to the prefixes in force under the base
// prefix (see ReadPrefixes). Sink is safe for concurrent use.
type Sink struct {
	client  redis.UniversalClient
	cluster bool // the ids live in slots apart from their localities
	batch   *redis.Script
	ids     *redis.Script
	prefix  string
	fixed   bool
	keep    string
	ttl     string
	ttls    ttlNotes

	// known is the targets read last, with the check every batch call
	// makes (standalone only; nil until read, or after a call found them
	// changed)
	knownMu sync.Mutex
	known   []target

	// legacy takes the per-record path (legacy.go), for the benchmark only.
	legacy    bool
	record    *redis.Script
	legacyIDs *redis.Script
}

// New returns a timeline sink writing through client and loads its Lua
// scripts into Redis (SCRIPT LOAD, on every master of a cluster). The caller
// owns and closes client.
func New(client redis.UniversalClient, cfg Config) (*Sink, error) {
	if err := cfg.validateSink(); err != nil {
		return nil, err
	}
	keep, ttl := cfg.Keep, cfg.TTL
	if keep == 0 {
		keep = DefaultKeep
	}
	if ttl == 0 {
		ttl = DefaultTTL
	}
	s := &Sink{
		client:    client,
		batch:     redis.NewScript(batchSource),
		ids:       redis.NewScript(idSource),
		prefix:    cfg.Prefix,
		fixed:     cfg.Fixed,
		keep:      strconv.Itoa(keep),
		ttl:       strconv.FormatInt(max(ttl.Milliseconds(), 1), 10),
		ttls:      ttlNotes{every: ttl / ttlRefreshes, now: time.Now, last: map[string]time.Time{}},
		record:    redis.NewScript(recordSource),
		legacyIDs: redis.NewScript(legacyIDSource),
	}
	_, s.cluster = client.(*redis.ClusterClient)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.load(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Sink) load(ctx context.Context) error {
	if err := s.batch.Load(ctx, s.client).Err(); err != nil {
		return fmt.Errorf("loading timeline script into redis: %w", err)
	}
	if s.legacy {
		if err := s.record.Load(ctx, s.client).Err(); err != nil {
			return fmt.Errorf("loading timeline record script into redis: %w", err)
		}
		if err := s.legacyIDs.Load(ctx, s.client).Err(); err != nil {
			return fmt.Errorf("loading timeline per-record id script into redis: %w", err)
		}
	}
	if err := s.ids.Load(ctx, s.client).Err(); err != nil {
		return fmt.Errorf("loading timeline id script into redis: %w", err)
	}
	return nil
}

func (c *Config) validateSink() error {
	switch {
	case c.Keep < 0:
		return ErrKeep
	case c.TTL < 0:
		return ErrTTL
	case strings.ContainsAny(c.Prefix, "{}"):
		return ErrPrefix
	}
	return nil
}

// Name returns "timeline".
func (s *Sink) Name() string { return "timeline" }

// Write materialises a batch in pipelined round trips (each split by slot
// on a cluster): the prefix control keys (unless Config.Fixed; on a
// standalone Redis only when not known or changed, see writeAll), then on
// a standalone Redis one script call per prefix for the whole batch (after a
// round marking what its corrections replace, if it has any), on Redis
// Cluster a round claiming the ids (see claimRound) and then one script
// call per locality and prefix. Records that cannot
// be placed on a timeline (not a record message, no id, no valid location)
// are returned in a *runtime.PermanentError; the rest are written first. A
// key of the wrong type or a counter that is not an integer is a
// *runtime.FatalError wrapping a BrokenKeyError (the scripts check before
// their first write, so the record is written once the key is repaired).
// Other Redis errors are returned as they are: transient, the runtime
// retries the batch.
func (s *Sink) Write(ctx context.Context, batch []runtime.Record) error {
	recs := make([]prepared, 0, len(batch))
	var failures []runtime.Failure
	for _, r := range batch {
		p, err := s.prepare(r)
		if err != nil {
			failures = append(failures, runtime.Failure{Record: r, Reason: err})
			continue
		}
		recs = append(recs, p)
	}
	if len(recs) > 0 {
		if err := s.writeAll(ctx, recs); err != nil {
			return err
		}
	}
	if len(failures) > 0 {
		return &runtime.PermanentError{Failures: failures}
	}
	return nil
}

// staleAttempts bounds how many times one Write reads the prefixes again
// after its calls found them changed (a rebuild started or switched
// meanwhile).
const staleAttempts = 3

// errStalePrefixes: a batch call found the prefix control keys changed
// since the sink read them, and wrote nothing.
var errStalePrefixes = errors.New("the timeline prefixes changed since they were read")

// writeAll writes recs under the prefixes in force. On a standalone Redis
// the sink keeps the prefixes it read, and each batch call checks them
// before its first write (batch.lua), so a batch costs no round trip to
// read them; when they changed, that call wrote nothing and the batch is
// written again under the prefixes read anew (the calls that did write
// are replays then, and change nothing). Elsewhere (Redis Cluster, where
// the control keys sit in slots of their own, and the benchmark's
// per-record path) they are read at the start of every batch.
func (s *Sink) writeAll(ctx context.Context, recs []prepared) error {
	for attempt := 1; ; attempt++ {
		targets, err := s.targets(ctx)
		if err != nil {
			return err
		}
		err = s.write(ctx, targets, recs)
		if !errors.Is(err, errStalePrefixes) || attempt == staleAttempts {
			return err
		}
		s.knownMu.Lock()
		s.known = nil
		s.knownMu.Unlock()
	}
}

// target is one key prefix a batch is written under.
type target struct {
	prefix  string
	publish bool
	// check, when not nil, is what the batch calls find in the prefix
	// control keys if the prefixes did not change since they were read
	check *prefixCheck
}

// targets returns the prefixes of this batch: the active one (which gets
// the news) and the one being rebuilt, if any.
func (s *Sink) targets(ctx context.Context) ([]target, error) {
	if s.fixed {
		return []target{{prefix: s.prefix}}, nil
	}
	checked := !s.cluster && !s.legacy
	if checked {
		s.knownMu.Lock()
		known := s.known
		s.knownMu.Unlock()
		if known != nil {
			return known, nil
		}
	}
	p, check, err := readPrefixes(ctx, s.client, s.prefix)
	if err != nil {
		if errors.Is(err, ErrPrefix) {
			return nil, runtime.Fatal(err)
		}
		return nil, err
	}
	if !checked {
		check = nil
	}
	t := []target{{prefix: p.Active, publish: true, check: check}}
	if p.Rebuild != "" {
		t = append(t, target{prefix: p.Rebuild, check: check})
	}
	if checked {
		s.knownMu.Lock()
		s.known = t
		s.knownMu.Unlock()
	}
	return t, nil
}

// prepared is one record ready for the scripts.
type prepared struct {
	id, replaces string
	loc          int64
	score        int64
	body, entry  []byte
	kind, detail string // counter fields
}

// call is the keys and arguments of one script call.
type call struct {
	keys []string
	args []any
}

// maxOps bounds the ops of one batch script call, so that one call does not
// hold a standalone Redis for long.
const maxOps = 500

// replaced is what the id record of a replaced id says: the locality it was
// counted in and its kind:value counter field, when known.
type replaced struct {
	loc   int64
	field string
	known bool
}

// op is one record's work in one locality under one target, what one call
// of the per-record script did: materialise r (id = r.id), or only take
// r.replaces off loc (id = "").
type op struct {
	r             prepared
	id            string
	loc           int64
	claim         bool // the batch call claims r.id itself (standalone)
	wasReplaced   bool // the id round's claim said so (claim false)
	replacedHere  bool
	replacedField string
}

// appendOps appends the ops of r: r itself in its locality and, when the
// record r replaces was counted in another locality, the op that takes it
// off there.
func appendOps(ops []op, r prepared, old replaced, claim, wasReplaced bool) []op {
	here := old.known && old.loc == r.loc
	ops = append(ops, op{r: r, id: r.id, loc: r.loc, claim: claim, wasReplaced: wasReplaced,
		replacedHere: here, replacedField: old.field})
	if old.known && !here {
		ops = append(ops, op{r: r, loc: old.loc, replacedHere: true, replacedField: old.field})
	}
	return ops
}

// write materialises recs under every target. On a standalone Redis it is
// one batch script call per target (per maxOps ops) that also claims each
// id, after a round of id script calls marking what the batch's corrections
// replace, if it has any. On Redis Cluster the ids live in slots of their
// own, so an id round claims every id and marks every replaced one (see
// idRound), then one batch script call per locality carries all of the
// locality's records.
func (s *Sink) write(ctx context.Context, targets []target, recs []prepared) error {
	switch {
	case s.legacy:
		return s.writePerRecord(ctx, targets, recs)
	case s.cluster:
		return s.writeByLocality(ctx, targets, recs)
	}
	return s.writeWhole(ctx, targets, recs)
}

// writeWhole is write on a standalone Redis.
func (s *Sink) writeWhole(ctx context.Context, targets []target, recs []prepared) error {
	// Marking the replaced ids before the batch call claims any id keeps
	// the outcome of record.lua's order: a record claimed after its
	// correction's mark finds itself replaced; one claimed before, in an
	// earlier batch, is taken off where it counted.
	var marks []call
	for _, t := range targets {
		for _, r := range recs {
			if r.replaces != "" {
				marks = append(marks, s.replaceCall(t, r))
			}
		}
	}
	replies, err := s.run(ctx, s.ids, marks)
	if err != nil {
		return err
	}
	answers := idAnswers{replies: replies}
	var calls []call
	due := s.ttls.round()
	for _, t := range targets {
		ops := make([]op, 0, len(recs))
		for _, r := range recs {
			var old replaced
			if r.replaces != "" {
				old = answers.replaced()
			}
			ops = appendOps(ops, r, old, true, false)
		}
		calls = s.appendBatchCalls(calls, t, ops, due)
	}
	if _, err := s.run(ctx, s.batch, calls); err != nil {
		return err
	}
	s.ttls.done(due)
	return nil
}

// writeByLocality is write on Redis Cluster.
func (s *Sink) writeByLocality(ctx context.Context, targets []target, recs []prepared) error {
	answers, err := s.idRound(ctx, targets, recs)
	if err != nil {
		return err
	}
	var calls []call
	due := s.ttls.round()
	for _, t := range targets {
		byLoc := map[int64][]op{}
		var order []int64
		add := func(o op) {
			if _, ok := byLoc[o.loc]; !ok {
				order = append(order, o.loc)
			}
			byLoc[o.loc] = append(byLoc[o.loc], o)
		}
		for _, r := range recs {
			for _, o := range answers.ops(r) {
				add(o)
			}
		}
		for _, loc := range order {
			calls = s.appendBatchCalls(calls, t, byLoc[loc], due)
		}
	}
	if _, err := s.run(ctx, s.batch, calls); err != nil {
		return err
	}
	s.ttls.done(due)
	return nil
}

// idRound claims each id (where it counts) and marks what each correction
// replaces, in batch order, one id script call each (in a batch without
// corrections, claimRound, with plain SETs for the new ids). A record and its
// correction meet there, on the replaced id's record, whichever comes
// first: if the correction did, the claim says "replaced"; if the claim
// did, the correction learns where the replaced record counts and takes it
// off there.
func (s *Sink) idRound(ctx context.Context, targets []target, recs []prepared) (*idAnswers, error) {
	if !s.legacy && !hasCorrection(recs) {
		return s.claimRound(ctx, targets, recs)
	}
	calls := make([]call, 0, len(targets)*len(recs))
	for _, t := range targets {
		for _, r := range recs {
			calls = append(calls, call{
				keys: []string{IDKey(t.prefix, r.kind, r.id)},
				args: []any{"claim", s.ttl, r.loc, r.detail},
			})
			if r.replaces != "" {
				calls = append(calls, s.replaceCall(t, r))
			}
		}
	}
	ids := s.ids
	if s.legacy {
		ids = s.legacyIDs
	}
	replies, err := s.run(ctx, ids, calls)
	if err != nil {
		return nil, err
	}
	return &idAnswers{replies: replies}, nil
}

// hasCorrection reports whether a record of recs replaces another.
func hasCorrection(recs []prepared) bool {
	for _, r := range recs {
		if r.replaces != "" {
			return true
		}
	}
	return false
}

// claimRound is idRound for a batch without corrections, answering as the
// id script's claims would. A new id, almost every record, is claimed by
// claimID's first command alone (SET NX GET), sent as a plain command:
// several times cheaper for Redis than a script call, and the id keys of
// a cluster batch are in as many slots as there are records. Only the ids
// that SET found taken (a redelivery, or a correction that came first) or
// of another type, which it left as they were, go to the id script, which
// runs claimID whole. With no correction in the batch, nothing else
// touches these id records between the two rounds, so the answers are
// those of one claim per id in batch order.
func (s *Sink) claimRound(ctx context.Context, targets []target, recs []prepared) (*idAnswers, error) {
	pipe := s.client.Pipeline()
	cmds := make([]*redis.Cmd, 0, len(targets)*len(recs))
	claims := make([]call, 0, cap(cmds))
	for _, t := range targets {
		for _, r := range recs {
			c := call{keys: []string{IDKey(t.prefix, r.kind, r.id)}, args: []any{"claim", s.ttl, r.loc, r.detail}}
			claims = append(claims, c)
			value := "0 " + strconv.FormatInt(r.loc, 10) + " " + r.detail
			cmds = append(cmds, pipe.Do(ctx, "SET", c.keys[0], value, "NX", "PX", s.ttl, "GET"))
		}
	}
	_, _ = pipe.Exec(ctx) // each command's error is read below
	replies := make([]any, len(cmds))
	var again []call
	var at []int
	for i, cmd := range cmds {
		switch err := cmd.Err(); {
		case errors.Is(err, redis.Nil):
			replies[i] = int64(0) // claimed now: not replaced
		case err == nil || redis.HasErrorPrefix(err, "WRONGTYPE"):
			again = append(again, claims[i])
			at = append(at, i)
		default:
			return nil, fmt.Errorf("claiming %d record ids in redis: %w", len(cmds), err)
		}
	}
	more, err := s.run(ctx, s.ids, again)
	if err != nil {
		return nil, err
	}
	for j, i := range at {
		replies[i] = more[j]
	}
	return &idAnswers{replies: replies}, nil
}

// replaceCall marks the id r replaces as replaced under t.
func (s *Sink) replaceCall(t target, r prepared) call {
	return call{keys: []string{IDKey(t.prefix, r.kind, r.replaces)}, args: []any{"replace", s.ttl}}
}

// idAnswers reads the replies of id script calls in the order they were
// made.
type idAnswers struct {
	replies []any
	next    int
}

// claimed reads a claim's reply: whether the id was replaced already.
func (a *idAnswers) claimed() bool {
	v, _ := a.replies[a.next].(int64)
	a.next++
	return v == 1
}

// ops reads the replies of r's id script calls (its claim, and its
// replace if r is a correction) and returns r's ops.
func (a *idAnswers) ops(r prepared) []op {
	wasReplaced := a.claimed()
	var old replaced
	if r.replaces != "" {
		old = a.replaced()
	}
	return appendOps(nil, r, old, false, wasReplaced)
}

// replaced reads a replace's reply: where the replaced id counted.
func (a *idAnswers) replaced() replaced {
	parts, _ := a.replies[a.next].([]any)
	a.next++
	if len(parts) != 2 {
		return replaced{}
	}
	ls, ok1 := parts[0].(string)
	f, ok2 := parts[1].(string)
	l, err := strconv.ParseInt(ls, 10, 64)
	if err != nil || !ok1 || !ok2 {
		return replaced{}
	}
	return replaced{loc: l, field: f, known: true}
}

// appendBatchCalls appends the batch script calls of ops under t, at most
// maxOps ops each. On Redis Cluster every op of one call is of one
// locality.
func (s *Sink) appendBatchCalls(calls []call, t target, ops []op, due *ttlRound) []call {
	for len(ops) > 0 {
		n := min(len(ops), maxOps)
		calls = append(calls, s.batchCall(t, ops[:n], due))
		ops = ops[n:]
	}
	return calls
}

// batchCall builds one batch script call; see batch.lua.
func (s *Sink) batchCall(t target, ops []op, due *ttlRound) call {
	keys := make([]string, 0, 7+len(ops))
	args := make([]any, 0, 5+15*len(ops))
	args = append(args, s.ttl, s.keep, 0, "", "")
	first := map[int64]int{}
	refresh := map[int64]string{}
	for _, o := range ops {
		k, ok := first[o.loc]
		if !ok {
			k = len(keys) + 1
			first[o.loc] = k
			keys = append(keys, localityKeys(t.prefix, o.loc)...)
			refresh[o.loc] = bit(due.due(keys[k-1]))
		}
		idk := 0
		if o.claim && o.id != "" {
			keys = append(keys, IDKey(t.prefix, o.r.kind, o.id))
			idk = len(keys)
		}
		args = append(args, k, o.loc, o.id, o.r.score, o.r.body, s.channel(t, o.loc), o.r.entry,
			o.r.kind, o.r.detail, idk, bit(o.wasReplaced), o.r.replaces, bit(o.replacedHere), o.replacedField,
			refresh[o.loc])
	}
	if c := t.check; c != nil {
		keys = append(keys, ActivePrefixKey(c.base), RebuildPrefixKey(c.base))
		args[2], args[3], args[4] = len(keys)-1, c.active, c.rebuild
	}
	return call{keys: keys, args: args}
}

// ttlRefreshes is how many times per TTL the sink refreshes the TTLs of a
// locality's keys it keeps writing to: once per TTL/100 (3.4 hours of the
// default 14 days) instead of five PEXPIREs per locality and script call.
const ttlRefreshes = 100

// ttlNotes remembers, per locality and prefix (by the locality's seen set
// key), when this sink last had batch.lua set the TTLs of its keys. A
// locality not refreshed for every (or never, by this process) is
// refreshed by its next call; batch.lua also sets the TTLs whenever a call
// may have created one of the keys, so that a key lacks a TTL only after
// a hand deletion, for at most every (or until a restart: the notes live
// in the process). A key written lives at least TTL - every after its last
// write.
type ttlNotes struct {
	every time.Duration
	now   func() time.Time

	mu     sync.Mutex
	last   map[string]time.Time
	pruned time.Time
}

// ttlRound is the refreshes of one Write, noted once its calls succeeded.
type ttlRound struct {
	notes *ttlNotes
	at    time.Time
	keys  []string
}

// round starts the refreshes of one Write.
func (n *ttlNotes) round() *ttlRound {
	return &ttlRound{notes: n, at: n.now()}
}

// due reports whether the locality of seen set key seen is to have its
// TTLs refreshed by this round's call.
func (r *ttlRound) due(seen string) bool {
	n := r.notes
	n.mu.Lock()
	last, ok := n.last[seen]
	n.mu.Unlock()
	if ok && r.at.Sub(last) < n.every {
		return false
	}
	r.keys = append(r.keys, seen)
	return true
}

// done notes the round's refreshes, once its calls succeeded, and forgets
// the localities whose notes are too old to matter.
func (n *ttlNotes) done(r *ttlRound) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, k := range r.keys {
		n.last[k] = r.at
	}
	if r.at.Sub(n.pruned) >= n.every {
		for k, at := range n.last {
			if r.at.Sub(at) >= n.every {
				delete(n.last, k)
			}
		}
		n.pruned = r.at
	}
}

// localityKeys returns the five keys of a locality in the order the
// scripts take them.
func localityKeys(prefix string, loc int64) []string {
	return []string{SeenKey(prefix, loc), TimelineKey(prefix, loc), CountersKey(prefix, loc),
		RecordsKey(prefix, loc), ReplacedKey(prefix, loc)}
}

// channel returns the news channel of loc's chunk under t, or "" when t
// gets no news.
func (s *Sink) channel(t target, loc int64) string {
	if !t.publish {
		return ""
	}
	return NewsChannel(t.prefix, locality.Index(loc).Chunk())
}

func bit(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// run sends the calls of one script in one pipeline (split by slot on a
// cluster) and returns their replies in order. If Redis lost the scripts
// (restart, SCRIPT FLUSH, failover) it loads them again and runs the whole
// round once more: the calls that succeeded the first time are replays and
// change nothing.
func (s *Sink) run(ctx context.Context, script *redis.Script, calls []call) ([]any, error) {
	if len(calls) == 0 {
		return nil, nil
	}
	replies, err := s.pipeline(ctx, script, calls)
	if err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
		if err := s.load(ctx); err != nil {
			return nil, fmt.Errorf("reloading: %w", err)
		}
		replies, err = s.pipeline(ctx, script, calls)
	}
	return replies, err
}

func (s *Sink) pipeline(ctx context.Context, script *redis.Script, calls []call) ([]any, error) {
	pipe := s.client.Pipeline()
	cmds := make([]*redis.Cmd, len(calls))
	for i, c := range calls {
		cmds[i] = script.EvalSha(ctx, pipe, c.keys, c.args...)
	}
	_, err := pipe.Exec(ctx)
	if err == nil {
		replies := make([]any, len(cmds))
		for i, cmd := range cmds {
			replies[i] = cmd.Val()
		}
		return replies, nil
	}
	// Exec returns the first failed command's error. A NOSCRIPT one comes
	// first, so that run knows to reload; then a broken key, which no
	// retry can repair.
	var fatal error
	stale := false
	for i, cmd := range cmds {
		cerr := cmd.Err()
		switch {
		case cerr == nil:
		case redis.HasErrorPrefix(cerr, "NOSCRIPT"):
			return nil, fmt.Errorf("writing %d records to redis timelines: %w", len(calls), cerr)
		case redis.HasErrorPrefix(cerr, "CHAPPER_STALE_PREFIXES"):
			stale = true
		case fatal == nil && isBrokenKey(cerr):
			// the error names the broken key; a batch call's first key
			// is only where its keys start
			fatal = runtime.Fatal(fmt.Errorf("writing to redis timelines (keys from %s): %w", calls[i].keys[0], BrokenKeyError{cerr}))
		}
	}
	if fatal != nil {
		return nil, fatal
	}
	if stale {
		return nil, errStalePrefixes
	}
	return nil, fmt.Errorf("writing %d records to redis timelines: %w", len(calls), err)
}

// isBrokenKey reports whether err is Redis refusing a write because of what
// a key holds: the scripts' own check (CHAPPER_BADKEY) or Redis's WRONGTYPE.
func isBrokenKey(err error) bool {
	return redis.HasErrorPrefix(err, "CHAPPER_BADKEY") || redis.HasErrorPrefix(err, "WRONGTYPE") ||
		strings.Contains(err.Error(), "not an integer")
}

// BrokenKeyError is a Redis key of the wrong type, or a counter field that
// is not an integer, that stops a timeline write (inside a
// *runtime.FatalError): no retry can help until an operator repairs or
// deletes the key. Nothing of the record was written, so after the repair it
// is counted once.
type BrokenKeyError struct{ Err error }

func (e BrokenKeyError) Error() string {
	return "broken timeline key (repair or delete it, then restart the pipeline): " +
		strings.TrimPrefix(e.Err.Error(), "CHAPPER_BADKEY ")
}

// Unwrap returns the Redis error.
func (e BrokenKeyError) Unwrap() error { return e.Err }

// prepare builds the script arguments of one record.
func (s *Sink) prepare(r runtime.Record) (prepared, error) {
	meta, ok := topic.MetaOf(r.Message)
	if !ok {
		return prepared{}, fmt.Errorf("%w: %T", ErrNotRecord, r.Message)
	}
	if meta.ID == "" {
		return prepared{}, ErrNoID
	}
	if meta.Location == nil {
		return prepared{}, ErrNoLocation
	}
	loc, err := locality.Of(meta.Location.GetLatitude(), meta.Location.GetLongitude())
	if err != nil {
		return prepared{}, fmt.Errorf("%w: %w", ErrNoLocation, err)
	}
	at := meta.Time
	if at.UnixMilli() <= 0 && !r.Time.IsZero() {
		// A record without its own time is placed at the time the broker
		// took it rather than at the start of the epoch.
		at = r.Time
	}

	body, err := recordBody(r)
	if err != nil {
		return prepared{}, err
	}
	// The published TimelineEntry is its fields 1 to 3 followed by field 4
	// (the Record), whose bytes are the body; the script appends the body to
	// this prefix, so the body crosses the network once.
	entry, err := proto.Marshal(&canvassv1.TimelineEntry{Id: meta.ID, Locality: int64(loc), Time: timestamppb.New(at)})
	if err != nil {
		return prepared{}, fmt.Errorf("encoding timeline entry: %w", err)
	}
	entry = protowire.AppendTag(entry, 4, protowire.BytesType)
	entry = protowire.AppendVarint(entry, uint64(len(body)))

	kind, detail := counterFields(r.Message)
	p := prepared{id: meta.ID, replaces: replacesID(r.Message), loc: int64(loc), score: at.UnixMilli(),
		body: body, entry: entry, kind: kind, detail: detail}
	if p.replaces == p.id {
		p.replaces = ""
	}
	return p, nil
}

// replacesID returns the id of the record a correction replaces, or "".
func replacesID(m proto.Message) string {
	switch r := m.(type) {
	case *canvassv1.Visit:
		return r.GetReplacesId()
	case *canvassv1.Intention:
		return r.GetReplacesId()
	case *canvassv1.FollowupRequest:
		return r.GetReplacesId()
	}
	return ""
}

// recordBody returns the protobuf bytes of the canvassv1.Record holding the
// record's message. The Record's oneof field is the raw value as read from
// Kafka, wrapped without decoding and encoding it again.
func recordBody(r runtime.Record) ([]byte, error) {
	var field protowire.Number
	switch r.Message.(type) {
	case *canvassv1.Visit:
		field = 1
	case *canvassv1.Intention:
		field = 2
	case *canvassv1.FollowupRequest:
		field = 3
	}
	value := r.Value
	if len(value) == 0 {
		var err error
		if value, err = proto.Marshal(r.Message); err != nil {
			return nil, fmt.Errorf("encoding record: %w", err)
		}
	}
	body := make([]byte, 0, len(value)+6)
	body = protowire.AppendTag(body, field, protowire.BytesType)
	body = protowire.AppendBytes(body, value)
	return body, nil
}

// counterFields returns the ct hash fields a record increments: its kind
// and kind:value.
func counterFields(m proto.Message) (kind, detail string) {
	switch r := m.(type) {
	case *canvassv1.Visit:
		return "visits", "visits:" + enumName(r.GetOutcome().String(), "OUTCOME_")
	case *canvassv1.Intention:
		return "intentions", "intentions:" + r.GetOption()
	case *canvassv1.FollowupRequest:
		return "followups", "followups:" + enumName(r.GetMethod().String(), "METHOD_")
	}
	return "", ""
}

// enumName turns OUTCOME_NO_ANSWER into no_answer.
func enumName(name, prefix string) string {
	return strings.ToLower(strings.TrimPrefix(name, prefix))
}
