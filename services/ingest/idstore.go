package ingest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"
)

// ErrIDStore wraps every failure to reach the shared id store; Submit
// answers UNAVAILABLE for it rather than guessing whether an id is new.
var ErrIDStore = errors.New("shared id store unavailable")

// idStore is the shared id store in Redis: one key per record id,
// <prefix>id:{<uuid>}, set once per record. A Submit (owner, a random
// 128-bit token per claim step) claims its new ids with SET NX GET (Redis 7
// or later), each holding "p" + owner + "|" + claim time + "|" + stamp with
// the id TTL (longer than a phone's offline window). Once the broker
// acknowledged all of them, one key per Submit, <prefix>done:{<owner>},
// marks every claim of that owner as acknowledged: the ack costs one
// command per Submit instead of one per record. A claim whose owner has no
// mark is in flight until the claim TTL has passed since its claim time
// (an instance that died mid-Submit); then it is stale and the next claim
// takes it over. When only some records of a Submit reached Kafka, those
// are acknowledged one by one ("a" + stamp, the form of earlier versions,
// still read) and the others released, so a mark never covers a record
// that is not on Kafka. Every instance of ingest shares the store, so
// DUPLICATE and CONFLICT hold across instances and restarts, and of two
// Submits of one id only the one whose claim succeeded produces it.
//
// Each key has its own hash tag and every command names one key, so it
// works on Redis Cluster; the commands of a batch are pipelined (per node
// on a Cluster): one round trip for the claim of a whole Submit.
//
// Measured (BenchmarkIDStore, BenchmarkIngestAuth): redis-server's CPU goes
// with the number of keys written, not of commands (MSETNX of 100 keys
// cost as much per key as 100 SETs), so the mark, which halves the keys
// written per record, halves the store's cost on both sides. One Lua
// script call per batch step instead (all of a Submit's SETs in one call;
// standalone only) was measured and not kept: it saves go-redis CPU but
// costs the single-threaded redis-server, shared by every ingest
// instance, about 30% more.
//
// Claim times come from each instance's clock; the claim TTL (tens of
// seconds) is far longer than the skew of synchronised clocks. Instances
// from before the marks do not read them (they would see marked ids in
// flight until their wait times out), so replace every instance at once.
type idStore struct {
	client   redis.UniversalClient
	prefix   string
	ttl      time.Duration
	claimTTL time.Duration
	now      func() time.Time
}

// newIDStore returns the id store on client.
func newIDStore(client redis.UniversalClient, prefix string, ttl, claimTTL time.Duration) *idStore {
	return &idStore{client: client, prefix: prefix, ttl: ttl, claimTTL: claimTTL, now: time.Now}
}

// newOwner returns a fresh owner token for one claim step: 128 random
// bits, so that two Submits' marks never collide over the id TTL.
func newOwner() string {
	return strconv.FormatUint(rand.Uint64(), 36) + "." + strconv.FormatUint(rand.Uint64(), 36)
}

// claimValue is what a claim by owner at time at of a record stamped
// stamp stores.
func claimValue(owner string, at time.Time, stamp string) string {
	return claimPrefix(owner, at) + stamp
}

// claimPrefix is claimValue without the stamp: the same for every id of a
// claim step.
func claimPrefix(owner string, at time.Time) string {
	return "p" + owner + "|" + strconv.FormatInt(at.UnixMilli(), 36) + "|"
}

// doneKey is the key that marks owner's claims acknowledged.
func (s *idStore) doneKey(owner string) string { return s.prefix + "done:{" + owner + "}" }

// takeoverScript replaces a stale claim (ARGV[1], exactly as read) with a
// new one (ARGV[2], id TTL ARGV[3] ms); 0 when the key changed meanwhile.
var takeoverScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) return 1 end
return 0`)

// releaseScript drops the caller's own claim, and nothing else.
var releaseScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, #ARGV[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) return 1 end
return 0`)

// claimState is the answer of the store for one id.
type claimState int

const (
	claimed  claimState = iota // the caller owns it now: produce it
	acked                      // acknowledged before: compare stamps
	inFlight                   // another Submit is producing it
	unknown                    // (lookup only) the store has no such id
)

// idAnswer is one id's state and, when acked or in flight, its stamp.
// raw, owner and at are what an in-flight claim holds (the stored value,
// its owner and claim time), for resolve.
type idAnswer struct {
	state claimState
	stamp string
	raw   string
	owner string
	at    time.Time
}

func (s *idStore) key(id uuid.UUID) string {
	var b strings.Builder
	b.Grow(len(s.prefix) + 41)
	b.WriteString(s.prefix)
	b.WriteString("id:{")
	var text [36]byte // id.String() without its allocation
	const hexDigits = "0123456789abcdef"
	j := 0
	for i, c := range id {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			text[j] = '-'
			j++
		}
		text[j], text[j+1] = hexDigits[c>>4], hexDigits[c&0xf]
		j += 2
	}
	b.Write(text[:])
	b.WriteByte('}')
	return b.String()
}

