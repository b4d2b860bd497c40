package search

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/blevesearch/bleve/v2/index/scorch"
	"github.com/blevesearch/bleve/v2/index/scorch/mergeplan"
)

// ScorchOptions are the Bleve (scorch) merge-plan and persister settings
// of every index the server creates or opens (NewUsing's kvconfig and
// Open's runtime config, so indexes created before a change get the new
// settings when they are next opened). Writes stay durable whatever the
// settings: a batch returns only after it is persisted (scorch's safe
// batches; unsafe_batch is never set).
type ScorchOptions struct {
	MergePlan MergePlanOptions
	Persister PersisterOptions
}

// MergePlanOptions are scorch's scorchMergePlanOptions (see
// mergeplan.MergePlanOptions). Sizes are in documents.
type MergePlanOptions struct {
	// MaxSegmentsPerTier is the most segments a tier holds before the
	// merger merges some of them.
	MaxSegmentsPerTier int
	// SegmentsPerMergeTask is how many segments one merge task merges.
	SegmentsPerMergeTask int
	// FloorSegmentSize: smaller segments count as this size when planning.
	FloorSegmentSize int64
	// MaxSegmentSize is the largest segment a merge produces.
	MaxSegmentSize int64
	// TierGrowth is the size ratio of one tier to the next.
	TierGrowth float64
}

// PersisterOptions are scorch's scorchPersisterOptions.
type PersisterOptions struct {
	// PersisterNapTimeMSec is how long the persister naps between
	// persists (while fewer than PersisterNapUnderNumFiles files are on
	// disk) to merge more in memory; a write waits for its persist, so a
	// nap adds to every write's latency.
	PersisterNapTimeMSec int
	// PersisterNapUnderNumFiles: the persister naps only under this many
	// files on disk.
	PersisterNapUnderNumFiles int
	// MemoryPressurePauseThreshold: the persister pauses (lets the merger
	// catch up) when more than this many in-memory segments wait.
	MemoryPressurePauseThreshold uint64
	// NumPersisterWorkers is how many workers merge in memory and flush
	// in parallel; more than 1 needs MaxSizeInMemoryMergePerWorker.
	NumPersisterWorkers int
	// MaxSizeInMemoryMergePerWorker is the most bytes one worker merges
	// in memory; 0 (with one worker) merges all waiting segments at once.
	// Above 0 it is also the merge planner's floor segment file size,
	// which switches the planner to budget by file size.
	MaxSizeInMemoryMergePerWorker int
}

// BleveScorchOptions are scorch's own defaults (bleve v2.6).
func BleveScorchOptions() ScorchOptions {
	mp := mergeplan.DefaultMergePlanOptions
	return ScorchOptions{
		MergePlan: MergePlanOptions{
			MaxSegmentsPerTier:   mp.MaxSegmentsPerTier,
			SegmentsPerMergeTask: mp.SegmentsPerMergeTask,
			FloorSegmentSize:     mp.FloorSegmentSize,
			MaxSegmentSize:       mp.MaxSegmentSize,
			TierGrowth:           mp.TierGrowth,
		},
		Persister: PersisterOptions{
			PersisterNapTimeMSec:          scorch.DefaultPersisterNapTimeMSec,
			PersisterNapUnderNumFiles:     scorch.DefaultPersisterNapUnderNumFiles,
			MemoryPressurePauseThreshold:  scorch.DefaultMemoryPressurePauseThreshold,
			NumPersisterWorkers:           scorch.DefaultNumPersisterWorkers,
			MaxSizeInMemoryMergePerWorker: scorch.DefaultMaxSizeInMemoryMergePerWorker,
		},
	}
}

// DefaultScorchOptions are the server's settings: Bleve's own. The one
// candidate measured against them, 20-segment tiers, cost less CPU per
// indexed document but made searches slower, so it was not adopted
// (docs/search-server.md, "Merge and persister settings": about 13 %
// less CPU per document, searches slower in 13 of 15 runs).
func DefaultScorchOptions() ScorchOptions { return BleveScorchOptions() }

