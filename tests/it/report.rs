//! The weekly report and the evidence export over a fixed audit history, on both
//! backends: golden files for the weekly JSON and CSV (`tests/it/golden/`; rewrite
//! them with `UPDATE_GOLDEN=1` after a deliberate change; both end with the chain
//! head), week boundaries in a time zone, the as-of instant, and the SVG chart.

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use deprovision::audit::{AuditEntry, AuditStore};
use deprovision::domain::Outcome;
use deprovision::report::{self, ReportError};

use crate::audit::{TestDb, at, entry, fresh_postgres, fresh_sqlite};

/// "Now" for every report here: Thursday of ISO week 2026-W11.
fn now() -> DateTime<Utc> {
    at("2026-03-12T12:00:00Z")
}

fn ny() -> Tz {
    chrono_tz::America::New_York
}

async fn put(store: &AuditStore, created: &str, e: AuditEntry) {
    store.append_at(&e, at(created)).await.expect("append");
}

fn effective(mut e: AuditEntry, at_: &str) -> AuditEntry {
    e.effective_at = Some(at(at_));
    e
}

/// The history: weeks 2026-W09..W11 in New York, plus rows that must not count
/// (before the window, after `now`, manifest and operator rows).
async fn seed(store: &AuditStore) {
    use Outcome::*;
    // M: first seen in W08, finished in W09: belongs to W08 (outside the window).
    put(
        store,
        "2026-02-20T12:00:00Z",
        entry("M", "2026-02-20", Retrying),
    )
    .await;
    put(
        store,
        "2026-02-23T12:00:00Z",
        entry("M", "2026-02-20", Deactivated),
    )
    .await;
    // W09.
    let mut a = effective(entry("A", "2026-02-24", Retrying), "2026-02-24T05:00:00Z");
    a.correlation_ids = vec!["corr-a1".into()];
    put(store, "2026-02-24T15:00:00Z", a).await;
    let mut a = effective(
        entry("A", "2026-02-24", Deactivated),
        "2026-02-24T05:00:00Z",
    );
    a.attempt = 2;
    a.groups_removed = vec!["sales".into(), "support".into()];
    a.correlation_ids = vec!["corr-a2".into(), "corr-a3".into()];
    put(store, "2026-02-24T16:00:00Z", a).await;
    put(
        store,
        "2026-02-25T10:00:00Z",
        entry("B", "2026-02-25", NotFound),
    )
    .await;
    // 23:30 on Sunday 1 March in New York: W09 there, W10 in UTC.
    put(
        store,
        "2026-03-02T04:30:00Z",
        effective(
            entry("C", "2026-03-01", Deactivated),
            "2026-03-01T05:00:00Z",
        ),
    )
    .await;
    // W10.
    put(
        store,
        "2026-03-03T01:00:00Z",
        effective(
            entry("L", "2026-03-02", Deactivated),
            "2026-03-02T05:00:00Z",
        ),
    )
    .await;
    put(
        store,
        "2026-03-03T02:00:00Z",
        entry("L", "2026-03-02", DryRun),
    )
    .await;
    put(
        store,
        "2026-03-03T12:00:00Z",
        entry("D", "2026-03-03", Failed),
    )
    .await;
    put(
        store,
        "2026-03-04T09:00:00Z",
        effective(
            entry("E", "2026-03-02", AlreadyInactive),
            "2026-03-02T05:00:00Z",
        ),
    )
    .await;
    put(
        store,
        "2026-03-05T00:00:00Z",
        entry("F", "2026-03-05", Protected),
    )
    .await;
    // W11.
    let mut manifest = entry("ignored", "2026-03-10", Deactivated);
    manifest.external_id = None;
    manifest.idempotency_key = None;
    manifest.action = "manifest".into();
    put(store, "2026-03-10T07:00:00Z", manifest).await;
    put(
        store,
        "2026-03-10T08:00:00Z",
        entry("G", "2026-03-20", Scheduled),
    )
    .await;
    let mut approve = entry("G", "2026-03-20", Held);
    approve.action = "approve".into();
    approve.actor = Some("ops@example.com".into());
    put(store, "2026-03-10T08:30:00Z", approve).await;
    // H has no idempotency key: grouped by externalId.
    let mut h = effective(
        entry("H", "2026-03-10", Deactivated),
        "2026-03-10T05:00:00Z",
    );
    h.idempotency_key = None;
    put(store, "2026-03-10T09:00:00Z", h).await;
    put(
        store,
        "2026-03-11T10:00:00Z",
        entry("I", "2026-03-11", DryRun),
    )
    .await;
    put(
        store,
        "2026-03-11T11:00:00Z",
        effective(entry("J", "2026-03-11", Retrying), "2026-03-11T05:00:00Z"),
    )
    .await;
    put(
        store,
        "2026-03-12T11:00:00Z",
        effective(
            entry("J", "2026-03-11", Deactivated),
            "2026-03-11T05:00:00Z",
        ),
    )
    .await;
    // After `now`: not yet part of any report made at `now`.
    put(
        store,
        "2026-03-13T09:00:00Z",
        entry("K", "2026-03-13", Deactivated),
    )
    .await;
}

