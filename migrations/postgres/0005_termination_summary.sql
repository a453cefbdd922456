-- The weekly report's per-termination summary: one row per termination (keyed by
-- the id of its first audit row), maintained by a trigger on every INSERT into
-- scim_audit_log, so that the report reads one narrow row per termination instead
-- of grouping every attempt (2.0 s of server CPU for 1,000,000 rows before; the
-- report now aggregates this table per week through an index-only range scan).
--
-- Every column is a max over the termination's rows, so the summary does not
-- depend on the order rows arrive in and equals what the report query computed
-- from the raw rows (`reduce_terminations!` in src/audit/mod.rs):
--   k_all / k_term: max(id * 16 + outcome code) over all / terminal rows (the
--     reported outcome is the latest terminal row's, else the latest row's);
--   created_max / created_term_max: max(created_at) over all / terminal rows;
--   effective_at: max(effective_at).
-- The report counts only rows created at or before its as-of instant: terminations
-- with a row after it (created_max > as-of) are reduced from their raw rows.
--
-- It is derived data, not evidence: the worker role may only read it, the trigger
-- function writes it with its owner's rights, `deprovision audit verify` compares
-- it with the log, and `deprovision migrate` rebuilds it when its trigger had to be
-- restored (or on `--rebuild-summary`).

-- The objects below are re-asserted by `deprovision migrate` (src/audit/guards.rs
-- holds the same text; a unit test keeps the two identical), hence OR REPLACE and
-- IF NOT EXISTS.

-- The index of each outcome in Outcome::ALL (src/domain.rs), as outcome_code! in
-- src/audit/mod.rs.
CREATE OR REPLACE FUNCTION scim_audit_outcome_code(outcome text) RETURNS smallint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (CASE outcome WHEN 'deactivated' THEN 0 WHEN 'already_inactive' THEN 1
        WHEN 'not_found' THEN 2 WHEN 'ambiguous' THEN 3 WHEN 'identity_mismatch' THEN 4
        WHEN 'protected' THEN 5 WHEN 'invalid' THEN 6 WHEN 'forbidden' THEN 7
        WHEN 'failed' THEN 8 WHEN 'retrying' THEN 9 WHEN 'scheduled' THEN 10
        WHEN 'held' THEN 11 WHEN 'dry_run' THEN 12 WHEN 'rescinded' THEN 13 ELSE 15 END)::smallint
$$;

-- The reported outcome's code and the SLA hours (success with a known effective
-- time only) are generated columns with the arithmetic of the Rust aggregation
-- (whole milliseconds / 3.6e6). The first index serves the report's per-week
-- index-only scan; the second finds terminations touched after an as-of instant.
CREATE TABLE IF NOT EXISTS scim_audit_termination (
    termination_first_id BIGINT      PRIMARY KEY,
    first_at             TIMESTAMPTZ NOT NULL,
    effective_at         TIMESTAMPTZ,
    k_all                BIGINT      NOT NULL,
    k_term               BIGINT,
    created_max          TIMESTAMPTZ NOT NULL,
    created_term_max     TIMESTAMPTZ,
    code                 SMALLINT GENERATED ALWAYS AS
        ((COALESCE(k_term, k_all) % 16)::smallint) STORED,
    hours                DOUBLE PRECISION GENERATED ALWAYS AS (
        CASE WHEN COALESCE(k_term, k_all) % 16 <= 1 AND effective_at IS NOT NULL
        THEN round(date_part('epoch', COALESCE(created_term_max, created_max) - effective_at)
                   * 1000) / 3600000.0::float8
        END) STORED
);
CREATE INDEX IF NOT EXISTS scim_audit_termination_first_at_idx ON scim_audit_termination
    (first_at) INCLUDE (created_max, code, hours);
CREATE INDEX IF NOT EXISTS scim_audit_termination_created_max_idx ON scim_audit_termination
    (created_max);
REVOKE ALL ON scim_audit_termination FROM PUBLIC;
GRANT SELECT ON scim_audit_termination TO deprovision_worker;

COMMENT ON TABLE scim_audit_termination IS
    'Derived from scim_audit_log by the scim_audit_log_track_termination trigger: one row per termination for the weekly report. Not evidence; audit verify checks it against the log.';

-- Runs with its owner's rights: the worker role may only read the summary.
-- GREATEST ignores NULLs, like max().
CREATE OR REPLACE FUNCTION scim_audit_termination_track() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    k bigint := NEW.id * 16 + scim_audit_outcome_code(NEW.outcome);
    term boolean := NEW.outcome NOT IN ('retrying', 'scheduled', 'held', 'dry_run');
BEGIN
    INSERT INTO scim_audit_termination AS s (termination_first_id, first_at, effective_at,
        k_all, k_term, created_max, created_term_max)
    VALUES (NEW.termination_first_id, NEW.termination_first_at, NEW.effective_at,
        k, CASE WHEN term THEN k END, NEW.created_at, CASE WHEN term THEN NEW.created_at END)
    ON CONFLICT (termination_first_id) DO UPDATE SET
        effective_at = GREATEST(s.effective_at, EXCLUDED.effective_at),
        k_all = GREATEST(s.k_all, EXCLUDED.k_all),
        k_term = GREATEST(s.k_term, EXCLUDED.k_term),
        created_max = GREATEST(s.created_max, EXCLUDED.created_max),
        created_term_max = GREATEST(s.created_term_max, EXCLUDED.created_term_max);
    RETURN NULL;
END;
$$;

-- Recomputes the whole summary from the log, with appends blocked meanwhile.
CREATE OR REPLACE FUNCTION scim_audit_termination_rebuild() RETURNS bigint
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    n bigint;
BEGIN
    LOCK TABLE scim_audit_log IN SHARE MODE;
    DELETE FROM scim_audit_termination;
    INSERT INTO scim_audit_termination (termination_first_id, first_at, effective_at,
        k_all, k_term, created_max, created_term_max)
    SELECT termination_first_id, min(termination_first_at), max(effective_at),
        max(k), max(k) FILTER (WHERE term), max(created_at),
        max(created_at) FILTER (WHERE term)
    FROM (SELECT termination_first_id, termination_first_at, effective_at, created_at,
              id * 16 + scim_audit_outcome_code(outcome) AS k,
              outcome NOT IN ('retrying', 'scheduled', 'held', 'dry_run') AS term
          FROM scim_audit_log WHERE termination_first_id IS NOT NULL) AS r
    GROUP BY termination_first_id;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END;
$$;
REVOKE ALL ON FUNCTION scim_audit_termination_rebuild() FROM PUBLIC;

CREATE TRIGGER scim_audit_log_track_termination AFTER INSERT ON scim_audit_log
    FOR EACH ROW WHEN (NEW.termination_first_id IS NOT NULL)
    EXECUTE FUNCTION scim_audit_termination_track();

-- Creating the trigger above blocks appends until this migration commits, so the
-- backfill neither misses nor double-counts a row.
SELECT scim_audit_termination_rebuild();
