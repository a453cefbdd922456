//! Future-dated terminations end to end: messages on moto's SQS, the audit and
//! holds in PostgreSQL, the Genesys Cloud simulator, consumer pools and hold
//! releasers in this process sharing one injected clock (time moves without
//! sleeping), and the `deprovision` binary for `replay-dlq`, `report pending`
//! and `run`.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::Parser;
use deprovision::audit::{AuditStore, HoldState, ManifestOrigin, NewHold};
use deprovision::clock::{Clock, ManualClock};
use deprovision::config::ScimArgs;
use deprovision::consume::{Consumer, ConsumerOptions};
use deprovision::dispatch::{DispatchOptions, Dispatcher, ManifestSource};
use deprovision::domain::{
    EffectiveAt, ExternalId, Outcome, RecordAction, TerminationDate, TerminationRecord,
};
use deprovision::engine::Engine;
use deprovision::queue::{SqsQueue, TerminationMessage, attr};
use deprovision::release::{Releaser, ReleaserOptions};
use deprovision::sim::{ResourceKind, RunningSim};
use tokio_util::sync::CancellationToken;

use crate::audit::{Raw, at, fresh_postgres};
use crate::pipeline::harness::{
    Aws, ELEVATED, PRIMARY, Queues, aws, env_for, eventually, run_bin, sim_config, start_sim,
    terminal_by_key, user_id_of,
};

const LIMIT: Duration = Duration::from_secs(120);

#[derive(Parser)]
struct Scim {
    #[command(flatten)]
    scim: ScimArgs,
}

fn engine_for(sim: &RunningSim) -> Engine {
    let api = sim.base_url().to_string();
    let args = Scim::parse_from([
        "test",
        "--genesys-api-url",
        api.as_str(),
        "--primary-client-id",
        PRIMARY.0,
        "--primary-client-secret",
        PRIMARY.1,
        "--elevated-client-id",
        ELEVATED.0,
        "--elevated-client-secret",
        ELEVATED.1,
        "--rate-limit-per-minute",
        "60000",
    ]);
    Engine::from_args(&args.scim).expect("engine for the simulator")
}

fn record(external_id: &str, date: &str, action: RecordAction) -> TerminationRecord {
    TerminationRecord {
        external_id: ExternalId::parse(external_id).expect("id"),
        user_id: None,
        termination_date: TerminationDate::parse(date).expect("date"),
        action,
    }
}

fn message(external_id: &str, date: &str, action: RecordAction) -> TerminationMessage {
    TerminationMessage::new(
        record(external_id, date, action),
        ManifestOrigin {
            bucket: "hr-drop".into(),
            key: format!("manifests/{external_id}.json"),
            version: None,
            index: Some(0),
        },
        chrono_tz::UTC,
        EffectiveAt::StartOfDay,
    )
}

/// One service instance: its own store connection, consumer pool and releaser,
/// on the shared queues and database, reading the shared clock.
struct Instance {
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    store: AuditStore,
}

impl Instance {
    async fn start(
        aws: &Aws,
        db_url: &str,
        queues: &Queues,
        sim: &RunningSim,
        clock: &Clock,
    ) -> Self {
        let store = AuditStore::connect(db_url).await.expect("store");
        let terminations = SqsQueue::connect(aws.sqs.clone(), &queues.terminations)
            .await
            .expect("terminations queue");
        let dead_letter = SqsQueue::connect(aws.sqs.clone(), &queues.dead_letter)
            .await
            .expect("dead-letter queue");
        let consumer = Consumer::new(
            terminations.clone(),
            dead_letter,
            Arc::new(engine_for(sim)),
            Arc::new(store.clone()),
            ConsumerOptions {
                concurrency: 4,
                receive_wait: Duration::from_secs(1),
                retry_base: Duration::from_secs(1),
                drain_deadline: Duration::from_secs(10),
                clock: clock.clone(),
                ..ConsumerOptions::default()
            },
        );
        let releaser = Releaser::new(
            store.clone(),
            terminations,
            ReleaserOptions {
                interval: Duration::from_millis(200),
                clock: clock.clone(),
                ..ReleaserOptions::default()
            },
        );
        let stop = CancellationToken::new();
        let tasks = vec![
            {
                let stop = stop.clone();
                tokio::spawn(async move {
                    consumer.run(stop).await;
                })
            },
            {
                let stop = stop.clone();
                tokio::spawn(async move { releaser.run(stop).await })
            },
        ];
        Self { stop, tasks, store }
    }