// ScorchEnv names the environment variable that picks the scorch options
// of a Config without any (as devstack's, and so every test's and
// benchmark's server and BleveBaseline): empty or "server" for
// DefaultScorchOptions, "default" for Bleve's own (BleveScorchOptions),
// or a JSON object of ScorchOptions fields laid over DefaultScorchOptions,
// e.g. {"MergePlan":{"MaxSegmentsPerTier":20}}. It is the A/B switch of
// the benchmarks.
const ScorchEnv = "CHAPPER_SEARCH_SCORCH"

// ErrScorchEnv means ScorchEnv holds a value it does not know.
var ErrScorchEnv = errors.New(ScorchEnv + " must be empty, server, default or a JSON object of scorch options")

// scorchFromEnv returns the options ScorchEnv picks.
func scorchFromEnv() (ScorchOptions, error) {
	v := os.Getenv(ScorchEnv)
	switch {
	case v == "" || v == "server":
		return DefaultScorchOptions(), nil
	case v == "default":
		return BleveScorchOptions(), nil
	case strings.HasPrefix(strings.TrimSpace(v), "{"):
		o := DefaultScorchOptions()
		dec := json.NewDecoder(strings.NewReader(v))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&o); err != nil {
			return ScorchOptions{}, fmt.Errorf("%w: %v", ErrScorchEnv, err)
		}
		if err := o.Validate(); err != nil {
			return ScorchOptions{}, fmt.Errorf("%s: %w", ScorchEnv, err)
		}
		return o, nil
	default:
		return ScorchOptions{}, fmt.Errorf("%w, not %q", ErrScorchEnv, v)
	}
}

// RegisterFlags registers the options under prefix (for example
// "search-server.scorch" gives -search-server.scorch.max-segments-per-tier).
func (o *ScorchOptions) RegisterFlags(prefix string, fs *flag.FlagSet) {
	d := DefaultScorchOptions()
	fs.IntVar(&o.MergePlan.MaxSegmentsPerTier, prefix+".max-segments-per-tier", d.MergePlan.MaxSegmentsPerTier, "Bleve merge plan: most segments of a tier before the merger merges some.")
	fs.IntVar(&o.MergePlan.SegmentsPerMergeTask, prefix+".segments-per-merge-task", d.MergePlan.SegmentsPerMergeTask, "Bleve merge plan: segments one merge task merges.")
	fs.Int64Var(&o.MergePlan.FloorSegmentSize, prefix+".floor-segment-size", d.MergePlan.FloorSegmentSize, "Bleve merge plan: documents a smaller segment counts as when planning.")
	fs.Int64Var(&o.MergePlan.MaxSegmentSize, prefix+".max-segment-size", d.MergePlan.MaxSegmentSize, "Bleve merge plan: most documents of a merged segment.")
	fs.Float64Var(&o.MergePlan.TierGrowth, prefix+".tier-growth", d.MergePlan.TierGrowth, "Bleve merge plan: size ratio of one tier to the next.")
	fs.IntVar(&o.Persister.PersisterNapTimeMSec, prefix+".persister-nap-ms", d.Persister.PersisterNapTimeMSec, "Bleve persister: nap between persists, in ms (adds to every write's latency).")
	fs.IntVar(&o.Persister.PersisterNapUnderNumFiles, prefix+".persister-nap-under-files", d.Persister.PersisterNapUnderNumFiles, "Bleve persister: nap only under this many files on disk.")
	fs.Uint64Var(&o.Persister.MemoryPressurePauseThreshold, prefix+".memory-pressure-pause-threshold", d.Persister.MemoryPressurePauseThreshold, "Bleve persister: pause for the merger above this many waiting in-memory segments.")
	fs.IntVar(&o.Persister.NumPersisterWorkers, prefix+".persister-workers", d.Persister.NumPersisterWorkers, "Bleve persister: workers merging in memory and flushing in parallel.")
	fs.IntVar(&o.Persister.MaxSizeInMemoryMergePerWorker, prefix+".max-in-memory-merge-bytes", d.Persister.MaxSizeInMemoryMergePerWorker, "Bleve persister: most bytes one worker merges in memory (0: all at once, one worker only).")
}

