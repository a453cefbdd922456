-- Cross-process claims on a person (externalId) while a termination runs (same
-- meaning as migrations/postgres/0006). Instants are Unix milliseconds (UTC):
-- every process sharing one SQLite file shares one clock. Coordination state, not
-- evidence: rows are updated and deleted, unlike scim_audit_log.
CREATE TABLE termination_claims (
    external_id TEXT    PRIMARY KEY,
    owner       TEXT    NOT NULL,
    claimed_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
);
