-- Shard database schema: the same tables in every shard database. A row's
-- logical shard is its region mod 2^N (DESIGN.md); primary keys include it,
-- so rows of shards that were ever kept apart merge without collisions.
-- Rows are only ever inserted (ON CONFLICT DO NOTHING), never updated: a
-- shard move relies on it. seq orders the rows of one database by insertion
-- (a shard move copies the rows that arrived after a mark); it is local to
-- the database and not copied.

-- +goose Up
CREATE TYPE visit_outcome AS ENUM ('unspecified', 'answered', 'no_answer', 'refused', 'moved');
CREATE TYPE followup_method AS ENUM ('unspecified', 'telephone', 'email', 'post');

CREATE TABLE visits (
    shard           smallint NOT NULL CHECK (shard >= 0),
    id              uuid NOT NULL,
    dwelling_id     text NOT NULL CHECK (dwelling_id <> '' AND length(dwelling_id) <= 256),
    address         text NOT NULL CHECK (length(address) <= 512),
    locality        bigint NOT NULL CHECK (locality >= 0),
    chunk           bigint NOT NULL CHECK (chunk >= 0),
    region          bigint NOT NULL CHECK (region >= 0),
    latitude        double precision NOT NULL CHECK (latitude BETWEEN -90 AND 90),
    longitude       double precision NOT NULL CHECK (longitude >= -180 AND longitude < 180),
    canvasser_id    text NOT NULL CHECK (length(canvasser_id) <= 256),
    visited_at      timestamptz NOT NULL,
    outcome         visit_outcome NOT NULL,
    received_at     timestamptz,
    kafka_partition integer,
    kafka_offset    bigint,
    seq             bigint GENERATED ALWAYS AS IDENTITY,
    PRIMARY KEY (shard, id)
);
CREATE INDEX visits_locality_time ON visits (locality, visited_at);
CREATE INDEX visits_canvasser_time ON visits (canvasser_id, visited_at);
CREATE INDEX visits_seq ON visits USING brin (seq);

CREATE TABLE intentions (
    shard           smallint NOT NULL CHECK (shard >= 0),
    id              uuid NOT NULL,
    visit_id        uuid,
    elector_id      text NOT NULL CHECK (elector_id <> '' AND length(elector_id) <= 256),
    option          text NOT NULL CHECK (option <> '' AND length(option) <= 128),
    locality        bigint NOT NULL CHECK (locality >= 0),
    chunk           bigint NOT NULL CHECK (chunk >= 0),
    region          bigint NOT NULL CHECK (region >= 0),
    latitude        double precision NOT NULL CHECK (latitude BETWEEN -90 AND 90),
    longitude       double precision NOT NULL CHECK (longitude >= -180 AND longitude < 180),
    canvasser_id    text NOT NULL CHECK (length(canvasser_id) <= 256),
    recorded_at     timestamptz NOT NULL,
    received_at     timestamptz,
    kafka_partition integer,
    kafka_offset    bigint,
    seq             bigint GENERATED ALWAYS AS IDENTITY,
    PRIMARY KEY (shard, id)
);
CREATE INDEX intentions_locality_time ON intentions (locality, recorded_at);
CREATE INDEX intentions_elector_time ON intentions (elector_id, recorded_at);
CREATE INDEX intentions_canvasser_time ON intentions (canvasser_id, recorded_at);
CREATE INDEX intentions_seq ON intentions USING brin (seq);

CREATE TABLE followups (
    shard           smallint NOT NULL CHECK (shard >= 0),
    id              uuid NOT NULL,
    visit_id        uuid,
    elector_id      text NOT NULL CHECK (elector_id <> '' AND length(elector_id) <= 256),
    issue           text NOT NULL CHECK (issue <> '' AND length(issue) <= 128),
    method          followup_method NOT NULL,
    locality        bigint NOT NULL CHECK (locality >= 0),
    chunk           bigint NOT NULL CHECK (chunk >= 0),
    region          bigint NOT NULL CHECK (region >= 0),
    latitude        double precision NOT NULL CHECK (latitude BETWEEN -90 AND 90),
    longitude       double precision NOT NULL CHECK (longitude >= -180 AND longitude < 180),
    canvasser_id    text NOT NULL CHECK (length(canvasser_id) <= 256),
    recorded_at     timestamptz NOT NULL,
    received_at     timestamptz,
    kafka_partition integer,
    kafka_offset    bigint,
    seq             bigint GENERATED ALWAYS AS IDENTITY,
    PRIMARY KEY (shard, id)
);
CREATE INDEX followups_locality_time ON followups (locality, recorded_at);
CREATE INDEX followups_elector_time ON followups (elector_id, recorded_at);
CREATE INDEX followups_canvasser_time ON followups (canvasser_id, recorded_at);
CREATE INDEX followups_issue_time ON followups (issue, recorded_at);
CREATE INDEX followups_seq ON followups USING brin (seq);

-- +goose Down
DROP TABLE followups;
DROP TABLE intentions;
DROP TABLE visits;
DROP TYPE followup_method;
DROP TYPE visit_outcome;
