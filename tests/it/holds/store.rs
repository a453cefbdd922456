//! The holds store (`termination_holds`) on both backends, each test once on
//! PostgreSQL and once on SQLite: idempotent placement, exclusive release by
//! concurrent releasers, failed sends staying pending, cancellation, the
//! forward-only trigger, the supersession lookup, and the `rescinded` outcome in
//! the audit log; plus the worker role's rights on PostgreSQL.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};
use deprovision::audit::{AuditStore, HoldState, ManifestOrigin, ManifestRecord, NewHold};
use deprovision::domain::{ExternalId, IdempotencyKey, Outcome, TerminationDate};

use crate::audit::{Raw, TestDb, at, entry, key, pg_url_for};

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(crate::audit::fresh_postgres().await).await;
                }
            )*
        }
        mod on_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(crate::audit::fresh_sqlite().await).await;
                }
            )*
        }
    };
}

on_both!(
    placing_is_idempotent_and_pending_lists_soonest_first,
    concurrent_releasers_release_each_due_hold_exactly_once,
    a_failed_send_leaves_the_hold_pending,
    cancel_takes_only_pending_holds_and_holds_only_move_forward,
    supersession_is_a_later_rehire_or_termination_of_the_same_person,
    rescinded_rows_are_accepted_and_the_chain_verifies,
    a_rehire_leaves_a_later_dated_termination_later_in_its_own_file,
);

/// Upgrading a database that already holds audit rows (the SQLite migration
/// rebuilds the table) keeps every row, the chain and the append-only triggers.
#[tokio::test]
async fn upgrading_a_used_sqlite_database_keeps_rows_chain_and_guarantees() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("old.db").display());
    upgrade_keeps_rows(&url, "migrations/sqlite", &["0001_scim_audit_log.sql"]).await;
}

/// The same on PostgreSQL (the migration replaces the outcome CHECK).
#[tokio::test]
async fn upgrading_a_used_postgres_database_keeps_rows_chain_and_guarantees() {
    let admin = crate::support::required_env("TEST_DATABASE_URL");
    let name = format!("audit_{}", uuid::Uuid::new_v4().simple());
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
        .await
        .expect("connect");
    sqlx::Executor::execute(
        &mut conn,
        sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")),
    )
    .await
    .expect("create database");
    let url = pg_url_for(&name, None);
    upgrade_keeps_rows(
        &url,
        "migrations/postgres",
        &["0001_scim_audit_log.sql", "0002_worker_role.sql"],
    )
    .await;
}

/// Applies only `old` of `dir`'s migrations, appends rows, then the store's
/// full migration set.
async fn upgrade_keeps_rows(url: &str, dir: &str, old: &[&str]) {
    let staged = tempfile::tempdir().expect("temp dir");
    for f in old {
        std::fs::copy(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(dir)
                .join(f),
            staged.path().join(f),
        )
        .expect("copy migration");
    }
    let store = AuditStore::connect(url).await.expect("connect");
    let before = sqlx::migrate::Migrator::new(staged.path())
        .await
        .expect("old migrations");
    match url.starts_with("sqlite") {
        true => {
            let pool = sqlx::SqlitePool::connect(url).await.expect("pool");
            before.run(&pool).await.expect("old schema");
            pool.close().await;
        }
        false => {
            let pool = sqlx::PgPool::connect(url).await.expect("pool");
            before.run(&pool).await.expect("old schema");
            pool.close().await;
        }
    }
    for (i, o) in [Outcome::Deactivated, Outcome::Scheduled, Outcome::Failed]
        .into_iter()
        .enumerate()
    {
        store
            .append(&entry(&format!("U{i}"), "2026-03-01", o))
            .await
            .expect("append on the old schema");
    }
    store.migrate().await.expect("upgrade");
    store
        .append(&entry("U9", "2026-03-01", Outcome::Rescinded))
        .await
        .expect("rescinded after the upgrade");
    let report = store.verify().await.expect("verify");
    assert!(report.is_intact(), "{report:?}");
    let rows = store.termination_rows(None, None).await.expect("rows");
    let outcomes: Vec<Outcome> = rows.iter().map(|r| r.entry.outcome).collect();
    assert_eq!(
        outcomes,
        [
            Outcome::Deactivated,
            Outcome::Scheduled,
            Outcome::Failed,
            Outcome::Rescinded
        ]
    );
    store
        .place_hold(
            &new_hold("U1", "2026-04-01", at("2026-04-01T00:00:00Z")),
            at(NOW),
        )
        .await
        .expect("holds table after the upgrade");
    let raw = match url.starts_with("sqlite") {
        true => Raw::Sqlite(sqlx::SqlitePool::connect(url).await.expect("pool")),
        false => Raw::Pg(sqlx::PgPool::connect(url).await.expect("pool")),
    };
    assert!(raw.exec("DELETE FROM scim_audit_log").await.is_err());
    assert!(
        raw.exec("UPDATE scim_audit_log SET outcome = 'failed'")
            .await
            .is_err()
    );
    assert!(
        raw.exec("INSERT INTO scim_audit_log (action) VALUES ('x')")
            .await
            .is_err()
    );
    store.close().await;
}

