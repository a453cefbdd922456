//! Audit store benchmarks on the real PostgreSQL the test script starts:
//!
//! - `append/concurrent_8`: chained appends from 8 concurrent writers (advisory
//!   chain lock, sequence and insert included); criterion reports time per row.
//! - `weekly_report/1m_rows`: `report::weekly` on PostgreSQL over 12 ISO weeks
//!   holding 1,000,000 rows (800,000 terminations, a quarter with a retry row
//!   first). The rows are bulk-loaded with `generate_series`, not chained (the
//!   report never reads hashes), with the summary trigger disabled during the load
//!   and the summary rebuilt after it (`scim_audit_termination_rebuild()`), then
//!   `VACUUM ANALYZE` (as autovacuum would) so that the report's scans are
//!   index-only.
//! - `weekly_report_sqlite/1m_rows`: the same report and rows on a SQLite file
//!   (figure only; SQLite reduces every row, it has no summary table).
//!
//! Run (the target is < 2 s for the PostgreSQL report on the 2-core machine):
//!
//! ```text
//! eval "$(scripts/services.sh start)"
//! cargo bench --bench audit
//! scripts/services.sh stop
//! ```
//!
//! Needs `TEST_DATABASE_URL` (a superuser URL); creates its own databases. Run as
//! a test (`cargo test --benches`, `cargo nextest run --all-targets`, which
//! `scripts/test.sh` does) each benchmark runs once on 10,000 rows instead, and
//! nothing is set up for `--list`.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use deprovision::audit::{AuditEntry, AuditStore};
use deprovision::domain::{ExternalId, IdempotencyKey, Outcome, TerminationDate};
use sqlx::{AssertSqlSafe, Connection, Executor};

const WRITERS: u64 = 8;

/// Terminations loaded for the weekly report: 800,000 (1,000,000 rows) when
/// benchmarking, 8,000 when run as a test.
fn terminations() -> u64 {
    if std::env::args().any(|a| a == "--bench") {
        800_000
    } else {
        8_000
    }
}

fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "TEST_DATABASE_URL is not set: run `eval \"$(scripts/services.sh start)\"` first, then `cargo bench --bench audit`"
        )
    })
}

