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

// idStore is the shared id store in Redis. A Submit (owner, a random
// 128-bit token per claim step) claims its new ids, each holding "p" +
// owner + "|" + claim time + "|" + stamp. Once the broker acknowledged all
// of them, one key per Submit, <prefix>done:{<owner>}, marks every claim
// of that owner as acknowledged: the ack costs one command per Submit
// instead of one per record. A claim whose owner has no mark is in flight
// until the claim TTL has passed since its claim time (an instance that
// died mid-Submit); then it is stale and the next claim takes it over.
// When only some records of a Submit reached Kafka, those are acknowledged
// one by one ("a" + stamp) and the others released, so a mark never covers
// a record that is not on Kafka. Every instance of ingest shares the
// store, so DUPLICATE and CONFLICT hold across instances and restarts, and
// of two Submits of one id only the one whose claim succeeded produces it.
//
// Layout. Ids that carry their creation time (UUID versions 1, 6 and 7;
// v7 is what clients are asked for and what Chapper's clients make) are
// fields (their 16 bytes) of one hash per minute of that time,
// <prefix>t:{<minute>}: a phone's batch was recorded over a few minutes,
// so its ids land in one or two hashes and a claim step costs one script
// call per hash (HMGET, then HSET of the new ids) instead of a command
// per id. The hash is a function of the id alone, so a resubmission finds
// it whenever it comes. A hash's expiry only grows: every write moves it
// to at least the id TTL from now (rounded up to the minute, so a busy
// hash is re-expired once a minute), so every id is kept at least the id
// TTL after its last write. Other ids (v4) have no time to share a hash
// by; each is a key of its own, <prefix>k:{<uuid>}, claimed with SET NX
// GET (a script call per id would cost redis-server three times as
// much). Every command and script call names one key, each with its own
// hash tag, so it works on Redis Cluster, and a step's commands are
// pipelined (per node on a Cluster): one round trip.
//
// Measured (BenchmarkIDStore): a Submit's claim and mark of 100
// time-ordered ids cost redis-server 5.5 µs and go-redis 4.5 µs of CPU per
// record, against 7.5 and 6.0 with a key per id; of the script call, the
// HSET's inserts are most of it (the Lua around them about a third).
//
// Claim times come from each instance's clock; the claim TTL (tens of
// seconds) is far longer than the skew of synchronised clocks. Replace
// every instance at once when the layout changes: the keys of the earlier
// layout (<prefix>id:{<uuid>}) are not read.
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

// bucketWidth is the span of id creation times one hash holds.
const bucketWidth = time.Minute

// timed says whether id carries its creation time, and so shares a hash.
func timed(id uuid.UUID) bool {
	switch id.Version() {
	case 1, 6, 7:
		return true
	}
	return false
}

// slot returns where id is kept: a hash (timed ids) or a key of its own.
func (s *idStore) slot(id uuid.UUID) string {
	var b strings.Builder
	b.Grow(len(s.prefix) + 41)
	b.WriteString(s.prefix)
	if timed(id) {
		sec, nsec := id.Time().UnixTime()
		ms := sec*1000 + nsec/1e6
		b.WriteString("t:{")
		b.WriteString(strconv.FormatInt(floorDiv(ms, bucketWidth.Milliseconds()), 36))
	} else {
		b.WriteString("k:{")
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
	}
	b.WriteByte('}')
	return b.String()
}

// floorDiv is a/b rounded towards minus infinity (v1 times before 1970
// are negative).
func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}

// field is a timed id's field in its hash: its 16 bytes.
func field(id uuid.UUID) string { return string(id[:]) }

// IDStoreSlot returns where the shared id store under prefix keeps id: a
// hash and the id's field in it, or (field empty) a string key of its own,
// for operators and tests that look at Redis.
func IDStoreSlot(prefix string, id uuid.UUID) (key, field string) {
	s := &idStore{prefix: prefix}
	if timed(id) {
		return s.slot(id), string(id[:])
	}
	return s.slot(id), ""
}