    async fn stop(self) {
        self.stop.cancel();
        for t in self.tasks {
            t.await.expect("instance task");
        }
        self.store.close().await;
    }
}

async fn send(aws: &Aws, url: &str, m: &TerminationMessage) {
    aws.send_signed(url, &m.encode()).await;
}

/// Six terminations effective 2026-03-10 arrive on 2026-03-01 (by the injected
/// clock) at two service instances: each is held in PostgreSQL and its message
/// deleted; nothing is sent to Genesys. Both instances are replaced by new ones
/// (a restart): the holds are still there. Just before the time nothing is
/// released; at the time the two releasers release each hold once and the two
/// pools deactivate each person exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn future_termination_is_held_until_due_then_deactivated_once_by_two_instances() {
    let aws = aws().await;
    let db = fresh_postgres().await;
    let queues = aws.queues(3, 30).await;
    let ids: Vec<String> = (1..=6).map(|i| format!("HD{i:04}")).collect();
    let recs: Vec<TerminationRecord> = ids
        .iter()
        .map(|e| record(e, "2026-03-10", RecordAction::Terminate))
        .collect();
    let (config, seed) = sim_config(&recs);
    let sim = start_sim(config).await;
    let manual = ManualClock::new(at("2026-03-01T00:00:00Z"));
    let clock = manual.clock();

    let a = Instance::start(&aws, &db.url, &queues, &sim, &clock).await;
    let b = Instance::start(&aws, &db.url, &queues, &sim, &clock).await;
    for e in &ids {
        send(
            &aws,
            &queues.terminations,
            &message(e, "2026-03-10", RecordAction::Terminate),
        )
        .await;
    }
    eventually("six holds and an empty queue", LIMIT, || async {
        db.store.pending_holds().await.expect("holds").len() == 6
            && aws.depth(&queues.terminations).await == 0
    })
    .await;
    assert_eq!(sim.stats().count(ResourceKind::User, "PATCH"), 0);
    for e in &ids {
        let user = sim.user(&user_id_of(&seed, e)).expect("user");
        assert!(user.active, "{e} must stay active until its time");
    }
    a.stop().await;
    b.stop().await;

    // A restart: new store, pool and releaser objects.
    let a = Instance::start(&aws, &db.url, &queues, &sim, &clock).await;
    let b = Instance::start(&aws, &db.url, &queues, &sim, &clock).await;
    assert_eq!(a.store.pending_holds().await.expect("holds").len(), 6);
    manual.set(at("2026-03-09T23:59:59Z"));
    let early = Releaser::new(
        a.store.clone(),
        SqsQueue::connect(aws.sqs.clone(), &queues.terminations)
            .await
            .expect("queue"),
        ReleaserOptions {
            clock: clock.clone(),
            ..ReleaserOptions::default()
        },
    )
    .release_due()
    .await
    .expect("release round");
    assert!(early.released.is_empty(), "nothing is due a second early");
    assert_eq!(sim.stats().count(ResourceKind::User, "PATCH"), 0);

    manual.set(at("2026-03-10T00:00:00Z"));
    eventually("six deactivations", LIMIT, || async {
        let done = terminal_by_key(&db.store).await;
        done.len() == 6 && done.values().all(|o| o == &[Outcome::Deactivated])
    })
    .await;
    eventually("empty terminations queue", LIMIT, || async {
        aws.depth(&queues.terminations).await == 0
    })
    .await;
    a.stop().await;
    b.stop().await;

    assert_eq!(
        sim.stats().count(ResourceKind::User, "PATCH"),
        6,
        "one deactivation per person"
    );
    for e in &ids {
        assert!(!sim.user(&user_id_of(&seed, e)).expect("user").active);
        let hold = db
            .store
            .hold(&record(e, "2026-03-10", RecordAction::Terminate).idempotency_key())
            .await
            .expect("hold")
            .expect("held");
        assert!(
            matches!(hold.state, HoldState::Released(_)),
            "{e}: {:?}",
            hold.state
        );
    }
    assert!(db.store.pending_holds().await.expect("holds").is_empty());
    assert_eq!(aws.depth(&queues.dead_letter).await, 0);
    assert!(db.store.verify().await.expect("verify").is_intact());
}