fn new_hold(external_id: &str, date: &str, due: DateTime<Utc>) -> NewHold {
    NewHold {
        idempotency_key: key(external_id, date),
        external_id: external_id.to_owned(),
        user_id: Some(format!("user-{external_id}")),
        due_at: due,
        body: format!("{{\"v\":1,\"who\":\"{external_id}\"}}"),
        attributes: BTreeMap::from([("deprovision.signature".to_owned(), "sig".to_owned())]),
        manifest: Some(deprovision::audit::ManifestOrigin {
            bucket: "hr-drop".into(),
            key: "m.json".into(),
            version: None,
            index: Some(3),
        }),
    }
}

const NOW: &str = "2026-03-01T00:00:00Z";

/// The manifest record `index` of `key` (bucket `hr-drop`, no version).
fn origin(key: &str, index: u64) -> ManifestOrigin {
    ManifestOrigin {
        bucket: "hr-drop".into(),
        key: key.into(),
        version: None,
        index: Some(index),
    }
}

/// A rehire from a manifest of its own (`r.csv`), effective at `NOW`: only the
/// person decides which holds it withdraws.
fn rehire_elsewhere(origin: &ManifestOrigin) -> ManifestRecord<'_> {
    ManifestRecord {
        origin,
        effective_at: at(NOW),
    }
}

async fn placing_is_idempotent_and_pending_lists_soonest_first(db: TestDb) {
    let s = &db.store;
    let late = s
        .place_hold(
            &new_hold("E2", "2026-03-20", at("2026-03-20T00:00:00Z")),
            at(NOW),
        )
        .await
        .unwrap();
    assert!(late.created);
    let early = s
        .place_hold(
            &new_hold("E1", "2026-03-10", at("2026-03-10T05:00:00Z")),
            at(NOW),
        )
        .await
        .unwrap();
    let again = s
        .place_hold(
            &new_hold("E1", "2026-03-10", at("2026-03-11T00:00:00Z")),
            at("2026-03-02T00:00:00Z"),
        )
        .await
        .unwrap();
    assert!(!again.created, "same idempotency key: the stored hold wins");
    assert_eq!(again.hold, early.hold);
    assert_eq!(again.hold.due_at, at("2026-03-10T05:00:00Z"));
    assert_eq!(again.hold.state, HoldState::Pending);
    assert_eq!(again.hold.attributes["deprovision.signature"], "sig");
    assert_eq!(again.hold.manifest.as_ref().and_then(|m| m.index), Some(3));
    let pending = s.pending_holds().await.unwrap();
    let order: Vec<&str> = pending.iter().map(|h| h.external_id.as_str()).collect();
    assert_eq!(order, ["E1", "E2"]);
    assert_eq!(
        s.hold(&key("E2", "2026-03-20"))
            .await
            .unwrap()
            .map(|h| h.id),
        Some(late.hold.id)
    );
    assert!(s.hold(&key("E9", "2026-03-20")).await.unwrap().is_none());
}

