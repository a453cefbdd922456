//! What only PostgreSQL has: the least-privilege worker role, TRUNCATE, the
//! session TimeZone of the writer, and `deprovision audit verify` run as a process
//! against a superuser's edit.

use deprovision::audit::AuditStore;
use deprovision::audit::chain::{GENESIS_HASH, RowContent};
use deprovision::domain::Outcome;
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection};

use super::{Raw, at, entry, fresh_postgres, pg_url_for};

/// A login role that is a member of `deprovision_worker`, as the README tells
/// operators to create; returns a URL that connects as it.
async fn worker_login(db: &super::TestDb) -> String {
    let user = format!("w_{}", uuid::Uuid::new_v4().simple());
    db.raw
        .exec(&format!(
            "CREATE ROLE {user} LOGIN IN ROLE deprovision_worker"
        ))
        .await
        .expect("create a worker login");
    pg_url_for(db.db_name.as_deref().expect("postgres"), Some(&user))
}

#[tokio::test]
async fn worker_role_is_nologin_with_insert_and_select_only() {
    let db = fresh_postgres().await;
    let Raw::Pg(pool) = &db.raw else {
        unreachable!()
    };
    let (login,): (bool,) =
        sqlx::query_as("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'deprovision_worker'")
            .fetch_one(pool)
            .await
            .unwrap();
    assert!(!login, "deprovision_worker must be NOLOGIN");
    for (privilege, expected) in [
        ("SELECT", true),
        ("INSERT", true),
        ("UPDATE", false),
        ("DELETE", false),
        ("TRUNCATE", false),
        ("REFERENCES", false),
        ("TRIGGER", false),
    ] {
        let (has,): (bool,) = sqlx::query_as(
            "SELECT has_table_privilege('deprovision_worker', 'scim_audit_log', $1)",
        )
        .bind(privilege)
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!(has, expected, "{privilege}");
    }
}

#[tokio::test]
async fn as_the_worker_role_insert_works_and_update_delete_truncate_fail() {
    let db = fresh_postgres().await;
    let url = worker_login(&db).await;
    let store = AuditStore::connect(&url).await.expect("worker connects");
    let id = store
        .append(&entry("E1", "2026-03-02", Outcome::Deactivated))
        .await
        .expect("the worker may append (chain lock and sequence included)");
    assert_eq!(
        store
            .latest_terminal_outcome(&super::key("E1", "2026-03-02"))
            .await
            .unwrap(),
        Some(Outcome::Deactivated)
    );
    assert!(store.verify().await.unwrap().is_intact());

    let mut conn = PgConnection::connect(&url).await.unwrap();
    for sql in [
        format!("UPDATE scim_audit_log SET success = false WHERE id = {id}"),
        format!("DELETE FROM scim_audit_log WHERE id = {id}"),
        "TRUNCATE scim_audit_log".to_owned(),
        "DROP TABLE scim_audit_log".to_owned(),
        "ALTER TABLE scim_audit_log DISABLE TRIGGER ALL".to_owned(),
    ] {
        let err = conn
            .execute(AssertSqlSafe(sql.clone()))
            .await
            .expect_err(&sql)
            .to_string();
        assert!(
            err.contains("permission denied") || err.contains("must be owner"),
            "{sql}: {err}"
        );
    }
    assert_eq!(db.raw.count().await, 1);
}

#[tokio::test]
async fn truncate_is_rejected_even_for_the_owner() {
    let db = fresh_postgres().await;
    db.store
        .append(&entry("E1", "2026-03-02", Outcome::Deactivated))
        .await
        .unwrap();
    let err = db
        .raw
        .exec("TRUNCATE scim_audit_log")
        .await
        .expect_err("statement trigger")
        .to_string();
    assert!(err.contains("append-only: TRUNCATE"), "{err}");
    assert_eq!(db.raw.count().await, 1);
}

