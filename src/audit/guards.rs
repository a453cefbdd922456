//! The database objects that make the audit log append-only (and, on PostgreSQL,
//! keep the weekly report's summary in step with it): their canonical SQL, the
//! check that finds them missing, disabled or altered, and their idempotent
//! restoration. Migrations create them once; a superuser can drop or disable them
//! later, and sqlx never re-runs an applied migration, so `migrate` (and start-up)
//! re-asserts them here and `audit verify` reports them. This file never touches
//! audit rows; it only reads the catalogue and (re)creates triggers, trigger
//! functions and the derived summary table.

use sqlx::{Connection, PgConnection, Row, SqliteConnection};

/// Whitespace-insensitive form of SQL text, for comparing catalogue text with the
/// canonical text (and the canonical text with the migration files).
pub(super) fn normalize(sql: &str) -> String {
    sql.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The body between the first pair of `$$` of a `CREATE FUNCTION` statement.
fn body(create: &str) -> &str {
    create.split("$$").nth(1).unwrap_or_default()
}

/// PostgreSQL: the function every append-only trigger calls
/// (migrations/postgres/0001).
pub(super) const PG_REJECT_FN: &str = r"CREATE OR REPLACE FUNCTION scim_audit_log_reject_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'scim_audit_log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'audit rows are evidence; record a correction as a new row';
END;
$$";

/// PostgreSQL: outcome → index in `Outcome::ALL` (migrations/postgres/0005).
pub(super) const PG_OUTCOME_CODE_FN: &str = r"CREATE OR REPLACE FUNCTION scim_audit_outcome_code(outcome text) RETURNS smallint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (CASE outcome WHEN 'deactivated' THEN 0 WHEN 'already_inactive' THEN 1
        WHEN 'not_found' THEN 2 WHEN 'ambiguous' THEN 3 WHEN 'identity_mismatch' THEN 4
        WHEN 'protected' THEN 5 WHEN 'invalid' THEN 6 WHEN 'forbidden' THEN 7
        WHEN 'failed' THEN 8 WHEN 'retrying' THEN 9 WHEN 'scheduled' THEN 10
        WHEN 'held' THEN 11 WHEN 'dry_run' THEN 12 WHEN 'rescinded' THEN 13 ELSE 15 END)::smallint
$$";

/// PostgreSQL: the weekly report's per-termination summary and its indexes
/// (migrations/postgres/0005 explains the columns).
pub(super) const PG_SUMMARY_TABLE: &str = r"CREATE TABLE IF NOT EXISTS scim_audit_termination (
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
GRANT SELECT ON scim_audit_termination TO deprovision_worker";

/// PostgreSQL: the summary's maintenance function, run by the trigger with its
/// owner's rights (the worker role may only read the summary).
pub(super) const PG_TRACK_FN: &str = r"CREATE OR REPLACE FUNCTION scim_audit_termination_track() RETURNS trigger
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
$$";

/// PostgreSQL: recomputes the whole summary from the log, appends blocked.
pub(super) const PG_REBUILD_FN: &str = r"CREATE OR REPLACE FUNCTION scim_audit_termination_rebuild() RETURNS bigint
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
$$";

/// One PostgreSQL trigger on `scim_audit_log` as it must be.
struct PgTrigger {
    name: &'static str,
    /// `pg_trigger.tgtype`: ROW 1, BEFORE 2, INSERT 4, DELETE 8, UPDATE 16,
    /// TRUNCATE 32.
    tgtype: i16,
    function: &'static str,
    /// Whether it has a WHEN clause.
    when: bool,
    create: &'static str,
    /// Whether it keeps the report summary (restoring it rebuilds the summary).
    summary: bool,
}

