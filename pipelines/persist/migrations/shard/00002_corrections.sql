-- Corrections (DESIGN.md, "Conflicts and corrections"): a correction is a
-- new record whose replaces_id names the record of the same kind it
-- replaces. A replaced record stops counting; the correction counts in its
-- place. A correction may live in another shard, even another database,
-- than the record it replaces (a corrected location), so every database
-- holds every correction's replaced id in `replaced`, written by the
-- persister in the same pass as the correction's row (corrections are
-- rare), and the current_* views anti-join locally. Idempotent (ON
-- CONFLICT DO NOTHING) and independent of arrival order: a correction may
-- arrive before the record it replaces.
--
-- When several corrections replace the same record, only the newest
-- counts: the one received last by ingest (received_at), ties broken by
-- the higher id. A chain (A replaced by B, B by C) leaves only C.

-- +goose Up
ALTER TABLE visits ADD COLUMN replaces_id uuid;
ALTER TABLE intentions ADD COLUMN replaces_id uuid;
ALTER TABLE followups ADD COLUMN replaces_id uuid;

CREATE TABLE replaced (
    kind        text NOT NULL CHECK (kind IN ('visits', 'intentions', 'followups')),
    id          uuid NOT NULL,           -- the record replaced
    by_id       uuid NOT NULL,           -- the correction replacing it
    by_received timestamptz NOT NULL,    -- the correction's received_at (-infinity when unknown)
    PRIMARY KEY (kind, id, by_id)
);

-- Rows that count: not replaced, and not outdone by a newer correction of
-- the same record.
CREATE VIEW current_visits AS
    SELECT t.* FROM visits t
    WHERE NOT EXISTS (SELECT 1 FROM replaced r WHERE r.kind = 'visits' AND r.id = t.id)
      AND (t.replaces_id IS NULL OR NOT EXISTS (
          SELECT 1 FROM replaced r WHERE r.kind = 'visits' AND r.id = t.replaces_id
            AND (r.by_received, r.by_id) > (coalesce(t.received_at, '-infinity'), t.id)));
CREATE VIEW current_intentions AS
    SELECT t.* FROM intentions t
    WHERE NOT EXISTS (SELECT 1 FROM replaced r WHERE r.kind = 'intentions' AND r.id = t.id)
      AND (t.replaces_id IS NULL OR NOT EXISTS (
          SELECT 1 FROM replaced r WHERE r.kind = 'intentions' AND r.id = t.replaces_id
            AND (r.by_received, r.by_id) > (coalesce(t.received_at, '-infinity'), t.id)));
CREATE VIEW current_followups AS
    SELECT t.* FROM followups t
    WHERE NOT EXISTS (SELECT 1 FROM replaced r WHERE r.kind = 'followups' AND r.id = t.id)
      AND (t.replaces_id IS NULL OR NOT EXISTS (
          SELECT 1 FROM replaced r WHERE r.kind = 'followups' AND r.id = t.replaces_id
            AND (r.by_received, r.by_id) > (coalesce(t.received_at, '-infinity'), t.id)));

-- +goose Down
DROP VIEW current_followups;
DROP VIEW current_intentions;
DROP VIEW current_visits;
DROP TABLE replaced;
ALTER TABLE followups DROP COLUMN replaces_id;
ALTER TABLE intentions DROP COLUMN replaces_id;
ALTER TABLE visits DROP COLUMN replaces_id;
