-- Cross-process claims on a person (externalId) while a termination runs: two
-- service instances, or an instance and `deprovision user`, never work on the
-- same person at once. A claim is a lease: a crashed holder's claim lapses at
-- expires_at and the next worker takes it over. This table is coordination state,
-- not evidence: rows are updated and deleted, unlike scim_audit_log.
CREATE TABLE termination_claims (
    external_id TEXT        PRIMARY KEY,
    owner       TEXT        NOT NULL,
    claimed_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);

REVOKE ALL ON termination_claims FROM PUBLIC;
-- Take (INSERT … ON CONFLICT DO UPDATE), inspect, and release (DELETE) claims;
-- nothing else, and nothing more on the audit table.
GRANT SELECT, INSERT, UPDATE, DELETE ON termination_claims TO deprovision_worker;