// group is the ids of one step that share a hash (hash set), or one id
// with a key of its own: their positions in the step's ids.
type group struct {
	key  string
	hash bool
	idx  []int
}

// maxFieldsPerCall bounds the ids of one script call (Lua's unpack takes
// a few thousand values at most).
const maxFieldsPerCall = 500

// groups splits ids by where they are kept, in order of first appearance,
// each hash's group at most maxFieldsPerCall ids.
func (s *idStore) groups(ids []uuid.UUID) []group {
	out := make([]group, 0, 2)
	at := make(map[string]int, 2)
	for k, id := range ids {
		key := s.slot(id)
		if !timed(id) {
			out = append(out, group{key: key, idx: []int{k}})
			continue
		}
		g, ok := at[key]
		if !ok || len(out[g].idx) == maxFieldsPerCall {
			g = len(out)
			at[key] = g
			out = append(out, group{key: key, hash: true})
		}
		out[g].idx = append(out[g].idx, k)
	}
	return out
}

// expireAt is the expiry a write now gives its hash: the id TTL from now,
// rounded up to the minute, in Unix milliseconds.
func (s *idStore) expireAt() int64 {
	const m = int64(time.Minute / time.Millisecond)
	at := s.now().Add(s.ttl).UnixMilli()
	return (at + m - 1) / m * m
}

// The hash scripts name one hash (KEYS[1]) and take its expiry in Unix
// milliseconds (ARGV[1]), which they only ever move later. PEXPIRETIME is
// Redis 7.0 or later, as SET NX GET is.
const extendExpiry = `
local function extend(at)
  if redis.call('PEXPIRETIME', KEYS[1]) < tonumber(at) then redis.call('PEXPIREAT', KEYS[1], at) end
end
`

var (
	// claimScript sets each field of ARGV[2], ARGV[4], ... that the hash
	// does not hold to the value after it, and returns what each held
	// before (nil for the ones it set).
	claimScript = redis.NewScript(extendExpiry + `
local n = (#ARGV - 1) / 2
local fields = {}
for j = 1, n do fields[j] = ARGV[2 * j] end
local old = redis.call('HMGET', KEYS[1], unpack(fields))
local set, m = {}, 0
for j = 1, n do
  if not old[j] then set[m + 1] = fields[j]; set[m + 2] = ARGV[2 * j + 1]; m = m + 2 end
end
if m > 0 then redis.call('HSET', KEYS[1], unpack(set)); extend(ARGV[1]) end
return old`)

	// putScript sets the fields ARGV[2], ARGV[4], ... to the values after
	// them, whatever they held.
	putScript = redis.NewScript(extendExpiry + `
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
extend(ARGV[1])
return 1`)

	// takeoverScript replaces a stale claim of field ARGV[2] (ARGV[3],
	// exactly as read) with a new one (ARGV[4]); 0 when it changed
	// meanwhile.
	takeoverScript = redis.NewScript(extendExpiry + `
if redis.call('HGET', KEYS[1], ARGV[2]) == ARGV[3] then
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[4])
  extend(ARGV[1])
  return 1
end
return 0`)

	// releaseScript drops the fields ARGV[3], ... that hold a claim of the
	// caller's (their values start with ARGV[2]), and nothing else.
	releaseScript = redis.NewScript(`
local n = 0
for i = 3, #ARGV do
  local v = redis.call('HGET', KEYS[1], ARGV[i])
  if v and string.sub(v, 1, #ARGV[2]) == ARGV[2] then redis.call('HDEL', KEYS[1], ARGV[i]); n = n + 1 end
end
return n`)

	// takeoverKeyScript and releaseKeyScript are the same for an id's own
	// key: ARGV[1] the old value, ARGV[2] the new, ARGV[3] the id TTL in
	// ms; ARGV[1] the caller's claim prefix.
	takeoverKeyScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) return 1 end
return 0`)
	releaseKeyScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, #ARGV[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) return 1 end
return 0`)

	scripts = []*redis.Script{claimScript, putScript, takeoverScript, releaseScript, takeoverKeyScript, releaseKeyScript}
)

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

