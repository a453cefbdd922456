-- Manifests held whole by the mass-deactivation breaker (same table as
-- migrations/postgres/0004). Working state, not evidence: a row moves
-- held → approved | rejected once; the audit log records each move and who made
-- it. Instants are UTC RFC 3339 text with three fractional digits and Z.
CREATE TABLE held_manifests (
    manifest_id   TEXT    PRIMARY KEY CHECK (length(manifest_id) = 16 AND manifest_id NOT GLOB '*[^0-9a-f]*'),
    bucket        TEXT    NOT NULL,
    key           TEXT    NOT NULL,
    version_id    TEXT,
    etag          TEXT,
    sha256        TEXT    NOT NULL CHECK (length(sha256) = 64 AND sha256 NOT GLOB '*[^0-9a-f]*'),
    terminations  INTEGER NOT NULL CHECK (terminations >= 0),
    active_users  INTEGER CHECK (active_users >= 0),
    reason        TEXT    NOT NULL,
    state         TEXT    NOT NULL DEFAULT 'held'
                          CHECK (state IN ('held', 'approved', 'rejected')),
    held_at       TEXT    NOT NULL,
    decided_by    TEXT,
    decided_at    TEXT,
    CHECK ((state = 'held') = (decided_at IS NULL))
);