fn golden(name: &str, actual: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/it/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).expect("write golden");
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
            path.display()
        )
    });
    assert_eq!(actual, expected, "differs from {}", path.display());
}

async fn weekly_matches_golden(db: TestDb) {
    seed(&db.store).await;
    let r = report::weekly(&db.store, 3, ny(), now()).await.unwrap();
    let weeks: Vec<(&str, u64, u64, u64)> = r
        .weeks
        .iter()
        .map(|w| (w.week.as_str(), w.total, w.successful, w.failed))
        .collect();
    assert_eq!(
        weeks,
        [
            ("2026-W09", 3, 2, 0),
            ("2026-W10", 4, 2, 1),
            ("2026-W11", 4, 2, 0)
        ]
    );
    let w10 = &r.weeks[1];
    assert_eq!(
        (w10.protected, w10.already_inactive, w10.deactivated),
        (1, 1, 1)
    );
    assert_eq!((w10.sla_measured, w10.sla_over_24h), (2, 1));
    let w11 = &r.weeks[2];
    assert_eq!((w11.scheduled_held, w11.dry_run), (1, 1));
    assert_eq!(w11.sla_median_hours, Some(17.0));
    golden("weekly.json", &r.to_json().unwrap());
    golden("weekly.csv", &r.to_csv().unwrap());
}

async fn monday_0430z_week_depends_on_the_zone(db: TestDb) {
    put(
        &db.store,
        "2026-03-02T04:30:00Z",
        entry("C", "2026-03-02", Outcome::Deactivated),
    )
    .await;
    let utc = report::weekly(&db.store, 2, Tz::UTC, now()).await.unwrap();
    let totals = |r: &report::WeeklyReport| {
        r.weeks
            .iter()
            .map(|w| (w.week.clone(), w.total))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        totals(&utc),
        [("2026-W10".to_owned(), 1), ("2026-W11".to_owned(), 0)]
    );
    let ny3 = report::weekly(&db.store, 3, ny(), now()).await.unwrap();
    assert_eq!(
        totals(&ny3),
        [
            ("2026-W09".to_owned(), 1),
            ("2026-W10".to_owned(), 0),
            ("2026-W11".to_owned(), 0)
        ]
    );
}

async fn evidence_lists_each_termination_once(db: TestDb) {
    seed(&db.store).await;
    let all = report::evidence(&db.store, None, None).await.unwrap();
    let ids: Vec<&str> = all
        .iter()
        .map(|r| r.external_id.as_deref().unwrap_or("?"))
        .collect();
    assert_eq!(
        ids,
        [
            "M", "A", "B", "C", "L", "D", "E", "F", "G", "H", "I", "J", "K"
        ]
    );
    let a = &all[1];
    assert_eq!(a.outcome, Outcome::Deactivated);
    assert_eq!(a.attempts, 2);
    assert_eq!(a.confirmed_deactivated_at, Some(at("2026-02-24T16:00:00Z")));
    assert_eq!(a.effective_at, Some(at("2026-02-24T05:00:00Z")));
    assert_eq!(a.groups_removed, ["sales", "support"]);
    assert_eq!(a.correlation_ids, ["corr-a1", "corr-a2", "corr-a3"]);
    assert_eq!(a.sqs_message_ids, ["msg-A"]);
    assert_eq!(
        a.manifest.as_ref().map(|m| m.bucket.as_str()),
        Some("hr-drop")
    );
    assert_eq!(a.user_id.as_deref(), Some("user-A"));
    let l = &all[4];
    assert_eq!(
        l.outcome,
        Outcome::Deactivated,
        "a later dry run does not hide it"
    );
    let d = &all[5];
    assert_eq!(d.outcome, Outcome::Failed);
    assert_eq!(d.confirmed_deactivated_at, None);
    assert_eq!(d.error_message.as_deref(), Some("failed for D"));
    let g = &all[8];
    assert_eq!(
        (g.outcome, g.attempts),
        (Outcome::Scheduled, 1),
        "operator rows are not attempts"
    );

    let march = report::evidence(
        &db.store,
        NaiveDate::from_ymd_opt(2026, 3, 2),
        NaiveDate::from_ymd_opt(2026, 3, 3),
    )
    .await
    .unwrap();
    let ids: Vec<&str> = march
        .iter()
        .map(|r| r.external_id.as_deref().unwrap_or("?"))
        .collect();
    assert_eq!(ids, ["C", "L", "D"]);
    let csv = report::evidence_csv(&march).unwrap();
    let mut lines = csv.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("externalId,userId,idempotency_key,effective_at")
    );
    assert_eq!(csv.lines().count(), 4);
    let json: serde_json::Value =
        serde_json::from_str(&report::evidence_json(&march).unwrap()).unwrap();
    assert_eq!(json[0]["externalId"], "C");
    assert_eq!(json[0]["confirmed_deactivated_at"], "2026-03-02T04:30:00Z");

    let backwards = report::evidence(
        &db.store,
        NaiveDate::from_ymd_opt(2026, 3, 3),
        NaiveDate::from_ymd_opt(2026, 3, 2),
    )
    .await;
    assert!(matches!(backwards, Err(ReportError::EmptyRange { .. })));
}

