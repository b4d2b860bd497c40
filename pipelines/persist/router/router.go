// Package router reads Chapper's sharded Postgres through the PL/Proxy
// router database: per-locality reads routed to the one database holding
// the locality's shard, and cross-shard reports merged on the router
// (counts summed, rates and averages rebuilt from sums and counts, ORDER BY
// and LIMIT after the merge). Each function wraps one SQL function of the
// router schema (pipelines/persist/migrations/router), which can as well be
// called from psql.
package router

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/chapper/chapper/proto/locality"
)

// Client calls the router's functions. It is safe for concurrent use.
type Client struct {
	pool *pgxpool.Pool
	own  bool
}

// Open connects to the router database at url.
func Open(ctx context.Context, url string) (*Client, error) {
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("connecting to the router database: %w", err)
	}
	return &Client{pool: pool, own: true}, nil
}

// New returns a client over an existing pool, which Close leaves open.
func New(pool *pgxpool.Pool) *Client { return &Client{pool: pool} }

// Close closes the connection pool opened by Open.
func (c *Client) Close() {
	if c.own {
		c.pool.Close()
	}
}

// Visit is a visits row.
type Visit struct {
	Shard       int
	ID          string
	DwellingID  string
	Address     string
	Locality    int64
	Latitude    float64
	Longitude   float64
	CanvasserID string
	VisitedAt   time.Time
	// Outcome is the enum label: unspecified, answered, no_answer, refused
	// or moved.
	Outcome    string
	ReceivedAt *time.Time
}

// Intention is an intentions row.
type Intention struct {
	Shard       int
	ID          string
	VisitID     *string
	ElectorID   string
	Option      string
	Locality    int64
	Latitude    float64
	Longitude   float64
	CanvasserID string
	RecordedAt  time.Time
	ReceivedAt  *time.Time
}

// Followup is a followups row.
type Followup struct {
	Shard     int
	ID        string
	VisitID   *string
	ElectorID string
	Issue     string
	// Method is the enum label: unspecified, telephone, email or post.
	Method      string
	Locality    int64
	Latitude    float64
	Longitude   float64
	CanvasserID string
	RecordedAt  time.Time
	ReceivedAt  *time.Time
}

func collect[T any](ctx context.Context, c *Client, what, sql string, args ...any) ([]T, error) {
	rows, err := c.pool.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", what, err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[T])
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", what, err)
	}
	return out, nil
}

// VisitsByLocality returns the visits of one locality with visited_at in
// [since, until), oldest first, read from the one database holding it.
func (c *Client) VisitsByLocality(ctx context.Context, loc locality.Index, since, until time.Time) ([]Visit, error) {
	return collect[Visit](ctx, c, "visits by locality",
		`SELECT shard, id::text, dwelling_id, address, locality, latitude, longitude, canvasser_id, visited_at, outcome, received_at
		FROM visits_by_locality($1, $2, $3)`, int64(loc), since, until)
}

// IntentionsByLocality returns the intentions of one locality with
// recorded_at in [since, until), oldest first.
func (c *Client) IntentionsByLocality(ctx context.Context, loc locality.Index, since, until time.Time) ([]Intention, error) {
	return collect[Intention](ctx, c, "intentions by locality",
		`SELECT shard, id::text, visit_id::text, elector_id, option, locality, latitude, longitude, canvasser_id, recorded_at, received_at
		FROM intentions_by_locality($1, $2, $3)`, int64(loc), since, until)
}

// FollowupsByLocality returns the follow-up requests of one locality with
// recorded_at in [since, until), oldest first.
func (c *Client) FollowupsByLocality(ctx context.Context, loc locality.Index, since, until time.Time) ([]Followup, error) {
	return collect[Followup](ctx, c, "follow-ups by locality",
		`SELECT shard, id::text, visit_id::text, elector_id, issue, method, locality, latitude, longitude, canvasser_id, recorded_at, received_at
		FROM followups_by_locality($1, $2, $3)`, int64(loc), since, until)
}

// RegionOption is the number of intentions for one option in one region.
type RegionOption struct {
	Region     int64
	Option     string
	Intentions int64
}

// IntentionsByRegion counts intentions per option per region, recorded_at
// in [since, until), over every shard: by region, then most intentions
// first, then option.
func (c *Client) IntentionsByRegion(ctx context.Context, since, until time.Time) ([]RegionOption, error) {
	return collect[RegionOption](ctx, c, "intentions by region",
		`SELECT region, option, intentions FROM intentions_by_region($1, $2)`, since, until)
}

