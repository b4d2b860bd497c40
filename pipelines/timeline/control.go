package timeline

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// Rebuilds (docs/pipelines.md, "Rebuilds"). Under the configured base key
// prefix B, two plain Redis string keys say which key prefix is in force:
//
//	B + "chapper:timeline:active"   the prefix readers and writers use
//	                                (absent: B itself)
//	B + "chapper:timeline:rebuild"  a prefix a replay is filling
//	                                (absent: none)
//
// The live sink reads both at the start of every batch (on a standalone
// Redis: once, and again after a batch call found them changed, since
// every call checks them before it writes; see Sink.writeAll) and, while
// a rebuild is set, writes each batch under the active prefix and under
// the rebuild prefix (news only on the active prefix's channels). The query
// service reads under the active prefix and follows a switch without a
// restart; SwitchPrefix publishes on B + "chapper:timeline:switch" so that
// it follows at once rather than at its next poll. The control keys carry
// no hash tag: on Redis Cluster each sits in a slot of its own, apart from
// the locality keys.

// Names of the control keys and channel, after the base prefix.
const (
	activeSuffix  = "chapper:timeline:active"
	rebuildSuffix = "chapper:timeline:rebuild"
	switchSuffix  = "chapper:timeline:switch"
)

// Errors of the prefix control.
var (
	// ErrRebuildPrefix: a rebuild must fill a prefix of its own.
	ErrRebuildPrefix = errors.New("timeline rebuild prefix must differ from the active prefix")
	// ErrNoRebuild: SwitchPrefix was asked to switch to a prefix that is not
	// being rebuilt.
	ErrNoRebuild = errors.New("timeline prefix is not the one being rebuilt")
)

// ActivePrefixKey returns the key holding the key prefix in force under
// base; when it is absent, base itself is in force.
func ActivePrefixKey(base string) string { return base + activeSuffix }

// RebuildPrefixKey returns the key holding the key prefix a rebuild is
// filling under base; while it is set, the live sink writes every batch to
// it too.
func RebuildPrefixKey(base string) string { return base + rebuildSuffix }

// SwitchChannel returns the Pub/Sub channel SwitchPrefix announces a new
// active prefix on (the message is the prefix).
func SwitchChannel(base string) string { return base + switchSuffix }

// Prefixes are the key prefixes in force under a base prefix.
type Prefixes struct {
	// Active is where readers read and the live sink writes and publishes.
	Active string
	// Rebuild is a prefix a rebuild is filling; empty when none.
	Rebuild string
}

// ReadPrefixes reads the prefixes in force under base in one round trip.
func ReadPrefixes(ctx context.Context, client redis.UniversalClient, base string) (Prefixes, error) {
	p, _, err := readPrefixes(ctx, client, base)
	return p, err
}

// prefixCheck is what a batch call finds in the prefix control keys when
// they still hold what the sink read (batch.lua checks it before its
// first write): each key's value after "=", or "" for a key that is
// absent.
type prefixCheck struct {
	base            string
	active, rebuild string
}

// rawValue is a control key's value as prefixCheck holds it.
func rawValue(cmd *redis.StringCmd) string {
	if v, err := cmd.Result(); err == nil {
		return "=" + v
	}
	return ""
}

// readPrefixes is ReadPrefixes, also returning what it read as a check.
func readPrefixes(ctx context.Context, client redis.UniversalClient, base string) (Prefixes, *prefixCheck, error) {
	pipe := client.Pipeline()
	active := pipe.Get(ctx, ActivePrefixKey(base))
	rebuild := pipe.Get(ctx, RebuildPrefixKey(base))
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return Prefixes{}, nil, fmt.Errorf("reading the timeline prefix keys under %q: %w", base, err)
	}
	p := Prefixes{Active: base}
	if v, err := active.Result(); err == nil {
		p.Active = v
	}
	if v, err := rebuild.Result(); err == nil && v != p.Active {
		p.Rebuild = v
	}
	for _, v := range []string{p.Active, p.Rebuild} {
		if err := checkPrefix(v); err != nil {
			return Prefixes{}, nil, fmt.Errorf("reading the timeline prefix keys under %q: %w", base, err)
		}
	}
	return p, &prefixCheck{base: base, active: rawValue(active), rebuild: rawValue(rebuild)}, nil
}

func checkPrefix(p string) error {
	if strings.ContainsAny(p, "{}") {
		return fmt.Errorf("prefix %q: %w", p, ErrPrefix)
	}
	return nil
}

// StartRebuild sets prefix as the one being rebuilt under base: from the
// next batch on, the live sink writes to it as well as to the active
// prefix. A batch whose write started before the SET does not; a rebuild
// therefore replays at least up to offsets the live group commits after
// StartRebuild returned.
func StartRebuild(ctx context.Context, client redis.UniversalClient, base, prefix string) error {
	if err := checkPrefix(prefix); err != nil {
		return err
	}
	p, err := ReadPrefixes(ctx, client, base)
	if err != nil {
		return err
	}
	if prefix == p.Active {
		return fmt.Errorf("starting a rebuild into %q: %w", prefix, ErrRebuildPrefix)
	}
	if err := client.Set(ctx, RebuildPrefixKey(base), prefix, 0).Err(); err != nil {
		return fmt.Errorf("starting a rebuild into %q: %w", prefix, err)
	}
	return nil
}