/// A rehire cancels a held termination (never released, however late), and
/// `replay-dlq` skips a dead-lettered termination the rehire superseded: listed
/// in a dry run, audited and removed from the DLQ for real, never re-sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rehire_cancels_the_hold_and_replay_skips_the_superseded_dead_letter() {
    let aws = aws().await;
    let db = fresh_postgres().await;
    let queues = aws.queues(3, 30).await;
    let recs = [
        record("RH0001", "2026-03-10", RecordAction::Terminate),
        record("RH0002", "2026-02-01", RecordAction::Terminate),
    ];
    let (config, seed) = sim_config(&recs);
    let denied = user_id_of(&seed, "RH0002");
    let sim = start_sim(config.with_denied(&denied)).await;
    let manual = ManualClock::new(at("2026-03-01T00:00:00Z"));
    let clock = manual.clock();
    let one = Instance::start(&aws, &db.url, &queues, &sim, &clock).await;

    send(
        &aws,
        &queues.terminations,
        &message("RH0001", "2026-03-10", RecordAction::Terminate),
    )
    .await;
    send(
        &aws,
        &queues.terminations,
        &message("RH0002", "2026-02-01", RecordAction::Terminate),
    )
    .await;
    eventually("one hold and one dead letter", LIMIT, || async {
        db.store.pending_holds().await.expect("holds").len() == 1
            && aws.depth(&queues.dead_letter).await == 1
            && aws.depth(&queues.terminations).await == 0
    })
    .await;

    for e in ["RH0001", "RH0002"] {
        send(
            &aws,
            &queues.terminations,
            &message(e, "2026-02-20", RecordAction::Rehire),
        )
        .await;
    }
    let held_key = recs[0].idempotency_key();
    let Raw::Pg(pool) = &db.raw else {
        unreachable!("PostgreSQL")
    };
    eventually("both rehires recorded", LIMIT, || async {
        let rehires: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM scim_audit_log WHERE action = 'rehire' AND outcome = 'rescinded'",
        )
        .fetch_one(pool)
        .await
        .expect("count rehires");
        rehires == 2 && aws.depth(&queues.terminations).await == 0
    })
    .await;
    // Rehires are not terminations: the reports count the cancelled hold only.
    let done = terminal_by_key(&db.store).await;
    assert_eq!(done.len(), 2, "{done:?}");
    let hold = db.store.hold(&held_key).await.expect("hold").expect("held");
    assert!(
        matches!(&hold.state, HoldState::Cancelled { reason, .. } if reason.contains("rehired by manifest hr-drop/manifests/RH0001.json")),
        "{:?}",
        hold.state
    );
    assert_eq!(
        terminal_by_key(&db.store).await.get(held_key.as_str()),
        Some(&vec![Outcome::Rescinded])
    );
    // Long after the date, the cancelled hold is not released.
    manual.set(at("2026-04-01T00:00:00Z"));
    tokio::time::sleep(Duration::from_millis(600)).await; // three releaser rounds
    one.stop().await;
    assert!(db.store.pending_holds().await.expect("holds").is_empty());
    assert_eq!(aws.depth(&queues.terminations).await, 0);
    assert!(sim.user(&user_id_of(&seed, "RH0001")).expect("user").active);

    // replay-dlq: the dead-lettered RH0002 termination was superseded by its rehire.
    let env: Vec<(String, String)> = env_for(&sim, &db.url, &queues);
    let (status, out) = run_bin(&["replay-dlq", "--dry-run", "--actor", "tester"], &env).await;
    assert!(status.success(), "{out}");
    assert!(out.contains("would skip"), "{out}");
    assert!(
        out.contains("rehired by manifest hr-drop/manifests/RH0002.json"),
        "{out}"
    );
    assert_eq!(
        aws.depth(&queues.dead_letter).await,
        1,
        "a dry run moves nothing"
    );

    let (status, out) = run_bin(
        &["replay-dlq", "--actor", "tester", "--format", "json"],
        &env,
    )
    .await;
    assert!(status.success(), "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("json report");
    let item = &report["items"][0];
    assert_eq!(item["external_id"], "RH0002");
    assert_eq!(item["replayed"], false);
    assert!(
        item["skipped"]
            .as_str()
            .is_some_and(|s| s.starts_with("rehired by manifest")),
        "{item}"
    );
    assert_eq!(
        aws.depth(&queues.dead_letter).await,
        0,
        "skipped and removed"
    );
    assert_eq!(aws.depth(&queues.terminations).await, 0, "never re-sent");
    let rows = db.store.termination_rows(None, None).await.expect("rows");
    let skip = rows
        .iter()
        .rev()
        .find(|r| r.entry.idempotency_key.as_ref() == Some(&recs[1].idempotency_key()))
        .expect("skip row");
    assert_eq!(skip.entry.outcome, Outcome::Rescinded);
    assert_eq!(skip.entry.actor.as_deref(), Some("tester"));
    assert!(
        skip.entry
            .error_message
            .as_deref()
            .is_some_and(|m| m.contains("replay-dlq skipped it: rehired by manifest")),
        "{:?}",
        skip.entry.error_message
    );
    assert!(sim.user(&denied).expect("user").active);
}

