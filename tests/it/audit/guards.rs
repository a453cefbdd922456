//! What a hash chain alone cannot show, on both backends: rows removed from the
//! end (caught by a recorded head: `audit verify --expect-head`/`--expect-count`),
//! and append-only triggers dropped or disabled by a superuser (named by `audit
//! verify`, restored by `deprovision migrate`). Also: read-only commands never
//! create a SQLite file, and two first-ever migrations of one SQLite file at once
//! both succeed. PostgreSQL's weekly-report summary is checked against the log.

use std::process::Output;

use deprovision::audit::{AuditError, AuditStore};
use deprovision::domain::Outcome;

use super::{Raw, TestDb, entry, fresh_postgres, fresh_sqlite};

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::fresh_postgres().await).await;
                }
            )*
        }
        mod on_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::fresh_sqlite().await).await;
                }
            )*
        }
    };
}

on_both!(
    expect_head_fails_once_the_tail_is_deleted,
    a_dropped_trigger_fails_verify_and_migrate_restores_it,
);

/// `deprovision <args>` against `url`.
fn run(url: &str, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_deprovision"))
        .args(args)
        .env("DATABASE_URL", url)
        .env("NO_COLOR", "1")
        .output()
        .expect("run deprovision")
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

async fn append_n(db: &TestDb, n: usize) {
    for i in 0..n {
        db.store
            .append(&entry(&format!("E{i}"), "2026-03-02", Outcome::Deactivated))
            .await
            .expect("append");
    }
}

/// The tail is deleted by someone with the triggers out of the way, who then puts
/// them back: the chain that remains is intact, so only the recorded head shows
/// the loss, and `--expect-head` names it.
async fn expect_head_fails_once_the_tail_is_deleted(db: TestDb) {
    append_n(&db, 5).await;
    let ok = run(&db.url, &["audit", "verify"]);
    assert!(ok.status.success(), "{ok:?}");
    let head = db.store.head().await.unwrap().expect("five rows");
    assert_eq!((head.id, head.rows), (5, 5));
    let stdout = text(&ok.stdout);
    assert!(
        stdout.contains(&head.row_hash),
        "verify prints the head: {stdout}"
    );
    let recorded = run(
        &db.url,
        &["audit", "verify", "--expect-head", &head.row_hash],
    );
    assert!(recorded.status.success(), "{recorded:?}");
    assert!(text(&recorded.stdout).contains("found at row 5"));

    // On PostgreSQL a careful tamperer also trims the report summary, which
    // `audit verify` would otherwise find disagreeing with the log.
    match db.raw {
        Raw::Pg(_) => {
            db.tamper(
                "DELETE FROM scim_audit_log WHERE id >= 4; \
                 DELETE FROM scim_audit_termination WHERE termination_first_id >= 4",
            )
            .await
        }
        Raw::Sqlite(_) => db.tamper("DELETE FROM scim_audit_log WHERE id >= 4").await,
    }
    db.store.migrate().await.expect("triggers put back");
    assert_eq!(db.raw.count().await, 3);

    let plain = run(&db.url, &["audit", "verify"]);
    assert!(
        plain.status.success(),
        "without a recorded head the shortened chain looks intact: {plain:?}"
    );
    let caught = run(
        &db.url,
        &["audit", "verify", "--expect-head", &head.row_hash],
    );
    assert_eq!(caught.status.code(), Some(3), "{caught:?}");
    let stderr = text(&caught.stderr);
    assert!(
        stderr.contains(&format!(
            "the recorded head {} is no longer in the chain",
            head.row_hash
        )),
        "{stderr}"
    );
    assert!(stderr.contains("now ends at row 3"), "{stderr}");
    let counted = run(&db.url, &["audit", "verify", "--expect-count", "5"]);
    assert_eq!(counted.status.code(), Some(3), "{counted:?}");
    assert!(
        text(&counted.stderr).contains("holds 3 rows, fewer than the 5 recorded"),
        "{counted:?}"
    );
}

/// SQL that drops the append-only DELETE trigger, as a superuser could.
fn drop_delete_trigger(db: &TestDb) -> &'static str {
    match db.raw {
        Raw::Pg(_) => "DROP TRIGGER scim_audit_log_no_delete ON scim_audit_log",
        Raw::Sqlite(_) => "DROP TRIGGER scim_audit_log_no_delete",
    }
}

