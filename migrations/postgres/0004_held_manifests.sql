-- Manifests held whole by the mass-deactivation breaker (issue 6), until an
-- operator approves or rejects them. Unlike scim_audit_log this is working state:
-- a row moves held → approved | rejected once (the UPDATE is conditional on
-- state = 'held'); every move is also recorded in the append-only audit log with
-- who made it. manifest_id is the first 16 hex digits of the content's SHA-256.
CREATE TABLE held_manifests (
    manifest_id   text        PRIMARY KEY CHECK (manifest_id ~ '^[0-9a-f]{16}$'),
    bucket        text        NOT NULL,
    key           text        NOT NULL,
    version_id    text,
    etag          text,
    sha256        text        NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    terminations  bigint      NOT NULL CHECK (terminations >= 0),
    active_users  bigint      CHECK (active_users >= 0),
    reason        text        NOT NULL,
    state         text        NOT NULL DEFAULT 'held'
                              CHECK (state IN ('held', 'approved', 'rejected')),
    held_at       timestamptz NOT NULL,
    decided_by    text,
    decided_at    timestamptz,
    CHECK ((state = 'held') = (decided_at IS NULL))
);

REVOKE ALL ON held_manifests FROM PUBLIC;
-- The dispatcher inserts holds; approve/reject (run as the worker role) decide them.
GRANT SELECT, INSERT, UPDATE ON held_manifests TO deprovision_worker;
