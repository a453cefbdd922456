//! The main job end to end, over real parts: an HR manifest uploaded to moto's
//! S3, a real bucket notification to the manifest-events queue, `deprovision
//! serve` as a child process (dispatcher + consumer pool), the terminations queue
//! with a real redrive policy, the Genesys Cloud simulator, PostgreSQL for the
//! audit; `deprovision replay-dlq` and `deprovision run --sandbox` as commands.

mod audit_write_failure;
pub mod harness;

use std::time::Duration;

use deprovision::domain::{Credential, Outcome};
use deprovision::queue::attr;
use deprovision::sim::ResourceKind;
use sqlx::Row;

use crate::audit::{Raw, fresh_postgres};
use harness::*;

const LIMIT: Duration = Duration::from_secs(180);

async fn pg_rows(raw: &Raw, sql: &str) -> Vec<sqlx::postgres::PgRow> {
    match raw {
        Raw::Pg(p) => sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_all(p)
            .await
            .expect("query"),
        Raw::Sqlite(_) => unreachable!("pipeline tests use PostgreSQL"),
    }
}

/// 200 terminations (3 only the elevated client may change, 2 no client may),
/// plus 3 invalid records, one duplicate and a BOM: every changeable user ends
/// inactive with no groups, the 2 refused ones are in the DLQ with reason
/// `forbidden`, the invalid records and the manifest counts are in the audit, and
/// every termination has exactly one terminal outcome.
#[tokio::test]
async fn manifest_upload_through_serve_deactivates_audits_and_reconciles() {
    let aws = aws().await;
    let db = fresh_postgres().await;
    let queues = aws.queues(5, 30).await;
    let bucket = aws.bucket_notifying(&queues.events).await;
    let recs = records("PL", 200);
    let (mut config, seed) = sim_config(&recs);
    let elevated: Vec<String> = ["PL0010", "PL0011", "PL0012"]
        .iter()
        .map(|e| user_id_of(&seed, e))
        .collect();
    let denied: Vec<String> = ["PL0020", "PL0021"]
        .iter()
        .map(|e| user_id_of(&seed, e))
        .collect();
    for id in &elevated {
        config = config.with_requires_elevated(id);
    }
    for id in &denied {
        config = config.with_denied(id);
    }
    let sim = start_sim(config).await;

    let mut body = json_manifest(&recs);
    body.truncate(body.len() - 3); // drop "\n]\n"
    body.push_str(",\n{\"externalId\": \"\", \"terminationDate\": \"2026-01-05\"}");
    body.push_str(",\n{\"externalId\": \"BAD0001\", \"terminationDate\": \"01/05/2026\"}");
    body.push_str(",\n{\"externalId\": \"BAD0002\", \"userId\": \"a/b\", \"terminationDate\": \"2026-01-05\"}");
    body.push_str(",\n{\"externalId\": \"PL0001\", \"terminationDate\": \"2026-01-05\"}\n]\n");
    let body = format!("\u{FEFF}{body}");

    let service = Service::start(&env_for(&sim, &db.url, &queues));
    aws.put(&bucket, "incoming/2026-01 terminations.json", body)
        .await;

    eventually(
        "200 terminal outcomes and 2 dead letters",
        LIMIT,
        || async {
            terminal_by_key(&db.store).await.len() == 200
                && aws.depth(&queues.dead_letter).await == 2
        },
    )
    .await;
    eventually("the events queue to drain", LIMIT, || async {
        aws.depth(&queues.events).await == 0
    })
    .await;
    let status = service.terminate().await;
    assert!(status.success(), "serve exit status {status:?}");

    // Every changeable user is inactive with no group left.
    for r in &recs {
        let id = user_id_of(&seed, r.external_id.as_str());
        let user = sim.user(&id).expect("user");
        if denied.contains(&id) {
            assert!(user.active, "{id} was refused and must still be active");
        } else {
            assert!(!user.active, "{} still active", r.external_id);
            assert!(
                user.groups.is_empty(),
                "{} still in {:?}",
                r.external_id,
                user.groups
            );
        }
    }

    // Exactly one terminal outcome per termination, and the right ones.
    let by_key = terminal_by_key(&db.store).await;
    assert!(
        by_key.values().all(|o| o.len() == 1),
        "a termination has several terminal rows"
    );
    let count = |o: Outcome| by_key.values().filter(|v| v[0] == o).count();
    assert_eq!(
        (count(Outcome::Deactivated), count(Outcome::Forbidden)),
        (198, 2)
    );
    let rows = db.store.termination_rows(None, None).await.expect("rows");
    for e in ["PL0010", "PL0011", "PL0012"] {
        let row = rows
            .iter()
            .find(|r| {
                r.entry.external_id.as_deref() == Some(e) && r.entry.outcome == Outcome::Deactivated
            })
            .expect("deactivated row");
        assert_eq!(row.entry.credential, Some(Credential::Elevated), "{e}");
    }

    // The refused two are in the DLQ with their reason.
    let dead = aws.peek_all(&queues.dead_letter).await;
    let mut dead_ids: Vec<String> = dead
        .iter()
        .map(|(body, attrs)| {
            assert_eq!(
                attrs.get(attr::REASON).map(String::as_str),
                Some("forbidden")
            );
            let m =
                deprovision::queue::TerminationMessage::decode(body).expect("dead-lettered body");
            m.record.external_id.as_str().to_owned()
        })
        .collect();
    dead_ids.sort();
    assert_eq!(dead_ids, ["PL0020", "PL0021"]);

    // The invalid records and the manifest's counts are audited.
    let invalid = pg_rows(
        &db.raw,
        "SELECT error_message FROM scim_audit_log WHERE outcome = 'invalid'",
    )
    .await;
    assert_eq!(invalid.len(), 3);
    let manifest = pg_rows(
        &db.raw,
        "SELECT error_message, manifest_key FROM scim_audit_log WHERE action = 'manifest'",
    )
    .await;
    assert_eq!(manifest.len(), 1);
    let counts: String = manifest[0].get("error_message");
    assert!(
        counts.contains("records=204 valid=200 rejected=3 duplicates=1 enqueued=200"),
        "{counts}"
    );
    let key: String = manifest[0].get("manifest_key");
    assert_eq!(
        key, "incoming/2026-01 terminations.json",
        "key decoded as S3 encodes it"
    );
}