async fn a_dropped_trigger_fails_verify_and_migrate_restores_it(db: TestDb) {
    append_n(&db, 3).await;
    db.raw.exec(drop_delete_trigger(&db)).await.expect("drop");
    let report = db.store.verify().await.unwrap();
    assert!(report.is_intact(), "no row was touched");
    assert!(!report.passes());
    assert_eq!(
        report.guards_missing,
        ["scim_audit_log_no_delete (missing)"]
    );
    let failed = run(&db.url, &["audit", "verify"]);
    assert_eq!(failed.status.code(), Some(3), "{failed:?}");
    assert!(
        text(&failed.stderr).contains("append-only triggers missing: scim_audit_log_no_delete"),
        "{failed:?}"
    );

    let migrated = run(&db.url, &["migrate"]);
    assert!(migrated.status.success(), "{migrated:?}");
    assert!(
        text(&migrated.stdout)
            .contains("restored append-only guards: scim_audit_log_no_delete (missing)"),
        "{migrated:?}"
    );
    let again = run(&db.url, &["migrate"]);
    assert!(
        !text(&again.stdout).contains("restored"),
        "nothing left to restore: {again:?}"
    );
    let ok = run(&db.url, &["audit", "verify"]);
    assert!(ok.status.success(), "{ok:?}");
    let err = db
        .raw
        .exec("DELETE FROM scim_audit_log WHERE id = 3")
        .await
        .expect_err("DELETE is rejected again");
    assert!(err.to_string().contains("append-only"), "{err}");
    assert_eq!(db.raw.count().await, 3);
}

/// PostgreSQL only: a disabled trigger (`ALTER TABLE … DISABLE TRIGGER`) and a
/// trigger function replaced by a no-op count as missing too; start-up
/// migration (`AuditStore::migrate`) restores both.
#[tokio::test]
async fn disabled_triggers_and_a_no_op_function_are_found_and_restored() {
    let db = fresh_postgres().await;
    append_n(&db, 2).await;
    db.raw
        .exec(
            "ALTER TABLE scim_audit_log DISABLE TRIGGER scim_audit_log_no_update; \
             CREATE OR REPLACE FUNCTION scim_audit_log_reject_change() RETURNS trigger \
             LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END; $$;",
        )
        .await
        .expect("tamper with the guards");
    let report = db.store.verify().await.unwrap();
    assert_eq!(
        report.guards_missing,
        [
            "scim_audit_log_reject_change() (function body altered)",
            "scim_audit_log_no_update (disabled)"
        ]
    );
    db.store.migrate().await.expect("start-up migration");
    assert!(db.store.verify().await.unwrap().passes());
    let err = db
        .raw
        .exec("UPDATE scim_audit_log SET success = false")
        .await
        .expect_err("UPDATE is rejected again");
    assert!(err.to_string().contains("append-only: UPDATE"), "{err}");
}

/// PostgreSQL only: rows appended while the summary trigger was gone leave the
/// weekly report's summary behind; verify says so, migrate restores the trigger
/// and rebuilds the summary, and the report counts them again.
#[tokio::test]
async fn a_dropped_summary_trigger_is_restored_and_the_summary_rebuilt() {
    let db = fresh_postgres().await;
    append_n(&db, 2).await;
    db.raw
        .exec("DROP TRIGGER scim_audit_log_track_termination ON scim_audit_log")
        .await
        .expect("drop");
    append_n(&db, 3).await;
    let report = db.store.verify().await.unwrap();
    assert!(report.is_intact());
    assert_eq!(
        report.guards_missing,
        ["scim_audit_log_track_termination (missing)"]
    );
    // E0 and E1 got a second row each, E2 its first: three terminations differ.
    assert_eq!(report.summary_mismatches, 3);
    let failed = run(&db.url, &["audit", "verify"]);
    assert!(
        text(&failed.stderr).contains("disagrees with the audit log for 3 terminations"),
        "{failed:?}"
    );

    let outcome = db.store.migrate_with(false).await.expect("migrate");
    assert_eq!(
        outcome.restored,
        ["scim_audit_log_track_termination (missing)"]
    );
    assert_eq!(outcome.summary_rebuilt, Some(3));
    let report = db.store.verify().await.unwrap();
    assert!(report.passes(), "{report:?}");

    // A summary edited by hand is found; --rebuild-summary repairs it.
    db.raw
        .exec("UPDATE scim_audit_termination SET k_all = k_all - 16")
        .await
        .expect("edit the summary");
    assert_eq!(db.store.verify().await.unwrap().summary_mismatches, 3);
    let rebuilt = run(&db.url, &["migrate", "--rebuild-summary"]);
    assert!(
        text(&rebuilt.stdout).contains("rebuilt the weekly report summary (3 terminations)"),
        "{rebuilt:?}"
    );
    assert!(db.store.verify().await.unwrap().passes());
}

