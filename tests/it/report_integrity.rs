//! What the compliance reports must count, through the real binary:
//! - a deactivation identified by `deprovision user --user-id` only (no
//!   externalId) is one termination in `report evidence` (keyed by its userId)
//!   and in `report weekly`, on PostgreSQL (whose weekly report reads the
//!   trigger-maintained summary) and on SQLite;
//! - unsigned (forged) messages sent to the terminations queue while `serve`
//!   runs stay in the audit as `reject_message` rows, are counted in
//!   `deprovision_messages_rejected_total{reason="bad_signature"}`, and are
//!   counted neither as terminations on `/metrics` nor in the reports.

use std::time::Duration;

use deprovision::audit::ManifestOrigin;
use deprovision::domain::{EffectiveAt, ExternalId, TerminationDate, TerminationRecord};
use deprovision::queue::TerminationMessage;
use deprovision::sim::RunningSim;
use sqlx::Row;

use crate::audit::{Raw, TestDb, fresh_postgres, fresh_sqlite};
use crate::pipeline::harness::*;

const LIMIT: Duration = Duration::from_secs(180);

/// The environment `deprovision user` and `report` need: the simulator, its
/// clients and the audit database; nothing inherited but `PATH`.
fn cli_env(sim: &RunningSim, database_url: &str) -> Vec<(String, String)> {
    [
        ("PATH", std::env::var("PATH").unwrap_or_default()),
        ("DATABASE_URL", database_url.to_owned()),
        ("GENESYS_API_URL", sim.base_url().to_string()),
        ("PRIMARY_CLIENT_ID", PRIMARY.0.to_owned()),
        ("PRIMARY_CLIENT_SECRET", PRIMARY.1.to_owned()),
        ("ELEVATED_CLIENT_ID", ELEVATED.0.to_owned()),
        ("ELEVATED_CLIENT_SECRET", ELEVATED.1.to_owned()),
        ("RUST_LOG", "warn".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

async fn run_clean(args: &[&str], env: &[(String, String)]) -> (std::process::ExitStatus, String) {
    let out = tokio::process::Command::new(bin())
        .env_clear()
        .args(args)
        .envs(env.iter().cloned())
        .current_dir(std::env::temp_dir())
        .output()
        .await
        .expect("run deprovision");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{args:?}: {:?}\n{stderr}", out.status);
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The first week object of `report weekly --weeks 1 --format json`.
async fn this_week(env: &[(String, String)]) -> serde_json::Value {
    let (_, out) = run_clean(
        &["report", "weekly", "--weeks", "1", "--format", "json"],
        env,
    )
    .await;
    let json: serde_json::Value = serde_json::from_str(&out).expect("weekly JSON");
    json[0].clone()
}

async fn user_id_only_deactivation_is_evidence_and_counted(db: TestDb) {
    let recs = records("RU", 2);
    let (config, seed) = sim_config(&recs);
    let sim = start_sim(config).await;
    let uid = user_id_of(&seed, "RU0001");
    let env = cli_env(&sim, &db.url);

    let (_, out) = run_clean(&["user", "--user-id", &uid, "--format", "json"], &env).await;
    let json: serde_json::Value = serde_json::from_str(&out).expect("user JSON");
    assert_eq!(json["outcome"], "deactivated", "{json}");
    assert!(json["external_id"].is_null(), "{json}");
    assert!(!sim.users_by_external_id("RU0001")[0].active);
    // A second run for the same userId is a second attempt of the same
    // termination, not a second termination.
    let (_, out) = run_clean(&["user", "--user-id", &uid, "--format", "json"], &env).await;
    assert!(out.contains("already_inactive"), "{out}");
    // The other person, by externalId, for contrast.
    run_clean(&["user", "--external-id", "RU0002"], &env).await;

    let (_, csv_text) = run_clean(&["report", "evidence", "--format", "csv"], &env).await;
    let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
    let headers = reader.headers().expect("header").clone();
    let col = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .unwrap_or_else(|| panic!("no {name} column"))
    };
    let records: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("row")).collect();
    let by_uid: Vec<_> = records
        .iter()
        .filter(|r| &r[col("userId")] == uid.as_str())
        .collect();
    assert_eq!(by_uid.len(), 1, "one line for {uid}:\n{csv_text}");
    let line = by_uid[0];
    assert_eq!(&line[col("externalId")], "", "{csv_text}");
    assert_eq!(&line[col("outcome")], "already_inactive", "{csv_text}");
    assert_eq!(&line[col("attempts")], "2", "{csv_text}");
    assert!(
        !line[col("confirmed_deactivated_at")].is_empty(),
        "{csv_text}"
    );
    assert_eq!(line[col("audit_row_ids")].split(';').count(), 2);
    assert_eq!(records.len(), 2, "{csv_text}");

    let week = this_week(&env).await;
    assert_eq!(week["total"], 2, "{week}");
    assert_eq!(week["successful"], 2, "{week}");
    assert_eq!(week["already_inactive"], 1, "{week}");
    assert_eq!(week["deactivated"], 1, "{week}");

    // PostgreSQL's summary table still agrees with the log.
    let (_, verify) = run_clean(&["audit", "verify"], &env).await;
    assert!(!verify.to_lowercase().contains("mismatch"), "{verify}");
}

#[tokio::test]
async fn user_id_only_deactivation_is_evidence_and_counted_on_postgres() {
    user_id_only_deactivation_is_evidence_and_counted(fresh_postgres().await).await;
}

#[tokio::test]
async fn user_id_only_deactivation_is_evidence_and_counted_on_sqlite() {
    user_id_only_deactivation_is_evidence_and_counted(fresh_sqlite().await).await;
}

fn unsigned_body(external_id: &str) -> String {
    TerminationMessage::new(
        TerminationRecord {
            external_id: ExternalId::parse(external_id).expect("id"),
            user_id: None,
            termination_date: TerminationDate::parse("2026-01-05").expect("date"),
            action: deprovision::domain::RecordAction::Terminate,
        },
        ManifestOrigin {
            bucket: "forged".into(),
            key: "by-hand".into(),
            version: None,
            index: Some(0),
        },
        chrono_tz::UTC,
        EffectiveAt::StartOfDay,
    )
    .encode()
}

/// The tester's attack, scaled down: unsigned messages naming real people while
/// `serve` runs next to one genuine (signed) termination.
#[tokio::test]
async fn forged_messages_are_kept_as_evidence_but_not_counted_as_terminations() {
    const FORGED: usize = 12;
    let aws = aws().await;
    let db = fresh_postgres().await;
    let queues = aws.queues(5, 30).await;
    let recs = records("FG", FORGED + 1);
    let (config, _) = sim_config(&recs);
    let sim = start_sim(config).await;
    let env = env_for(&sim, &db.url, &queues);

    for r in &recs[1..] {
        aws.send_raw(&queues.terminations, &unsigned_body(r.external_id.as_str()))
            .await;
    }
    aws.send_signed(&queues.terminations, &unsigned_body("FG0001"))
        .await;

    let service = Service::start(&env);
    eventually(
        "the forgeries dead-lettered, the real one done",
        LIMIT,
        || async {
            aws.depth(&queues.dead_letter).await == FORGED as u64
                && terminal_by_key(&db.store).await.len() == 1
        },
    )
    .await;
    let metrics_url = health_url(&env, "/metrics");
    let scrape = || async {
        match reqwest::get(&metrics_url).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    };
    eventually("the counters on /metrics", LIMIT, || async {
        scrape()
            .await
            .contains("deprovision_terminations_total{outcome=\"deactivated\"} 1")
    })
    .await;
    let metrics = scrape().await;
    assert!(service.terminate().await.success());

    assert!(
        metrics.contains(&format!(
            "deprovision_messages_rejected_total{{reason=\"bad_signature\"}} {FORGED}"
        )),
        "{metrics}"
    );
    assert!(
        !metrics.contains("deprovision_terminations_total{outcome=\"invalid\"}"),
        "{metrics}"
    );
    for r in &recs[1..] {
        assert!(sim.users_by_external_id(r.external_id.as_str())[0].active);
    }

    // The audit holds every forgery, with the claimed id, as a rejected message.
    let Raw::Pg(pool) = &db.raw else {
        unreachable!("fresh_postgres")
    };
    let rejected = sqlx::query(
        "SELECT outcome, external_id, idempotency_key, termination_first_id, error_message \
         FROM scim_audit_log WHERE action = 'reject_message' ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .expect("audit rows");
    assert_eq!(rejected.len(), FORGED);
    let mut claimed = Vec::new();
    for row in &rejected {
        assert_eq!(row.get::<String, _>(0), "invalid");
        assert_eq!(row.get::<Option<String>, _>(1), None);
        assert_eq!(row.get::<Option<String>, _>(2), None);
        assert_eq!(row.get::<Option<i64>, _>(3), None);
        let message: String = row.get(4);
        assert!(message.contains("bad_signature"), "{message}");
        let id = message
            .split("claimed externalId \"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_else(|| panic!("no claimed id in {message}"));
        claimed.push(id.to_owned());
    }
    claimed.sort();
    let expected: Vec<String> = recs[1..]
        .iter()
        .map(|r| r.external_id.as_str().to_owned())
        .collect();
    assert_eq!(claimed, expected);

    // The reports count only the real termination.
    let week = this_week(&env).await;
    assert_eq!(week["total"], 1, "{week}");
    assert_eq!(week["successful"], 1, "{week}");
    assert_eq!(week["failed"], 0, "{week}");
    let (_, evidence) = run_clean(&["report", "evidence", "--format", "json"], &env).await;
    let evidence: serde_json::Value = serde_json::from_str(&evidence).expect("evidence JSON");
    let items = evidence.as_array().expect("array");
    assert_eq!(items.len(), 1, "{evidence}");
    assert_eq!(items[0]["externalId"], "FG0001");
    assert_eq!(items[0]["outcome"], "deactivated");
    let (_, verify) = run_clean(&["audit", "verify"], &env).await;
    assert!(!verify.to_lowercase().contains("mismatch"), "{verify}");
}
