-- Durable holds of future-dated terminations (issue 6, item 1) and the
-- `rescinded` outcome (a rehire withdrew the termination, item 6).
--
-- scim_audit_log stays append-only: only its outcome CHECK widens (ALTER TABLE
-- fires no row trigger, and every existing row satisfies the wider list).
ALTER TABLE scim_audit_log DROP CONSTRAINT scim_audit_log_outcome_check;
ALTER TABLE scim_audit_log ADD CONSTRAINT scim_audit_log_outcome_check CHECK (outcome IN (
    'deactivated', 'already_inactive', 'not_found', 'ambiguous',
    'identity_mismatch', 'protected', 'invalid', 'forbidden',
    'failed', 'retrying', 'scheduled', 'held', 'dry_run', 'rescinded'));

-- One row per held termination (idempotency key UNIQUE: the same termination
-- delivered twice is one hold). Mutable, unlike the audit log, but only forward:
-- pending → released (re-sent to the terminations queue) or pending → cancelled
-- (a rehire). Every transition is also written to scim_audit_log.
CREATE TABLE termination_holds (
    id               BIGSERIAL   PRIMARY KEY,
    idempotency_key  TEXT        NOT NULL UNIQUE CHECK (idempotency_key ~ '^[0-9a-f]{64}$'),
    external_id      TEXT        NOT NULL,
    user_id          TEXT,
    due_at           TIMESTAMPTZ NOT NULL,
    -- The message exactly as received (a signed body stays verifiable) and its
    -- message attributes as a JSON object of strings.
    body             TEXT        NOT NULL,
    attributes       JSONB       NOT NULL CHECK (jsonb_typeof(attributes) = 'object'),
    manifest_bucket  TEXT,
    manifest_key     TEXT,
    manifest_version TEXT,
    manifest_index   BIGINT,
    created_at       TIMESTAMPTZ NOT NULL,
    released_at      TIMESTAMPTZ,
    cancelled_at     TIMESTAMPTZ,
    cancel_reason    TEXT,
    CHECK (released_at IS NULL OR cancelled_at IS NULL),
    CHECK ((cancelled_at IS NULL) = (cancel_reason IS NULL))
);

-- The releaser's claim (due pending rows in due order) and the rehire lookup.
CREATE INDEX termination_holds_pending_idx ON termination_holds (due_at, id)
    WHERE released_at IS NULL AND cancelled_at IS NULL;
CREATE INDEX termination_holds_external_id_idx ON termination_holds (external_id);

-- Only forward: what was held, and a release or cancellation once recorded, never
-- change.
CREATE FUNCTION termination_holds_forward_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.idempotency_key IS DISTINCT FROM OLD.idempotency_key
       OR NEW.external_id IS DISTINCT FROM OLD.external_id
       OR NEW.body IS DISTINCT FROM OLD.body
       OR NEW.due_at IS DISTINCT FROM OLD.due_at
       OR NEW.created_at IS DISTINCT FROM OLD.created_at
       OR (OLD.released_at IS NOT NULL AND NEW.released_at IS DISTINCT FROM OLD.released_at)
       OR (OLD.cancelled_at IS NOT NULL AND NEW.cancelled_at IS DISTINCT FROM OLD.cancelled_at)
    THEN
        RAISE EXCEPTION 'termination_holds: a hold only moves forward (pending → released or cancelled)'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER termination_holds_forward_only BEFORE UPDATE ON termination_holds
    FOR EACH ROW EXECUTE FUNCTION termination_holds_forward_only();

-- The worker creates, reads and moves holds forward; it cannot delete them.
REVOKE ALL ON termination_holds FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE ON termination_holds TO deprovision_worker;
GRANT USAGE ON SEQUENCE termination_holds_id_seq TO deprovision_worker;