/// PostgreSQL only: the worker role appends through the summary trigger (which
/// runs with its owner's rights) but may only read the summary.
#[tokio::test]
async fn the_worker_role_may_read_but_not_write_the_summary() {
    let db = fresh_postgres().await;
    let Raw::Pg(pool) = &db.raw else {
        unreachable!()
    };
    for (privilege, expected) in [
        ("SELECT", true),
        ("INSERT", false),
        ("UPDATE", false),
        ("DELETE", false),
        ("TRUNCATE", false),
    ] {
        let (has,): (bool,) = sqlx::query_as(
            "SELECT has_table_privilege('deprovision_worker', 'scim_audit_termination', $1)",
        )
        .bind(privilege)
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!(has, expected, "{privilege}");
    }
}

/// A mistyped SQLite path: `report weekly`, `report evidence` and `audit verify`
/// say so and leave no file behind; `AuditStore::connect_existing` is the
/// read-only open they use.
#[tokio::test]
async fn read_only_commands_do_not_create_a_missing_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deprovison.db");
    let url = format!("sqlite://{}", path.display());
    for args in [
        &["report", "weekly"][..],
        &["report", "evidence", "--format", "csv"][..],
        &["audit", "verify"][..],
    ] {
        let out = run(&url, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains(&format!("no audit database at {}", path.display())),
            "{args:?}: {stderr}"
        );
        assert!(!path.exists(), "{args:?} created {}", path.display());
    }
    let err = AuditStore::connect_existing(&url)
        .await
        .expect_err("no such file");
    assert!(matches!(err, AuditError::NoDatabase { .. }), "{err}");
    // The commands that write still create it.
    let out = run(&url, &["migrate"]);
    assert!(out.status.success(), "{out:?}");
    let ok = run(&url, &["report", "weekly"]);
    assert!(ok.status.success(), "{ok:?}");
}

/// Two stores (two pools, as two processes would have) run the first-ever
/// migration of one new SQLite file at the same moment: both succeed, the schema
/// is there once, and both can append. Repeated on fresh files to give the race
/// its chances; then the same with two `deprovision migrate` processes, which
/// is where the WAL switch of a new file met SQLite's deadlock BUSY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_migrations_of_a_new_sqlite_file_both_succeed() {
    for round in 0..8 {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("new.db").display());
        let (a, b) = tokio::join!(
            async {
                let s = AuditStore::connect(&url).await?;
                s.migrate().await.map(|()| s)
            },
            async {
                let s = AuditStore::connect(&url).await?;
                s.migrate().await.map(|()| s)
            },
        );
        let (a, b) = (
            a.unwrap_or_else(|e| panic!("round {round}, first: {e}")),
            b.unwrap_or_else(|e| panic!("round {round}, second: {e}")),
        );
        a.append(&entry("E1", "2026-03-02", Outcome::Deactivated))
            .await
            .unwrap();
        b.append(&entry("E2", "2026-03-02", Outcome::Deactivated))
            .await
            .unwrap();
        let report = a.verify().await.unwrap();
        assert!(report.passes(), "round {round}: {report:?}");
        assert_eq!(report.rows, 2);
    }
    // Before the connect retried SQLITE_BUSY, about one pair in six failed here
    // ("database is locked" while switching the new file to WAL): 16 rounds.
    for round in 0..16 {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("new.db").display());
        let spawn = || {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_deprovision"))
                .arg("migrate")
                .env("DATABASE_URL", &url)
                .output()
        };
        let (a, b) = tokio::join!(spawn(), spawn());
        for out in [a.unwrap(), b.unwrap()] {
            assert!(out.status.success(), "round {round}: {out:?}");
        }
    }
}
