-- Router functions. Per-locality reads run on the one database holding the
-- locality's shard (RUN ON). Reports run on every database (SPLIT over
-- chapper_all_shards(), so each reads only the shards it holds) and are
-- merged here, on the router: counts are summed, averages rebuilt from sums
-- and counts, ORDER BY and LIMIT applied after the merge (a per-database
-- LIMIT is only a pre-filter). Each database answers in its own
-- transaction; nothing relies on a transaction across databases.

-- +goose Up

-- Per-locality reads, [p_since, p_until), oldest first.

-- +goose StatementBegin
CREATE FUNCTION visits_by_locality(p_locality bigint, p_since timestamptz, p_until timestamptz)
RETURNS TABLE (shard smallint, id uuid, dwelling_id text, address text, locality bigint,
               latitude double precision, longitude double precision, canvasser_id text,
               visited_at timestamptz, outcome text, received_at timestamptz)
LANGUAGE plproxy AS $$
    CLUSTER 'chapper';
    RUN ON chapper_region(p_locality);
    SELECT shard, id, dwelling_id, address, locality, latitude, longitude, canvasser_id,
           visited_at, outcome::text AS outcome, received_at
    FROM visits
    WHERE locality = p_locality AND visited_at >= p_since AND visited_at < p_until
    ORDER BY visited_at, id;
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE FUNCTION intentions_by_locality(p_locality bigint, p_since timestamptz, p_until timestamptz)
RETURNS TABLE (shard smallint, id uuid, visit_id uuid, elector_id text, option text, locality bigint,
               latitude double precision, longitude double precision, canvasser_id text,
               recorded_at timestamptz, received_at timestamptz)
LANGUAGE plproxy AS $$
    CLUSTER 'chapper';
    RUN ON chapper_region(p_locality);
    SELECT shard, id, visit_id, elector_id, option, locality, latitude, longitude, canvasser_id,
           recorded_at, received_at
    FROM intentions
    WHERE locality = p_locality AND recorded_at >= p_since AND recorded_at < p_until
    ORDER BY recorded_at, id;
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE FUNCTION followups_by_locality(p_locality bigint, p_since timestamptz, p_until timestamptz)
RETURNS TABLE (shard smallint, id uuid, visit_id uuid, elector_id text, issue text, method text,
               locality bigint, latitude double precision, longitude double precision,
               canvasser_id text, recorded_at timestamptz, received_at timestamptz)
LANGUAGE plproxy AS $$
    CLUSTER 'chapper';
    RUN ON chapper_region(p_locality);
    SELECT shard, id, visit_id, elector_id, issue, method::text AS method, locality, latitude,
           longitude, canvasser_id, recorded_at, received_at
    FROM followups
    WHERE locality = p_locality AND recorded_at >= p_since AND recorded_at < p_until
    ORDER BY recorded_at, id;
$$;
-- +goose StatementEnd

-- Intentions per option per region, [p_since, p_until): counts summed.

-- +goose StatementBegin
CREATE FUNCTION part_intentions_by_region(p_shards integer[], p_since timestamptz, p_until timestamptz)
RETURNS TABLE (region bigint, option text, n bigint)
LANGUAGE plproxy AS $$
    CLUSTER 'chapper';
    SPLIT p_shards;
    RUN ON p_shards;
    SELECT region, option, count(*) AS n
    FROM intentions
    WHERE shard = ANY (p_shards) AND recorded_at >= p_since AND recorded_at < p_until
    GROUP BY region, option;
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE FUNCTION intentions_by_region(p_since timestamptz, p_until timestamptz)
RETURNS TABLE (region bigint, option text, intentions bigint)
LANGUAGE sql STABLE AS $$
    SELECT region, option, sum(n)::bigint
    FROM part_intentions_by_region(chapper_all_shards(), p_since, p_until)
    GROUP BY region, option
    ORDER BY region, sum(n) DESC, option
$$;
-- +goose StatementEnd

-- Follow-ups outstanding per issue. Chapper records follow-up requests but
-- not (yet) their resolution, so every request is outstanding: per issue,
-- the number of requests, by method, and the oldest. Busiest issues first;
-- p_limit (NULL: all) applies after the merge.

