//! The behaviour both backends must share, each test run once on PostgreSQL and
//! once on SQLite (`on_postgres::…`, `on_sqlite::…`).

use std::collections::HashSet;

use deprovision::audit::{AuditError, BreakReason};
use deprovision::domain::{Credential, Outcome};

use super::{TestDb, at, entry, key};

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::super::fresh_postgres().await).await;
                }
            )*
        }
        mod on_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::super::fresh_sqlite().await).await;
                }
            )*
        }
    };
}

conformance!(
    appends_chain_and_verify,
    migrate_is_idempotent,
    latest_terminal_outcome_ignores_non_terminal_rows,
    update_and_delete_are_rejected_by_the_database,
    concurrent_writers_never_fork_the_chain,
    an_edited_row_is_named_by_verify,
    a_removed_row_is_named_by_verify,
    rows_round_trip_exactly,
    a_failed_write_is_an_error_and_writes_nothing,
);

async fn appends_chain_and_verify(db: TestDb) {
    let empty = db.store.verify().await.unwrap();
    assert!(empty.is_intact());
    assert_eq!(empty.rows, 0);
    let mut ids = Vec::new();
    for (i, o) in [Outcome::Retrying, Outcome::Deactivated, Outcome::NotFound]
        .into_iter()
        .enumerate()
    {
        ids.push(
            db.store
                .append(&entry(&format!("E{i}"), "2026-03-02", o))
                .await
                .unwrap(),
        );
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let report = db.store.verify().await.unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.rows, 3);
    assert_eq!(report.head.as_ref().map(|h| h.0), ids.last().copied());
    assert_eq!(db.raw.count().await, 3);
}

async fn migrate_is_idempotent(db: TestDb) {
    db.store
        .append(&entry("E1", "2026-03-02", Outcome::Deactivated))
        .await
        .unwrap();
    db.store.migrate().await.unwrap();
    db.store.migrate().await.unwrap();
    assert_eq!(db.raw.count().await, 1);
}

async fn latest_terminal_outcome_ignores_non_terminal_rows(db: TestDb) {
    let k = key("E1", "2026-03-02");
    assert_eq!(db.store.latest_terminal_outcome(&k).await.unwrap(), None);
    db.store
        .append(&entry("E1", "2026-03-02", Outcome::Retrying))
        .await
        .unwrap();
    assert_eq!(db.store.latest_terminal_outcome(&k).await.unwrap(), None);
    db.store
        .append(&entry("E1", "2026-03-02", Outcome::Deactivated))
        .await
        .unwrap();
    db.store
        .append(&entry("E1", "2026-03-02", Outcome::DryRun))
        .await
        .unwrap();
    assert_eq!(
        db.store.latest_terminal_outcome(&k).await.unwrap(),
        Some(Outcome::Deactivated)
    );
    // The same person terminated on another date is another termination.
    let other = key("E1", "2026-03-03");
    assert_eq!(
        db.store.latest_terminal_outcome(&other).await.unwrap(),
        None
    );
}

async fn update_and_delete_are_rejected_by_the_database(db: TestDb) {
    db.store
        .append(&entry("E1", "2026-03-02", Outcome::Failed))
        .await
        .unwrap();
    for sql in [
        "UPDATE scim_audit_log SET success = true",
        "DELETE FROM scim_audit_log WHERE id = 1",
        "DELETE FROM scim_audit_log",
    ] {
        let err = db.raw.exec(sql).await.expect_err(sql).to_string();
        assert!(err.contains("append-only"), "{sql}: {err}");
    }
    assert_eq!(db.raw.count().await, 1);
    assert!(db.store.verify().await.unwrap().is_intact());
}

async fn concurrent_writers_never_fork_the_chain(db: TestDb) {
    let writers = 8;
    let per_writer = 25;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = db.store.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..per_writer {
                let e = entry(&format!("W{w}-{i}"), "2026-03-02", Outcome::Deactivated);
                ids.push(store.append(&e).await.unwrap());
            }
            ids
        }));
    }
    let mut all = HashSet::new();
    for t in tasks {
        for id in t.await.unwrap() {
            assert!(all.insert(id), "id {id} returned twice");
        }
    }
    assert_eq!(all.len(), writers * per_writer);
    let report = db.store.verify().await.unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.rows, (writers * per_writer) as u64);
}

