-- The least-privilege role the worker runs as: it may append and read audit rows
-- and nothing else (no UPDATE, DELETE, TRUNCATE, no DDL). NOLOGIN: grant it to a
-- login user, e.g.
--   CREATE ROLE deprovision_app LOGIN PASSWORD '…' IN ROLE deprovision_worker;
-- Roles are cluster-wide, so creation tolerates an existing role (and a concurrent
-- creation by another database's migration); grants are per database.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'deprovision_worker') THEN
        CREATE ROLE deprovision_worker NOLOGIN;
    END IF;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN NULL;
END;
$$;

REVOKE ALL ON scim_audit_log FROM PUBLIC;
GRANT SELECT, INSERT ON scim_audit_log TO deprovision_worker;
-- nextval() for the row id, taken under the chain lock.
GRANT USAGE ON SEQUENCE scim_audit_log_id_seq TO deprovision_worker;
