//! The audit store against real databases: one conformance suite run on
//! PostgreSQL (`$TEST_DATABASE_URL`, a fresh database per test) and on SQLite (a
//! file in a fresh temporary directory per test), plus what only one backend has
//! (the worker role, session TimeZone, TRUNCATE), and what a chain cannot show
//! alone (`guards`: a removed tail, dropped triggers). Helpers here are shared
//! with `report`.

mod conformance;
mod guards;
mod postgres;
mod sqlite;

use chrono::{DateTime, Utc};
use deprovision::audit::{AuditEntry, AuditStore, ManifestOrigin};
use deprovision::domain::{Credential, ExternalId, IdempotencyKey, Outcome, TerminationDate};
use sqlx::{AssertSqlSafe, Connection, Executor, PgPool, SqlitePool};

use crate::support::required_env;

/// A raw connection pool beside the store, to do what the store never does.
pub enum Raw {
    Pg(PgPool),
    Sqlite(SqlitePool),
}

/// One test's own database: the store under test and a raw pool on the same data.
pub struct TestDb {
    pub store: AuditStore,
    pub raw: Raw,
    /// The URL the store was opened with (the superuser for PostgreSQL).
    pub url: String,
    /// PostgreSQL: the database name (to build other roles' URLs).
    pub db_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

/// `$TEST_DATABASE_URL` with its database replaced by `db`.
pub fn pg_url_for(db: &str, user: Option<&str>) -> String {
    let admin = required_env("TEST_DATABASE_URL");
    let mut url = url::Url::parse(&admin).expect("TEST_DATABASE_URL is a URL");
    url.set_path(&format!("/{db}"));
    if let Some(user) = user {
        url.set_username(user).expect("URL has a host");
        let _ = url.set_password(None);
    }
    url.to_string()
}

/// A fresh PostgreSQL database, migrated, with the store connected as superuser.
pub async fn fresh_postgres() -> TestDb {
    let admin = required_env("TEST_DATABASE_URL");
    let name = format!("audit_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("connect to TEST_DATABASE_URL");
    conn.execute(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .expect("create the test database");
    conn.close().await.ok();
    let url = pg_url_for(&name, None);
    let store = AuditStore::connect(&url).await.expect("connect the store");
    store.migrate().await.expect("migrate");
    let raw = Raw::Pg(PgPool::connect(&url).await.expect("raw pool"));
    TestDb {
        store,
        raw,
        url,
        db_name: Some(name),
        _dir: None,
    }
}

/// A fresh SQLite file database in its own temporary directory, migrated.
pub async fn fresh_sqlite() -> TestDb {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("audit.db").display());
    let store = AuditStore::connect(&url).await.expect("connect the store");
    store.migrate().await.expect("migrate");
    let raw = Raw::Sqlite(SqlitePool::connect(&url).await.expect("raw pool"));
    TestDb {
        store,
        raw,
        url,
        db_name: None,
        _dir: Some(dir),
    }
}

impl Raw {
    /// Runs `sql` (one or more statements) on one connection, so session settings
    /// made by earlier statements apply to later ones.
    pub async fn exec(&self, sql: &str) -> Result<(), sqlx::Error> {
        match self {
            Raw::Pg(p) => {
                let mut c = p.acquire().await?;
                sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
                    .execute(&mut *c)
                    .await?;
            }
            Raw::Sqlite(p) => {
                let mut c = p.acquire().await?;
                sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
                    .execute(&mut *c)
                    .await?;
            }
        }
        Ok(())
    }

    /// `SELECT count(*) FROM scim_audit_log`.
    pub async fn count(&self) -> i64 {
        let q = "SELECT count(*) FROM scim_audit_log";
        match self {
            Raw::Pg(p) => sqlx::query_scalar(q).fetch_one(p).await,
            Raw::Sqlite(p) => sqlx::query_scalar(q).fetch_one(p).await,
        }
        .expect("count rows")
    }
}

impl TestDb {
    /// Runs `sql` the way an attacker with the owner's or superuser's rights would:
    /// with the append-only triggers out of the way (PostgreSQL:
    /// `session_replication_role = replica`; SQLite: the triggers dropped).
    pub async fn tamper(&self, sql: &str) {
        let wrapped = match self.raw {
            Raw::Pg(_) => format!(
                "SET session_replication_role = replica; {sql}; RESET session_replication_role;"
            ),
            Raw::Sqlite(_) => format!(
                "DROP TRIGGER IF EXISTS scim_audit_log_no_update; \
                 DROP TRIGGER IF EXISTS scim_audit_log_no_delete; {sql};"
            ),
        };
        self.raw.exec(&wrapped).await.expect("tamper");
    }

    /// Makes every INSERT fail (a stand-in for a lost or refusing database).
    pub async fn break_inserts(&self) {
        let sql = match self.raw {
            Raw::Pg(_) => {
                "CREATE FUNCTION fail_insert() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN RAISE EXCEPTION 'injected audit write failure'; END $$; \
                 CREATE TRIGGER fail_insert BEFORE INSERT ON scim_audit_log \
                 FOR EACH ROW EXECUTE FUNCTION fail_insert();"
            }
            Raw::Sqlite(_) => {
                "CREATE TRIGGER fail_insert BEFORE INSERT ON scim_audit_log \
                 BEGIN SELECT RAISE(ABORT, 'injected audit write failure'); END;"
            }
        };
        self.raw.exec(sql).await.expect("install failing trigger");
    }

    /// Undoes [`TestDb::break_inserts`].
    pub async fn heal_inserts(&self) {
        let sql = match self.raw {
            Raw::Pg(_) => "DROP TRIGGER fail_insert ON scim_audit_log",
            Raw::Sqlite(_) => "DROP TRIGGER fail_insert",
        };
        self.raw.exec(sql).await.expect("drop failing trigger");
    }
}

/// Parses an RFC 3339 instant.
pub fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("test instant")
        .with_timezone(&Utc)
}

/// The idempotency key of (`external_id`, `date`).
pub fn key(external_id: &str, date: &str) -> IdempotencyKey {
    IdempotencyKey::derive(
        &ExternalId::parse(external_id).expect("externalId"),
        &TerminationDate::parse(date).expect("date"),
    )
}

/// A termination row for `external_id` terminated on `date` with `outcome`.
pub fn entry(external_id: &str, date: &str, outcome: Outcome) -> AuditEntry {
    AuditEntry {
        external_id: Some(external_id.to_owned()),
        user_id: outcome.is_success().then(|| format!("user-{external_id}")),
        action: "deactivate".to_owned(),
        status_code: outcome.is_success().then_some(204),
        success: outcome.is_success(),
        error_message: (!outcome.is_success()).then(|| format!("{outcome} for {external_id}")),
        outcome,
        credential: outcome.is_success().then_some(Credential::Primary),
        groups_removed: Vec::new(),
        attempt: 1,
        sqs_message_id: Some(format!("msg-{external_id}")),
        manifest: Some(ManifestOrigin {
            bucket: "hr-drop".to_owned(),
            key: "manifests/2026-03.json".to_owned(),
            version: Some("v1".to_owned()),
            index: Some(0),
        }),
        effective_at: None,
        correlation_ids: Vec::new(),
        duration_ms: Some(120),
        idempotency_key: Some(key(external_id, date)),
        actor: None,
    }
}