/// A redelivered event and a re-uploaded identical manifest enqueue the
/// terminations again, and the consumer deletes them without a second
/// deactivation or a second terminal row.
#[tokio::test]
async fn redelivered_event_and_reupload_cause_no_second_deactivation() {
    let aws = aws().await;
    let db = fresh_postgres().await;
    let queues = aws.queues(5, 30).await;
    let bucket = aws.bucket_notifying(&queues.events).await;
    let recs = records("RD", 12);
    let (config, _) = sim_config(&recs);
    let sim = start_sim(config).await;
    let service = Service::start(&env_for(&sim, &db.url, &queues));
    let key = "m/March+final 1.json";
    aws.put(&bucket, key, json_manifest(&recs)).await;
    eventually("12 terminal outcomes", LIMIT, || async {
        terminal_by_key(&db.store).await.len() == 12
    })
    .await;
    let patches = sim.stats().count(ResourceKind::User, "PATCH");
    assert_eq!(patches, 12);

    // The same S3 event again (as SQS would redeliver it), and the same bytes
    // uploaded again (a new event).
    let event = serde_json::json!({"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": bucket}, "object": {"key": "m/March%2Bfinal+1.json"}}
    }]});
    aws.send_raw(&queues.events, &event.to_string()).await;
    aws.put(&bucket, key, json_manifest(&recs)).await;
    eventually("three manifest rows and empty queues", LIMIT, || async {
        let n = pg_rows(
            &db.raw,
            "SELECT 1 FROM scim_audit_log WHERE action = 'manifest'",
        )
        .await
        .len();
        n == 3 && aws.depth(&queues.events).await == 0 && aws.depth(&queues.terminations).await == 0
    })
    .await;
    assert!(service.terminate().await.success());

    assert_eq!(
        sim.stats().count(ResourceKind::User, "PATCH"),
        12,
        "no second deactivation"
    );
    let by_key = terminal_by_key(&db.store).await;
    assert_eq!(by_key.len(), 12);
    assert!(
        by_key.values().all(|o| o == &[Outcome::Deactivated]),
        "{by_key:?}"
    );
    assert_eq!(aws.depth(&queues.dead_letter).await, 0);
}