async fn concurrent_releasers_release_each_due_hold_exactly_once(db: TestDb) {
    for i in 0..25 {
        // 20 due by `now` below, 5 a day later.
        let due = at(NOW) + Duration::minutes(i64::from(i)) - Duration::hours(i64::from(i < 20))
            + Duration::days(i64::from(i >= 20));
        db.store
            .place_hold(&new_hold(&format!("C{i:02}"), "2026-03-01", due), at(NOW))
            .await
            .unwrap();
    }
    let second = AuditStore::connect(&db.url).await.unwrap();
    let sent: Arc<Mutex<Vec<String>>> = Arc::default();
    let now = at(NOW);
    let releaser = |store: AuditStore, sent: Arc<Mutex<Vec<String>>>| async move {
        loop {
            let batch = store
                .release_due(now, 3, |holds| {
                    let sent = sent.clone();
                    async move {
                        // Let the other releaser run while this claim is open.
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        let mut s = sent.lock().unwrap();
                        s.extend(holds.iter().map(|h| h.external_id.clone()));
                        vec![true; holds.len()]
                    }
                })
                .await
                .unwrap();
            if batch.released.is_empty() {
                break;
            }
            assert!(
                batch
                    .released
                    .iter()
                    .all(|h| matches!(h.state, HoldState::Released(_)))
            );
        }
    };
    let (a, b) = tokio::join!(
        tokio::spawn(releaser(db.store.clone(), sent.clone())),
        tokio::spawn(releaser(second.clone(), sent.clone())),
    );
    a.unwrap();
    b.unwrap();
    let mut sent = sent.lock().unwrap().clone();
    sent.sort();
    let expected: Vec<String> = (0..20).map(|i| format!("C{i:02}")).collect();
    assert_eq!(
        sent, expected,
        "each due hold sent exactly once, none early"
    );
    let pending = db.store.pending_holds().await.unwrap();
    assert_eq!(pending.len(), 5);
    assert!(pending.iter().all(|h| h.due_at > now));
    second.close().await;
}

async fn a_failed_send_leaves_the_hold_pending(db: TestDb) {
    let s = &db.store;
    for e in ["F1", "F2"] {
        s.place_hold(
            &new_hold(e, "2026-03-01", at("2026-02-28T00:00:00Z")),
            at(NOW),
        )
        .await
        .unwrap();
    }
    let batch = s
        .release_due(at(NOW), 10, |holds| async move {
            holds.iter().map(|h| h.external_id == "F1").collect()
        })
        .await
        .unwrap();
    assert_eq!(batch.released.len(), 1);
    assert_eq!(batch.failed.len(), 1);
    assert_eq!(batch.failed[0].external_id, "F2");
    let pending = s.pending_holds().await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].external_id, "F2");
    let batch = s
        .release_due(at(NOW), 10, |holds| async move { vec![true; holds.len()] })
        .await
        .unwrap();
    assert_eq!(batch.released.len(), 1);
    assert!(s.pending_holds().await.unwrap().is_empty());
}