-- +goose StatementBegin
CREATE FUNCTION part_followups_by_issue(p_shards integer[])
RETURNS TABLE (issue text, method text, n bigint, oldest timestamptz)
LANGUAGE plproxy AS $$
    CLUSTER 'chapper';
    SPLIT p_shards;
    RUN ON p_shards;
    SELECT issue, method::text AS method, count(*) AS n, min(recorded_at) AS oldest
    FROM followups
    WHERE shard = ANY (p_shards)
    GROUP BY issue, method;
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE FUNCTION followups_outstanding(p_limit integer DEFAULT NULL)
RETURNS TABLE (issue text, outstanding bigint, telephone bigint, email bigint, post bigint,
               unspecified bigint, oldest timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT issue,
           sum(n)::bigint,
           coalesce(sum(n) FILTER (WHERE method = 'telephone'), 0)::bigint,
           coalesce(sum(n) FILTER (WHERE method = 'email'), 0)::bigint,
           coalesce(sum(n) FILTER (WHERE method = 'post'), 0)::bigint,
           coalesce(sum(n) FILTER (WHERE method = 'unspecified'), 0)::bigint,
           min(oldest)
    FROM part_followups_by_issue(chapper_all_shards())
    GROUP BY issue
    ORDER BY sum(n) DESC, issue
    LIMIT p_limit
$$;
-- +goose StatementEnd

-- Canvasser activity, [p_since, p_until), days in UTC. A canvasser's day can
-- span databases (regions in two shards), so per-database rows are merged
-- per (canvasser, day) first; rates and averages are sums over sums.

-- +goose StatementBegin
CREATE FUNCTION part_visits_by_canvasser_day(p_shards integer[], p_since timestamptz, p_until timestamptz)
RETURNS TABLE (canvasser_id text, day date, visits bigint, answered bigint)
LANGUAGE plproxy AS $$
    CLUSTER 'chapper';
    SPLIT p_shards;
    RUN ON p_shards;
    SELECT canvasser_id, (visited_at AT TIME ZONE 'UTC')::date AS day, count(*) AS visits,
           count(*) FILTER (WHERE outcome = 'answered') AS answered
    FROM visits
    WHERE shard = ANY (p_shards) AND visited_at >= p_since AND visited_at < p_until
    GROUP BY 1, 2;
$$;
-- +goose StatementEnd

-- Per canvasser: visits, answered, answer rate (answered / visits), days
-- active and visits per active day. Most visits first; p_limit (NULL: all)
-- applies after the merge.
-- +goose StatementBegin
CREATE FUNCTION canvasser_activity(p_since timestamptz, p_until timestamptz, p_limit integer DEFAULT NULL)
RETURNS TABLE (canvasser_id text, visits bigint, answered bigint, answer_rate double precision,
               days bigint, visits_per_day double precision)
LANGUAGE sql STABLE AS $$
    WITH d AS (
        SELECT canvasser_id, day, sum(visits) AS visits, sum(answered) AS answered
        FROM part_visits_by_canvasser_day(chapper_all_shards(), p_since, p_until)
        GROUP BY canvasser_id, day
    )
    SELECT canvasser_id, sum(visits)::bigint, sum(answered)::bigint,
           sum(answered)::double precision / sum(visits),
           count(*)::bigint, sum(visits)::double precision / count(*)
    FROM d
    GROUP BY canvasser_id
    ORDER BY sum(visits) DESC, canvasser_id
    LIMIT p_limit
$$;
-- +goose StatementEnd

-- Totals over [p_since, p_until): visits, answered, answer rate, canvassers,
-- canvasser-days and the average visits per canvasser per day.
-- +goose StatementBegin
CREATE FUNCTION visit_summary(p_since timestamptz, p_until timestamptz)
RETURNS TABLE (visits bigint, answered bigint, answer_rate double precision, canvassers bigint,
               canvasser_days bigint, visits_per_canvasser_day double precision)
LANGUAGE sql STABLE AS $$
    WITH d AS (
        SELECT canvasser_id, day, sum(visits) AS visits, sum(answered) AS answered
        FROM part_visits_by_canvasser_day(chapper_all_shards(), p_since, p_until)
        GROUP BY canvasser_id, day
    )
    SELECT coalesce(sum(visits), 0)::bigint, coalesce(sum(answered), 0)::bigint,
           sum(answered)::double precision / nullif(sum(visits), 0),
           count(DISTINCT canvasser_id)::bigint, count(*)::bigint,
           sum(visits)::double precision / nullif(count(*), 0)
    FROM d
$$;
-- +goose StatementEnd

-- An elector's latest intentions, newest first. The elector's shard is not
-- known, so every database returns its newest p_limit (a pre-filter: the
-- overall newest p_limit are among them) and the router keeps the newest
-- p_limit of the merge.

-- +goose StatementBegin
CREATE FUNCTION part_intentions_by_elector(p_shards integer[], p_elector text, p_limit integer)
RETURNS TABLE (shard smallint, id uuid, visit_id uuid, elector_id text, option text, locality bigint,
               latitude double precision, longitude double precision, canvasser_id text,
               recorded_at timestamptz, received_at timestamptz)
LANGUAGE plproxy AS $$
    CLUSTER 'chapper';
    SPLIT p_shards;
    RUN ON p_shards;
    SELECT shard, id, visit_id, elector_id, option, locality, latitude, longitude, canvasser_id,
           recorded_at, received_at
    FROM intentions
    WHERE shard = ANY (p_shards) AND elector_id = p_elector
    ORDER BY recorded_at DESC, id
    LIMIT p_limit;
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE FUNCTION intentions_by_elector(p_elector text, p_limit integer DEFAULT 10)
RETURNS TABLE (shard smallint, id uuid, visit_id uuid, elector_id text, option text, locality bigint,
               latitude double precision, longitude double precision, canvasser_id text,
               recorded_at timestamptz, received_at timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT * FROM part_intentions_by_elector(chapper_all_shards(), p_elector, p_limit)
    ORDER BY recorded_at DESC, id
    LIMIT p_limit
$$;
-- +goose StatementEnd

-- The oldest follow-ups of an issue, the queue to work through: per database
-- the oldest p_limit, then the oldest p_limit of the merge.

-- +goose StatementBegin
CREATE FUNCTION part_oldest_followups(p_shards integer[], p_issue text, p_limit integer)
RETURNS TABLE (shard smallint, id uuid, visit_id uuid, elector_id text, issue text, method text,
               locality bigint, latitude double precision, longitude double precision,
               canvasser_id text, recorded_at timestamptz, received_at timestamptz)
LANGUAGE plproxy AS $$
    CLUSTER 'chapper';
    SPLIT p_shards;
    RUN ON p_shards;
    SELECT shard, id, visit_id, elector_id, issue, method::text AS method, locality, latitude,
           longitude, canvasser_id, recorded_at, received_at
    FROM followups
    WHERE shard = ANY (p_shards) AND issue = p_issue
    ORDER BY recorded_at, id
    LIMIT p_limit;
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE FUNCTION oldest_followups(p_issue text, p_limit integer DEFAULT 10)
RETURNS TABLE (shard smallint, id uuid, visit_id uuid, elector_id text, issue text, method text,
               locality bigint, latitude double precision, longitude double precision,
               canvasser_id text, recorded_at timestamptz, received_at timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT * FROM part_oldest_followups(chapper_all_shards(), p_issue, p_limit)
    ORDER BY recorded_at, id
    LIMIT p_limit
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION oldest_followups(text, integer);
DROP FUNCTION part_oldest_followups(integer[], text, integer);
DROP FUNCTION intentions_by_elector(text, integer);
DROP FUNCTION part_intentions_by_elector(integer[], text, integer);
DROP FUNCTION visit_summary(timestamptz, timestamptz);
DROP FUNCTION canvasser_activity(timestamptz, timestamptz, integer);
DROP FUNCTION part_visits_by_canvasser_day(integer[], timestamptz, timestamptz);
DROP FUNCTION followups_outstanding(integer);
DROP FUNCTION part_followups_by_issue(integer[]);
DROP FUNCTION intentions_by_region(timestamptz, timestamptz);
DROP FUNCTION part_intentions_by_region(integer[], timestamptz, timestamptz);
DROP FUNCTION followups_by_locality(bigint, timestamptz, timestamptz);
DROP FUNCTION intentions_by_locality(bigint, timestamptz, timestamptz);
DROP FUNCTION visits_by_locality(bigint, timestamptz, timestamptz);
