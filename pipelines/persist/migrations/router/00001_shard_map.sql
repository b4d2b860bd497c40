-- Router database: the versioned shard map. The current map is the highest
-- version; a new version is published (never edited in place) when a shard
-- moves, and PL/Proxy reloads its partitions when the version changes.

-- +goose Up
CREATE TABLE shard_databases (
    name     text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_.-]{1,63}$'),
    conninfo text NOT NULL CHECK (conninfo <> '')
);

CREATE TABLE shard_map_versions (
    version    bigint PRIMARY KEY CHECK (version > 0),
    bits       smallint NOT NULL CHECK (bits BETWEEN 0 AND 12),
    created_at timestamptz NOT NULL DEFAULT now(),
    note       text NOT NULL DEFAULT ''
);

CREATE TABLE shard_map (
    version  bigint NOT NULL REFERENCES shard_map_versions ON DELETE CASCADE,
    shard    integer NOT NULL CHECK (shard >= 0),
    database text NOT NULL REFERENCES shard_databases (name),
    PRIMARY KEY (version, shard)
);

-- +goose Down
DROP TABLE shard_map;
DROP TABLE shard_map_versions;
DROP TABLE shard_databases;