async fn cancel_takes_only_pending_holds_and_holds_only_move_forward(db: TestDb) {
    let s = &db.store;
    s.place_hold(
        &new_hold("R1", "2026-03-01", at("2026-02-28T00:00:00Z")),
        at(NOW),
    )
    .await
    .unwrap();
    s.release_due(at(NOW), 10, |holds| async move { vec![true; holds.len()] })
        .await
        .unwrap();
    s.place_hold(
        &new_hold("R1", "2026-04-01", at("2026-04-01T00:00:00Z")),
        at(NOW),
    )
    .await
    .unwrap();
    s.place_hold(
        &new_hold("R2", "2026-04-01", at("2026-04-01T00:00:00Z")),
        at(NOW),
    )
    .await
    .unwrap();
    let r = origin("r.csv", 0);
    let cancelled = s
        .cancel_holds(
            "R1",
            rehire_elsewhere(&r),
            "rehired by manifest hr/r.csv (record 0)",
            at(NOW),
        )
        .await
        .unwrap();
    assert_eq!(cancelled.len(), 1, "the released hold is left alone");
    assert_eq!(cancelled[0].idempotency_key, key("R1", "2026-04-01"));
    assert!(matches!(
        &cancelled[0].state,
        HoldState::Cancelled { reason, .. } if reason.contains("rehired")
    ));
    assert!(
        s.cancel_holds("R1", rehire_elsewhere(&r), "again", at(NOW))
            .await
            .unwrap()
            .is_empty()
    );
    let pending = s.pending_holds().await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].external_id, "R2");
    // A cancelled hold is never released, however late it gets.
    let batch = s
        .release_due(at("2027-01-01T00:00:00Z"), 10, |holds| async move {
            vec![true; holds.len()]
        })
        .await
        .unwrap();
    let released: Vec<&str> = batch
        .released
        .iter()
        .map(|h| h.external_id.as_str())
        .collect();
    assert_eq!(released, ["R2"]);
    // Only forward: un-releasing or rewriting what was held fails in the database.
    for sql in [
        "UPDATE termination_holds SET released_at = NULL WHERE external_id = 'R2'",
        "UPDATE termination_holds SET cancelled_at = NULL, cancel_reason = NULL WHERE external_id = 'R1' AND cancelled_at IS NOT NULL",
        "UPDATE termination_holds SET body = 'forged' WHERE external_id = 'R2'",
    ] {
        let err = db.raw.exec(sql).await.expect_err(sql);
        assert!(
            err.to_string().contains("only moves forward"),
            "{sql}: {err}"
        );
    }
}

async fn supersession_is_a_later_rehire_or_termination_of_the_same_person(db: TestDb) {
    let s = &db.store;
    // The terminations asked about come from `entry`'s manifest record.
    let m = entry("S1", "2026-03-01", Outcome::Failed)
        .manifest
        .expect("entry has a manifest");
    let t = |date: &str| ManifestRecord {
        origin: &m,
        effective_at: at(&format!("{date}T00:00:00Z")),
    };
    // An old rehire before the termination was first seen does not supersede it.
    let mut old_rehire = entry("S1", "2025-01-01", Outcome::Rescinded);
    old_rehire.action = "rehire".into();
    old_rehire.idempotency_key = Some(IdempotencyKey::derive_rehire(
        &ExternalId::parse("S1").unwrap(),
        &TerminationDate::parse("2025-01-01").unwrap(),
    ));
    s.append(&old_rehire).await.unwrap();
    s.append(&entry("S1", "2026-03-01", Outcome::Failed))
        .await
        .unwrap();
    let k = key("S1", "2026-03-01");
    assert_eq!(
        s.supersession("S1", &k, t("2026-03-01")).await.unwrap(),
        None
    );
    // A dry run of another termination does not supersede either.
    s.append(&entry("S1", "2026-03-09", Outcome::DryRun))
        .await
        .unwrap();
    assert_eq!(
        s.supersession("S1", &k, t("2026-03-01")).await.unwrap(),
        None
    );
    // Another person's rehire is irrelevant.
    let mut other = old_rehire.clone();
    other.external_id = Some("S2".into());
    s.append(&other).await.unwrap();
    assert_eq!(
        s.supersession("S1", &k, t("2026-03-01")).await.unwrap(),
        None
    );

    let mut rehire = entry("S1", "2026-03-05", Outcome::Rescinded);
    rehire.action = "rehire".into();
    rehire.idempotency_key = Some(IdempotencyKey::derive_rehire(
        &ExternalId::parse("S1").unwrap(),
        &TerminationDate::parse("2026-03-05").unwrap(),
    ));
    s.append_at(&rehire, at("2026-03-05T10:00:00Z"))
        .await
        .unwrap();
    let found = s
        .supersession("S1", &k, t("2026-03-01"))
        .await
        .unwrap()
        .expect("superseded");
    assert_eq!(found.action, "rehire");
    assert_eq!(
        found.manifest.as_deref(),
        Some("hr-drop/manifests/2026-03.json")
    );
    assert_eq!(
        found.reason(),
        "rehired by manifest hr-drop/manifests/2026-03.json at 2026-03-05T10:00:00.000Z"
    );
    // A termination never seen has nothing to be later than.
    assert_eq!(
        s.supersession("S1", &key("S1", "2026-06-01"), t("2026-06-01"))
            .await
            .unwrap(),
        None
    );

    // A later termination with another date supersedes the earlier one.
    s.append(&entry("T1", "2026-03-01", Outcome::Forbidden))
        .await
        .unwrap();
    let mut later = entry("T1", "2026-03-15", Outcome::Scheduled);
    later.effective_at = Some(at("2026-03-15T00:00:00Z"));
    s.append(&later).await.unwrap();
    let found = s
        .supersession("T1", &key("T1", "2026-03-01"), t("2026-03-01"))
        .await
        .unwrap()
        .expect("superseded");
    assert_eq!(found.action, "deactivate");
    assert!(
        found
            .reason()
            .starts_with("superseded by a later termination effective 2026-03-15T00:00:00.000Z"),
        "{}",
        found.reason()
    );
}