// IssueBacklog is the follow-ups outstanding for one issue. Chapper records
// requests but not their resolution, so every request is outstanding.
type IssueBacklog struct {
	Issue       string
	Outstanding int64
	Telephone   int64
	Email       int64
	Post        int64
	Unspecified int64
	// Oldest is the earliest recorded_at among the issue's requests.
	Oldest time.Time
}

// FollowupsOutstanding returns the follow-ups outstanding per issue,
// busiest first, the limit (0: all) applied after merging every shard.
func (c *Client) FollowupsOutstanding(ctx context.Context, limit int) ([]IssueBacklog, error) {
	return collect[IssueBacklog](ctx, c, "follow-ups outstanding",
		`SELECT issue, outstanding, telephone, email, post, unspecified, oldest FROM followups_outstanding($1)`, nullLimit(limit))
}

// CanvasserActivity is one canvasser's visits over a period.
type CanvasserActivity struct {
	CanvasserID string
	Visits      int64
	Answered    int64
	// AnswerRate is Answered / Visits.
	AnswerRate float64
	// Days is the number of days (UTC) with at least one visit.
	Days int64
	// VisitsPerDay is Visits / Days.
	VisitsPerDay float64
}

// CanvasserActivity returns per canvasser the visits with visited_at in
// [since, until), answered visits, answer rate, active days and visits per
// active day, most visits first, the limit (0: all) applied after merging
// every shard. Rates are sums over sums, never averages of averages.
func (c *Client) CanvasserActivity(ctx context.Context, since, until time.Time, limit int) ([]CanvasserActivity, error) {
	return collect[CanvasserActivity](ctx, c, "canvasser activity",
		`SELECT canvasser_id, visits, answered, answer_rate, days, visits_per_day FROM canvasser_activity($1, $2, $3)`,
		since, until, nullLimit(limit))
}

// VisitSummary totals the visits of a period.
type VisitSummary struct {
	Visits   int64
	Answered int64
	// AnswerRate is Answered / Visits (NaN-free: 0 when there are no visits).
	AnswerRate    float64
	Canvassers    int64
	CanvasserDays int64
	// VisitsPerCanvasserDay is the average visits per canvasser per active
	// day: Visits / CanvasserDays.
	VisitsPerCanvasserDay float64
}

// VisitSummary totals the visits with visited_at in [since, until).
func (c *Client) VisitSummary(ctx context.Context, since, until time.Time) (VisitSummary, error) {
	var (
		s           VisitSummary
		rate, perCD *float64
	)
	err := c.pool.QueryRow(ctx, `SELECT visits, answered, answer_rate, canvassers, canvasser_days, visits_per_canvasser_day
		FROM visit_summary($1, $2)`, since, until).Scan(&s.Visits, &s.Answered, &rate, &s.Canvassers, &s.CanvasserDays, &perCD)
	if err != nil {
		return VisitSummary{}, fmt.Errorf("reading visit summary: %w", err)
	}
	if rate != nil {
		s.AnswerRate = *rate
	}
	if perCD != nil {
		s.VisitsPerCanvasserDay = *perCD
	}
	return s, nil
}

// IntentionsByElector returns an elector's latest intentions, newest first,
// at most limit (at least 1) over every shard.
func (c *Client) IntentionsByElector(ctx context.Context, electorID string, limit int) ([]Intention, error) {
	return collect[Intention](ctx, c, "intentions by elector",
		`SELECT shard, id::text, visit_id::text, elector_id, option, locality, latitude, longitude, canvasser_id, recorded_at, received_at
		FROM intentions_by_elector($1, $2)`, electorID, max(limit, 1))
}

// OldestFollowups returns the oldest follow-up requests of an issue, at
// most limit (at least 1) over every shard, oldest first.
func (c *Client) OldestFollowups(ctx context.Context, issue string, limit int) ([]Followup, error) {
	return collect[Followup](ctx, c, "oldest follow-ups",
		`SELECT shard, id::text, visit_id::text, elector_id, issue, method, locality, latitude, longitude, canvasser_id, recorded_at, received_at
		FROM oldest_followups($1, $2)`, issue, max(limit, 1))
}

func nullLimit(limit int) *int32 {
	if limit <= 0 {
		return nil
	}
	l := int32(limit)
	return &l
}
