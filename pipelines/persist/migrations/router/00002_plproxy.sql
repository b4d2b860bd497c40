-- PL/Proxy cluster 'chapper', configured from the shard map: one partition
-- per logical shard, in shard order, each the connection string of the
-- database holding it under the current map version. PL/Proxy shares one
-- connection among partitions with equal strings, so RUN ON ALL runs once
-- per database, and it reloads the partitions whenever
-- get_cluster_version changes (a new map version). Creating the extension
-- needs a superuser.

-- +goose Up
CREATE EXTENSION IF NOT EXISTS plproxy;
CREATE SCHEMA IF NOT EXISTS plproxy;

-- +goose StatementBegin
CREATE FUNCTION plproxy.get_cluster_version(cluster_name text)
RETURNS integer LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF cluster_name <> 'chapper' THEN
        RAISE EXCEPTION 'unknown PL/Proxy cluster %', cluster_name;
    END IF;
    RETURN (SELECT coalesce(max(version), 0)::integer FROM public.shard_map_versions);
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE FUNCTION plproxy.get_cluster_partitions(cluster_name text)
RETURNS SETOF text LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF cluster_name <> 'chapper' THEN
        RAISE EXCEPTION 'unknown PL/Proxy cluster %', cluster_name;
    END IF;
    RETURN QUERY
        SELECT d.conninfo
        FROM public.shard_map m JOIN public.shard_databases d ON d.name = m.database
        WHERE m.version = (SELECT max(version) FROM public.shard_map_versions)
        ORDER BY m.shard;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE FUNCTION plproxy.get_cluster_config(IN cluster_name text, OUT key text, OUT val text)
RETURNS SETOF record LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF cluster_name <> 'chapper' THEN
        RAISE EXCEPTION 'unknown PL/Proxy cluster %', cluster_name;
    END IF;
    -- reconnect now and then, so a shard database restarted or moved is
    -- picked up even without a map change
    key := 'connection_lifetime'; val := '600'; RETURN NEXT;
END
$$;
-- +goose StatementEnd

-- The logical shard of a locality, as DESIGN.md defines it. RUN ON takes
-- chapper_region(locality): PL/Proxy keeps the low bits (its partition
-- count is 2^N), which is region mod 2^N.
CREATE FUNCTION chapper_region(p_locality bigint) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN (((p_locality / 360000) / 100) * 3600 + (p_locality % 360000) / 100)::integer;

-- +goose StatementBegin
CREATE FUNCTION chapper_shard(p_locality bigint) RETURNS integer
LANGUAGE sql STABLE AS $$
    SELECT chapper_region(p_locality) & ((1 << bits) - 1)
    FROM shard_map_versions ORDER BY version DESC LIMIT 1
$$;
-- +goose StatementEnd

-- Every logical shard, the argument RUN ON ALL reports SPLIT: each database
-- gets the shards it holds under the current map and reads only those, so
-- rows copied ahead of a move (or not yet deleted after it) are never
-- counted twice.
-- +goose StatementBegin
CREATE FUNCTION chapper_all_shards() RETURNS integer[]
LANGUAGE sql STABLE AS $$
    SELECT array_agg(s ORDER BY s)
    FROM (SELECT bits FROM shard_map_versions ORDER BY version DESC LIMIT 1) v,
         generate_series(0, (1 << v.bits) - 1) AS s
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION chapper_all_shards();
DROP FUNCTION chapper_shard(bigint);
DROP FUNCTION chapper_region(bigint);
DROP FUNCTION plproxy.get_cluster_config(text);
DROP FUNCTION plproxy.get_cluster_partitions(text);
DROP FUNCTION plproxy.get_cluster_version(text);
DROP SCHEMA plproxy;
DROP EXTENSION plproxy;