// Validate checks the options, naming the field at fault.
func (o ScorchOptions) Validate() error {
	mp, p := o.MergePlan, o.Persister
	switch {
	case mp.MaxSegmentsPerTier < 1:
		return fmt.Errorf("scorch MaxSegmentsPerTier: %d is not at least 1", mp.MaxSegmentsPerTier)
	case mp.SegmentsPerMergeTask < 2:
		return fmt.Errorf("scorch SegmentsPerMergeTask: %d is not at least 2", mp.SegmentsPerMergeTask)
	case mp.FloorSegmentSize < 1:
		return fmt.Errorf("scorch FloorSegmentSize: %d is not at least 1", mp.FloorSegmentSize)
	case mp.MaxSegmentSize < 1 || mp.MaxSegmentSize > mergeplan.MaxSegmentSizeLimit:
		return fmt.Errorf("scorch MaxSegmentSize: %d is not between 1 and %d", mp.MaxSegmentSize, int64(mergeplan.MaxSegmentSizeLimit))
	case !(mp.TierGrowth > 1):
		return fmt.Errorf("scorch TierGrowth: %g is not above 1", mp.TierGrowth)
	case p.PersisterNapTimeMSec < 0:
		return fmt.Errorf("scorch PersisterNapTimeMSec: %d is negative", p.PersisterNapTimeMSec)
	case p.PersisterNapUnderNumFiles < 0:
		return fmt.Errorf("scorch PersisterNapUnderNumFiles: %d is negative", p.PersisterNapUnderNumFiles)
	case p.NumPersisterWorkers < 1:
		return fmt.Errorf("scorch NumPersisterWorkers: %d is not at least 1", p.NumPersisterWorkers)
	case p.MaxSizeInMemoryMergePerWorker < 0:
		return fmt.Errorf("scorch MaxSizeInMemoryMergePerWorker: %d is negative", p.MaxSizeInMemoryMergePerWorker)
	case p.NumPersisterWorkers > 1 && p.MaxSizeInMemoryMergePerWorker == 0:
		return fmt.Errorf("scorch MaxSizeInMemoryMergePerWorker: must be above 0 with %d persister workers", p.NumPersisterWorkers)
	}
	return nil
}

// kvConfig is the options as scorch's config map (the kvconfig of
// bleve.NewUsing, the runtime config of bleve.OpenUsing).
func (o ScorchOptions) kvConfig() map[string]any {
	mp, p := o.MergePlan, o.Persister
	persister := map[string]any{
		"PersisterNapTimeMSec":          p.PersisterNapTimeMSec,
		"PersisterNapUnderNumFiles":     p.PersisterNapUnderNumFiles,
		"NumPersisterWorkers":           p.NumPersisterWorkers,
		"MaxSizeInMemoryMergePerWorker": p.MaxSizeInMemoryMergePerWorker,
	}
	// left to scorch's default when it is the default: index_meta.json
	// keeps the config, and 2^64-1 read back from JSON as a float does
	// not fit a uint64 again
	if p.MemoryPressurePauseThreshold != scorch.DefaultMemoryPressurePauseThreshold {
		persister["MemoryPressurePauseThreshold"] = p.MemoryPressurePauseThreshold
	}
	return map[string]any{
		"scorchMergePlanOptions": map[string]any{
			"MaxSegmentsPerTier":   mp.MaxSegmentsPerTier,
			"SegmentsPerMergeTask": mp.SegmentsPerMergeTask,
			"FloorSegmentSize":     mp.FloorSegmentSize,
			"MaxSegmentSize":       mp.MaxSegmentSize,
			"TierGrowth":           mp.TierGrowth,
		},
		"scorchPersisterOptions": persister,
	}
}