const PG_TRIGGERS: [PgTrigger; 4] = [
    PgTrigger {
        name: "scim_audit_log_no_update",
        tgtype: 1 | 2 | 16,
        function: "scim_audit_log_reject_change",
        when: false,
        create: "CREATE TRIGGER scim_audit_log_no_update BEFORE UPDATE ON scim_audit_log \
                 FOR EACH ROW EXECUTE FUNCTION scim_audit_log_reject_change()",
        summary: false,
    },
    PgTrigger {
        name: "scim_audit_log_no_delete",
        tgtype: 1 | 2 | 8,
        function: "scim_audit_log_reject_change",
        when: false,
        create: "CREATE TRIGGER scim_audit_log_no_delete BEFORE DELETE ON scim_audit_log \
                 FOR EACH ROW EXECUTE FUNCTION scim_audit_log_reject_change()",
        summary: false,
    },
    PgTrigger {
        name: "scim_audit_log_no_truncate",
        tgtype: 2 | 32,
        function: "scim_audit_log_reject_change",
        when: false,
        create: "CREATE TRIGGER scim_audit_log_no_truncate BEFORE TRUNCATE ON scim_audit_log \
                 FOR EACH STATEMENT EXECUTE FUNCTION scim_audit_log_reject_change()",
        summary: false,
    },
    PgTrigger {
        name: "scim_audit_log_track_termination",
        tgtype: 1 | 4,
        function: "scim_audit_termination_track",
        when: true,
        create: "CREATE TRIGGER scim_audit_log_track_termination AFTER INSERT ON scim_audit_log \
                 FOR EACH ROW WHEN (NEW.termination_first_id IS NOT NULL) \
                 EXECUTE FUNCTION scim_audit_termination_track()",
        summary: true,
    },
];

/// What is wrong with the guards of one database.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct GuardProblems {
    /// Human-readable, one per object: `scim_audit_log_no_delete (missing)`.
    pub(super) problems: Vec<String>,
    /// Whether the report summary is affected (its table, function or trigger).
    pub(super) summary: bool,
}

impl GuardProblems {
    fn push(&mut self, what: String, summary: bool) {
        self.problems.push(what);
        self.summary |= summary;
    }
}

/// Checks the PostgreSQL guards: each trigger present, enabled, with its timing,
/// events, function and WHEN clause; the trigger functions' bodies as shipped; the
/// summary table present.
pub(super) async fn pg_check(conn: &mut PgConnection) -> Result<GuardProblems, sqlx::Error> {
    let mut out = GuardProblems::default();
    let table: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('scim_audit_termination')::text")
            .fetch_one(&mut *conn)
            .await?;
    if table.is_none() {
        out.push("scim_audit_termination (table missing)".to_owned(), true);
    }
    for (name, create, summary) in [
        ("scim_audit_log_reject_change", PG_REJECT_FN, false),
        ("scim_audit_termination_track", PG_TRACK_FN, true),
        ("scim_audit_outcome_code", PG_OUTCOME_CODE_FN, true),
        ("scim_audit_termination_rebuild", PG_REBUILD_FN, true),
    ] {
        let src: Option<String> = sqlx::query_scalar(
            "SELECT p.prosrc FROM pg_proc AS p \
             WHERE p.proname = $1 AND p.pronamespace = ( \
               SELECT c.relnamespace FROM pg_class AS c \
               WHERE c.oid = 'scim_audit_log'::regclass) \
             ORDER BY p.oid LIMIT 1",
        )
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?;
        match src {
            None => out.push(format!("{name}() (function missing)"), summary),
            Some(s) if normalize(&s) != normalize(body(create)) => {
                out.push(format!("{name}() (function body altered)"), summary);
            }
            Some(_) => {}
        }
    }
    let rows = sqlx::query(
        "SELECT t.tgname::text AS name, t.tgtype, t.tgenabled::text AS enabled, \
           p.proname::text AS function, t.tgqual IS NOT NULL AS has_when, \
           COALESCE(array_length(t.tgattr::int2[], 1), 0) AS columns \
         FROM pg_trigger AS t JOIN pg_proc AS p ON p.oid = t.tgfoid \
         WHERE t.tgrelid = 'scim_audit_log'::regclass AND NOT t.tgisinternal",
    )
    .fetch_all(&mut *conn)
    .await?;
    for want in &PG_TRIGGERS {
        let found = rows
            .iter()
            .find(|r| r.try_get::<String, _>("name").ok().as_deref() == Some(want.name));
        let Some(r) = found else {
            out.push(format!("{} (missing)", want.name), want.summary);
            continue;
        };
        let enabled: String = r.try_get("enabled")?;
        let tgtype: i16 = r.try_get("tgtype")?;
        let function: String = r.try_get("function")?;
        let has_when: bool = r.try_get("has_when")?;
        let columns: i32 = r.try_get("columns")?;
        if enabled == "D" {
            out.push(format!("{} (disabled)", want.name), want.summary);
        } else if tgtype != want.tgtype
            || function != want.function
            || has_when != want.when
            || columns != 0
        {
            out.push(format!("{} (altered)", want.name), want.summary);
        }
    }
    Ok(out)
}

