//! Safety rails end to end (issue 6, items 2, 3 and 5), through the real parts:
//! moto's S3/SQS, PostgreSQL, the simulator, and the `deprovision` binary.
//!
//! - the mass-deactivation breaker: a 600-record manifest with the limit at 500
//!   is held whole (nothing enqueued, a `held` audit row) until `approve`, then
//!   all 600 are processed; `reject` discards (and keeps discarding re-uploads);
//!   the share limit trips with a small org; `run` refuses without `--approve`;
//! - protected accounts (by externalId, by userId, by group name) stay active in
//!   `run`, `user` and `serve`, audited `protected` and counted in the weekly
//!   report;
//! - message signing: an unsigned, an altered and a retired-key message reach the
//!   DLQ as `bad_signature` and deactivate nobody; a message signed with the
//!   second key (rotation) verifies; a dead-lettered signed message replayed by
//!   `replay-dlq` still verifies.

use std::time::Duration;

use deprovision::audit::{ManifestHoldState, ManifestOrigin};
use deprovision::domain::{EffectiveAt, ExternalId, Outcome, TerminationDate, TerminationRecord};
use deprovision::queue::{TerminationMessage, attr};
use deprovision::signing::Keyring;
use deprovision::sim::{ResourceKind, SeedGroupRef};
use secrecy::SecretString;
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::audit::{Raw, TestDb, fresh_postgres};
use crate::pipeline::harness::*;

const LIMIT: Duration = Duration::from_secs(180);

const KEY1: &str = "k1:1111111111111111111111111111111111111111111111111111111111111111";
const KEY2: &str = "k2:2222222222222222222222222222222222222222222222222222222222222222";
const RETIRED: &str = "k0:0000000000000000000000000000000000000000000000000000000000000000";