/// Creates a fresh database and returns a migrated store on it.
async fn fresh_store(prefix: &str) -> (AuditStore, String) {
    let admin = admin_url();
    let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("connect to TEST_DATABASE_URL");
    conn.execute(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .expect("create the bench database");
    let mut url = url::Url::parse(&admin).expect("a URL");
    url.set_path(&format!("/{name}"));
    let store = AuditStore::connect(url.as_str()).await.expect("connect");
    store.migrate().await.expect("migrate");
    (store, url.to_string())
}

fn entry(n: u64) -> AuditEntry {
    let external = format!("E{n}");
    let key = ExternalId::parse(&external)
        .ok()
        .zip(TerminationDate::parse("2026-03-02").ok())
        .map(|(e, d)| IdempotencyKey::derive(&e, &d));
    AuditEntry {
        external_id: Some(external),
        user_id: Some(format!("8a4b1c2d-0000-4000-8000-{n:012}")),
        action: "deactivate".into(),
        status_code: Some(204),
        success: true,
        error_message: None,
        outcome: Outcome::Deactivated,
        credential: Some(deprovision::domain::Credential::Primary),
        groups_removed: vec!["sales".into(), "support".into()],
        attempt: 1,
        sqs_message_id: Some(format!("msg-{n}")),
        manifest: None,
        effective_at: Some(Utc::now()),
        correlation_ids: vec![format!("corr-{n}-1"), format!("corr-{n}-2")],
        duration_ms: Some(250),
        idempotency_key: key,
        actor: None,
    }
}

fn bench_append(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    let cell: OnceLock<AuditStore> = OnceLock::new();
    let mut group = c.benchmark_group("append");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.bench_function("concurrent_8", |b| {
        let store = cell.get_or_init(|| rt.block_on(fresh_store("bench_append")).0);
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                let tasks: Vec<_> = (0..WRITERS)
                    .map(|w| {
                        let store = store.clone();
                        let share = iters / WRITERS + u64::from(w < iters % WRITERS);
                        tokio::spawn(async move {
                            for i in 0..share {
                                store
                                    .append(&entry(w * 1_000_000_000 + i))
                                    .await
                                    .expect("append");
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.expect("writer task");
                }
                start.elapsed()
            })
        });
    });
    group.finish();
    if let Some(store) = cell.get() {
        let report = rt.block_on(store.verify()).expect("verify");
        assert!(report.is_intact(), "concurrent appends forked the chain");
        eprintln!("append: {} chained rows written, chain intact", report.rows);
    }
}

/// Loads `terminations()` terminations (1.25 rows each) over the 11 weeks after
/// `now` − 12 weeks.
async fn load_rows(url: &str, now: DateTime<Utc>) {
    let n = terminations();
    // Spread over 11 of the 12 weeks, so every row is before `now`.
    let step = i64::try_from(11 * 7 * 86_400 / n).unwrap_or(8);
    let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
    let base = now - chrono::Duration::weeks(12);
    // `n` terminations `step` s apart; every fourth has a retrying
    // row an hour before its final row. Keys and hashes are 64 hex digits made of
    // two md5s; outcomes cycle through the terminal kinds.
    let retry = "INSERT INTO scim_audit_log (external_id, action, success, created_at, outcome, \
        groups_removed, attempt, correlation_ids, idempotency_key, termination_first_id, \
        termination_first_at, prev_hash, row_hash) \
        SELECT 'E' || t, 'deactivate', false, $1 + make_interval(secs => t * $2), 'retrying', \
          '[]', 1, '[]', md5(t::text) || md5('k' || t), 10000000 + t, \
          $1 + make_interval(secs => t * $2), repeat('0', 64), \
          md5('r' || t) || md5('retry' || t) \
        FROM generate_series(0, $3 - 1, 4) AS t";
    let last = "INSERT INTO scim_audit_log (external_id, user_id, action, status_code, success, \
        created_at, outcome, credential, groups_removed, attempt, correlation_ids, \
        effective_at, idempotency_key, termination_first_id, termination_first_at, prev_hash, \
        row_hash) \
        SELECT 'E' || t, 'u' || t, 'deactivate', 204, (t % 10) < 8, \
          $1 + make_interval(secs => t * $2 + 3600), \
          (ARRAY['deactivated','deactivated','deactivated','deactivated','deactivated', \
                 'deactivated','deactivated','already_inactive','not_found','failed'])[t % 10 + 1], \
          'primary', '[\"g1\"]', 1 + (t % 4 = 0)::int, '[]', \
          $1 + make_interval(secs => t * $2 + 3600 - (t % 48) * 3600), \
          md5(t::text) || md5('k' || t), 10000000 + t, \
          $1 + make_interval(secs => t * $2 + CASE WHEN t % 4 = 0 THEN 0 ELSE 3600 END), \
          repeat('0', 64), md5('f' || t) || md5('final' || t) \
        FROM generate_series(0, $3 - 1) AS t";
    // One trigger call per row would make the load several times slower; the
    // summary is rebuilt from the rows in one statement instead.
    conn.execute("ALTER TABLE scim_audit_log DISABLE TRIGGER scim_audit_log_track_termination")
        .await
        .expect("disable the summary trigger");
    for sql in [retry, last] {
        sqlx::query(sql)
            .bind(base)
            .bind(step)
            .bind(i64::try_from(n).unwrap_or(0))
            .execute(&mut conn)
            .await
            .expect("bulk load");
    }
    conn.execute("ALTER TABLE scim_audit_log ENABLE TRIGGER scim_audit_log_track_termination")
        .await
        .expect("enable the summary trigger");
    conn.execute("SELECT scim_audit_termination_rebuild()")
        .await
        .expect("rebuild the summary");
    for table in ["scim_audit_log", "scim_audit_termination"] {
        conn.execute(AssertSqlSafe(format!("VACUUM ANALYZE {table}")))
            .await
            .expect("vacuum analyze");
    }
    let (rows,): (i64,) = sqlx::query_as("SELECT count(*) FROM scim_audit_log")
        .fetch_one(&mut conn)
        .await
        .expect("count");
    assert_eq!(u64::try_from(rows).unwrap_or(0), n + n / 4);
}

fn bench_weekly(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    let now = Utc::now();
    let cell: OnceLock<AuditStore> = OnceLock::new();
    let mut group = c.benchmark_group("weekly_report");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(30));
    group.bench_function("1m_rows", |b| {
        let store = cell.get_or_init(|| {
            let (store, url) = rt.block_on(fresh_store("bench_weekly"));
            let loaded = Instant::now();
            rt.block_on(load_rows(&url, now));
            eprintln!(
                "weekly_report: loaded {} terminations in {:?}",
                terminations(),
                loaded.elapsed()
            );
            store
        });
        b.iter(|| {
            let r = rt
                .block_on(deprovision::report::weekly(
                    store,
                    13,
                    chrono_tz::Tz::UTC,
                    now,
                ))
                .expect("weekly");
            let total: u64 = r.weeks.iter().map(|w| w.total).sum();
            assert_eq!(total, terminations());
            r
        });
    });
    group.finish();
}