/// After the cause is fixed (`POST /_sim/allow/{id}`), `replay-dlq` moves the
/// dead-lettered terminations back and the DLQ drains to success; each replay is
/// audited.
#[tokio::test]
async fn fixed_cause_and_replay_drain_the_dlq_to_success() {
    let aws = aws().await;
    let db = fresh_postgres().await;
    let queues = aws.queues(5, 30).await;
    let bucket = aws.bucket_notifying(&queues.events).await;
    let recs = records("RP", 6);
    let (mut config, seed) = sim_config(&recs);
    let denied: Vec<String> = ["RP0002", "RP0005"]
        .iter()
        .map(|e| user_id_of(&seed, e))
        .collect();
    for id in &denied {
        config = config.with_denied(id);
    }
    let sim = start_sim(config).await;
    let env = env_for(&sim, &db.url, &queues);
    let service = Service::start(&env);
    aws.put(&bucket, "replay.json", json_manifest(&recs)).await;
    eventually("two dead letters", LIMIT, || async {
        aws.depth(&queues.dead_letter).await == 2
    })
    .await;

    // While it runs, the service is alive and ready (queues, database, token
    // endpoint all reachable).
    let http = reqwest::Client::new();
    let alive = http
        .get(health_url(&env, "/healthz"))
        .send()
        .await
        .expect("healthz");
    assert!(alive.status().is_success());
    let ready = http
        .get(health_url(&env, "/readyz"))
        .send()
        .await
        .expect("readyz");
    assert!(ready.status().is_success());
    let ready: serde_json::Value = ready.json().await.expect("readyz json");
    assert_eq!(ready["ready"], true, "{ready}");
    assert_eq!(ready["queues"].as_array().map(Vec::len), Some(3), "{ready}");

    let (status, out) = run_bin(&["replay-dlq", "--dry-run"], &env).await;
    assert!(status.success());
    assert!(
        out.contains("2 of 2 dead-lettered messages would be replayed"),
        "{out}"
    );
    assert_eq!(
        aws.depth(&queues.dead_letter).await,
        2,
        "a dry run moves nothing"
    );

    for id in &denied {
        let r = http
            .post(
                sim.base_url()
                    .join(&format!("_sim/allow/{id}"))
                    .expect("url"),
            )
            .send()
            .await
            .expect("allow");
        assert!(r.status().is_success());
    }
    let (status, out) = run_bin(
        &[
            "replay-dlq",
            "--reason",
            "forbidden",
            "--actor",
            "it-operator",
        ],
        &env,
    )
    .await;
    assert!(status.success(), "{out}");
    assert!(
        out.contains("2 of 2 dead-lettered messages replayed"),
        "{out}"
    );

    eventually("the replayed terminations to succeed", LIMIT, || async {
        denied
            .iter()
            .all(|id| sim.user(id).is_some_and(|u| !u.active))
            && aws.depth(&queues.terminations).await == 0
    })
    .await;
    assert!(service.terminate().await.success());
    assert_eq!(aws.depth(&queues.dead_letter).await, 0);

    let replays = pg_rows(
        &db.raw,
        "SELECT actor FROM scim_audit_log WHERE action = 'replay'",
    )
    .await;
    assert_eq!(replays.len(), 2);
    assert!(
        replays
            .iter()
            .all(|r| r.get::<Option<String>, _>("actor").as_deref() == Some("it-operator"))
    );
    for e in ["RP0002", "RP0005"] {
        let outcomes = terminal_by_key(&db.store)
            .await
            .remove(&key_of(e))
            .expect("rows");
        assert_eq!(outcomes, [Outcome::Forbidden, Outcome::Deactivated], "{e}");
    }
}

