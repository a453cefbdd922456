//! `deprovision replay-dlq` end to end (issues 5 and 6), through moto's SQS,
//! PostgreSQL, the simulator and a running `deprovision serve`:
//!
//! - one run is one pass: it ends (under a timeout, so a regression fails rather
//!   than hangs) although the pool dead-letters a replay whose cause is not fixed
//!   again, and audits each message once;
//! - a forged (unsigned) and an altered message, dead-lettered as
//!   `bad_signature`, are re-verified with the replaying process's keys, skipped,
//!   reported, audited and left on the DLQ, never sent back;
//! - a legitimately signed message dead-lettered for a cause since fixed is
//!   replayed and carried out;
//! - `--reason` accepts only the reasons the consumer writes, and the command
//!   refuses to start without the signing set-up, like `serve`.

use std::collections::BTreeMap;
use std::process::ExitStatus;
use std::time::Duration;

use deprovision::audit::ManifestOrigin;
use deprovision::domain::{
    EffectiveAt, ExternalId, RecordAction, TerminationDate, TerminationRecord,
};
use deprovision::queue::{TerminationMessage, attr};
use deprovision::signing::Keyring;
use deprovision::sim::ResourceKind;
use secrecy::SecretString;
use sqlx::Row;

use crate::audit::{Raw, TestDb, fresh_postgres};
use crate::pipeline::harness::*;

const LIMIT: Duration = Duration::from_secs(180);

/// How long `replay-dlq` may take before the test calls it a hang. Generous:
/// the pass itself takes a few seconds; the old, endless one never returned.
const REPLAY_LIMIT: Duration = Duration::from_secs(120);

/// A termination message for `external_id` as a dispatcher would build it.
fn message(external_id: &str) -> String {
    TerminationMessage::new(
        TerminationRecord {
            external_id: ExternalId::parse(external_id).expect("id"),
            user_id: None,
            termination_date: TerminationDate::parse("2026-01-05").expect("date"),
            action: RecordAction::Terminate,
        },
        ManifestOrigin {
            bucket: "hr".into(),
            key: "replay.json".into(),
            version: None,
            index: Some(0),
        },
        chrono_tz::UTC,
        EffectiveAt::StartOfDay,
    )
    .encode()
}

/// Runs the binary, killed if it outlives [`REPLAY_LIMIT`] (the test then
/// fails); returns status, stdout and stderr.
async fn run_bounded(args: &[&str], env: &[(String, String)]) -> (ExitStatus, String, String) {
    let child = tokio::process::Command::new(bin())
        .args(args)
        .envs(env.iter().cloned())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run deprovision");
    let out = tokio::time::timeout(REPLAY_LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "`deprovision {}` did not end within {REPLAY_LIMIT:?}",
                args.join(" ")
            )
        })
        .expect("wait for deprovision");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Audit rows as (action, outcome, external_id, error_message, actor), in id