// parseValue reads what the store holds under an id. A claim whose time
// cannot be read counts as made at the epoch: stale.
func parseValue(v string) idAnswer {
	switch {
	case strings.HasPrefix(v, "a"):
		return idAnswer{state: acked, stamp: v[1:]}
	case strings.HasPrefix(v, "p"):
		owner, rest, _ := strings.Cut(v[1:], "|")
		at, stamp, _ := strings.Cut(rest, "|")
		ms, err := strconv.ParseInt(at, 36, 64)
		if err != nil {
			ms = 0
		}
		return idAnswer{state: inFlight, stamp: stamp, raw: v, owner: owner, at: time.UnixMilli(ms)}
	}
	return idAnswer{state: unknown}
}

// run evaluates script once per id in one pipeline, loading the script
// when the server does not have it (a restarted redis-server).
func (s *idStore) run(ctx context.Context, doing string, script *redis.Script, ids []uuid.UUID, args func(k int) []any) ([]*redis.Cmd, error) {
	start := time.Now()
	defer func() { idStoreSeconds.WithLabelValues(doing).Observe(time.Since(start).Seconds()) }()
	for attempt := 0; ; attempt++ {
		pipe := s.client.Pipeline()
		cmds := make([]*redis.Cmd, len(ids))
		for k, id := range ids {
			cmds[k] = script.EvalSha(ctx, pipe, []string{s.key(id)}, args(k)...)
		}
		_, err := pipe.Exec(ctx)
		if err != nil && attempt == 0 && redis.HasErrorPrefix(err, "NOSCRIPT") {
			if err := script.Load(ctx, s.client).Err(); err != nil {
				idStoreErrorsTotal.WithLabelValues(doing).Inc()
				return nil, fmt.Errorf("%w: loading the %s script: %v", ErrIDStore, doing, err)
			}
			continue
		}
		if err != nil && !errors.Is(err, redis.Nil) {
			idStoreErrorsTotal.WithLabelValues(doing).Inc()
			return nil, fmt.Errorf("%w: %s %d ids: %v", ErrIDStore, doing, len(ids), err)
		}
		return cmds, nil
	}
}

// claim claims each id whose stamp is stamps[k] for owner, or answers
// what the store knows of it: one SET NX GET per id (Redis 7), pipelined,
// so a batch costs one round trip per node and no script. Claims of other
// owners are resolved (resolve): acknowledged by their owner's mark, in
// flight, or stale and taken over.
func (s *idStore) claim(ctx context.Context, owner string, ids []uuid.UUID, stamps []string) ([]idAnswer, error) {
	start := time.Now()
	defer func() { idStoreSeconds.WithLabelValues("claim").Observe(time.Since(start).Seconds()) }()
	now := s.now()
	mine := "p" + owner + "|"
	prefix := claimPrefix(owner, now)
	ttl := strconv.FormatInt(s.ttl.Milliseconds(), 10)
	values := make([]string, len(ids))
	pipe := s.client.Pipeline()
	cmds := make([]*redis.Cmd, len(ids))
	for k, id := range ids {
		values[k] = prefix + stamps[k]
		// SET key value NX GET PX ttl, as pipe.SetArgs writes it, with
		// fewer allocations per id (SetArgs grows its argument list
		// three times and boxes the TTL).
		cmds[k] = pipe.Do(ctx, "set", s.key(id), values[k], "px", ttl, "nx", "get")
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		idStoreErrorsTotal.WithLabelValues("claim").Inc()
		return nil, fmt.Errorf("%w: claiming %d ids: %v", ErrIDStore, len(ids), err)
	}
	out := make([]idAnswer, len(ids))
	for k, c := range cmds {
		v, err := c.Text()
		switch {
		case errors.Is(err, redis.Nil):
			out[k] = idAnswer{state: claimed} // it was not there: set now
		case err != nil:
			return nil, fmt.Errorf("%w: claiming %s: %v", ErrIDStore, ids[k], err)
		case strings.HasPrefix(v, mine):
			// A claim of our own: the client retried a pipeline whose
			// first attempt did reach the server.
			out[k] = idAnswer{state: claimed}
		default:
			out[k] = parseValue(v)
		}
	}
	if err := s.resolve(ctx, out); err != nil {
		return nil, err
	}
	// Stale claims: take them over, unless another Submit did first.
	var stale []int
	for k, a := range out {
		if a.state == unknown {
			stale = append(stale, k)
		}
	}
	if len(stale) == 0 {
		return out, nil
	}
	staleIDs := make([]uuid.UUID, len(stale))
	for j, k := range stale {
		staleIDs[j] = ids[k]
	}
	res, err := s.run(ctx, "takeover", takeoverScript, staleIDs, func(j int) []any {
		return []any{out[stale[j]].raw, values[stale[j]], s.ttl.Milliseconds()}
	})
	if err != nil {
		return nil, err
	}
	for j, k := range stale {
		if n, _ := res[j].Int(); n == 1 {
			out[k] = idAnswer{state: claimed}
		} else {
			out[k] = idAnswer{state: inFlight} // changed meanwhile: look again later
		}
	}
	return out, nil
}