// step sends one command per group (add) in one pipeline and returns
// them, loading
// the scripts when the server does not have them (a restarted
// redis-server) and trying once more.
func (s *idStore) step(ctx context.Context, doing string, groups []group, add func(pipe redis.Pipeliner, g group) *redis.Cmd) ([]*redis.Cmd, error) {
	start := time.Now()
	defer func() { idStoreSeconds.WithLabelValues(doing).Observe(time.Since(start).Seconds()) }()
	for attempt := 0; ; attempt++ {
		pipe := s.client.Pipeline()
		cmds := make([]*redis.Cmd, len(groups))
		for j, g := range groups {
			cmds[j] = add(pipe, g)
		}
		_, err := pipe.Exec(ctx)
		if errors.Is(err, redis.Nil) {
			err = nil // a key or field that is not there
		}
		if err != nil && attempt == 0 && redis.HasErrorPrefix(err, "NOSCRIPT") {
			for _, sc := range scripts {
				if err := sc.Load(ctx, s.client).Err(); err != nil {
					idStoreErrorsTotal.WithLabelValues(doing).Inc()
					return nil, fmt.Errorf("%w: loading the id store's scripts: %v", ErrIDStore, err)
				}
			}
			continue
		}
		if err != nil {
			idStoreErrorsTotal.WithLabelValues(doing).Inc()
			return nil, fmt.Errorf("%w: %s %d ids: %v", ErrIDStore, doing, countIDs(groups), err)
		}
		return cmds, nil
	}
}

func countIDs(groups []group) int {
	n := 0
	for _, g := range groups {
		n += len(g.idx)
	}
	return n
}

// held returns what a claim or lookup command of group g answered for
// each of its ids: the stored value, or nil.
func held(c *redis.Cmd, g group) ([]any, error) {
	if !g.hash {
		v, err := c.Result()
		if errors.Is(err, redis.Nil) {
			v, err = nil, nil
		}
		return []any{v}, err
	}
	vals, err := c.Slice()
	if err == nil && len(vals) != len(g.idx) {
		err = fmt.Errorf("%d answers for %d ids", len(vals), len(g.idx))
	}
	return vals, err
}

