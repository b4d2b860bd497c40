package ingest

import (
	"context"
	"errors"
	"fmt"
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
// <prefix>id:{<uuid>}, holding "a" + stamp once the broker acknowledged the
// record (kept for the TTL, longer than a phone's offline window), or
// "p" + owner + "|" + stamp while one Submit (owner, a random token) is
// producing it (kept for the claim TTL at most, so a crashed instance's
// claims expire). Every instance of ingest shares it, so DUPLICATE and
// CONFLICT hold across instances and restarts, and of two Submits of one
// id only the one whose claim succeeded produces it. Each key has its own
// hash tag, so it works on Redis Cluster (the commands of a batch are
// pipelined per node).
type idStore struct {
	client redis.UniversalClient
	// multi: one script call takes a whole batch's keys (a single server);
	// on a Redis Cluster the keys of a batch lie in many slots, so each
	// key gets its own call in one pipeline.
	multi    bool
	prefix   string
	ttl      time.Duration
	claimTTL time.Duration
}

// Lua scripts, one key each (cluster-safe).
var (
	// claimScript sets the in-flight claim when the id is unknown and
	// answers "c"; otherwise it answers what the key holds.
	claimScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], 'p' .. ARGV[1] .. '|' .. ARGV[2], 'PX', ARGV[3])
return 'c'`)
	// ackScript records the acknowledgement: the record is on Kafka, so it
	// wins even over a claim that expired and was taken by another owner.
	ackScript = redis.NewScript(`
redis.call('SET', KEYS[1], 'a' .. ARGV[1], 'PX', ARGV[2])
return 1`)
	// releaseScript drops the caller's own claim, and nothing else.
	releaseScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, #ARGV[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) return 1 end
return 0`)
)

// The same three for a whole batch in one call (single server only).
var (
	claimManyScript = redis.NewScript(`
local out = {}
for i, k in ipairs(KEYS) do
  local v = redis.call('GET', k)
  if v then out[i] = v else
    redis.call('SET', k, 'p' .. ARGV[1] .. '|' .. ARGV[i + 2], 'PX', ARGV[2])
    out[i] = 'c'
  end
end
return out`)
	ackManyScript = redis.NewScript(`
for i, k in ipairs(KEYS) do redis.call('SET', k, 'a' .. ARGV[i + 1], 'PX', ARGV[1]) end
return 1`)
	releaseManyScript = redis.NewScript(`
for i, k in ipairs(KEYS) do
  local v = redis.call('GET', k)
  if v and string.sub(v, 1, #ARGV[1]) == ARGV[1] then redis.call('DEL', k) end
end
return 1`)
)

// runMany evaluates script once over every key of ids, loading it when the
// server does not have it.
func (s *idStore) runMany(ctx context.Context, doing string, script *redis.Script, ids []uuid.UUID, args []any) (*redis.Cmd, error) {
	start := time.Now()
	defer func() { idStoreSeconds.WithLabelValues(doing).Observe(time.Since(start).Seconds()) }()
	keys := make([]string, len(ids))
	for k, id := range ids {
		keys[k] = s.key(id)
	}
	// Run tries EVALSHA, then EVAL (which caches the script) on NOSCRIPT.
	cmd := script.Run(ctx, s.client, keys, args...)
	if err := cmd.Err(); err != nil {
		idStoreErrorsTotal.WithLabelValues(doing).Inc()
		return nil, fmt.Errorf("%w: %s %d ids: %v", ErrIDStore, doing, len(ids), err)
	}
	return cmd, nil
}

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
	b.Grow(len(s.prefix) + 42)
	b.WriteString(s.prefix)
	b.WriteString("id:{")
	b.WriteString(id.String())
	b.WriteString("}")
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
// what the store knows of it.
func (s *idStore) claim(ctx context.Context, owner string, ids []uuid.UUID, stamps []string) ([]idAnswer, error) {
	ttl := strconv.FormatInt(s.claimTTL.Milliseconds(), 10)
	mine := "p" + owner + "|"
	vals := make([]string, len(ids))
	if s.multi {
		args := make([]any, 0, 2+len(ids))
		args = append(args, owner, ttl)
		for _, st := range stamps {
			args = append(args, st)
		}
		cmd, err := s.runMany(ctx, "claim", claimManyScript, ids, args)
		if err != nil {
			return nil, err
		}
		got, err := cmd.StringSlice()
		if err != nil || len(got) != len(ids) {
			return nil, fmt.Errorf("%w: reading claims: %d answers for %d ids, %v", ErrIDStore, len(got), len(ids), err)
		}
		vals = got
	} else {
		cmds, err := s.run(ctx, "claim", claimScript, ids, func(k int) []any { return []any{owner, stamps[k], ttl} })
		if err != nil {
			return nil, err
		}
		for k, c := range cmds {
			if vals[k], err = c.Text(); err != nil {
				return nil, fmt.Errorf("%w: reading claim of %s: %v", ErrIDStore, ids[k], err)
			}
		}
	}
	out := make([]idAnswer, len(ids))
	for k, v := range vals {
		// A claim of our own: the client retried a call whose first
		// attempt did reach the server.
		if v == "c" || strings.HasPrefix(v, mine) {
			out[k] = idAnswer{state: claimed}
			continue
		}
		out[k] = parseValue(v)
	}
	return out, nil
}

// ack records the ids as acknowledged with their stamps.
func (s *idStore) ack(ctx context.Context, ids []uuid.UUID, stamps []string) error {
	ttl := strconv.FormatInt(s.ttl.Milliseconds(), 10)
	if s.multi {
		args := make([]any, 0, 1+len(ids))
		args = append(args, ttl)
		for _, st := range stamps {
			args = append(args, st)
		}
		_, err := s.runMany(ctx, "ack", ackManyScript, ids, args)
		return err
	}
	_, err := s.run(ctx, "ack", ackScript, ids, func(k int) []any { return []any{stamps[k], ttl} })
	return err
}

// release drops owner's claims of ids (their produce failed).
func (s *idStore) release(ctx context.Context, owner string, ids []uuid.UUID) error {
	mine := "p" + owner + "|"
	if s.multi {
		_, err := s.runMany(ctx, "release", releaseManyScript, ids, []any{mine})
		return err
	}
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