async fn rescinded_rows_are_accepted_and_the_chain_verifies(db: TestDb) {
    let s = &db.store;
    s.append(&entry("X1", "2026-03-01", Outcome::Scheduled))
        .await
        .unwrap();
    s.append(&entry("X1", "2026-03-01", Outcome::Rescinded))
        .await
        .unwrap();
    assert_eq!(
        s.latest_terminal_outcome(&key("X1", "2026-03-01"))
            .await
            .unwrap(),
        Some(Outcome::Rescinded)
    );
    let rows = s.termination_rows(None, None).await.unwrap();
    assert_eq!(
        rows.last().map(|r| r.entry.outcome),
        Some(Outcome::Rescinded)
    );
    assert!(s.verify().await.unwrap().is_intact());
    // Still append-only after the migration rebuilt (SQLite) or re-checked
    // (PostgreSQL) the table.
    assert!(db.raw.exec("DELETE FROM scim_audit_log").await.is_err());
    assert!(
        db.raw
            .exec("UPDATE scim_audit_log SET outcome = 'failed'")
            .await
            .is_err()
    );
}

/// The worker role may create, read and move holds forward, but not delete them
/// (and the audit log stays INSERT/SELECT).
#[tokio::test]
async fn the_worker_role_places_releases_and_cancels_but_cannot_delete_holds() {
    let db = crate::audit::fresh_postgres().await;
    let user = format!("w_{}", uuid::Uuid::new_v4().simple());
    db.raw
        .exec(&format!(
            "CREATE ROLE {user} LOGIN IN ROLE deprovision_worker"
        ))
        .await
        .expect("create a worker login");
    let url = pg_url_for(db.db_name.as_deref().expect("postgres"), Some(&user));
    let worker = AuditStore::connect(&url).await.expect("connect as worker");
    worker
        .place_hold(
            &new_hold("W1", "2026-03-01", at("2026-02-28T00:00:00Z")),
            at(NOW),
        )
        .await
        .expect("worker places a hold");
    worker
        .place_hold(
            &new_hold("W2", "2026-04-01", at("2026-04-01T00:00:00Z")),
            at(NOW),
        )
        .await
        .expect("worker places a hold");
    let batch = worker
        .release_due(at(NOW), 10, |holds| async move { vec![true; holds.len()] })
        .await
        .expect("worker releases");
    assert_eq!(batch.released.len(), 1);
    assert_eq!(
        worker
            .cancel_holds(
                "W2",
                rehire_elsewhere(&origin("r.csv", 0)),
                "rehired",
                at(NOW)
            )
            .await
            .expect("worker cancels")
            .len(),
        1
    );
    let Raw::Pg(_) = &db.raw else { unreachable!() };
    let worker_raw = sqlx::PgPool::connect(&url).await.unwrap();
    let err = sqlx::query("DELETE FROM termination_holds")
        .execute(&worker_raw)
        .await
        .expect_err("worker must not delete holds");
    assert!(err.to_string().contains("permission denied"), "{err}");
    worker.close().await;
}