// claim claims each id whose stamp is stamps[k] for owner, or answers
// what the store knows of it: one claimScript call per hash and one SET
// NX GET per id of its own, pipelined, so a batch costs one round trip
// per node. Claims of other owners are resolved (resolve): acknowledged by
// their owner's mark, in flight, or stale and taken over.
func (s *idStore) claim(ctx context.Context, owner string, ids []uuid.UUID, stamps []string) ([]idAnswer, error) {
	mine := "p" + owner + "|"
	prefix := claimPrefix(owner, s.now())
	values := make([]string, len(ids))
	for k := range ids {
		values[k] = prefix + stamps[k]
	}
	expire, ttl := s.expireAt(), s.ttl.Milliseconds()
	groups := s.groups(ids)
	cmds, err := s.step(ctx, "claim", groups, func(pipe redis.Pipeliner, g group) *redis.Cmd {
		if !g.hash {
			return pipe.Do(ctx, "set", g.key, values[g.idx[0]], "px", ttl, "nx", "get")
		}
		args := make([]any, 0, 1+2*len(g.idx))
		args = append(args, expire)
		for _, k := range g.idx {
			args = append(args, field(ids[k]), values[k])
		}
		return claimScript.EvalSha(ctx, pipe, []string{g.key}, args...)
	})
	if err != nil {
		return nil, err
	}
	out := make([]idAnswer, len(ids))
	for j, g := range groups {
		vals, err := held(cmds[j], g)
		if err != nil {
			idStoreErrorsTotal.WithLabelValues("claim").Inc()
			return nil, fmt.Errorf("%w: claiming %d ids: %v", ErrIDStore, len(g.idx), err)
		}
		for i, k := range g.idx {
			v, _ := vals[i].(string)
			switch {
			case vals[i] == nil:
				out[k] = idAnswer{state: claimed} // it was not there: set now
			case strings.HasPrefix(v, mine):
				// A claim of our own: the client retried a pipeline whose
				// first attempt did reach the server.
				out[k] = idAnswer{state: claimed}
			default:
				out[k] = parseValue(v)
			}
		}
	}
	if err := s.resolve(ctx, out); err != nil {
		return nil, err
	}
	// Stale claims: take them over, unless another Submit did first.
	var stale []group
	for k, a := range out {
		if a.state == unknown {
			stale = append(stale, group{key: s.slot(ids[k]), hash: timed(ids[k]), idx: []int{k}})
		}
	}
	if len(stale) == 0 {
		return out, nil
	}
	res, err := s.step(ctx, "takeover", stale, func(pipe redis.Pipeliner, g group) *redis.Cmd {
		k := g.idx[0]
		if !g.hash {
			return takeoverKeyScript.EvalSha(ctx, pipe, []string{g.key}, out[k].raw, values[k], ttl)
		}
		return takeoverScript.EvalSha(ctx, pipe, []string{g.key}, expire, field(ids[k]), out[k].raw, values[k])
	})
	if err != nil {
		return nil, err
	}
	for j, g := range stale {
		k := g.idx[0]
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
	expire, ttl := s.expireAt(), s.ttl.Milliseconds()
	_, err := s.step(ctx, "ack", s.groups(ids), func(pipe redis.Pipeliner, g group) *redis.Cmd {
		if !g.hash {
			return pipe.Do(ctx, "set", g.key, "a"+stamps[g.idx[0]], "px", ttl)
		}
		args := make([]any, 0, 1+2*len(g.idx))
		args = append(args, expire)
		for _, k := range g.idx {
			args = append(args, field(ids[k]), "a"+stamps[k])
		}
		return putScript.EvalSha(ctx, pipe, []string{g.key}, args...)
	})
	return err
}

// release drops owner's claims of ids (their produce failed), and only
// the caller's own claims.
func (s *idStore) release(ctx context.Context, owner string, ids []uuid.UUID) error {
	mine := "p" + owner + "|"
	_, err := s.step(ctx, "release", s.groups(ids), func(pipe redis.Pipeliner, g group) *redis.Cmd {
		if !g.hash {
			return releaseKeyScript.EvalSha(ctx, pipe, []string{g.key}, mine)
		}
		args := make([]any, 0, 2+len(g.idx))
		args = append(args, 0, mine) // ARGV[1], the expiry, unused
		for _, k := range g.idx {
			args = append(args, field(ids[k]))
		}
		return releaseScript.EvalSha(ctx, pipe, []string{g.key}, args...)
	})
	return err
}

// lookup returns what the store holds for each id, claims resolved: an
// acknowledged id is acked, a stale claim unknown. One HMGET per hash and
// one GET per id of its own, pipelined.
func (s *idStore) lookup(ctx context.Context, ids []uuid.UUID) ([]idAnswer, error) {
	groups := s.groups(ids)
	cmds, err := s.step(ctx, "lookup", groups, func(pipe redis.Pipeliner, g group) *redis.Cmd {
		if !g.hash {
			return pipe.Do(ctx, "get", g.key)
		}
		args := make([]any, 0, 2+len(g.idx))
		args = append(args, "hmget", g.key)
		for _, k := range g.idx {
			args = append(args, field(ids[k]))
		}
		return pipe.Do(ctx, args...)
	})
	if err != nil {
		return nil, err
	}
	out := make([]idAnswer, len(ids))
	for j, g := range groups {
		vals, err := held(cmds[j], g)
		if err != nil {
			idStoreErrorsTotal.WithLabelValues("lookup").Inc()
			return nil, fmt.Errorf("%w: looking up %d ids: %v", ErrIDStore, len(g.idx), err)
		}
		for i, k := range g.idx {
			if v, ok := vals[i].(string); ok {
				out[k] = parseValue(v)
			} else {
				out[k] = idAnswer{state: unknown}
			}
		}
	}
	if err := s.resolve(ctx, out); err != nil {
		return nil, err
	}
	return out, nil
}