/// SIGTERM while terminations are in flight: the service exits 0, nothing is
/// dead-lettered, and after a restart every termination ends exactly once.
#[tokio::test]
async fn sigterm_mid_run_drains_and_a_restart_finishes_without_doubles() {
    let aws = aws().await;
    let db = fresh_postgres().await;
    let queues = aws.queues(5, 30).await;
    let bucket = aws.bucket_notifying(&queues.events).await;
    let recs = records("DR", 60);
    let (mut config, _) = sim_config(&recs);
    config.latency = Duration::from_millis(150);
    let sim = start_sim(config).await;
    let mut env = env_for(&sim, &db.url, &queues);
    env.push(("CONCURRENCY".into(), "3".into()));
    let service = Service::start(&env);
    aws.put(&bucket, "drain.csv", {
        let mut csv = String::from("externalId,terminationDate\n");
        for r in &recs {
            csv.push_str(&format!("{},2026-01-05\n", r.external_id));
        }
        csv
    })
    .await;
    eventually("a few terminations done", LIMIT, || async {
        terminal_by_key(&db.store).await.len() >= 5
    })
    .await;
    let status = service.terminate().await;
    assert!(status.success(), "exit after SIGTERM: {status:?}");
    let done_at_stop = terminal_by_key(&db.store).await.len();
    assert!(
        done_at_stop < 60,
        "the drain test needs work left at SIGTERM"
    );
    assert_eq!(
        aws.depth(&queues.dead_letter).await,
        0,
        "nothing dead-lettered by a drain"
    );

    let service = Service::start(&env);
    eventually("all 60 terminations done after restart", LIMIT, || async {
        terminal_by_key(&db.store).await.len() == 60
    })
    .await;
    assert!(service.terminate().await.success());
    let by_key = terminal_by_key(&db.store).await;
    assert!(
        by_key.values().all(|o| o == &[Outcome::Deactivated]),
        "{by_key:?}"
    );
    assert_eq!(
        sim.stats().count(ResourceKind::User, "PATCH"),
        60,
        "no second deactivation"
    );
    assert_eq!(aws.depth(&queues.dead_letter).await, 0);
}

/// Every SCIM request fails with a 5xx for a while, then the service recovers:
/// terminations are retried through the queue, none is lost or dead-lettered,
/// and none is deactivated twice.
#[tokio::test]
async fn a_5xx_storm_then_recovery_loses_nothing() {
    let aws = aws().await;
    let db = fresh_postgres().await;
    let queues = aws.queues(10, 30).await;
    let bucket = aws.bucket_notifying(&queues.events).await;
    let recs = records("ST", 15);
    let (config, _) = sim_config(&recs);
    let mut storm = config.clone();
    storm.error_rate = 1.0;
    let stormy = start_sim(storm).await;
    let addr = stormy.local_addr();
    let mut env = env_for(&stormy, &db.url, &queues);
    env.push(("ATTEMPT_TIMEOUT_SECS".into(), "2".into()));
    let service = Service::start(&env);
    aws.put(&bucket, "storm.json", json_manifest(&recs)).await;

    eventually("retries recorded during the storm", LIMIT, || async {
        let n = pg_rows(
            &db.raw,
            "SELECT 1 FROM scim_audit_log WHERE outcome = 'retrying'",
        )
        .await
        .len();
        n >= 15
    })
    .await;
    assert!(stormy.stats().injected_errors > 0);
    assert!(
        terminal_by_key(&db.store).await.is_empty(),
        "nothing can finish in the storm"
    );
    stormy.shutdown().await;
    // Recovery: the same directory, healthy, on the same address.
    let healthy = deprovision::sim::RunningSim::start(config, addr)
        .await
        .expect("restart simulator");

    eventually("all 15 deactivated after recovery", LIMIT, || async {
        terminal_by_key(&db.store).await.len() == 15
    })
    .await;
    assert!(service.terminate().await.success());
    let by_key = terminal_by_key(&db.store).await;
    assert!(
        by_key.values().all(|o| o == &[Outcome::Deactivated]),
        "{by_key:?}"
    );
    assert_eq!(
        healthy.stats().count(ResourceKind::User, "PATCH"),
        15,
        "no second deactivation"
    );
    assert_eq!(
        aws.depth(&queues.dead_letter).await,
        0,
        "nothing lost to the DLQ"
    );
}

