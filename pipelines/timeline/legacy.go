package timeline

import (
	"context"
	_ "embed"
)

// The per-record path: two script calls per record (id.lua's claim and
// record.lua), what the sink did before the batch script. It is kept only
// so that BenchmarkTimeline measures today's rate beside the batch path in
// the same run; production sinks never take it.

// The per-record path's scripts: record.lua, and id.lua as it was then
// (a TYPE before every claim).
var (
	//go:embed record.lua
	recordSource string
	//go:embed id_per_record.lua
	legacyIDSource string
)

// writePerRecord runs the id round, then one record script call per op.
func (s *Sink) writePerRecord(ctx context.Context, targets []target, recs []prepared) error {
	answers, err := s.idRound(ctx, targets, recs)
	if err != nil {
		return err
	}
	calls := make([]call, 0, len(targets)*len(recs))
	for _, t := range targets {
		for _, r := range recs {
			for _, o := range answers.ops(r) {
				calls = append(calls, s.recordCall(t, o))
			}
		}
	}
	_, err = s.run(ctx, s.record, calls)
	return err
}

// recordCall builds the record script call of one op.
func (s *Sink) recordCall(t target, o op) call {
	return call{
		keys: localityKeys(t.prefix, o.loc),
		args: []any{o.id, o.r.score, o.r.body, s.keep, s.ttl, s.channel(t, o.loc), o.r.entry, bit(o.wasReplaced),
			o.r.replaces, bit(o.replacedHere), o.r.kind, o.replacedField, o.r.kind, o.r.detail},
	}
}
