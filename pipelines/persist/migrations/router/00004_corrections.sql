-- Corrections: every router function reads only the rows that count, the
-- shard databases' current_* views (shard migration 00002): a replaced
-- record stops counting, and of several corrections of one record only the
-- newest counts. Same signatures as before; the merges on the router are
-- unchanged.

-- +goose Up

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION visits_by_locality(p_locality bigint, p_since timestamptz, p_until timestamptz)
RETURNS TABLE (shard smallint, id uuid, dwelling_id text, address text, locality bigint,
               latitude double precision, longitude double precision, canvasser_id text,
               visited_at timestamptz, outcome text, received_at timestamptz)
LANGUAGE plproxy AS $$
    CLUSTER 'chapper';
    RUN ON chapper_region(p_locality);
    SELECT shard, id, dwelling_id, address, locality, latitude, longitude, canvasser_id,
           visited_at, outcome::text AS outcome, received_at
    FROM current_visits
    WHERE locality = p_locality AND visited_at >= p_since AND visited_at < p_until
    ORDER BY visited_at, id;
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION intentions_by_locality(p_locality bigint, p_since timestamptz, p_until timestamptz)
RETURNS TABLE (shard smallint, id uuid, visit_id uuid, elector_id text, option text, locality bigint,
               latitude double precision, longitude double precision, canvasser_id text,
               recorded_at timestamptz, received_at timestamptz)
LANGUAGE plproxy AS $$
    CLUSTER 'chapper';
    RUN ON chapper_region(p_locality);
    SELECT shard, id, visit_id, elector_id, option, locality, latitude, longitude, canvasser_id,
           recorded_at, received_at
    FROM current_intentions
    WHERE locality = p_locality AND recorded_at >= p_since AND recorded_at < p_until
    ORDER BY recorded_at, id;
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION followups_by_locality(p_locality bigint, p_since timestamptz, p_until timestamptz)
RETURNS TABLE (shard smallint, id uuid, visit_id uuid, elector_id text, issue text, method text,
               locality bigint, latitude double precision, longitude double precision,
               canvasser_id text, recorded_at timestamptz, received_at timestamptz)
LANGUAGE plproxy AS $$
    CLUSTER 'chapper';
    RUN ON chapper_region(p_locality);
    SELECT shard, id, visit_id, elector_id, issue, method::text AS method, locality, latitude,
           longitude, canvasser_id, recorded_at, received_at
    FROM current_followups
    WHERE locality = p_locality AND recorded_at >= p_since AND recorded_at < p_until
    ORDER BY recorded_at, id;
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION part_intentions_by_region(p_shards integer[], p_since timestamptz, p_until timestamptz)
RETURNS TABLE (region bigint, option text, n bigint)
LANGUAGE plproxy AS $$
    CLUSTER 'chapper';
    SPLIT p_shards;
    RUN ON p_shards;
    SELECT region, option, count(*) AS n
    FROM current_intentions
    WHERE shard = ANY (p_shards) AND recorded_at >= p_since AND recorded_at < p_until
    GROUP BY region, option;
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION part_followups_by_issue(p_shards integer[])
RETURNS TABLE (issue text, method text, n bigint, oldest timestamptz)
LANGUAGE plproxy AS $$
    CLUSTER 'chapper';
    SPLIT p_shards;
    RUN ON p_shards;
    SELECT issue, method::text AS method, count(*) AS n, min(recorded_at) AS oldest
    FROM current_followups
    WHERE shard = ANY (p_shards)
    GROUP BY issue, method;
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION part_visits_by_canvasser_day(p_shards integer[], p_since timestamptz, p_until timestamptz)
RETURNS TABLE (canvasser_id text, day date, visits bigint, answered bigint)
LANGUAGE plproxy AS $$
    CLUSTER 'chapper';
    SPLIT p_shards;
    RUN ON p_shards;
    SELECT canvasser_id, (visited_at AT TIME ZONE 'UTC')::date AS day, count(*) AS visits,
           count(*) FILTER (WHERE outcome = 'answered') AS answered
    FROM current_visits
    WHERE shard = ANY (p_shards) AND visited_at >= p_since AND visited_at < p_until
    GROUP BY 1, 2;
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION part_intentions_by_elector(p_shards integer[], p_elector text, p_limit integer)
RETURNS TABLE (shard smallint, id uuid, visit_id uuid, elector_id text, option text, locality bigint,
               latitude double precision, longitude double precision, canvasser_id text,
               recorded_at timestamptz, received_at timestamptz)
LANGUAGE plproxy AS $$
    CLUSTER 'chapper';
    SPLIT p_shards;
    RUN ON p_shards;
    SELECT shard, id, visit_id, elector_id, option, locality, latitude, longitude, canvasser_id,
           recorded_at, received_at
    FROM current_intentions
    WHERE shard = ANY (p_shards) AND elector_id = p_elector
    ORDER BY recorded_at DESC, id
    LIMIT p_limit;
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION part_oldest_followups(p_shards integer[], p_issue text, p_limit integer)
RETURNS TABLE (shard smallint, id uuid, visit_id uuid, elector_id text, issue text, method text,
               locality bigint, latitude double precision, longitude double precision,
               canvasser_id text, recorded_at timestamptz, received_at timestamptz)
LANGUAGE plproxy AS $$
    CLUSTER 'chapper';
    SPLIT p_shards;
    RUN ON p_shards;
    SELECT shard, id, visit_id, elector_id, issue, method::text AS method, locality, latitude,
           longitude, canvasser_id, recorded_at, received_at
    FROM current_followups
    WHERE shard = ANY (p_shards) AND issue = p_issue
    ORDER BY recorded_at, id
    LIMIT p_limit;
$$;
-- +goose StatementEnd

-- +goose Down

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION visits_by_locality(p_locality bigint, p_since timestamptz, p_until timestamptz)
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
CREATE OR REPLACE FUNCTION intentions_by_locality(p_locality bigint, p_since timestamptz, p_until timestamptz)
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
CREATE OR REPLACE FUNCTION followups_by_locality(p_locality bigint, p_since timestamptz, p_until timestamptz)
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

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION part_intentions_by_region(p_shards integer[], p_since timestamptz, p_until timestamptz)
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
CREATE OR REPLACE FUNCTION part_followups_by_issue(p_shards integer[])
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
CREATE OR REPLACE FUNCTION part_visits_by_canvasser_day(p_shards integer[], p_since timestamptz, p_until timestamptz)
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

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION part_intentions_by_elector(p_shards integer[], p_elector text, p_limit integer)
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
CREATE OR REPLACE FUNCTION part_oldest_followups(p_shards integer[], p_issue text, p_limit integer)
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