/// Audit rows as (action, outcome, error_message, actor), in id order.
async fn rows(db: &TestDb) -> Vec<(String, String, String, Option<String>)> {
    let Raw::Pg(pool) = &db.raw else {
        unreachable!("rails tests use PostgreSQL")
    };
    sqlx::query(
        "SELECT action, outcome, coalesce(error_message, '') AS m, actor FROM scim_audit_log ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .expect("audit rows")
    .into_iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

fn manifest_id(body: &str) -> String {
    hex::encode(Sha256::digest(body.as_bytes()))[..16].to_owned()
}

fn with(env: &[(String, String)], extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = env.to_vec();
    env.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    env
}

/// A 600-record manifest, limit 500, through `serve`: held whole — no message
/// on the terminations queue, a `held` audit row naming the MANIFEST_ID, the S3
/// event deleted — until `approve`, after which all 600 are deactivated and the
/// approval is audited with who ran it; a second approval is refused.
#[tokio::test]
async fn an_over_limit_manifest_is_held_until_approved() {
    let aws = aws().await;
    let db = fresh_postgres().await;
    let queues = aws.queues(5, 30).await;
    let bucket = aws.bucket_notifying(&queues.events).await;
    let recs = records("BR", 600);
    let (config, _seed) = sim_config(&recs);
    let sim = start_sim(config).await;
    let env = with(
        &env_for(&sim, &db.url, &queues),
        &[
            ("MAX_TERMINATIONS_PER_MANIFEST", "500"),
            ("CONCURRENCY", "16"),
        ],
    );
    let service = Service::start(&env);
    let body = json_manifest(&recs);
    let id = manifest_id(&body);
    aws.put(&bucket, "incoming/mass.json", body.clone()).await;

    eventually(
        "the manifest to be held and its event deleted",
        LIMIT,
        || async {
            matches!(db.store.held_manifest(&id).await, Ok(Some(_)))
                && aws.depth(&queues.events).await == 0
        },
    )
    .await;
    let held = db.store.held_manifest(&id).await.unwrap().unwrap();
    assert_eq!(held.state, ManifestHoldState::Held);
    assert_eq!(held.terminations, 600);
    assert_eq!(held.sha256, hex::encode(Sha256::digest(body.as_bytes())));
    assert!(
        held.reason.contains("MAX_TERMINATIONS_PER_MANIFEST=500"),
        "{}",
        held.reason
    );
    assert_eq!(aws.depth(&queues.terminations).await, 0, "nothing enqueued");
    assert_eq!(sim.stats().count(ResourceKind::User, "PATCH"), 0);
    let audit = rows(&db).await;
    let held_rows: Vec<_> = audit.iter().filter(|r| r.1 == "held").collect();
    assert_eq!(held_rows.len(), 1, "{audit:?}");
    assert!(held_rows[0].2.contains(&id), "{:?}", held_rows[0]);
    assert!(
        held_rows[0].2.contains("deprovision approve"),
        "{:?}",
        held_rows[0]
    );

    let (status, out, err) = run_full(&["approve", &id, "--by", "alice"], &env).await;
    assert!(status.success(), "{status:?}\n{out}\n{err}");
    let approval: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(approval["dispatch"]["enqueued"], 600);

    eventually("600 terminal outcomes", LIMIT, || async {
        terminal_by_key(&db.store).await.len() == 600
    })
    .await;
    assert!(service.terminate().await.success());
    let by_key = terminal_by_key(&db.store).await;
    assert!(by_key.values().all(|o| o == &[Outcome::Deactivated]));
    for r in recs.iter().step_by(97) {
        let u = &sim.users_by_external_id(r.external_id.as_str())[0];
        assert!(!u.active, "{} still active", r.external_id);
    }
    let held = db.store.held_manifest(&id).await.unwrap().unwrap();
    assert_eq!(held.state, ManifestHoldState::Approved);
    assert_eq!(held.decided_by.as_deref(), Some("alice"));
    let audit = rows(&db).await;
    assert!(
        audit
            .iter()
            .any(|r| r.0 == "approve" && r.3.as_deref() == Some("alice") && r.2.contains(&id)),
        "no approve row by alice"
    );

    let (status, _, err) = run_full(&["approve", &id, "--by", "bob"], &env).await;
    assert!(!status.success(), "a second approval must be refused");
    assert!(err.contains("already approved by alice"), "{err}");
}

/// `dispatch` of an over-limit manifest exits 3 and enqueues nothing; `reject`
/// discards it (audited with the actor); approving a rejected one is refused;
/// the same content uploaded again stays held, never dispatched.
#[tokio::test]
async fn a_rejected_manifest_is_discarded_for_good() {
    let aws = aws().await;
    let db = fresh_postgres().await;
    let queues = aws.queues(5, 30).await;
    let bucket = aws.bucket("hr-rails").await;
    let recs = records("RJ", 6);
    let body = json_manifest(&recs);
    let id = manifest_id(&body);
    aws.put(&bucket, "hr/a.json", body.clone()).await;
    let sim = start_sim(sim_config(&recs).0).await;
    let env = with(
        &env_for(&sim, &db.url, &queues),
        &[("MAX_TERMINATIONS_PER_MANIFEST", "5")],
    );
    let (status, out, err) =
        run_full(&["dispatch", &format!("s3://{bucket}/hr/a.json")], &env).await;
    assert_eq!(status.code(), Some(3), "{out}\n{err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(report["manifest_id"], id.as_str());
    assert_eq!(report["enqueued"], 0);
    assert_eq!(aws.depth(&queues.terminations).await, 0);

    let (status, out, err) = run_full(&["reject", &id, "--by", "carol"], &env).await;
    assert!(status.success(), "{out}\n{err}");
    let held = db.store.held_manifest(&id).await.unwrap().unwrap();
    assert_eq!(held.state, ManifestHoldState::Rejected);
    assert_eq!(held.decided_by.as_deref(), Some("carol"));
    assert!(
        rows(&db)
            .await
            .iter()
            .any(|r| r.0 == "reject" && r.3.as_deref() == Some("carol")),
        "no reject row"
    );

    let (status, _, err) = run_full(&["approve", &id], &env).await;
    assert!(!status.success());
    assert!(err.contains("already rejected by carol"), "{err}");
    let (status, _, err) = run_full(&["reject", &id], &env).await;
    assert!(!status.success());
    assert!(err.contains("already rejected"), "{err}");
    let (status, _, err) = run_full(&["approve", "0123456789abcdef"], &env).await;
    assert!(!status.success());
    assert!(err.contains("no held manifest"), "{err}");

    // The same bytes under another key: still never dispatched, and no hint
    // says to approve what no approval releases.
    aws.put(&bucket, "hr/again.json", body.clone()).await;
    let again = format!("s3://{bucket}/hr/again.json");
    let (status, out, err) = run_full(&["dispatch", &again], &env).await;
    assert_eq!(status.code(), Some(3), "{out}");
    assert!(out.contains("rejected by carol"), "{out}");
    assert!(out.contains("\"held_rejected\": true"), "{out}");
    assert!(!err.contains("approve with"), "{err}");
    let (status, out, err) = run_full(&["dispatch", "--dry-run", &again], &env).await;
    assert_eq!(status.code(), Some(3), "{out}\n{err}");
    assert!(
        err.contains("rejected") && !err.contains("deprovision approve"),
        "{err}"
    );
    // `run` of the same content: a document without an approve command.
    let dir = tempfile::tempdir().expect("dir");
    let local = dir.path().join("a.json");
    std::fs::write(&local, &body).expect("write");
    let (status, out, err) = run_full(
        &["run", "--format", "json", &local.display().to_string()],
        &env,
    )
    .await;
    assert_eq!(status.code(), Some(3), "{out}\n{err}");
    let held: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(held["rejected"], true, "{held}");
    assert!(held["approve"].is_null(), "{held}");
    assert!(!err.contains("run again with --approve"), "{err}");
    assert_eq!(aws.depth(&queues.terminations).await, 0);
    assert_eq!(sim.stats().count(ResourceKind::User, "PATCH"), 0);
}

/// The share limit: 20 active users, limit 10%: 3 terminations are held (15%),
/// 2 are dispatched (10%, not over). The count is read from the simulator.
#[tokio::test]
async fn the_share_limit_trips_with_a_small_org() {
    let aws = aws().await;
    let db = fresh_postgres().await;
    let queues = aws.queues(5, 30).await;
    let bucket = aws.bucket("hr-share").await;
    let org = records("SH", 20);
    let sim = start_sim(sim_config(&org).0).await;
    let env = with(
        &env_for(&sim, &db.url, &queues),
        &[("MAX_TERMINATIONS_SHARE", "0.10")],
    );
    aws.put(&bucket, "three.json", json_manifest(&org[..3]))
        .await;
    aws.put(&bucket, "two.json", json_manifest(&org[3..5]))
        .await;

    let (status, out, err) =
        run_full(&["dispatch", &format!("s3://{bucket}/three.json")], &env).await;
    assert_eq!(status.code(), Some(3), "{out}\n{err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("json");
    let reason = report["held"].as_str().expect("held reason");
    assert!(reason.contains("of 20 active users"), "{reason}");
    assert!(reason.contains("MAX_TERMINATIONS_SHARE=0.1"), "{reason}");
    assert_eq!(aws.depth(&queues.terminations).await, 0);

    let (status, out, err) =
        run_full(&["dispatch", &format!("s3://{bucket}/two.json")], &env).await;
    assert!(status.success(), "{out}\n{err}");
    assert_eq!(aws.depth(&queues.terminations).await, 2);
    // Every enqueued message carries a signature.
    for (_, attrs) in aws.peek_all(&queues.terminations).await {
        assert_eq!(
            attrs.get(attr::SIGNATURE_KEY_ID).map(String::as_str),
            Some("test-k1")
        );
        assert_eq!(attrs.get(attr::SIGNATURE).map(String::len), Some(64));
    }
}

/// `run` refuses an over-limit manifest (exit 3, saying how to proceed) and
/// changes nobody; `run --approve` runs it and audits who approved.
#[tokio::test]
async fn run_refuses_an_over_limit_manifest_without_approve() {
    let dir = tempfile::tempdir().expect("dir");
    let recs = records("RN", 6);
    let path = dir.path().join("six.json");
    std::fs::write(&path, json_manifest(&recs)).expect("write");
    let db = format!("sqlite://{}", dir.path().join("sandbox.db").display());
    let path = path.display().to_string();
    let env = [("MAX_TERMINATIONS_PER_MANIFEST".to_owned(), "5".to_owned())];
    let args = [
        "run",
        "--sandbox",
        "--sandbox-database-url",
        &db,
        "--format",
        "json",
        &path,
    ];

    let id = manifest_id(&json_manifest(&recs));

    // A dry run shows the plan and says the breaker would hold it; no hold.
    let mut dry = args.to_vec();
    dry.push("--dry-run");
    let (status, out, err) = run_full(&dry, &env).await;
    assert!(status.success(), "{out}\n{err}");
    assert!(
        err.contains("would be held by the mass-deactivation breaker"),
        "{err}"
    );
    // The plan a reviewer approves says the same, for a program to read.
    let plan: serde_json::Value = serde_json::from_str(&out).expect("plan JSON");
    assert_eq!(plan["breaker"]["wouldHold"], true, "{plan}");
    assert_eq!(plan["breaker"]["terminations"], 6, "{plan}");
    assert_eq!(plan["breaker"]["approved"], false, "{plan}");
    let reason = plan["breaker"]["reason"].as_str().expect("a reason");
    assert!(
        reason.contains("MAX_TERMINATIONS_PER_MANIFEST=5"),
        "{reason}"
    );
    let store = deprovision::audit::AuditStore::connect(&db)
        .await
        .expect("db");
    assert!(store.held_manifest(&id).await.unwrap().is_none());

    let (status, out, err) = run_full(&args, &env).await;
    assert_eq!(status.code(), Some(3), "{out}\n{err}");
    assert!(err.contains("--approve"), "{err}");
    assert!(err.contains("MAX_TERMINATIONS_PER_MANIFEST=5"), "{err}");
    let rows = store.termination_rows(None, None).await.unwrap();
    assert!(
        rows.iter().all(|r| r.entry.outcome == Outcome::DryRun),
        "only the dry run's rows: {rows:?}"
    );

    let mut approved = args.to_vec();
    approved.extend(["--approve", "--by", "dave"]);
    let (status, out, err) = run_full(&approved, &env).await;
    assert!(status.success(), "{out}\n{err}");
    let summary: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        summary["tally"]["outcomes"],
        serde_json::json!([["deactivated", 6]])
    );
    let held = store
        .held_manifest(&id)
        .await
        .unwrap()
        .expect("held earlier");
    assert_eq!(held.state, ManifestHoldState::Approved);
    assert_eq!(held.decided_by.as_deref(), Some("dave"));
}

/// Protected accounts stay active and are audited `protected` (by externalId,
/// by userId, by group display name), in `run`, in `user` and in `serve`; the
/// weekly report counts them.
#[tokio::test]
async fn protected_accounts_stay_active() {
    let aws = aws().await;
    let db = fresh_postgres().await;
    let queues = aws.queues(5, 30).await;
    let recs = records("PR", 6);
    let (mut config, mut seed) = sim_config(&recs);
    let glass = seed
        .users
        .iter_mut()
        .find(|u| u.external_id.as_deref() == Some("PR0003"))
        .expect("PR0003");
    glass.groups.push(SeedGroupRef::Name("Break Glass".into()));
    config = config.with_seed(seed.clone());
    let sim = start_sim(config).await;
    let by_user_id = user_id_of(&seed, "PR0002");
    let env = with(
        &env_for(&sim, &db.url, &queues),
        &[
            ("PROTECTED_USERS", &format!("PR0001, {by_user_id}")),
            ("PROTECTED_GROUPS", "break glass"),
        ],
    );

    // `run` against the simulator (in-process queue, ephemeral signing key).
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("m.json");
    std::fs::write(&path, json_manifest(&recs[..4])).expect("write");
    let (status, out, err) = run_full(
        &["run", "--format", "json", &path.display().to_string()],
        &env,
    )
    .await;
    assert!(status.success(), "{out}\n{err}");
    let summary: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        summary["tally"]["outcomes"],
        serde_json::json!([["deactivated", 1], ["protected", 3]])
    );
    for e in ["PR0001", "PR0002", "PR0003"] {
        let u = &sim.users_by_external_id(e)[0];
        assert!(u.active, "{e} is protected and must stay active");
        assert!(!u.groups.is_empty(), "{e} keeps its groups");
    }
    assert!(!sim.users_by_external_id("PR0004")[0].active);
    let audit = rows(&db).await;
    let protected: Vec<_> = audit.iter().filter(|r| r.1 == "protected").collect();
    assert_eq!(protected.len(), 3, "{audit:?}");
    assert!(
        protected
            .iter()
            .any(|r| r.2.contains("externalId \"PR0001\""))
    );
    assert!(protected.iter().any(|r| r.2.contains(&by_user_id)));
    assert!(protected.iter().any(|r| r.2.contains("PROTECTED_GROUPS")));
    // The group's real name, not a placeholder.
    assert!(
        protected
            .iter()
            .any(|r| r.2.contains("member of group \"Break Glass\"")),
        "{protected:?}"
    );

    // `user`: refused, exit 1, outcome protected.
    let (status, out, _) = run_full(
        &["user", "--external-id", "PR0003", "--format", "json"],
        &env,
    )
    .await;
    assert_eq!(status.code(), Some(1), "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(report["outcome"], "protected");

    // `serve`: a signed message for a protected user is deleted, not
    // dead-lettered, and changes nothing.
    let service = Service::start(&env);
    let ring = Keyring::parse(&SecretString::from(SIGNING_KEYS)).expect("keys");
    // Another date: a termination the run above has not finished already.
    let m = message_dated("PR0001", "2026-01-06");
    send_signed(&aws, &queues.terminations, &m, &ring.sign(&m)).await;
    eventually("the protected message to be audited", LIMIT, || async {
        rows(&db)
            .await
            .iter()
            .filter(|r| r.1 == "protected")
            .count()
            == 5
    })
    .await;
    eventually("the terminations queue to drain", LIMIT, || async {
        aws.depth(&queues.terminations).await == 0
    })
    .await;
    assert!(service.terminate().await.success());
    assert_eq!(
        aws.depth(&queues.dead_letter).await,
        0,
        "protected is not dead-lettered"
    );
    assert!(sim.users_by_external_id("PR0001")[0].active);
    assert_eq!(
        sim.stats().count(ResourceKind::User, "PATCH"),
        1,
        "only PR0004 was deactivated"
    );

    let report = deprovision::report::weekly(&db.store, 1, chrono_tz::UTC, chrono::Utc::now())
        .await
        .expect("weekly");
    assert_eq!(report.weeks.last().expect("a week").protected, 5);
}

/// A termination message body for `external_id` (date in the past).
fn message(external_id: &str) -> String {
    message_dated(external_id, "2026-01-05")
}

fn message_dated(external_id: &str, date: &str) -> String {
    TerminationMessage::new(
        TerminationRecord {
            external_id: ExternalId::parse(external_id).expect("id"),
            user_id: None,
            termination_date: TerminationDate::parse(date).expect("date"),
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

async fn send_signed(
    aws: &Aws,
    url: &str,
    body: &str,
    attributes: &std::collections::BTreeMap<String, String>,
) {
    aws.send_with_attributes(url, body, attributes).await;
}

/// Messages sent straight to SQS: unsigned, altered after signing, and signed
/// with a retired key land in the DLQ as `bad_signature` (audited `invalid`)
/// and deactivate nobody; one signed with the second key of the ring (rotation)
/// is carried out; a correctly signed message dead-lettered for another reason
/// keeps its signature through the DLQ and `replay-dlq`, and then verifies.
#[tokio::test]
async fn unauthentic_messages_are_dead_lettered_as_bad_signature() {
    let aws = aws().await;
    let db = fresh_postgres().await;
    let queues = aws.queues(5, 30).await;
    let recs = records("SG", 6);
    let (mut config, seed) = sim_config(&recs);
    let denied = user_id_of(&seed, "SG0006");
    config = config.with_denied(&denied);
    let sim = start_sim(config).await;
    // k2 signs, k1 still verifies (mid-rotation).
    let keys = format!("{KEY2},{KEY1}");
    let env = with(
        &env_for(&sim, &db.url, &queues),
        &[("MESSAGE_SIGNING_KEYS", keys.as_str())],
    );
    let parse = |raw: &str| Keyring::parse(&SecretString::from(raw.to_owned())).expect("ring");
    let (k1, k2, retired) = (parse(KEY1), parse(KEY2), parse(RETIRED));

    let unsigned = message("SG0001");
    send_signed(&aws, &queues.terminations, &unsigned, &Default::default()).await;
    let signed = k2.sign(&message("SG0002"));
    send_signed(&aws, &queues.terminations, &message("SG0003"), &signed).await;
    let old = message("SG0004");
    send_signed(&aws, &queues.terminations, &old, &retired.sign(&old)).await;
    let rotated = message("SG0005");
    send_signed(&aws, &queues.terminations, &rotated, &k1.sign(&rotated)).await;
    let refused = message("SG0006");
    send_signed(&aws, &queues.terminations, &refused, &k2.sign(&refused)).await;

    let service = Service::start(&env);
    eventually("4 dead letters and the rotated one done", LIMIT, || async {
        aws.depth(&queues.dead_letter).await == 4 && terminal_by_key(&db.store).await.len() == 2
    })
    .await;
    // SG0005 changed; SG0006's PATCHes were refused (primary, then elevated).
    let stats = sim.stats();
    assert_eq!(
        stats.count_status(ResourceKind::User, "PATCH", 200),
        1,
        "only SG0005 was changed"
    );
    assert_eq!(
        stats.count(ResourceKind::User, "PATCH"),
        3,
        "no PATCH for a bad signature"
    );
    for e in ["SG0001", "SG0002", "SG0003", "SG0004", "SG0006"] {
        assert!(
            sim.users_by_external_id(e)[0].active,
            "{e} must stay active"
        );
    }
    assert!(!sim.users_by_external_id("SG0005")[0].active);

    let dead = aws.peek_all(&queues.dead_letter).await;
    let mut reasons: Vec<(String, String)> = dead
        .iter()
        .map(|(body, attrs)| {
            let e = TerminationMessage::decode(body)
                .expect("body")
                .record
                .external_id;
            (e.as_str().to_owned(), attrs[attr::REASON].clone())
        })
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            ("SG0001".into(), "bad_signature".into()),
            ("SG0003".into(), "bad_signature".into()),
            ("SG0004".into(), "bad_signature".into()),
            ("SG0006".into(), "forbidden".into()),
        ]
    );
    let audit = rows(&db).await;
    let bad: Vec<_> = audit
        .iter()
        .filter(|r| r.2.contains("bad_signature"))
        .collect();
    assert_eq!(bad.len(), 3, "{audit:?}");
    assert!(bad.iter().all(|r| r.1 == "invalid"));
    assert!(bad.iter().any(|r| r.2.contains("not signed")));
    assert!(bad.iter().any(|r| r.2.contains("does not match")));
    assert!(bad.iter().any(|r| r.2.contains("\"k0\"")));
    // Keys never reach the audit or the DLQ.
    for secret in [KEY1, KEY2] {
        let key = secret.split_once(':').unwrap().1;
        assert!(!audit.iter().any(|r| r.2.contains(key)));
        assert!(
            !dead
                .iter()
                .any(|(_, a)| a.values().any(|v| v.contains(key)))
        );
    }

    // The refused one keeps its signature in the DLQ; fixed and replayed, it
    // verifies and is carried out.
    sim.allow(&denied);
    let (status, out) = run_bin(
        &["replay-dlq", "--reason", "forbidden", "--actor", "erin"],
        &env,
    )
    .await;
    assert!(status.success(), "{out}");
    eventually("the replayed message to be carried out", LIMIT, || async {
        !sim.users_by_external_id("SG0006")[0].active
    })
    .await;
    assert!(service.terminate().await.success());
    assert_eq!(aws.depth(&queues.dead_letter).await, 3);
}

/// Without keys and without `MESSAGE_SIGNING=off`, `serve` and `dispatch`
/// refuse to start, naming the variable; `off` is accepted with a warning.
#[tokio::test]
async fn serve_and_dispatch_refuse_to_start_unsigned() {
    let aws = aws().await;
    let db = fresh_postgres().await;
    let queues = aws.queues(5, 30).await;
    let sim = start_sim(sim_config(&records("NS", 1)).0).await;
    let env: Vec<(String, String)> = env_for(&sim, &db.url, &queues)
        .into_iter()
        .filter(|(k, _)| k != "MESSAGE_SIGNING_KEYS")
        .collect();
    for args in [&["serve"][..], &["dispatch", "s3://b/k.json"][..]] {
        let (status, _, err) = run_full(args, &env).await;
        assert!(!status.success(), "{args:?} started without keys");
        assert!(err.contains("MESSAGE_SIGNING_KEYS"), "{args:?}: {err}");
    }
    let off = with(&env, &[("MESSAGE_SIGNING", "off")]);
    let service = Service::start(&off);
    let m = message("NS0001");
    send_signed(&aws, &queues.terminations, &m, &Default::default()).await;
    eventually(
        "the unsigned message to be carried out with signing off",
        LIMIT,
        || async { terminal_by_key(&db.store).await.len() == 1 },
    )
    .await;
    assert!(service.terminate().await.success());
}

fn draft(id_seed: &str) -> deprovision::audit::HeldManifest {
    let sha = hex::encode(Sha256::digest(id_seed.as_bytes()));
    deprovision::audit::HeldManifest {
        manifest_id: sha[..16].to_owned(),
        bucket: "hr".into(),
        key: "m.json".into(),
        version_id: None,
        etag: Some("abc".into()),
        sha256: sha,
        terminations: 600,
        active_users: Some(1000),
        reason: "600 terminations exceed MAX_TERMINATIONS_PER_MANIFEST=500".into(),
        state: ManifestHoldState::Held,
        held_at: chrono::Utc::now(),
        decided_by: None,
        decided_at: None,
    }
}

/// The hold table on both backends (and, on PostgreSQL, as the least-privilege
/// worker role): a hold is inserted once, read back as written, and decided
/// once; a second decision changes nothing.
#[tokio::test]
async fn holds_are_inserted_once_and_decided_once_on_both_backends() {
    let pg = fresh_postgres().await;
    let worker = format!("w_{}", uuid::Uuid::new_v4().simple());
    pg.raw
        .exec(&format!(
            "CREATE ROLE {worker} LOGIN IN ROLE deprovision_worker"
        ))
        .await
        .expect("worker login");
    let worker_url = crate::audit::pg_url_for(pg.db_name.as_deref().expect("pg"), Some(&worker));
    let as_worker = deprovision::audit::AuditStore::connect(&worker_url)
        .await
        .expect("worker connects");
    let lite = crate::audit::fresh_sqlite().await;
    for (name, store) in [("postgres", &as_worker), ("sqlite", &lite.store)] {
        let h = draft(name);
        assert!(store.insert_held_manifest(&h).await.expect(name), "{name}");
        assert!(
            !store.insert_held_manifest(&h).await.expect(name),
            "{name}: second insert"
        );
        let back = store
            .held_manifest(&h.manifest_id)
            .await
            .expect(name)
            .expect(name);
        assert_eq!(back.state, ManifestHoldState::Held);
        assert_eq!(
            (back.terminations, back.active_users, back.etag.as_deref()),
            (600, Some(1000), Some("abc")),
            "{name}"
        );
        assert_eq!(
            back.held_at,
            deprovision::audit::chain::to_stored_instant(h.held_at),
            "{name}"
        );
        let at = chrono::Utc::now();
        assert!(
            store
                .decide_held_manifest(&h.manifest_id, ManifestHoldState::Rejected, "carol", at)
                .await
                .expect(name)
        );
        assert!(
            !store
                .decide_held_manifest(&h.manifest_id, ManifestHoldState::Approved, "mallory", at)
                .await
                .expect(name),
            "{name}: decided twice"
        );
        let back = store
            .held_manifest(&h.manifest_id)
            .await
            .expect(name)
            .expect(name);
        assert_eq!(
            (back.state, back.decided_by.as_deref()),
            (ManifestHoldState::Rejected, Some("carol")),
            "{name}"
        );
        assert!(
            store
                .held_manifest("0000000000000000")
                .await
                .expect(name)
                .is_none()
        );
    }
}

/// `approve` dispatches only the bytes that were held: once the object was
/// overwritten, the pinned read fails (ETag no longer matches) and nothing is
/// enqueued; the hold stays undecided.
#[tokio::test]
async fn approve_refuses_a_manifest_changed_since_it_was_held() {
    let aws = aws().await;
    let db = fresh_postgres().await;
    let queues = aws.queues(5, 30).await;
    let bucket = aws.bucket("hr-changed").await;
    let recs = records("CH", 6);
    let body = json_manifest(&recs);
    let id = manifest_id(&body);
    aws.put(&bucket, "hr/m.json", body).await;
    let sim = start_sim(sim_config(&recs).0).await;
    let env = with(
        &env_for(&sim, &db.url, &queues),
        &[("MAX_TERMINATIONS_PER_MANIFEST", "5")],
    );
    let (status, out, err) =
        run_full(&["dispatch", &format!("s3://{bucket}/hr/m.json")], &env).await;
    assert_eq!(status.code(), Some(3), "{out}\n{err}");

    // HR "fixes" the file in place: different bytes under the same key.
    aws.put(&bucket, "hr/m.json", json_manifest(&records("XX", 7)))
        .await;
    let (status, out, err) = run_full(&["approve", &id, "--by", "frank"], &env).await;
    assert!(!status.success(), "approved changed content\n{out}");
    assert!(err.contains(&format!("approving manifest {id}")), "{err}");
    assert!(err.contains("was overwritten since it was read"), "{err}");
    assert_eq!(aws.depth(&queues.terminations).await, 0, "nothing enqueued");
    let held = db.store.held_manifest(&id).await.unwrap().unwrap();
    assert_eq!(held.state, ManifestHoldState::Held);
    assert!(!rows(&db).await.iter().any(|r| r.0 == "approve"));
}

/// `run --approve` on content an operator rejected: refused with the id, who
/// rejected it and when; exit non-zero; nothing deactivated, still rejected.
#[tokio::test]
async fn run_approve_refuses_a_rejected_manifest() {
    let dir = tempfile::tempdir().expect("dir");
    let recs = records("RJ", 6);
    let path = dir.path().join("six.json");
    std::fs::write(&path, json_manifest(&recs)).expect("write");
    let db = format!("sqlite://{}", dir.path().join("sandbox.db").display());
    let path = path.display().to_string();
    let env = [
        ("MAX_TERMINATIONS_PER_MANIFEST".to_owned(), "5".to_owned()),
        ("DATABASE_URL".to_owned(), db.clone()),
    ];
    let args = [
        "run",
        "--sandbox",
        "--sandbox-database-url",
        &db,
        "--format",
        "json",
        &path,
    ];
    let id = manifest_id(&json_manifest(&recs));

    let (status, out, err) = run_full(&args, &env).await;
    assert_eq!(status.code(), Some(3), "{out}\n{err}");
    let (status, out, err) = run_full(&["reject", &id, "--by", "carol"], &env).await;
    assert!(status.success(), "{out}\n{err}");

    let mut approved = args.to_vec();
    approved.extend(["--approve", "--by", "dave"]);
    let (status, out, err) = run_full(&approved, &env).await;
    assert_eq!(status.code(), Some(1), "{out}\n{err}");
    assert!(err.contains(&id), "{err}");
    assert!(err.contains("rejected by carol at 20"), "{err}");

    let store = deprovision::audit::AuditStore::connect(&db)
        .await
        .expect("db");
    let held = store.held_manifest(&id).await.unwrap().expect("held");
    assert_eq!(held.state, ManifestHoldState::Rejected);
    assert_eq!(held.decided_by.as_deref(), Some("carol"));
    let rows = store.termination_rows(None, None).await.unwrap();
    assert!(rows.is_empty(), "nobody was acted on: {rows:?}");
}

/// A `PROTECTED_GROUPS` name that matches no group fails closed: `user`, `run`
/// and `serve` refuse to start naming it, and an engine carrying it fails the
/// termination with a reason naming it; nobody is deactivated.
#[tokio::test]
async fn an_unresolvable_protected_group_fails_closed() {
    let aws = aws().await;
    let db = fresh_postgres().await;
    let queues = aws.queues(5, 30).await;
    let recs = records("PG", 2);
    let (config, _) = sim_config(&recs);
    let sim = start_sim(config).await;
    let name = "Break Glass Admins";
    let env = with(
        &env_for(&sim, &db.url, &queues),
        &[("PROTECTED_GROUPS", name)],
    );

    let (status, out, err) = run_full(
        &["user", "--external-id", "PG0001", "--format", "json"],
        &env,
    )
    .await;
    assert!(!status.success(), "{out}\n{err}");
    assert!(
        err.contains(name) && err.contains("matches no group"),
        "{err}"
    );

    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("m.json");
    std::fs::write(&path, json_manifest(&recs)).expect("write");
    let (status, out, err) = run_full(&["run", &path.display().to_string()], &env).await;
    assert!(!status.success(), "{out}\n{err}");
    assert!(err.contains(name), "{err}");

    let serve = tokio::process::Command::new(bin())
        .arg("serve")
        .envs(env.iter().cloned())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), serve)
        .await
        .expect("serve must refuse to start, not run")
        .expect("run serve");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(name), "{err}");

    // Past start-up (e.g. the group renamed later): the termination fails.
    let scim = deprovision::config::ScimArgs {
        genesys_region: None,
        genesys_org_url: None,
        genesys_api_url: Some(sim.base_url()),
        genesys_login_url: None,
        primary_client_id: Some(PRIMARY.0.into()),
        primary_client_secret: Some(SecretString::from(PRIMARY.1)),
        elevated_client_id: Some(ELEVATED.0.into()),
        elevated_client_secret: Some(SecretString::from(ELEVATED.1)),
        scim_base_url: None,
        scim_bearer_token: None,
        rate_limit_per_minute: std::num::NonZeroU32::new(60_000).expect("rate"),
        remove_roles: false,
        scim_timeout_secs: 30,
    };
    let engine = deprovision::engine::Engine::from_args(&scim)
        .expect("engine")
        .with_protection(std::sync::Arc::new(deprovision::protect::Protection::new(
            None,
            Some(name),
            deprovision::protect::DEFAULT_REFRESH,
        )));
    let report = deprovision::engine::Deprovision::deprovision(
        &engine,
        &deprovision::engine::Request {
            external_id: ExternalId::parse("PG0002").expect("id"),
            user_id: None,
            dry_run: false,
            deadline: tokio::time::Instant::now() + Duration::from_secs(60),
        },
    )
    .await;
    assert_eq!(report.outcome, Outcome::Failed, "{report:?}");
    assert!(
        report.detail.as_deref().unwrap_or_default().contains(name),
        "{report:?}"
    );
    for e in ["PG0001", "PG0002"] {
        assert!(sim.users_by_external_id(e)[0].active, "{e} stays active");
    }
    assert_eq!(sim.stats().count(ResourceKind::User, "PATCH"), 0);
}

/// A `PROTECTED_GROUPS` UUID is read once at start-up: one that is no group's
/// id (a typo would protect nobody, silently) stops `user` and `run` naming it;
/// the group's real id starts, and protects its member.
#[tokio::test]
async fn a_protected_group_id_must_be_a_group() {
    const GLASS: &str = "6f1c2a9e-4b7d-4e2a-9c1f-0d3e5a7b9c11";
    const TYPO: &str = "6f1c2a9e-4b7d-4e2a-9c1f-0d3e5a7b9c12";
    let aws = aws().await;
    let db = fresh_postgres().await;
    let queues = aws.queues(5, 30).await;
    let recs = records("PI", 2);
    let (config, mut seed) = sim_config(&recs);
    seed.groups.push(deprovision::sim::SeedGroup {
        id: GLASS.into(),
        display_name: "Break Glass".into(),
        external_id: None,
    });
    seed.users
        .iter_mut()
        .find(|u| u.external_id.as_deref() == Some("PI0001"))
        .expect("PI0001")
        .groups
        .push(SeedGroupRef::Name(GLASS.into()));
    let sim = start_sim(config.with_seed(seed)).await;
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("m.json");
    std::fs::write(&path, json_manifest(&recs)).expect("write");
    let path = path.display().to_string();

    let typo = with(
        &env_for(&sim, &db.url, &queues),
        &[("PROTECTED_GROUPS", TYPO)],
    );
    let (status, out, err) = run_full(
        &["user", "--external-id", "PI0002", "--format", "json"],
        &typo,
    )
    .await;
    assert!(!status.success(), "{out}\n{err}");
    assert!(
        err.contains(TYPO) && err.contains("is no group's id"),
        "{err}"
    );
    let (status, out, err) = run_full(&["run", &path], &typo).await;
    assert!(!status.success(), "{out}\n{err}");
    assert!(err.contains(TYPO), "{err}");
    for e in ["PI0001", "PI0002"] {
        assert!(sim.users_by_external_id(e)[0].active, "{e} stays active");
    }
    assert_eq!(sim.stats().count(ResourceKind::User, "PATCH"), 0);

    let right = with(
        &env_for(&sim, &db.url, &queues),
        &[("PROTECTED_GROUPS", GLASS)],
    );
    let (status, out, err) = run_full(&["run", "--format", "json", &path], &right).await;
    assert!(status.success(), "{out}\n{err}");
    let summary: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        summary["tally"]["outcomes"],
        serde_json::json!([["deactivated", 1], ["protected", 1]])
    );
    assert!(sim.users_by_external_id("PI0001")[0].active, "protected");
    assert!(!sim.users_by_external_id("PI0002")[0].active);
}