// SwitchPrefix makes newPrefix the active prefix under base, ends the
// rebuild and announces the switch on SwitchChannel(base). On a single
// Redis the three happen in one MULTI. On Redis Cluster the two keys sit in
// different slots, so they are written one after the other: first the
// active key (while the rebuild key still names the same prefix, the sink
// writes it once), then the rebuild key is deleted, then the publish;
// every state in between is consistent. It returns ErrNoRebuild, changing
// nothing, unless newPrefix is the prefix being rebuilt, so that a stray
// call cannot switch readers to an empty prefix.
func SwitchPrefix(ctx context.Context, client redis.UniversalClient, base, newPrefix string) error {
	if err := checkPrefix(newPrefix); err != nil {
		return err
	}
	rebuild, err := client.Get(ctx, RebuildPrefixKey(base)).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("switching the timeline to %q: %w", newPrefix, err)
	}
	if rebuild != newPrefix {
		return fmt.Errorf("switching the timeline to %q (rebuild key holds %q): %w", newPrefix, rebuild, ErrNoRebuild)
	}
	if _, ok := client.(*redis.ClusterClient); ok {
		if err := client.Set(ctx, ActivePrefixKey(base), newPrefix, 0).Err(); err != nil {
			return fmt.Errorf("switching the timeline to %q: %w", newPrefix, err)
		}
		if err := client.Del(ctx, RebuildPrefixKey(base)).Err(); err != nil {
			return fmt.Errorf("switching the timeline to %q: ending the rebuild: %w", newPrefix, err)
		}
		if err := client.Publish(ctx, SwitchChannel(base), newPrefix).Err(); err != nil {
			return fmt.Errorf("switching the timeline to %q: announcing it: %w", newPrefix, err)
		}
		return nil
	}
	_, err = client.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
		pipe.Set(ctx, ActivePrefixKey(base), newPrefix, 0)
		pipe.Del(ctx, RebuildPrefixKey(base))
		pipe.Publish(ctx, SwitchChannel(base), newPrefix)
		return nil
	})
	if err != nil {
		return fmt.Errorf("switching the timeline to %q: %w", newPrefix, err)
	}
	return nil
}

// ErrPrefixInUse: DropPrefix was asked to drop a prefix in force.
var ErrPrefixInUse = errors.New("timeline prefix is in use")

// DropPrefix deletes every timeline key under prefix (SCAN + UNLINK, on
// every master of a cluster), what `chapper replay clean` does with the
// prefix a switch left behind. It refuses, with ErrPrefixInUse, the active
// prefix and the rebuild prefix under base, and it never deletes base's
// control keys. It returns how many keys it deleted. Keys written under
// prefix while it runs may survive; run it after the switch.
func DropPrefix(ctx context.Context, client redis.UniversalClient, base, prefix string) (int, error) {
	p, err := ReadPrefixes(ctx, client, base)
	if err != nil {
		return 0, err
	}
	if prefix == p.Active || prefix == p.Rebuild {
		return 0, fmt.Errorf("dropping timeline prefix %q: %w", prefix, ErrPrefixInUse)
	}
	control := map[string]bool{ActivePrefixKey(base): true, RebuildPrefixKey(base): true}
	drop := func(ctx context.Context, c *redis.Client, batch int) (int, error) {
		n := 0
		pattern := globEscape(prefix) + "*"
		iter := c.Scan(ctx, 0, pattern, 1000).Iterator()
		var keys []string
		flush := func() error {
			if len(keys) == 0 {
				return nil
			}
			if err := c.Unlink(ctx, keys...).Err(); err != nil {
				return err
			}
			n += len(keys)
			keys = keys[:0]
			return nil
		}
		for iter.Next(ctx) {
			k := iter.Val()
			if control[k] || !isTimelineKey(strings.TrimPrefix(k, prefix)) {
				continue
			}
			// On a cluster node keys of different slots may not share a
			// command, so there each key is its own UNLINK.
			keys = append(keys, k)
			if len(keys) >= batch {
				if err := flush(); err != nil {
					return n, err
				}
			}
		}
		if err := iter.Err(); err != nil {
			return n, err
		}
		return n, flush()
	}
	var total int
	var mu sync.Mutex
	if cc, ok := client.(*redis.ClusterClient); ok {
		err = cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
			n, err := drop(ctx, c, 1)
			mu.Lock()
			total += n
			mu.Unlock()
			return err
		})
	} else if c, ok := client.(*redis.Client); ok {
		total, err = drop(ctx, c, 500)
	} else {
		return 0, fmt.Errorf("dropping timeline prefix %q: unsupported client %T", prefix, client)
	}
	if err != nil {
		return total, fmt.Errorf("dropping timeline prefix %q: %w", prefix, err)
	}
	return total, nil
}

// isTimelineKey reports whether a key name without its prefix is one the
// sink writes, so that DropPrefix leaves unrelated keys that happen to
// share the prefix alone.
func isTimelineKey(rest string) bool {
	for _, k := range []string{"tl:{", "seen:{", "ct:{", "rec:{", "rp:{", "id:"} {
		if strings.HasPrefix(rest, k) {
			return true
		}
	}
	return false
}

// globEscape escapes the SCAN MATCH metacharacters of s.
func globEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}