/// `MAX_FUTURE_DAYS`: a record further ahead is rejected at dispatch (audited,
/// not enqueued, the summary still reconciles), and a message from elsewhere
/// that far ahead is dead-lettered as `invalid` by the consumer without a hold
/// or a request to Genesys.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_future_days_rejects_at_dispatch_and_dead_letters_in_the_consumer() {
    let aws = aws().await;
    let db = fresh_postgres().await;
    let queues = aws.queues(3, 30).await;
    let recs = [
        record("MF0001", "2026-03-10", RecordAction::Terminate),
        record("MF0002", "2026-12-01", RecordAction::Terminate),
        record("MF0003", "2027-01-01", RecordAction::Terminate),
    ];
    let (config, _) = sim_config(&recs);
    let sim = start_sim(config).await;
    let manual = ManualClock::new(at("2026-03-01T00:00:00Z"));
    let clock = manual.clock();

    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("manifest.csv");
    std::fs::write(
        &path,
        "externalId,terminationDate\nMF0001,2026-03-10\nMF0002,2026-12-01\n",
    )
    .expect("write manifest");
    let terminations = SqsQueue::connect(aws.sqs.clone(), &queues.terminations)
        .await
        .expect("queue");
    let dispatcher = Dispatcher::new(
        None,
        terminations,
        Arc::new(db.store.clone()),
        DispatchOptions {
            clock: clock.clone(),
            max_future_days: 90,
            ..DispatchOptions::default()
        },
    );
    let report = dispatcher
        .dispatch(&ManifestSource::Local(path), 1)
        .await
        .expect("dispatch");
    assert_eq!(
        (
            report.summary.valid,
            report.summary.rejected,
            report.enqueued
        ),
        (1, 1, 1)
    );
    assert!(report.summary.reconciles());
    let rows = db.store.termination_rows(None, None).await.expect("rows");
    let rejected = rows
        .iter()
        .find(|r| r.entry.external_id.as_deref() == Some("MF0002"))
        .expect("MF0002 audited");
    assert_eq!(rejected.entry.outcome, Outcome::Invalid);
    assert!(
        rejected
            .entry
            .error_message
            .as_deref()
            .is_some_and(|m| m.contains("MAX_FUTURE_DAYS=90")),
        "{:?}",
        rejected.entry.error_message
    );

    send(
        &aws,
        &queues.terminations,
        &message("MF0003", "2027-01-01", RecordAction::Terminate),
    )
    .await;
    let one = Instance::start(&aws, &db.url, &queues, &sim, &clock).await;
    eventually("MF0001 held, MF0003 dead-lettered", LIMIT, || async {
        aws.depth(&queues.dead_letter).await == 1
            && aws.depth(&queues.terminations).await == 0
            && db.store.pending_holds().await.expect("holds").len() == 1
    })
    .await;
    one.stop().await;
    let dead = aws.peek_all(&queues.dead_letter).await;
    assert_eq!(dead[0].1[attr::REASON], "invalid");
    assert!(
        dead[0].1[attr::DETAIL].contains("MAX_FUTURE_DAYS=90"),
        "{dead:?}"
    );
    let pending = db.store.pending_holds().await.expect("holds");
    assert_eq!(pending[0].external_id, "MF0001");
    assert_eq!(sim.stats().count(ResourceKind::User, "PATCH"), 0);
    assert_eq!(
        terminal_by_key(&db.store)
            .await
            .get(recs[2].idempotency_key().as_str()),
        Some(&vec![Outcome::Invalid])
    );
}

fn pending_hold(external_id: &str, due: DateTime<Utc>) -> NewHold {
    let m = message(
        external_id,
        &due.format("%Y-%m-%d").to_string(),
        RecordAction::Terminate,
    );
    NewHold {
        idempotency_key: m.idempotency_key.clone(),
        external_id: external_id.to_owned(),
        user_id: Some(format!("user-{external_id}")),
        due_at: due,
        body: m.encode(),
        attributes: Default::default(),
        manifest: Some(m.origin.clone()),
    }
}