/// A manifest that rehires someone (record 4, effective 04-05) and later in the
/// file terminates them again after that date (record 5, effective 04-10): the
/// termination stands, whichever message is handled first. The rehire still
/// withdraws what comes earlier in its file, what is dated on or before it, and
/// what other manifests hold; and a rehire earlier in the file does not count as
/// superseding the later termination once that one has been seen.
async fn a_rehire_leaves_a_later_dated_termination_later_in_its_own_file(db: TestDb) {
    let s = &db.store;
    let hold = |date: &str, origin: ManifestOrigin| NewHold {
        manifest: Some(origin),
        ..new_hold("P1", date, at(&format!("{date}T00:00:00Z")))
    };
    for (date, o) in [
        ("2026-04-01", origin("m.json", 3)),
        ("2026-04-10", origin("m.json", 5)),
        ("2026-04-05", origin("m.json", 6)),
        ("2026-04-20", origin("other.json", 9)),
    ] {
        s.place_hold(&hold(date, o), at(NOW)).await.unwrap();
    }
    let r = origin("m.json", 4);
    let rehire = ManifestRecord {
        origin: &r,
        effective_at: at("2026-04-05T00:00:00Z"),
    };
    let mut cancelled: Vec<_> = s
        .cancel_holds(
            "P1",
            rehire,
            "rehired by manifest hr-drop/m.json (record 4)",
            at(NOW),
        )
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.idempotency_key)
        .collect();
    cancelled.sort();
    let mut expected = vec![
        key("P1", "2026-04-01"),
        key("P1", "2026-04-05"),
        key("P1", "2026-04-20"),
    ];
    expected.sort();
    assert_eq!(cancelled, expected);
    let pending = s.pending_holds().await.unwrap();
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0].idempotency_key, key("P1", "2026-04-10"));

    // The audit side: the termination (record 5) was seen, then the rehire
    // (record 4) was recorded; it does not supersede the termination.
    let t_origin = origin("m.json", 5);
    let termination = ManifestRecord {
        origin: &t_origin,
        effective_at: at("2026-04-10T00:00:00Z"),
    };
    let mut seen = entry("P1", "2026-04-10", Outcome::Scheduled);
    seen.manifest = Some(t_origin.clone());
    seen.effective_at = Some(termination.effective_at);
    s.append(&seen).await.unwrap();
    let mut rehired = entry("P1", "2026-04-05", Outcome::Rescinded);
    rehired.action = "rehire".into();
    rehired.manifest = Some(r.clone());
    rehired.effective_at = Some(rehire.effective_at);
    rehired.idempotency_key = Some(IdempotencyKey::derive_rehire(
        &ExternalId::parse("P1").unwrap(),
        &TerminationDate::parse("2026-04-05").unwrap(),
    ));
    s.append(&rehired).await.unwrap();
    let k = key("P1", "2026-04-10");
    assert_eq!(s.supersession("P1", &k, termination).await.unwrap(), None);
    assert_eq!(s.rehired_since("P1", termination).await.unwrap(), None);

    // The same rehire from another manifest withdraws it.
    let mut elsewhere = rehired.clone();
    elsewhere.manifest = Some(origin("later.json", 0));
    s.append(&elsewhere).await.unwrap();
    let found = s
        .supersession("P1", &k, termination)
        .await
        .unwrap()
        .expect("superseded by the other manifest's rehire");
    assert_eq!(found.action, "rehire");
    assert_eq!(found.manifest.as_deref(), Some("hr-drop/later.json"));
}