async fn an_edited_row_is_named_by_verify(db: TestDb) {
    for i in 0..5 {
        db.store
            .append(&entry(&format!("E{i}"), "2026-03-02", Outcome::Failed))
            .await
            .unwrap();
    }
    db.tamper(
        "UPDATE scim_audit_log SET outcome = 'deactivated', error_message = NULL WHERE id = 3",
    )
    .await;
    let report = db.store.verify().await.unwrap();
    assert!(!report.is_intact());
    assert_eq!(report.broken_total, 1, "{report:?}");
    let first = report.first_broken().unwrap();
    assert_eq!(first.id, 3);
    assert!(
        matches!(first.reason, BreakReason::ContentHashMismatch { .. }),
        "{first:?}"
    );
}

async fn a_removed_row_is_named_by_verify(db: TestDb) {
    for i in 0..5 {
        db.store
            .append(&entry(&format!("E{i}"), "2026-03-02", Outcome::Deactivated))
            .await
            .unwrap();
    }
    db.tamper("DELETE FROM scim_audit_log WHERE id = 2").await;
    let report = db.store.verify().await.unwrap();
    let first = report.first_broken().expect("a break");
    assert_eq!(first.id, 3, "{report:?}");
    assert!(matches!(first.reason, BreakReason::PrevHashMismatch { .. }));
}

async fn rows_round_trip_exactly(db: TestDb) {
    let mut e = entry("E1", "2026-03-02", Outcome::Deactivated);
    e.external_id = Some("Émile \"O'Neil\"\0".to_owned());
    e.credential = Some(Credential::Elevated);
    e.groups_removed = vec!["g-1".into(), "g-2".into()];
    e.correlation_ids = vec!["c-1".into(), "c-2".into(), "c-3".into()];
    e.attempt = 3;
    e.duration_ms = Some(u64::MAX);
    e.effective_at = Some(at("2026-03-02T05:00:00.123456789Z"));
    e.actor = Some("ops@example.com".into());
    let created = at("2026-03-02T06:07:08.999999Z");
    let id = db.store.append_at(&e, created).await.unwrap();
    let rows = db.store.termination_rows(None, None).await.unwrap();
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(r.id, id);
    assert_eq!(r.created_at, at("2026-03-02T06:07:08.999Z"));
    assert_eq!(
        r.entry.external_id.as_deref(),
        Some("Émile \"O'Neil\"\u{FFFD}")
    );
    assert_eq!(r.entry.credential, Some(Credential::Elevated));
    assert_eq!(r.entry.groups_removed, e.groups_removed);
    assert_eq!(r.entry.correlation_ids, e.correlation_ids);
    assert_eq!(r.entry.attempt, 3);
    assert_eq!(r.entry.duration_ms, Some(i64::MAX as u64));
    assert_eq!(r.entry.effective_at, Some(at("2026-03-02T05:00:00.123Z")));
    assert_eq!(r.entry.manifest, e.manifest);
    assert_eq!(r.entry.idempotency_key, e.idempotency_key);
    assert_eq!(r.entry.actor, e.actor);
    assert_eq!(r.entry.status_code, Some(204));
    assert!(db.store.verify().await.unwrap().is_intact());
}

async fn a_failed_write_is_an_error_and_writes_nothing(db: TestDb) {
    db.store
        .append(&entry("E0", "2026-03-02", Outcome::Deactivated))
        .await
        .unwrap();
    db.break_inserts().await;
    let err = db
        .store
        .append(&entry("E1", "2026-03-02", Outcome::Deactivated))
        .await
        .expect_err("the insert trigger refuses");
    assert!(matches!(err, AuditError::Append { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("\"E1\"") && msg.contains("injected"), "{msg}");
    assert_eq!(db.raw.count().await, 1);
    assert_eq!(
        db.store
            .latest_terminal_outcome(&key("E1", "2026-03-02"))
            .await
            .unwrap(),
        None,
        "a failed write must not count as done"
    );
    db.heal_inserts().await;
    db.store
        .append(&entry("E1", "2026-03-02", Outcome::Deactivated))
        .await
        .unwrap();
    assert!(db.store.verify().await.unwrap().is_intact());
}
