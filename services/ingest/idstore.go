package ingest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"
)

// ErrIDStore wraps every failure to reach the shared id store; Submit
// answers UNAVAILABLE for it rather than guessing whether an id is new.
var ErrIDStore = errors.New("shared id store unavailable")

// idStore is the shared id store in Redis: one key per record id,
// <prefix>id:{<uuid>}, holding "a" + stamp once the broker acknowledged the
// record (kept for the TTL, longer than a phone's offline window), or
// "p" + owner + "|" + stamp while one Submit (owner, a random token) is
// producing it (kept for the claim TTL at most, so a crashed instance's
// claims expire). Every instance of ingest shares it, so DUPLICATE and
// CONFLICT hold across instances and restarts, and of two Submits of one
// id only the one whose claim succeeded produces it. Claims are SET NX GET
// (Redis 7 or later).
//
// Each key has its own hash tag and every command names one key, so it
// works on Redis Cluster; the commands of a batch are pipelined (per node
// on a Cluster): one round trip per step (claim, ack) for a whole Submit.
//
// One Lua script call per batch step instead (all of a Submit's SETs in
// one call; standalone only) was measured (BenchmarkIDStore,
// BenchmarkIngestAuth) and not kept: it saves ingest about 5 µs of CPU per
// record in go-redis but costs redis-server about 30% more (22 against
// 17 µs per record, same run); redis-server is single threaded and shared
// by every ingest instance, so its cost decides.
type idStore struct {
	client   redis.UniversalClient
	prefix   string
	ttl      time.Duration
	claimTTL time.Duration
}

// newIDStore returns the id store on client.
func newIDStore(client redis.UniversalClient, prefix string, ttl, claimTTL time.Duration) *idStore {
	return &idStore{client: client, prefix: prefix, ttl: ttl, claimTTL: claimTTL}
}

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
type idAnswer struct {
	state claimState
	stamp string
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

// parseValue reads what the store holds under an id.
func parseValue(v string) idAnswer {
	switch {
	case strings.HasPrefix(v, "a"):
		return idAnswer{state: acked, stamp: v[1:]}
	case strings.HasPrefix(v, "p"):
		_, stamp, _ := strings.Cut(v[1:], "|")
		return idAnswer{state: inFlight, stamp: stamp}
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
		if err != nil {
			idStoreErrorsTotal.WithLabelValues(doing).Inc()
			return nil, fmt.Errorf("%w: %s %d ids: %v", ErrIDStore, doing, len(ids), err)
		}
		return cmds, nil
	}
}

// claim claims each id whose stamp is stamps[k] for owner, or answers
// what the store knows of it: one SET NX GET per id (Redis 7), pipelined,
// so a batch costs one round trip per node and no script.
func (s *idStore) claim(ctx context.Context, owner string, ids []uuid.UUID, stamps []string) ([]idAnswer, error) {
	start := time.Now()
	defer func() { idStoreSeconds.WithLabelValues("claim").Observe(time.Since(start).Seconds()) }()
	mine := "p" + owner + "|"
	pipe := s.client.Pipeline()
	cmds := make([]*redis.StatusCmd, len(ids))
	for k, id := range ids {
		cmds[k] = pipe.SetArgs(ctx, s.key(id), mine+stamps[k], redis.SetArgs{Mode: "NX", Get: true, TTL: s.claimTTL})
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		idStoreErrorsTotal.WithLabelValues("claim").Inc()
		return nil, fmt.Errorf("%w: claiming %d ids: %v", ErrIDStore, len(ids), err)
	}
	out := make([]idAnswer, len(ids))
	for k, c := range cmds {
		v, err := c.Result()
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
	return out, nil
}

// ack records the ids as acknowledged with their stamps: the records are
// on Kafka, so this wins even over a claim that expired and was taken by
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

// lookup returns what the store holds for each id.
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
	return out, nil
}
