package replay

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/chapper/chapper/pipelines/search"
)

// RebuildSearch rebuilds the search indices under scfg.IndexPrefix into a
// new generation while the live search pipeline keeps writing, then
// switches the aliases and the live sink to it. It installs the
// generation's index templates (no aliases) and sets it as the rebuild
// generation (search.StartRebuild), so that from the next batch on the
// live sink writes every batch to the active generation and the new one;
// reads the high watermarks W after that; replays [beginning, W) into the
// new generation only (a Fixed sink); and then switches (search.Switch):
// one POST /_aliases moves the three aliases from the old generation's
// indices to the new one's, and the live sink writes only the new one from
// its next batch. Every record at or past W was appended after the
// rebuild generation was set, so the live sink writes it into the new
// generation; every record before W is replayed; the document id is the
// record id, so each is there once. With rcfg.Resume, a rebuild in
// progress is continued from its checkpoint. It returns the new
// generation. The old generation stays until search.CleanGenerations.
// rcfg's Sink, From, To and Group are set here.
func RebuildSearch(ctx context.Context, scfg search.Config, rcfg Config) (string, *Summary, error) {
	es, err := search.NewClient(scfg)
	if err != nil {
		return "", &Summary{}, err
	}
	g, err := search.ReadGenerations(ctx, es, scfg.IndexPrefix)
	if err != nil {
		return "", &Summary{}, err
	}
	next := g.Rebuild
	if next == "" || !rcfg.Resume {
		next = search.NewGeneration(time.Now())
		if err := search.StartRebuild(ctx, scfg, next); err != nil {
			return next, &Summary{}, err
		}
		rcfg.Resume = false
	}
	fixed := scfg
	fixed.Generation, fixed.Fixed = next, true
	sink, err := search.New(ctx, fixed)
	if err != nil {
		return next, &Summary{}, err
	}
	defer sink.Close(context.WithoutCancel(ctx))
	// the watermarks are read in Run, after the rebuild generation was set
	rcfg.Sink, rcfg.From, rcfg.To, rcfg.Group = sink, Beginning(), nil, RebuildGroup("search")
	sum, err := Run(ctx, rcfg)
	if err != nil && !errors.Is(err, ErrDeadLettered) {
		return next, sum, fmt.Errorf("rebuilding the search indices into generation %q (the live pipeline keeps writing to it; -resume continues): %w", next, err)
	}
	if serr := search.Switch(ctx, scfg, next); serr != nil {
		return next, sum, serr
	}
	return next, sum, err
}