/// Restores whatever [`pg_check`] finds wrong, in one transaction on `conn` with
/// appends blocked (`SHARE ROW EXCLUSIVE` on the log, which concurrent restorers
/// also take, so they restore one after the other and the second finds nothing to
/// do). Rebuilds the summary when its trigger, function or table was restored, or
/// when `rebuild` asks. Returns what was restored and the rebuilt summary's size.
pub(super) async fn pg_restore(
    conn: &mut PgConnection,
    rebuild: bool,
) -> Result<(Vec<String>, Option<u64>), sqlx::Error> {
    if !rebuild && pg_check(&mut *conn).await?.problems.is_empty() {
        return Ok((Vec::new(), None));
    }
    let mut tx = conn.begin().await?;
    let result = pg_restore_locked(&mut tx, rebuild).await?;
    tx.commit().await?;
    Ok(result)
}

async fn pg_restore_locked(
    conn: &mut PgConnection,
    rebuild: bool,
) -> Result<(Vec<String>, Option<u64>), sqlx::Error> {
    sqlx::raw_sql("LOCK TABLE scim_audit_log IN SHARE ROW EXCLUSIVE MODE")
        .execute(&mut *conn)
        .await?;
    let found = pg_check(&mut *conn).await?;
    if !found.problems.is_empty() {
        for sql in [
            PG_REJECT_FN,
            PG_OUTCOME_CODE_FN,
            PG_SUMMARY_TABLE,
            PG_TRACK_FN,
            PG_REBUILD_FN,
        ] {
            sqlx::raw_sql(sql).execute(&mut *conn).await?;
        }
        for t in &PG_TRIGGERS {
            if found.problems.iter().any(|p| p.starts_with(t.name)) {
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "DROP TRIGGER IF EXISTS {} ON scim_audit_log",
                    t.name
                )))
                .execute(&mut *conn)
                .await?;
                sqlx::raw_sql(t.create).execute(&mut *conn).await?;
            }
        }
    }
    let rebuilt = if rebuild || found.summary {
        let n: i64 = sqlx::query_scalar("SELECT scim_audit_termination_rebuild()")
            .fetch_one(&mut *conn)
            .await?;
        Some(u64::try_from(n).unwrap_or(0))
    } else {
        None
    };
    Ok((found.problems, rebuilt))
}