/// sqlx always starts its sessions with `TimeZone=UTC`, so the store's own
/// sessions cannot be put in another zone; this test therefore writes one chained
/// row the way the store does (a `DateTime<Utc>` bound to `created_at`) from a raw
/// session after `SET TimeZone = 'America/Los_Angeles'`, then reads it back in UTC.
/// Had `created_at` been `timestamp` without zone (the seed's mistake), PostgreSQL
/// would store Los Angeles wall time and both the instant and the hash would differ.
#[tokio::test]
async fn the_stored_instant_does_not_depend_on_the_writer_session_timezone() {
    let db = fresh_postgres().await;
    let instant = at("2026-03-02T04:30:00Z");
    let mut e = entry("E1", "2026-03-02", Outcome::Deactivated);
    e.effective_at = Some(at("2026-03-02T05:00:00Z"));

    let mut la = PgConnection::connect(&db.url).await.unwrap();
    la.execute("SET TimeZone = 'America/Los_Angeles'")
        .await
        .unwrap();
    let (zone,): (String,) = sqlx::query_as("SHOW TimeZone")
        .fetch_one(&mut la)
        .await
        .unwrap();
    assert_eq!(zone, "America/Los_Angeles");
    let (id,): (i64,) = sqlx::query_as("SELECT nextval('scim_audit_log_id_seq')")
        .fetch_one(&mut la)
        .await
        .unwrap();
    let c = RowContent::from_entry(&e, id, instant, None);
    let row_hash = c.hash(GENESIS_HASH);
    sqlx::query(
        "INSERT INTO scim_audit_log (id, external_id, user_id, action, status_code, success, \
           error_message, created_at, outcome, credential, groups_removed, attempt, \
           sqs_message_id, manifest_bucket, manifest_key, manifest_version, manifest_index, \
           effective_at, correlation_ids, duration_ms, idempotency_key, actor, \
           termination_first_id, termination_first_at, prev_hash, row_hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
           $18, $19, $20, $21, $22, $23, $24, $25, $26)",
    )
    .bind(id)
    .bind(&c.external_id)
    .bind(&c.user_id)
    .bind(&c.action)
    .bind(c.status_code.map(|s| s as i32))
    .bind(c.success)
    .bind(&c.error_message)
    .bind(instant)
    .bind(&c.outcome)
    .bind(&c.credential)
    .bind(Json(&c.groups_removed))
    .bind(c.attempt)
    .bind(&c.sqs_message_id)
    .bind(&c.manifest_bucket)
    .bind(&c.manifest_key)
    .bind(&c.manifest_version)
    .bind(c.manifest_index)
    .bind(e.effective_at)
    .bind(Json(&c.correlation_ids))
    .bind(c.duration_ms)
    .bind(&c.idempotency_key)
    .bind(&c.actor)
    .bind(id)
    .bind(instant)
    .bind(GENESIS_HASH)
    .bind(&row_hash)
    .execute(&mut la)
    .await
    .unwrap();
    // The LA session shows LA wall time for the same instant.
    let (la_local,): (String,) =
        sqlx::query_as("SELECT to_char(created_at, 'YYYY-MM-DD HH24:MI') FROM scim_audit_log")
            .fetch_one(&mut la)
            .await
            .unwrap();
    assert_eq!(la_local, "2026-03-01 20:30");

    // The store (UTC) then appends after it, and reads both back.
    let next = db
        .store
        .append_at(&entry("E2", "2026-03-02", Outcome::Deactivated), instant)
        .await
        .unwrap();
    let Raw::Pg(pool) = &db.raw else {
        unreachable!()
    };
    let utc_text: Vec<(String,)> = sqlx::query_as(
        "SELECT to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS') \
         FROM scim_audit_log ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(
        utc_text,
        [
            ("2026-03-02T04:30:00".to_owned(),),
            ("2026-03-02T04:30:00".to_owned(),)
        ]
    );
    let rows = db.store.termination_rows(None, None).await.unwrap();
    assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), [id, next]);
    assert!(rows.iter().all(|r| r.created_at == instant));
    assert_eq!(rows[0].entry.effective_at, e.effective_at);
    let report = db.store.verify().await.unwrap();
    assert!(
        report.is_intact(),
        "the LA-written row hashes the same in UTC: {report:?}"
    );
}

#[tokio::test]
async fn audit_verify_command_names_a_superuser_edit_and_exits_non_zero() {
    let db = fresh_postgres().await;
    for i in 0..4 {
        db.store
            .append(&entry(&format!("E{i}"), "2026-03-02", Outcome::Deactivated))
            .await
            .unwrap();
    }
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_deprovision"))
            .args(["audit", "verify"])
            .env("DATABASE_URL", &db.url)
            .env("NO_COLOR", "1")
            .output()
            .expect("run deprovision")
    };
    let ok = run();
    assert!(ok.status.success(), "{ok:?}");
    assert!(String::from_utf8_lossy(&ok.stdout).contains("4 rows checked"));

    db.tamper("UPDATE scim_audit_log SET user_id = 'someone-else' WHERE id = 2")
        .await;
    let broken = run();
    assert_eq!(broken.status.code(), Some(3), "{broken:?}");
    let stdout = String::from_utf8_lossy(&broken.stdout);
    assert!(stdout.contains("BROKEN row 2:"), "{stdout}");
    assert!(!stdout.contains("BROKEN row 3"), "{stdout}");
    let stderr = String::from_utf8_lossy(&broken.stderr);
    assert!(stderr.contains("first broken row is 2"), "{stderr}");
}