/// `deprovision report pending` lists each pending hold (not released or
/// cancelled ones) with its due time in UTC and in `--tz`, in three formats.
#[tokio::test]
async fn report_pending_lists_held_terminations_with_due_times() {
    let db = fresh_postgres().await;
    let s = &db.store;
    s.place_hold(
        &pending_hold("RP0002", at("2026-04-02T00:00:00Z")),
        at("2026-03-01T00:00:00Z"),
    )
    .await
    .expect("hold");
    s.place_hold(
        &pending_hold("RP0001", at("2026-03-10T00:00:00Z")),
        at("2026-03-01T00:00:00Z"),
    )
    .await
    .expect("hold");
    s.place_hold(
        &pending_hold("RP0003", at("2026-03-05T00:00:00Z")),
        at("2026-03-01T00:00:00Z"),
    )
    .await
    .expect("hold");
    let elsewhere = ManifestOrigin {
        bucket: "hr-drop".into(),
        key: "rehires.csv".into(),
        version: None,
        index: Some(0),
    };
    let rehire = deprovision::audit::ManifestRecord {
        origin: &elsewhere,
        effective_at: at("2026-03-02T00:00:00Z"),
    };
    s.cancel_holds("RP0003", rehire, "rehired", at("2026-03-02T00:00:00Z"))
        .await
        .expect("cancel");
    let env = vec![("DATABASE_URL".to_owned(), db.url.clone())];

    let (status, csv) = run_bin(
        &[
            "report",
            "pending",
            "--format",
            "csv",
            "--tz",
            "America/New_York",
        ],
        &env,
    )
    .await;
    assert!(status.success(), "{csv}");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "externalId,userId,due_at_utc,due_at_local,manifest,held_since,idempotency_key"
    );
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(
        lines[1].starts_with(
            "RP0001,user-RP0001,2026-03-10T00:00:00Z,2026-03-09T20:00:00-04:00,hr-drop/manifests/RP0001.json#0,2026-03-01T00:00:00Z,"
        ),
        "{csv}"
    );
    assert!(
        lines[2].starts_with("RP0002,user-RP0002,2026-04-02T00:00:00Z,2026-04-01T20:00:00-04:00,"),
        "{csv}"
    );

    let (status, json) = run_bin(&["report", "pending", "--format", "json"], &env).await;
    assert!(status.success(), "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(v["tz"], "UTC");
    assert_eq!(v["holds"].as_array().map(Vec::len), Some(2));
    assert_eq!(v["holds"][0]["externalId"], "RP0001");

    let (status, table) = run_bin(&["report", "pending"], &env).await;
    assert!(status.success(), "{table}");
    assert!(
        table.starts_with("Pending terminations: 2 held (due times in UTC)"),
        "{table}"
    );
    assert!(
        table.contains("RP0002") && !table.contains("RP0003"),
        "{table}"
    );
}

