-- The audit table for the embedded default (same columns and guarantees as
-- migrations/postgres/0001). Instants are UTC RFC 3339 text with exactly three
-- fractional digits and Z (e.g. 2026-03-02T04:30:00.000Z): fixed width, so text
-- order is time order. JSON arrays are stored as their compact JSON text.
CREATE TABLE scim_audit_log (
    id               INTEGER PRIMARY KEY,
    external_id      TEXT,
    user_id          TEXT,
    action           TEXT    NOT NULL,
    status_code      INTEGER CHECK (status_code BETWEEN 100 AND 599),
    success          INTEGER NOT NULL CHECK (success IN (0, 1)),
    error_message    TEXT,
    created_at       TEXT    NOT NULL CHECK (created_at GLOB
        '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'),
    outcome          TEXT    NOT NULL CHECK (outcome IN (
                         'deactivated', 'already_inactive', 'not_found', 'ambiguous',
                         'identity_mismatch', 'protected', 'invalid', 'forbidden',
                         'failed', 'retrying', 'scheduled', 'held', 'dry_run')),
    credential       TEXT    CHECK (credential IN ('primary', 'elevated', 'static')),
    groups_removed   TEXT    NOT NULL CHECK (json_type(groups_removed) = 'array'),
    attempt          INTEGER NOT NULL CHECK (attempt >= 0),
    sqs_message_id   TEXT,
    manifest_bucket  TEXT,
    manifest_key     TEXT,
    manifest_version TEXT,
    manifest_index   INTEGER,
    effective_at     TEXT    CHECK (effective_at GLOB
        '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'),
    correlation_ids  TEXT    NOT NULL CHECK (json_type(correlation_ids) = 'array'),
    duration_ms      INTEGER,
    idempotency_key  TEXT    CHECK (length(idempotency_key) = 64
                                    AND idempotency_key NOT GLOB '*[^0-9a-f]*'),
    actor            TEXT,
    termination_first_id INTEGER,
    termination_first_at TEXT    CHECK (termination_first_at GLOB
        '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'),
    prev_hash        TEXT    NOT NULL CHECK (length(prev_hash) = 64),
    row_hash         TEXT    NOT NULL UNIQUE CHECK (length(row_hash) = 64),
    CHECK ((termination_first_id IS NULL) = (termination_first_at IS NULL))
) STRICT;

CREATE INDEX scim_audit_log_external_id_idx ON scim_audit_log (external_id);
CREATE INDEX scim_audit_log_created_at_idx ON scim_audit_log (created_at);
CREATE INDEX scim_audit_log_idempotency_idx ON scim_audit_log (idempotency_key, id);
CREATE INDEX scim_audit_log_termination_idx ON scim_audit_log
    (termination_first_at, termination_first_id);

-- Append-only, enforced by the database. SQLite has no TRUNCATE: its DELETE without
-- WHERE fires this row trigger too (the truncate optimisation is off while a DELETE
-- trigger exists).
CREATE TRIGGER scim_audit_log_no_update BEFORE UPDATE ON scim_audit_log
BEGIN
    SELECT RAISE(ABORT, 'scim_audit_log is append-only: UPDATE is not allowed');
END;
CREATE TRIGGER scim_audit_log_no_delete BEFORE DELETE ON scim_audit_log
BEGIN
    SELECT RAISE(ABORT, 'scim_audit_log is append-only: DELETE is not allowed');
END;
