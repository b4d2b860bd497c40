package replay

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chapper/chapper/pipelines/timeline"
)

// oldTimelinePrefixes names, under the base prefix, the Redis set of key
// prefixes a timeline rebuild switched away from: what CleanTimeline drops.
const oldTimelinePrefixes = "chapper:replay:old-timeline-prefixes"

// RebuildGroup is the checkpoint group of rebuilds of a sink, apart from
// in-place replays: chapper-replay-<sink>-rebuild.
func RebuildGroup(sink string) string { return GroupPrefix + sink + "-rebuild" }

// RebuildTimeline rebuilds the timeline under base prefix tcfg.Prefix into a
// fresh key prefix while the live pipeline keeps writing, then switches
// readers and the live sink to it. It sets the rebuild key
// (timeline.StartRebuild), so that from the next batch on the live sink
// writes every batch to the active prefix and the new one; reads the high
// watermarks W after that; replays [beginning, W) into the new prefix only
// (a Fixed sink); and then makes it the active prefix
// (timeline.SwitchPrefix). Every record at or past W was appended after
// the rebuild key was set, so the live sink writes it into the new prefix;
// every record before W is replayed; the seen sets count each once. With
// rcfg.Resume, a rebuild in progress (the rebuild key set) is continued
// from its checkpoint. It returns the new prefix. The old prefix stays
// until CleanTimeline. rcfg's Sink, From, To and Group are set here.
func RebuildTimeline(ctx context.Context, client redis.UniversalClient, tcfg timeline.Config, rcfg Config) (string, *Summary, error) {
	base := tcfg.Prefix
	p, err := timeline.ReadPrefixes(ctx, client, base)
	if err != nil {
		return "", &Summary{}, err
	}
	next := p.Rebuild
	if next == "" || !rcfg.Resume {
		next = base + "g" + time.Now().UTC().Format("20060102t150405.000") + "-"
		if err := timeline.StartRebuild(ctx, client, base, next); err != nil {
			return "", &Summary{}, err
		}
		rcfg.Resume = false
	}
	fixed := tcfg
	fixed.Prefix, fixed.Fixed = next, true
	sink, err := timeline.New(client, fixed)
	if err != nil {
		return next, &Summary{}, err
	}
	// the watermarks are read in Run, after the rebuild key was set
	rcfg.Sink, rcfg.From, rcfg.To, rcfg.Group = sink, Beginning(), nil, RebuildGroup("timeline")
	sum, err := Run(ctx, rcfg)
	if err != nil && !errors.Is(err, ErrDeadLettered) {
		return next, sum, fmt.Errorf("rebuilding the timeline into prefix %q (the live pipeline keeps writing to it; -resume continues): %w", next, err)
	}
	if serr := timeline.SwitchPrefix(ctx, client, base, next); serr != nil {
		return next, sum, serr
	}
	if serr := client.SAdd(ctx, base+oldTimelinePrefixes, p.Active).Err(); serr != nil {
		return next, sum, fmt.Errorf("remembering the old timeline prefix %q: %w", p.Active, serr)
	}
	return next, sum, err
}

// CleanTimeline deletes the keys of every prefix a rebuild switched away
// from under base (never the active or rebuild prefix), on every master
// of a Redis Cluster, with timeline.DropPrefix, and returns the prefixes
// dropped and keys deleted.
func CleanTimeline(ctx context.Context, client redis.UniversalClient, base string) ([]string, int64, error) {
	p, err := timeline.ReadPrefixes(ctx, client, base)
	if err != nil {
		return nil, 0, err
	}
	olds, err := client.SMembers(ctx, base+oldTimelinePrefixes).Result()
	if err != nil {
		return nil, 0, fmt.Errorf("reading the old timeline prefixes: %w", err)
	}
	var dropped []string
	var deleted int64
	for _, old := range olds {
		if old == p.Active || (p.Rebuild != "" && old == p.Rebuild) {
			continue
		}
		n, err := timeline.DropPrefix(ctx, client, base, old)
		deleted += int64(n)
		if err != nil {
			return dropped, deleted, err
		}
		if err := client.SRem(ctx, base+oldTimelinePrefixes, old).Err(); err != nil {
			return dropped, deleted, fmt.Errorf("forgetting old timeline prefix %q: %w", old, err)
		}
		dropped = append(dropped, old)
	}
	return dropped, deleted, nil
}