/// PostgreSQL: terminations whose summary row disagrees with their audit rows
/// (or exists on one side only), and the smallest such termination id. A full
/// pass over the log: `audit verify` only. The outcome codes are spelled out
/// rather than taken from `scim_audit_outcome_code()`, which could itself have
/// been altered.
pub(super) async fn pg_summary_mismatches(
    conn: &mut PgConnection,
) -> Result<(u64, Option<i64>), sqlx::Error> {
    let (n, first): (i64, Option<i64>) = sqlx::query_as(
        "WITH r AS (SELECT termination_first_id, min(termination_first_at) AS first_at, \
             max(effective_at) AS eff, max(k) AS k_all, max(k) FILTER (WHERE term) AS k_term, \
             max(created_at) AS cmax, max(created_at) FILTER (WHERE term) AS ctmax \
           FROM (SELECT termination_first_id, termination_first_at, effective_at, created_at, \
                   id * 16 + \
                   CASE outcome WHEN 'deactivated' THEN 0 WHEN 'already_inactive' THEN 1 \
                     WHEN 'not_found' THEN 2 WHEN 'ambiguous' THEN 3 \
                     WHEN 'identity_mismatch' THEN 4 WHEN 'protected' THEN 5 \
                     WHEN 'invalid' THEN 6 WHEN 'forbidden' THEN 7 WHEN 'failed' THEN 8 \
                     WHEN 'retrying' THEN 9 WHEN 'scheduled' THEN 10 WHEN 'held' THEN 11 \
                     WHEN 'dry_run' THEN 12 WHEN 'rescinded' THEN 13 ELSE 15 END AS k, \
                   outcome NOT IN ('retrying', 'scheduled', 'held', 'dry_run') AS term \
                 FROM scim_audit_log WHERE termination_first_id IS NOT NULL) AS x \
           GROUP BY termination_first_id) \
         SELECT count(*), min(termination_first_id) \
         FROM r FULL JOIN scim_audit_termination AS s USING (termination_first_id) \
         WHERE (r.first_at, r.eff, r.k_all, r.k_term, r.cmax, r.ctmax) IS DISTINCT FROM \
           (s.first_at, s.effective_at, s.k_all, s.k_term, s.created_max, s.created_term_max)",
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok((u64::try_from(n).unwrap_or(0), first))
}

/// SQLite: the append-only triggers exactly as migrations/sqlite/0001 creates
/// them (SQLite keeps the statement text, which is what is compared).
const SQLITE_TRIGGERS: [(&str, &str); 2] = [
    (
        "scim_audit_log_no_update",
        "CREATE TRIGGER scim_audit_log_no_update BEFORE UPDATE ON scim_audit_log
BEGIN
    SELECT RAISE(ABORT, 'scim_audit_log is append-only: UPDATE is not allowed');
END",
    ),
    (
        "scim_audit_log_no_delete",
        "CREATE TRIGGER scim_audit_log_no_delete BEFORE DELETE ON scim_audit_log
BEGIN
    SELECT RAISE(ABORT, 'scim_audit_log is append-only: DELETE is not allowed');
END",
    ),
];

/// Checks the SQLite triggers: present, with the shipped text.
pub(super) async fn sqlite_check(
    conn: &mut SqliteConnection,
) -> Result<GuardProblems, sqlx::Error> {
    let rows: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'scim_audit_log'",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut out = GuardProblems::default();
    for (name, create) in SQLITE_TRIGGERS {
        match rows.iter().find(|(n, _)| n == name) {
            None => out.push(format!("{name} (missing)"), false),
            Some((_, sql)) if sql.as_deref().map(normalize) != Some(normalize(create)) => {
                out.push(format!("{name} (altered)"), false);
            }
            Some(_) => {}
        }
    }
    Ok(out)
}

/// Restores what [`sqlite_check`] finds wrong under `BEGIN IMMEDIATE` (the
/// database's write lock, so concurrent restorers go one after the other).
pub(super) async fn sqlite_restore(
    conn: &mut SqliteConnection,
) -> Result<Vec<String>, sqlx::Error> {
    if sqlite_check(&mut *conn).await?.problems.is_empty() {
        return Ok(Vec::new());
    }
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    let restored = sqlite_restore_locked(&mut tx).await?;
    tx.commit().await?;
    Ok(restored)
}

async fn sqlite_restore_locked(conn: &mut SqliteConnection) -> Result<Vec<String>, sqlx::Error> {
    let found = sqlite_check(&mut *conn).await?;
    for (name, create) in SQLITE_TRIGGERS {
        if found.problems.iter().any(|p| p.starts_with(name)) {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP TRIGGER IF EXISTS {name}"
            )))
            .execute(&mut *conn)
            .await?;
            sqlx::raw_sql(create).execute(&mut *conn).await?;
        }
    }
    Ok(found.problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PG_0001: &str = include_str!("../../migrations/postgres/0001_scim_audit_log.sql");
    const PG_0005: &str = include_str!("../../migrations/postgres/0005_termination_summary.sql");
    const SQLITE_0001: &str = include_str!("../../migrations/sqlite/0001_scim_audit_log.sql");

    #[test]
    fn canonical_sql_is_what_the_migrations_create() {
        assert!(normalize(PG_0001).contains(&normalize(body(PG_REJECT_FN))));
        for sql in [
            PG_OUTCOME_CODE_FN,
            PG_SUMMARY_TABLE,
            PG_TRACK_FN,
            PG_REBUILD_FN,
        ] {
            assert!(normalize(PG_0005).contains(&normalize(sql)), "{sql}");
        }
        for t in &PG_TRIGGERS {
            let migration = if t.summary { PG_0005 } else { PG_0001 };
            // The migrations write `FOR EACH ROW` on its own line; compare words.
            assert!(
                normalize(migration).contains(&normalize(t.create)),
                "{}",
                t.name
            );
        }
        for (_, create) in SQLITE_TRIGGERS {
            assert!(
                normalize(SQLITE_0001).contains(&normalize(create)),
                "{create}"
            );
        }
    }

    #[test]
    fn sql_outcome_codes_match_outcome_all() {
        let sql = normalize(PG_OUTCOME_CODE_FN);
        for (i, o) in crate::domain::Outcome::ALL.iter().enumerate() {
            assert!(
                sql.contains(&format!("WHEN '{}' THEN {i} ", o.as_str())),
                "{o}"
            );
        }
    }
}
