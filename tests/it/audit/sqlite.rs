//! What only the SQLite backend has: the embedded default's file and in-memory
//! forms, the text form of its instants, and `deprovision migrate` creating the
//! file.

use deprovision::audit::{AuditStore, BackendKind};
use deprovision::domain::Outcome;

use super::{Raw, at, entry, fresh_sqlite};

#[tokio::test]
async fn in_memory_store_keeps_its_rows_across_calls() {
    let store = AuditStore::connect("sqlite::memory:").await.unwrap();
    assert_eq!(store.kind(), BackendKind::Sqlite);
    store.migrate().await.unwrap();
    for i in 0..3 {
        store
            .append(&entry(&format!("E{i}"), "2026-03-02", Outcome::Deactivated))
            .await
            .unwrap();
    }
    let report = store.verify().await.unwrap();
    assert_eq!(report.rows, 3);
    assert!(report.is_intact());
}

#[tokio::test]
async fn instants_are_fixed_width_utc_text() {
    let db = fresh_sqlite().await;
    db.store
        .append_at(
            &entry("E1", "2026-03-02", Outcome::Deactivated),
            at("2026-03-01T23:30:00-05:00"),
        )
        .await
        .unwrap();
    let Raw::Sqlite(pool) = &db.raw else {
        unreachable!()
    };
    let (text,): (String,) = sqlx::query_as("SELECT created_at FROM scim_audit_log")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(text, "2026-03-02T04:30:00.000Z");
    // The CHECK keeps any other form out, even from a raw writer.
    let err = db
        .raw
        .exec(
            "INSERT INTO scim_audit_log (action, success, created_at, outcome, groups_removed, \
             attempt, correlation_ids, termination_first_id, termination_first_at, prev_hash, \
             row_hash) VALUES ('deactivate', 1, '2026-03-02 04:30:00', 'deactivated', '[]', 1, \
             '[]', 9, '2026-03-02T04:30:00.000Z', \
             printf('%064d', 0), printf('%064d', 1))",
        )
        .await
        .expect_err("local-time text refused");
    assert!(err.to_string().contains("CHECK"), "{err}");
}

#[tokio::test]
async fn migrate_command_creates_the_database_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deprovision.db");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_deprovision"))
        .arg("migrate")
        .env("DATABASE_URL", format!("sqlite://{}", path.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(path.exists());
    let store = AuditStore::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    store
        .append(&entry("E1", "2026-03-02", Outcome::Deactivated))
        .await
        .expect("the migrated table accepts rows");
}

#[tokio::test]
async fn unsupported_scheme_is_refused_without_showing_the_password() {
    let err = AuditStore::connect("mysql://u:hunter2@db/audit")
        .await
        .expect_err("mysql is not a backend");
    let msg = err.to_string();
    assert!(msg.contains("not usable"), "{msg}");
    assert!(!msg.contains("hunter2"), "{msg}");
}

#[tokio::test]
async fn sqlite_url_without_a_path_is_refused_not_kept_in_memory() {
    for url in ["sqlite://", "sqlite:", "sqlite://?mode=rwc"] {
        let err = AuditStore::connect(url)
            .await
            .err()
            .unwrap_or_else(|| panic!("{url} was accepted: its evidence would vanish at exit"));
        assert!(
            err.to_string().contains("no path is refused"),
            "{url}: {err}"
        );
    }
}