/// `deprovision run` on a manifest with a future-dated record holds it in its
/// own database and says so ("scheduled … next due …"); a hold of an earlier run
/// that is due is released into the run at start; `report pending` shows what
/// is still held; a second run keeps the hold and the summary reconciles.
#[tokio::test]
async fn run_holds_future_dated_records_and_releases_due_ones_at_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db_url = format!("sqlite://{}", dir.path().join("sandbox.db").display());
    let store = AuditStore::connect(&db_url).await.expect("store");
    store.migrate().await.expect("migrate");
    // Held by an earlier run, due yesterday.
    let yesterday = Utc::now() - chrono::Duration::days(1);
    store
        .place_hold(
            &pending_hold("RN0009", yesterday),
            yesterday - chrono::Duration::days(1),
        )
        .await
        .expect("hold");
    store.close().await;

    let due = (Utc::now() + chrono::Duration::days(30)).date_naive();
    let manifest = dir.path().join("manifest.csv");
    std::fs::write(
        &manifest,
        format!("externalId,terminationDate,action\nRN0001,2026-01-05,\nRN0002,{due},terminate\n"),
    )
    .expect("write manifest");
    let manifest = manifest.display().to_string();
    let args = [
        "run",
        "--sandbox",
        "--sandbox-database-url",
        db_url.as_str(),
        manifest.as_str(),
    ];
    let env = vec![("HR_TIMEZONE".to_owned(), "UTC".to_owned())];
    let (status, out) = run_bin(&args, &env).await;
    assert!(status.success(), "{out}");
    assert!(out.contains("deactivated"), "{out}");
    let scheduled = out
        .lines()
        .find(|l| l.trim_start().starts_with("scheduled"))
        .unwrap_or_else(|| panic!("no scheduled line in {out}"));
    assert!(scheduled.contains(" 1 "), "{scheduled}");
    assert!(
        scheduled.contains(&format!("next due {due}T00:00:00Z")),
        "{scheduled}"
    );
    let released = out
        .lines()
        .find(|l| l.trim_start().starts_with("released holds"))
        .unwrap_or_else(|| panic!("no released line in {out}"));
    assert!(released.contains(" 1 "), "{released}");
    assert!(out.contains("reconciled: 3 of 3 terminations"), "{out}");

    let report_env = vec![("DATABASE_URL".to_owned(), db_url.clone())];
    let (status, json) = run_bin(&["report", "pending", "--format", "json"], &report_env).await;
    assert!(status.success(), "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    let holds = v["holds"].as_array().expect("holds");
    assert_eq!(holds.len(), 1, "{json}");
    assert_eq!(holds[0]["externalId"], "RN0002");

    // Again: RN0001 is finished, RN0002 stays held (one hold), nothing released.
    let (status, out) = run_bin(&args, &env).await;
    assert!(status.success(), "{out}");
    assert!(out.contains("reconciled: 2 of 2 terminations"), "{out}");
    assert!(!out.contains("released holds"), "{out}");
    let store = AuditStore::connect(&db_url).await.expect("store");
    assert_eq!(store.pending_holds().await.expect("holds").len(), 1);
    store.close().await;
}

/// `deprovision serve` wires it together: a termination 30 days ahead (by the
/// system clock) is held and its message deleted without a request to Genesys,
/// and a hold already due is released by the service's releaser
/// (`HOLD_RELEASE_INTERVAL_SECS`) and deactivated once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_holds_future_terminations_and_releases_due_holds() {
    let aws = aws().await;
    let db = fresh_postgres().await;
    let queues = aws.queues(3, 30).await;
    let soon = (Utc::now() + chrono::Duration::days(30))
        .format("%Y-%m-%d")
        .to_string();
    let recs = [
        record("SV0001", &soon, RecordAction::Terminate),
        record("SV0002", "2026-01-05", RecordAction::Terminate),
    ];
    let (config, seed) = sim_config(&recs);
    let sim = start_sim(config).await;
    // Held earlier, due now.
    let due = message("SV0002", "2026-01-05", RecordAction::Terminate);
    db.store
        .place_hold(
            &NewHold {
                idempotency_key: due.idempotency_key.clone(),
                external_id: "SV0002".into(),
                user_id: None,
                due_at: due.effective_at,
                body: due.encode(),
                attributes: Default::default(),
                manifest: Some(due.origin.clone()),
            },
            at("2026-01-01T00:00:00Z"),
        )
        .await
        .expect("hold");
    let mut env = env_for(&sim, &db.url, &queues);
    env.push(("HOLD_RELEASE_INTERVAL_SECS".into(), "1".into()));
    let service = crate::pipeline::harness::Service::start(&env);
    send(
        &aws,
        &queues.terminations,
        &message("SV0001", &soon, RecordAction::Terminate),
    )
    .await;
    eventually("SV0002 deactivated, SV0001 held", LIMIT, || async {
        let done = terminal_by_key(&db.store).await;
        done.get(due.idempotency_key.as_str()) == Some(&vec![Outcome::Deactivated])
            && db
                .store
                .pending_holds()
                .await
                .expect("holds")
                .iter()
                .any(|h| h.external_id == "SV0001")
            && aws.depth(&queues.terminations).await == 0
    })
    .await;
    assert!(service.terminate().await.success());
    assert_eq!(sim.stats().count(ResourceKind::User, "PATCH"), 1);
    assert!(sim.user(&user_id_of(&seed, "SV0001")).expect("user").active);
    assert!(!sim.user(&user_id_of(&seed, "SV0002")).expect("user").active);
    let pending = db.store.pending_holds().await.expect("holds");
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].external_id, "SV0001");
}

