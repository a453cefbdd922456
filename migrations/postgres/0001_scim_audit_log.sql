-- The audit table (design.md, "Audit table"). The seed's columns keep their names
-- and meaning (created_at becomes timestamptz); the evidence columns and the hash
-- chain follow. Rows are written only by AuditStore::append (src/audit/postgres.rs),
-- which sets created_at from Rust in UTC and computes prev_hash/row_hash.
CREATE TABLE scim_audit_log (
    id               BIGSERIAL PRIMARY KEY,
    external_id      TEXT,
    user_id          TEXT,
    action           TEXT        NOT NULL,
    status_code      INTEGER     CHECK (status_code BETWEEN 100 AND 599),
    success          BOOLEAN     NOT NULL,
    error_message    TEXT,
    created_at       TIMESTAMPTZ NOT NULL,
    outcome          TEXT        NOT NULL CHECK (outcome IN (
                         'deactivated', 'already_inactive', 'not_found', 'ambiguous',
                         'identity_mismatch', 'protected', 'invalid', 'forbidden',
                         'failed', 'retrying', 'scheduled', 'held', 'dry_run')),
    credential       TEXT        CHECK (credential IN ('primary', 'elevated', 'static')),
    groups_removed   JSONB       NOT NULL CHECK (jsonb_typeof(groups_removed) = 'array'),
    attempt          BIGINT      NOT NULL CHECK (attempt >= 0),
    sqs_message_id   TEXT,
    manifest_bucket  TEXT,
    manifest_key     TEXT,
    manifest_version TEXT,
    manifest_index   BIGINT,
    effective_at     TIMESTAMPTZ,
    correlation_ids  JSONB       NOT NULL CHECK (jsonb_typeof(correlation_ids) = 'array'),
    duration_ms      BIGINT,
    idempotency_key  TEXT        CHECK (idempotency_key ~ '^[0-9a-f]{64}$'),
    actor            TEXT,
    -- The first row of this row's termination (the row itself for a first row;
    -- NULL for manifest and operator rows), set by the store under the chain lock:
    -- the reports select a period by the instant and group by the id.
    termination_first_id BIGINT,
    termination_first_at TIMESTAMPTZ,
    prev_hash        TEXT        NOT NULL CHECK (prev_hash ~ '^[0-9a-f]{64}$'),
    row_hash         TEXT        NOT NULL UNIQUE CHECK (row_hash ~ '^[0-9a-f]{64}$'),
    CHECK ((termination_first_id IS NULL) = (termination_first_at IS NULL))
);

COMMENT ON TABLE scim_audit_log IS
    'Append-only, hash-chained audit of deprovisioning (row_hash = sha256(prev_hash || canonical JSON)); UPDATE, DELETE and TRUNCATE are rejected by triggers.';

-- The seed's lookups, the consumer's idempotency check and the reports' grouping.
CREATE INDEX scim_audit_log_external_id_idx ON scim_audit_log (external_id);
CREATE INDEX scim_audit_log_created_at_idx ON scim_audit_log (created_at);
CREATE INDEX scim_audit_log_idempotency_idx ON scim_audit_log (idempotency_key, id);
-- Covering index of the weekly report: an index-only scan in termination order,
-- aggregated without a hash table or a sort.
CREATE INDEX scim_audit_log_termination_idx ON scim_audit_log
    (termination_first_at, termination_first_id) INCLUDE (id, outcome, created_at, effective_at);

-- Append-only, enforced here rather than by convention: row triggers for UPDATE and
-- DELETE, a statement trigger for TRUNCATE (row triggers never see TRUNCATE).
CREATE FUNCTION scim_audit_log_reject_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'scim_audit_log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'audit rows are evidence; record a correction as a new row';
END;
$$;

CREATE TRIGGER scim_audit_log_no_update BEFORE UPDATE ON scim_audit_log
    FOR EACH ROW EXECUTE FUNCTION scim_audit_log_reject_change();
CREATE TRIGGER scim_audit_log_no_delete BEFORE DELETE ON scim_audit_log
    FOR EACH ROW EXECUTE FUNCTION scim_audit_log_reject_change();
CREATE TRIGGER scim_audit_log_no_truncate BEFORE TRUNCATE ON scim_audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION scim_audit_log_reject_change();