/// A report as of an instant between two rows of one termination counts it as
/// it stood then: J was still retrying at 10:30 (its deactivation row is from
/// 11:00). On PostgreSQL this is the path that reduces such terminations from
/// their rows instead of the summary, which already holds the later outcome.
async fn report_as_of_counts_only_rows_created_by_then(db: TestDb) {
    seed(&db.store).await;
    let earlier = report::weekly(&db.store, 3, ny(), at("2026-03-12T10:30:00Z"))
        .await
        .unwrap();
    let w11 = &earlier.weeks[2];
    assert_eq!(
        (w11.total, w11.successful, w11.retrying, w11.sla_measured),
        (4, 1, 1, 1),
        "{w11:?}"
    );
    assert_eq!(w11.sla_median_hours, Some(4.0), "H alone: 05:00 to 09:00");
    let now = report::weekly(&db.store, 3, ny(), now()).await.unwrap();
    assert_eq!((now.weeks[2].successful, now.weeks[2].retrying), (2, 0));
    assert_eq!(
        earlier.weeks[..2],
        now.weeks[..2],
        "earlier weeks are settled"
    );
}

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod on_postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::fresh_postgres().await).await;
                }
            )*
        }
        mod on_sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::fresh_sqlite().await).await;
                }
            )*
        }
    };
}

on_both!(
    weekly_matches_golden,
    monday_0430z_week_depends_on_the_zone,
    evidence_lists_each_termination_once,
    report_as_of_counts_only_rows_created_by_then,
);

#[tokio::test]
async fn chart_is_svg_with_the_weeks_and_the_sla_line() {
    let db = fresh_sqlite().await;
    seed(&db.store).await;
    let r = report::weekly(&db.store, 3, ny(), now()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weekly.svg");
    report::write_chart(&r, &path).unwrap();
    let svg = std::fs::read_to_string(&path).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
    for text in [
        "2026-W09",
        "2026-W10",
        "2026-W11",
        "24 h SLA",
        "SLA p95 hours",
    ] {
        assert!(svg.contains(text), "{text} missing");
    }
    let png = report::write_chart(&r, &dir.path().join("weekly.png"));
    assert!(matches!(png, Err(ReportError::ChartFormat { .. })));
}

#[tokio::test]
async fn weekly_command_writes_json_csv_and_chart_files() {
    let db = fresh_sqlite().await;
    seed(&db.store).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("weekly.json");
    let chart = dir.path().join("weekly.svg");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_deprovision"))
        .args([
            "report",
            "weekly",
            "--weeks",
            "2",
            "--tz",
            "Europe/Berlin",
            "--format",
            "json",
        ])
        .arg("--out")
        .arg(&out)
        .arg("--chart")
        .arg(&chart)
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let items = json.as_array().expect("an array of weeks and the footer");
    assert_eq!(items.len(), 3, "two weeks, then the footer");
    for field in ["week", "total", "successful", "failed"] {
        assert!(items[0].get(field).is_some(), "{field}");
    }
    let head = db.store.head().await.unwrap().expect("rows were seeded");
    assert_eq!(items[2]["chain_head"]["row_hash"], head.row_hash.as_str());
    assert_eq!(items[2]["chain_head"]["rows"], head.rows);
    assert!(std::fs::read_to_string(&chart).unwrap().contains("<svg"));
}