/// `deprovision run --sandbox examples/terminations.json` in an empty directory
/// (as from a fresh clone): exit 0, a reconciled summary, the bad record and the
/// duplicate explained, the audit in the sandbox database.
#[tokio::test]
async fn run_sandbox_on_the_example_manifest_reconciles() {
    let dir = tempfile::tempdir().expect("temp dir");
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/terminations.json");
    let out = tokio::process::Command::new(bin())
        .args(["run", "--sandbox", "--format", "json"])
        .arg(&example)
        .current_dir(dir.path())
        .env_remove("DATABASE_URL")
        .output()
        .await
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_str(&stdout).expect("json summary");
    assert_eq!(summary["reconciled"], true);
    assert_eq!(summary["manifest"]["summary"]["records"], 10);
    assert_eq!(summary["manifest"]["summary"]["rejected"], 1);
    assert_eq!(summary["manifest"]["summary"]["duplicates"], 1);
    assert_eq!(
        summary["tally"]["outcomes"],
        serde_json::json!([["deactivated", 8]])
    );
    assert!(dir.path().join("deprovision-sandbox.db").exists());
    assert!(
        !dir.path().join("deprovision.db").exists(),
        "a sandbox never writes the real audit"
    );

    // A second run finds everything done and acts on nobody.
    let again = tokio::process::Command::new(bin())
        .args(["run", "--sandbox", "--format", "json"])
        .arg(&example)
        .current_dir(dir.path())
        .env_remove("DATABASE_URL")
        .output()
        .await
        .expect("run again");
    assert!(again.status.success());
    let summary: serde_json::Value = serde_json::from_slice(&again.stdout).expect("json");
    assert_eq!(summary["tally"]["already_done"], 8);
    assert_eq!(summary["tally"]["outcomes"], serde_json::json!([]));
}