/// order.
async fn rows(db: &TestDb) -> Vec<(String, String, Option<String>, String, Option<String>)> {
    let Raw::Pg(pool) = &db.raw else {
        unreachable!("replay tests use PostgreSQL")
    };
    sqlx::query(
        "SELECT action, outcome, external_id, coalesce(error_message, '') AS m, actor \
         FROM scim_audit_log ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .expect("audit rows")
    .into_iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
    .collect()
}

/// DLQ contents as (externalId in the body, reason), sorted.
async fn dead_letters(aws: &Aws, url: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = aws
        .peek_all(url)
        .await
        .into_iter()
        .map(|(body, attrs)| {
            let e = TerminationMessage::decode(&body)
                .expect("body")
                .record
                .external_id;
            (e.as_str().to_owned(), attrs[attr::REASON].clone())
        })
        .collect();
    out.sort();
    out
}

/// The tester's set-up: serve with signing keys; an unsigned and an altered
/// message sent straight to the terminations queue (dead-lettered as
/// `bad_signature`), and two legitimately signed ones refused by Genesys
/// (`forbidden`). One refusal is fixed; then `replay-dlq` without `--max`, with
/// the pool still running: it ends, replays the two signed messages once each
/// (the fixed one is carried out; the other is dead-lettered again by the pool
/// and left for the next run), and skips the two forgeries, which stay on the
/// DLQ and are never sent back (the pool audits no second `bad_signature`).
#[tokio::test]
async fn replay_ends_while_the_pool_dead_letters_and_keeps_forgeries_on_the_dlq() {
    let aws = aws().await;
    let db = fresh_postgres().await;
    let queues = aws.queues(5, 30).await;
    let recs = records("RP", 4);
    let (config, seed) = sim_config(&recs);
    let (fixed, still_denied) = (user_id_of(&seed, "RP0003"), user_id_of(&seed, "RP0004"));
    let sim = start_sim(config.with_denied(&fixed).with_denied(&still_denied)).await;
    let env = env_for(&sim, &db.url, &queues);
    let ring = Keyring::parse(&SecretString::from(SIGNING_KEYS.to_owned())).expect("ring");

    // RP0001 unsigned; RP0002 a real message's signature over a body whose
    // externalId was changed; RP0003 and RP0004 as the dispatcher sends them.
    aws.send_with_attributes(&queues.terminations, &message("RP0001"), &BTreeMap::new())
        .await;
    aws.send_with_attributes(
        &queues.terminations,
        &message("RP0002"),
        &ring.sign(&message("RP0001")),
    )
    .await;
    aws.send_signed(&queues.terminations, &message("RP0003"))
        .await;
    aws.send_signed(&queues.terminations, &message("RP0004"))
        .await;

    let service = Service::start(&env);
    eventually("four dead letters", LIMIT, || async {
        aws.depth(&queues.dead_letter).await == 4 && terminal_by_key(&db.store).await.len() == 2
    })
    .await;
    assert_eq!(
        dead_letters(&aws, &queues.dead_letter).await,
        [
            ("RP0001".into(), "bad_signature".into()),
            ("RP0002".into(), "bad_signature".into()),
            ("RP0003".into(), "forbidden".into()),
            ("RP0004".into(), "forbidden".into()),
        ]
    );
    let before = rows(&db).await.len();

    sim.allow(&fixed);
    let (status, out, err) =
        run_bounded(&["replay-dlq", "--by", "tester", "--format", "json"], &env).await;
    assert!(status.success(), "{out}\n{err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("json report");
    let items = report["items"].as_array().expect("items");
    assert_eq!(items.len(), 4, "{report:#}");
    let item = |e: &str| {
        items
            .iter()
            .find(|i| i["external_id"] == e)
            .unwrap_or_else(|| panic!("{e} not reported: {report:#}"))
    };
    for e in ["RP0001", "RP0002"] {
        assert_eq!(item(e)["replayed"], false, "{report:#}");
        let why = item(e)["skipped"].as_str().unwrap_or_default();
        assert!(
            why.contains("bad_signature") && why.contains("kept in the dead-letter queue"),
            "{e}: {why}"
        );
    }
    assert!(
        item("RP0001")["skipped"]
            .as_str()
            .is_some_and(|s| s.contains("not signed"))
    );
    assert!(
        item("RP0002")["skipped"]
            .as_str()
            .is_some_and(|s| s.contains("does not match"))
    );
    for e in ["RP0003", "RP0004"] {
        assert_eq!(item(e)["replayed"], true, "{report:#}");
    }

    // The fixed one is carried out; the other is refused again and returns to
    // the DLQ under a new message id, for the next run.
    eventually(
        "RP0003 deactivated and RP0004 dead-lettered again",
        LIMIT,
        || async {
            !sim.users_by_external_id("RP0003")[0].active
                && dead_letters(&aws, &queues.dead_letter).await.len() == 3
        },
    )
    .await;
    assert!(service.terminate().await.success());
    assert_eq!(
        dead_letters(&aws, &queues.dead_letter).await,
        [
            ("RP0001".into(), "bad_signature".into()),
            ("RP0002".into(), "bad_signature".into()),
            ("RP0004".into(), "forbidden".into()),
        ]
    );
    for e in ["RP0001", "RP0002", "RP0004"] {
        assert!(
            sim.users_by_external_id(e)[0].active,
            "{e} must stay active"
        );
    }
    assert_eq!(
        sim.stats().count_status(ResourceKind::User, "PATCH", 200),
        1,
        "only RP0003 was changed"
    );

    // One audit row per message for the run, by the operator, and the
    // forgeries never reached the pool again.
    let after = rows(&db).await;
    let new = &after[before..];
    let replay: Vec<_> = new.iter().filter(|r| r.0 == "replay").collect();
    assert_eq!(replay.len(), 4, "{new:#?}");
    assert!(replay.iter().all(|r| r.4.as_deref() == Some("tester")));
    let skipped: Vec<_> = replay.iter().filter(|r| r.1 == "invalid").collect();
    assert_eq!(skipped.len(), 2, "{replay:#?}");
    assert!(
        skipped
            .iter()
            .all(|r| r.3.contains("kept in the dead-letter queue"))
    );
    assert_eq!(replay.iter().filter(|r| r.1 == "retrying").count(), 2);
    assert!(
        !new.iter()
            .any(|r| r.0 != "replay" && r.3.contains("bad_signature")),
        "a forgery was sent back to the pool: {new:#?}"
    );
    let outcomes = terminal_by_key(&db.store).await;
    assert_eq!(
        outcomes[&key_of("RP0004")],
        [
            deprovision::domain::Outcome::Forbidden,
            deprovision::domain::Outcome::Forbidden
        ]
    );
}

/// `--reason` takes only the reasons the consumer writes, refused at start-up
/// with the list; and without `MESSAGE_SIGNING_KEYS` (and without
/// `MESSAGE_SIGNING=off`) the command refuses to start, naming the variable.
#[tokio::test]
async fn replay_refuses_unknown_reasons_and_a_missing_signing_setup() {
    let aws = aws().await;
    let db = fresh_postgres().await;
    let queues = aws.queues(5, 30).await;
    let sim = start_sim(sim_config(&records("RR", 1)).0).await;
    let env = env_for(&sim, &db.url, &queues);
    aws.send_signed(&queues.dead_letter, &message("RR0001"))
        .await;

    let (status, out, err) = run_bounded(&["replay-dlq", "--reason", "not_a_reason"], &env).await;
    assert!(!status.success(), "accepted: {out}");
    for reason in [
        "ambiguous",
        "identity_mismatch",
        "invalid",
        "forbidden",
        "failed",
        "bad_signature",
        "unknown",
    ] {
        assert!(err.contains(reason), "{reason} not listed: {err}");
    }
    assert!(err.contains("not_a_reason"), "{err}");

    let unsigned: Vec<(String, String)> = env
        .iter()
        .filter(|(k, _)| k != "MESSAGE_SIGNING_KEYS")
        .cloned()
        .collect();
    let (status, out, err) = run_bounded(&["replay-dlq"], &unsigned).await;
    assert!(!status.success(), "started without keys: {out}");
    assert!(err.contains("MESSAGE_SIGNING_KEYS"), "{err}");

    // Neither touched the queue; a valid reason works.
    assert_eq!(aws.depth(&queues.dead_letter).await, 1);
    let (status, out, err) =
        run_bounded(&["replay-dlq", "--reason", "unknown", "--dry-run"], &env).await;
    assert!(status.success(), "{err}");
    assert!(
        out.contains("1 of 1 dead-lettered messages would be replayed"),
        "{out}"
    );
}
