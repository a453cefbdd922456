-- Durable holds of future-dated terminations (issue 6, item 1) and the
-- `rescinded` outcome (a rehire withdrew the termination, item 6).
--
-- SQLite cannot alter a CHECK constraint, so scim_audit_log is rebuilt with the
-- wider outcome list (SQLite's documented procedure: new table, copy, drop,
-- rename). Rows are copied unchanged, ids and hashes included, so the chain
-- still verifies. The append-only triggers are dropped first (a DROP TABLE fires
-- no row trigger anyway) and recreated on the new table.
DROP TRIGGER scim_audit_log_no_update;
DROP TRIGGER scim_audit_log_no_delete;

CREATE TABLE scim_audit_log_v2 (
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
                         'failed', 'retrying', 'scheduled', 'held', 'dry_run', 'rescinded')),
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

INSERT INTO scim_audit_log_v2 SELECT * FROM scim_audit_log;
DROP TABLE scim_audit_log;
ALTER TABLE scim_audit_log_v2 RENAME TO scim_audit_log;

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

-- One row per held termination (idempotency key UNIQUE). Mutable, unlike the
-- audit log, but only forward: pending → released or pending → cancelled.
CREATE TABLE termination_holds (
    id               INTEGER PRIMARY KEY,
    idempotency_key  TEXT    NOT NULL UNIQUE CHECK (length(idempotency_key) = 64
                                    AND idempotency_key NOT GLOB '*[^0-9a-f]*'),
    external_id      TEXT    NOT NULL,
    user_id          TEXT,
    due_at           TEXT    NOT NULL CHECK (due_at GLOB
        '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'),
    body             TEXT    NOT NULL,
    attributes       TEXT    NOT NULL CHECK (json_type(attributes) = 'object'),
    manifest_bucket  TEXT,
    manifest_key     TEXT,
    manifest_version TEXT,
    manifest_index   INTEGER,
    created_at       TEXT    NOT NULL,
    released_at      TEXT,
    cancelled_at     TEXT,
    cancel_reason    TEXT,
    CHECK (released_at IS NULL OR cancelled_at IS NULL),
    CHECK ((cancelled_at IS NULL) = (cancel_reason IS NULL))
) STRICT;

CREATE INDEX termination_holds_pending_idx ON termination_holds (due_at, id)
    WHERE released_at IS NULL AND cancelled_at IS NULL;
CREATE INDEX termination_holds_external_id_idx ON termination_holds (external_id);

CREATE TRIGGER termination_holds_forward_only BEFORE UPDATE ON termination_holds
WHEN NEW.idempotency_key IS NOT OLD.idempotency_key
  OR NEW.external_id IS NOT OLD.external_id
  OR NEW.body IS NOT OLD.body
  OR NEW.due_at IS NOT OLD.due_at
  OR NEW.created_at IS NOT OLD.created_at
  OR (OLD.released_at IS NOT NULL AND NEW.released_at IS NOT OLD.released_at)
  OR (OLD.cancelled_at IS NOT NULL AND NEW.cancelled_at IS NOT OLD.cancelled_at)
BEGIN
    SELECT RAISE(ABORT, 'termination_holds: a hold only moves forward (pending → released or cancelled)');
END;