/// Loads the same rows as [`load_rows`] into a migrated SQLite file.
async fn load_sqlite_rows(url: &str, now: DateTime<Utc>) {
    let n = i64::try_from(terminations()).unwrap_or(0);
    let step = 11 * 7 * 86_400 / n.max(1);
    let base = (now - chrono::Duration::weeks(12)).timestamp();
    let mut conn = sqlx::SqliteConnection::connect(url).await.expect("connect");
    // Instants in the store's text form; keys and hashes 64 hex digits.
    let at = |secs: &str| format!("strftime('%Y-%m-%dT%H:%M:%fZ', {base} + {secs}, 'unixepoch')");
    let retry = format!(
        "WITH RECURSIVE s(t) AS (SELECT 0 UNION ALL SELECT t + 4 FROM s WHERE t + 4 < {n}) \
         INSERT INTO scim_audit_log (external_id, action, success, created_at, outcome, \
           groups_removed, attempt, correlation_ids, idempotency_key, termination_first_id, \
           termination_first_at, prev_hash, row_hash) \
         SELECT 'E' || t, 'deactivate', 0, {c}, 'retrying', '[]', 1, '[]', \
           printf('%064x', t), 10000000 + t, {c}, printf('%064d', 0), printf('a%063x', t) \
         FROM s",
        c = at(&format!("t * {step}"))
    );
    let last = format!(
        "WITH RECURSIVE s(t) AS (SELECT 0 UNION ALL SELECT t + 1 FROM s WHERE t + 1 < {n}) \
         INSERT INTO scim_audit_log (external_id, user_id, action, status_code, success, \
           created_at, outcome, credential, groups_removed, attempt, correlation_ids, \
           effective_at, idempotency_key, termination_first_id, termination_first_at, \
           prev_hash, row_hash) \
         SELECT 'E' || t, 'u' || t, 'deactivate', 204, (t % 10) < 8, {c}, \
           CASE t % 10 WHEN 7 THEN 'already_inactive' WHEN 8 THEN 'not_found' \
             WHEN 9 THEN 'failed' ELSE 'deactivated' END, \
           'primary', '[\"g1\"]', 1 + (t % 4 = 0), '[]', {e}, printf('%064x', t), \
           10000000 + t, {f}, printf('%064d', 0), printf('b%063x', t) \
         FROM s",
        c = at(&format!("t * {step} + 3600")),
        e = at(&format!("t * {step} + 3600 - (t % 48) * 3600")),
        f = at(&format!(
            "t * {step} + CASE WHEN t % 4 = 0 THEN 0 ELSE 3600 END"
        )),
    );
    for sql in [retry, last] {
        conn.execute(AssertSqlSafe(sql)).await.expect("bulk load");
    }
    conn.execute("ANALYZE").await.expect("analyze");
}

fn bench_weekly_sqlite(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    let now = Utc::now();
    let cell: OnceLock<(AuditStore, tempfile::TempDir)> = OnceLock::new();
    let mut group = c.benchmark_group("weekly_report_sqlite");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(30));
    group.bench_function("1m_rows", |b| {
        let (store, _) = cell.get_or_init(|| {
            let dir = tempfile::tempdir().expect("temp dir");
            let url = format!("sqlite://{}", dir.path().join("audit.db").display());
            let store = rt.block_on(async {
                let s = AuditStore::connect(&url).await.expect("connect");
                s.migrate().await.expect("migrate");
                s
            });
            let loaded = Instant::now();
            rt.block_on(load_sqlite_rows(&url, now));
            eprintln!(
                "weekly_report_sqlite: loaded {} terminations in {:?}",
                terminations(),
                loaded.elapsed()
            );
            (store, dir)
        });
        b.iter(|| {
            let r = rt
                .block_on(deprovision::report::weekly(
                    store,
                    13,
                    chrono_tz::Tz::UTC,
                    now,
                ))
                .expect("weekly");
            let total: u64 = r.weeks.iter().map(|w| w.total).sum();
            assert_eq!(total, terminations());
            r
        });
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    bench_append(c, &rt);
    bench_weekly(c, &rt);
    bench_weekly_sqlite(c, &rt);
}

criterion_group!(audit, benches);
criterion_main!(audit);