// resolve settles the in-flight claims among answers: acked when their
// owner's mark exists, unknown (free to take over) when stale, in flight
// otherwise. One EXISTS per distinct owner, pipelined.
func (s *idStore) resolve(ctx context.Context, answers []idAnswer) error {
	var owners map[string]*redis.IntCmd
	var pipe redis.Pipeliner
	for _, a := range answers {
		if a.state != inFlight || a.owner == "" {
			continue
		}
		if owners == nil {
			owners, pipe = map[string]*redis.IntCmd{}, s.client.Pipeline()
		}
		if _, ok := owners[a.owner]; !ok {
			owners[a.owner] = pipe.Exists(ctx, s.doneKey(a.owner))
		}
	}
	if owners == nil {
		return nil
	}
	if _, err := pipe.Exec(ctx); err != nil {
		idStoreErrorsTotal.WithLabelValues("resolve").Inc()
		return fmt.Errorf("%w: reading %d owners' marks: %v", ErrIDStore, len(owners), err)
	}
	now := s.now()
	for k, a := range answers {
		if a.state != inFlight || a.owner == "" {
			continue
		}
		switch {
		case owners[a.owner].Val() == 1:
			answers[k] = idAnswer{state: acked, stamp: a.stamp}
		case now.Sub(a.at) > s.claimTTL:
			answers[k].state = unknown
		}
	}
	return nil
}

// markDone records every claim of owner as acknowledged (the broker
// acknowledged all of its records): one key, kept longer than the claims.
func (s *idStore) markDone(ctx context.Context, owner string) error {
	start := time.Now()
	defer func() { idStoreSeconds.WithLabelValues("ack").Observe(time.Since(start).Seconds()) }()
	if err := s.client.Set(ctx, s.doneKey(owner), "1", s.ttl+s.claimTTL).Err(); err != nil {
		idStoreErrorsTotal.WithLabelValues("ack").Inc()
		return fmt.Errorf("%w: marking a Submit's ids acknowledged: %v", ErrIDStore, err)
	}
	return nil
}

// ack records the ids as acknowledged with their stamps, one by one (a
// Submit of which only some records reached Kafka): the records are on
// Kafka, so this wins even over a claim that went stale and was taken by
// another owner.
func (s *idStore) ack(ctx context.Context, ids []uuid.UUID, stamps []string) error {
	start := time.Now()
	defer func() { idStoreSeconds.WithLabelValues("ack").Observe(time.Since(start).Seconds()) }()
	pipe := s.client.Pipeline()
	for k, id := range ids {
		pipe.Set(ctx, s.key(id), "a"+stamps[k], s.ttl)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		idStoreErrorsTotal.WithLabelValues("ack").Inc()
		return fmt.Errorf("%w: recording %d acknowledged ids: %v", ErrIDStore, len(ids), err)
	}
	return nil
}

// release drops owner's claims of ids (their produce failed): a script per
// id, pipelined, so that only the caller's own claim goes.
func (s *idStore) release(ctx context.Context, owner string, ids []uuid.UUID) error {
	mine := "p" + owner + "|"
	_, err := s.run(ctx, "release", releaseScript, ids, func(int) []any { return []any{mine} })
	return err
}

// lookup returns what the store holds for each id, claims resolved: an
// acknowledged id is acked, a stale claim unknown.
func (s *idStore) lookup(ctx context.Context, ids []uuid.UUID) ([]idAnswer, error) {
	start := time.Now()
	defer func() { idStoreSeconds.WithLabelValues("lookup").Observe(time.Since(start).Seconds()) }()
	pipe := s.client.Pipeline()
	cmds := make([]*redis.StringCmd, len(ids))
	for k, id := range ids {
		cmds[k] = pipe.Get(ctx, s.key(id))
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		idStoreErrorsTotal.WithLabelValues("lookup").Inc()
		return nil, fmt.Errorf("%w: looking up %d ids: %v", ErrIDStore, len(ids), err)
	}
	out := make([]idAnswer, len(ids))
	for k, c := range cmds {
		v, err := c.Result()
		if errors.Is(err, redis.Nil) {
			out[k] = idAnswer{state: unknown}
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%w: looking up %s: %v", ErrIDStore, ids[k], err)
		}
		out[k] = parseValue(v)
	}
	if err := s.resolve(ctx, out); err != nil {
		return nil, err
	}
	return out, nil
}