/// A rehire recorded first, then a termination dated before the rehire (a stale
/// row that arrives late): the person is not deactivated (`rescinded`), the run
/// says who and why, and a rerun still lists them for review instead of hiding
/// them behind "already done".
#[tokio::test]
async fn a_termination_dated_before_a_recorded_rehire_is_rescinded_and_listed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db_url = format!("sqlite://{}", dir.path().join("sandbox.db").display());
    let write = |name: &str, body: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, body).expect("write manifest");
        path.display().to_string()
    };
    let rehire = write(
        "rehire.csv",
        "externalId,terminationDate,action\nRH0001,2026-02-01,rehire\n",
    );
    let stale = write(
        "stale.csv",
        "externalId,terminationDate\nRH0001,2026-01-01\nRH0002,2026-01-01\n",
    );
    let env = vec![("HR_TIMEZONE".to_owned(), "UTC".to_owned())];
    let run = |manifest: String| {
        let db_url = db_url.clone();
        let env = env.clone();
        async move {
            run_bin(
                &[
                    "run",
                    "--sandbox",
                    "--sandbox-database-url",
                    db_url.as_str(),
                    manifest.as_str(),
                ],
                &env,
            )
            .await
        }
    };
    let (status, out) = run(rehire).await;
    assert!(status.success(), "{out}");

    let (status, out) = run(stale.clone()).await;
    assert!(status.success(), "{out}");
    let line = |out: &str, what: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with(what))
            .map(str::to_owned)
            .unwrap_or_default()
    };
    assert!(line(&out, "deactivated").contains(" 1"), "{out}");
    assert!(line(&out, "rescinded").contains(" 1"), "{out}");
    let listed = out
        .lines()
        .find(|l| l.contains("RH0001"))
        .unwrap_or_else(|| panic!("RH0001 not listed in {out}"));
    assert!(listed.contains("rehire"), "{listed}");

    // A rerun acts on nobody and still names RH0001.
    let (status, out) = run(stale).await;
    assert!(status.success(), "{out}");
    let listed = out
        .lines()
        .find(|l| l.contains("RH0001"))
        .unwrap_or_else(|| panic!("RH0001 not listed on the rerun: {out}"));
    assert!(listed.contains("earlier run"), "{listed}");
    assert!(!out.contains("RH0002"), "a success is not listed: {out}");
}

/// Runs `run --sandbox` on a CSV manifest `body` with 8 workers (so the order
/// in which messages are handled varies) and extra `args`; the audit store of
/// that run, its status and standard output.
async fn sandbox_run(
    dir: &tempfile::TempDir,
    body: &str,
    args: &[&str],
) -> (AuditStore, std::process::ExitStatus, String) {
    let db_url = format!("sqlite://{}", dir.path().join("sandbox.db").display());
    let manifest = dir.path().join("m.csv");
    std::fs::write(&manifest, body).expect("write manifest");
    let manifest = manifest.display().to_string();
    let env = vec![
        ("HR_TIMEZONE".to_owned(), "UTC".to_owned()),
        ("CONCURRENCY".to_owned(), "8".to_owned()),
    ];
    let mut argv = vec!["run", "--sandbox", "--sandbox-database-url", &db_url];
    argv.extend_from_slice(args);
    argv.push(&manifest);
    let (status, out) = run_bin(&argv, &env).await;
    let store = AuditStore::connect(&db_url).await.expect("store");
    (store, status, out)
}

/// A future termination and, later in the same manifest, a rehire of the same
/// person dated before it: whichever message is handled first, the file's order
/// wins and nothing stays held (the person is never deactivated).
#[tokio::test]
async fn a_later_rehire_in_the_same_manifest_wins_whatever_the_order_handled() {
    let due = (Utc::now() + chrono::Duration::days(20)).date_naive();
    let rehired = (Utc::now() + chrono::Duration::days(1)).date_naive();
    let body = format!(
        "externalId,terminationDate,action\nSM0001,{due},terminate\nSM0001,{rehired},rehire\nSM0002,2026-01-05,terminate\n"
    );
    for round in 0..4 {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, status, out) = sandbox_run(&dir, &body, &[]).await;
        assert!(status.success(), "round {round}: {out}");
        let pending = store.pending_holds().await.expect("holds");
        assert!(
            pending.is_empty(),
            "round {round}: a hold survived the later rehire: {pending:?}\n{out}"
        );
        store.close().await;
    }
}