/// `dispatch` of an object that does not exist fails naming the object and
/// S3's error code in one line, without the SDK's raw response (headers, XML).
#[tokio::test]
async fn dispatch_of_a_missing_object_names_it_and_the_s3_error() {
    let aws = aws().await;
    let db = fresh_postgres().await;
    let queues = aws.queues(5, 30).await;
    let bucket = aws.bucket("missing-manifests").await;
    let env: Vec<(String, String)> = [
        ("DATABASE_URL", db.url.clone()),
        ("TERMINATIONS_QUEUE_URL", queues.terminations.clone()),
        ("MESSAGE_SIGNING_KEYS", format!("k1:{}", "s".repeat(40))),
        ("MAX_TERMINATIONS_SHARE", "1".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let object = format!("s3://{bucket}/in/nothing-here.json");
    let (status, _, err) = run_full(&["dispatch", &object], &env).await;
    assert!(!status.success());
    assert!(err.contains(&object), "{err}");
    assert!(err.contains("NoSuchKey"), "{err}");
    for noise in ["<?xml", "x-amz", "headers"] {
        assert!(!err.contains(noise), "{noise} in {err}");
    }
    assert_eq!(aws.depth(&queues.terminations).await, 0);
}

/// `run` with a client secret the login server refuses stops before anything
/// is enqueued, naming the primary client (not its secret), instead of
/// failing every person one by one.
#[tokio::test]
async fn run_with_refused_credentials_refuses_to_start() {
    let aws = aws().await;
    let db = fresh_postgres().await;
    let queues = aws.queues(5, 30).await;
    let recs = records("LC", 2);
    let (config, _) = sim_config(&recs);
    let sim = start_sim(config).await;
    let wrong = "wrong-secret-7d1f0c";
    let mut env = env_for(&sim, &db.url, &queues);
    env.retain(|(k, _)| k != "PRIMARY_CLIENT_SECRET");
    env.push(("PRIMARY_CLIENT_SECRET".into(), wrong.into()));
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("m.json");
    std::fs::write(&path, json_manifest(&recs)).expect("write");
    let (status, _, err) = run_full(&["run", &path.display().to_string()], &env).await;
    assert!(!status.success());
    assert!(err.contains("refusing to start"), "{err}");
    assert!(err.contains(PRIMARY.0), "names the client: {err}");
    assert!(!err.contains(wrong), "the secret leaked: {err}");
    let rows = db.store.termination_rows(None, None).await.expect("rows");
    assert!(rows.is_empty(), "nothing dispatched: {rows:?}");
    assert_eq!(sim.stats().count(ResourceKind::User, "PATCH"), 0);
}

/// A person an earlier `run` left `forbidden` (the org refused both clients) is
/// listed, and a plain rerun does not touch them again (exit 1); once the cause
/// is fixed, `run --retry-failed` deactivates them and leaves the finished ones
/// alone.
#[tokio::test]
async fn run_retry_failed_attempts_dead_lettered_people_again() {
    let aws = aws().await;
    let db = fresh_postgres().await;
    let queues = aws.queues(5, 30).await;
    let recs = records("RF", 3);
    let (config, seed) = sim_config(&recs);
    let denied = user_id_of(&seed, "RF0002");
    let sim = start_sim(config.with_denied(denied.clone())).await;
    let env = env_for(&sim, &db.url, &queues);
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("m.json");
    std::fs::write(&path, json_manifest(&recs)).expect("write");
    let path = path.display().to_string();
    let run = |extra: &'static [&'static str]| {
        let env = env.clone();
        let path = path.clone();
        async move {
            let mut args = vec!["run", "--format", "json"];
            args.extend_from_slice(extra);
            args.push(&path);
            let (status, out, err) = run_full(&args, &env).await;
            let summary: serde_json::Value =
                serde_json::from_str(&out).unwrap_or(serde_json::Value::Null);
            (status, summary, err)
        }
    };

    let (status, summary, err) = run(&[]).await;
    assert_eq!(status.code(), Some(1), "{summary}\n{err}");
    assert_eq!(
        summary["tally"]["outcomes"],
        serde_json::json!([["deactivated", 2], ["forbidden", 1]])
    );
    sim.allow(&denied);

    let (status, summary, err) = run(&[]).await;
    assert_eq!(status.code(), Some(1), "still not done: {summary}\n{err}");
    assert_eq!(summary["tally"]["already_done"], 3);
    assert!(sim.users_by_external_id("RF0002")[0].active);

    let (status, summary, err) = run(&["--retry-failed"]).await;
    assert!(status.success(), "{summary}\n{err}");
    assert_eq!(summary["tally"]["already_done"], 2);
    assert_eq!(
        summary["tally"]["outcomes"],
        serde_json::json!([["deactivated", 1]])
    );
    assert!(!sim.users_by_external_id("RF0002")[0].active);
}