/// The mirror: a rehire, then later in the same manifest a termination of the
/// same person dated after it. Whichever message is handled first, the
/// termination stays held for its date (README, "Rehires": to terminate the
/// person again, send a termination dated after the rehire).
#[tokio::test]
async fn a_termination_after_a_rehire_in_the_same_manifest_stays_held_whatever_the_order() {
    let rehired = (Utc::now() + chrono::Duration::days(1)).date_naive();
    let due = (Utc::now() + chrono::Duration::days(20)).date_naive();
    let body = format!(
        "externalId,terminationDate,action\nSA0001,{rehired},rehire\nSA0001,{due},terminate\nSA0002,2026-01-05,terminate\n"
    );
    for round in 0..4 {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, status, out) = sandbox_run(&dir, &body, &[]).await;
        assert!(status.success(), "round {round}: {out}");
        let pending = store.pending_holds().await.expect("holds");
        assert_eq!(pending.len(), 1, "round {round}: {pending:?}\n{out}");
        assert_eq!(pending[0].external_id, "SA0001");
        assert_eq!(pending[0].due_at.date_naive(), due, "round {round}");
        store.close().await;
    }
}

/// Due terminations, and later in the same manifest rehires of three of those
/// people dated the day after: the three are never deactivated, whichever
/// message a worker handles first (the dispatcher marks their terminations as
/// withdrawn by the file); the others are. Repeated: with 8 workers the order
/// varies from run to run.
#[tokio::test]
async fn a_due_termination_with_a_later_rehire_in_the_file_is_never_deactivated() {
    let mut body = String::from("externalId,terminationDate,action\n");
    for i in 0..12 {
        body.push_str(&format!("RL{i:04},2026-01-15,terminate\n"));
    }
    for i in 0..3 {
        body.push_str(&format!("RL{i:04},2026-01-16,rehire\n"));
    }
    for round in 0..3 {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, status, out) = sandbox_run(&dir, &body, &["--format", "json"]).await;
        assert!(status.success(), "round {round}: {out}");
        let summary: serde_json::Value = serde_json::from_str(&out).expect("summary JSON");
        assert_eq!(
            summary["tally"]["outcomes"],
            serde_json::json!([["deactivated", 9], ["rescinded", 6]]),
            "round {round}: {out}"
        );
        let rows = store.termination_rows(None, None).await.expect("rows");
        for i in 0..3 {
            let who = format!("RL{i:04}");
            let mine: Vec<_> = rows
                .iter()
                .filter(|r| r.entry.external_id.as_deref() == Some(who.as_str()))
                .map(|r| (r.entry.action.clone(), r.entry.outcome))
                .collect();
            assert!(
                mine.iter().all(|(_, o)| *o != Outcome::Deactivated),
                "round {round}: {who} was deactivated: {mine:?}"
            );
            assert!(
                mine.contains(&("deactivate".to_owned(), Outcome::Rescinded)),
                "round {round}: {who}: {mine:?}"
            );
        }
        store.close().await;
    }
}

/// A rehire record the reader rejects (an ambiguous date, a missing date, a
/// misspelt action such as `re-hire`) still says HR may have meant to rehire the
/// person: the file's terminations of them are
/// rescinded for review, not carried out; others proceed.
#[tokio::test]
async fn a_rejected_rehire_record_withdraws_the_persons_termination() {
    let body = "externalId,terminationDate,action\nRJ03,2026-11-01,terminate\nRJ03,11/05/2026,rehire\nRJ07,2026-11-01,terminate\nRJ07,,rehire\nRJ08,2026-11-01,terminate\nRJ09,2026-11-01,terminate\nRJ09,2026-10-01,re-hire\n";
    let dir = tempfile::tempdir().expect("temp dir");
    let (store, status, out) = sandbox_run(&dir, body, &["--format", "json"]).await;
    assert!(status.success(), "{out}");
    let summary: serde_json::Value = serde_json::from_str(&out).expect("summary JSON");
    assert_eq!(
        summary["tally"]["outcomes"],
        serde_json::json!([["deactivated", 1], ["rescinded", 3]]),
        "{out}"
    );
    assert_eq!(summary["manifest"]["summary"]["rejected"], 3, "{out}");
    let rows = store.termination_rows(None, None).await.expect("rows");
    for who in ["RJ03", "RJ07", "RJ09"] {
        let row = rows
            .iter()
            .find(|r| {
                r.entry.external_id.as_deref() == Some(who) && r.entry.outcome == Outcome::Rescinded
            })
            .unwrap_or_else(|| panic!("{who} not rescinded: {rows:?}"));
        let why = row.entry.error_message.as_deref().unwrap_or_default();
        assert!(why.contains("was rejected"), "{why}");
    }
    store.close().await;
}
