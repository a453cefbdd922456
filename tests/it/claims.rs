//! Cross-process claims on a person, over real parts: two consumer pools on one
//! moto queue with PostgreSQL, the same person in two messages (two termination
//! dates, so two idempotency keys) → exactly one deactivating PATCH; the worker
//! role may use the claims table; `deprovision user` waits for a claim a worker
//! holds instead of racing it.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use deprovision::audit::{AuditStore, ClaimState, ManifestOrigin};
use deprovision::config::{OAuthClient, ScimTarget};
use deprovision::consume::{Consumer, ConsumerOptions, Step};
use deprovision::domain::{EffectiveAt, ExternalId, Outcome, TerminationDate, TerminationRecord};
use deprovision::engine::{Engine, EngineOptions};
use deprovision::limit::RateLimiter;
use deprovision::queue::{Queue, SqsQueue, TerminationMessage};
use deprovision::scim::{ClientOptions, ScimClient};
use deprovision::sim::RunningSim;
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use crate::audit::{Raw, fresh_postgres, pg_url_for};
use crate::pipeline::harness::{
    ELEVATED, PRIMARY, aws, eventually, records, sim_config, start_sim, terminal_by_key, user_id_of,
};

const LIMIT: Duration = Duration::from_secs(120);

fn engine(sim: &RunningSim) -> Engine {
    let oauth = |(id, secret): (&str, &str)| OAuthClient {
        id: id.to_owned(),
        secret: SecretString::from(secret.to_owned()),
    };
    let target = ScimTarget::Genesys {
        api_base: sim.base_url(),
        login_base: sim.base_url(),
        primary: oauth(PRIMARY),
        elevated: Some(oauth(ELEVATED)),
    };
    let limiter = RateLimiter::per_minute(NonZeroU32::new(60_000).expect("non-zero"));
    let client = ScimClient::new(&target, limiter, ClientOptions::default()).expect("client");
    Engine::new(client, EngineOptions::default())
}

/// The message of `external_id` terminated on `date`.
fn message(external_id: &str, date: &str, index: u64) -> String {
    TerminationMessage::new(
        TerminationRecord {
            external_id: ExternalId::parse(external_id).expect("id"),
            user_id: None,
            termination_date: TerminationDate::parse(date).expect("date"),
            action: deprovision::domain::RecordAction::Terminate,
        },
        ManifestOrigin {
            bucket: "hr".into(),
            key: "claims.json".into(),
            version: None,
            index: Some(index),
        },
        chrono_tz::UTC,
        EffectiveAt::StartOfDay,
    )
    .encode()
}

type Pool = Consumer<SqsQueue, Engine, AuditStore>;

fn pool(queue: &SqsQueue, dlq: &SqsQueue, sim: &RunningSim, audit: &AuditStore) -> Pool {
    Consumer::new(
        queue.clone(),
        dlq.clone(),
        Arc::new(engine(sim)),
        Arc::new(audit.clone()),
        ConsumerOptions {
            // One at a time per pool: only the cross-process claim can keep the
            // two pools apart.
            concurrency: 1,
            receive_wait: Duration::from_secs(1),
            attempt_timeout: Duration::from_secs(30),
            retry_base: Duration::from_secs(1),
            ..ConsumerOptions::default()
        },
    )
}

/// A simulator with one user (`CL0001`, two groups) answering every request
/// after ~300 ms, so that two unguarded attempts would overlap.
async fn slow_sim() -> (RunningSim, String) {
    let recs = records("CL", 1);
    let (mut config, seed) = sim_config(&recs);
    config.latency = Duration::from_millis(300);
    let user = user_id_of(&seed, "CL0001");
    (start_sim(config).await, user)
}

#[tokio::test]
async fn two_pools_deactivate_one_person_with_two_dates_exactly_once() {
    let aws = aws().await;
    let db = fresh_postgres().await;
    let queues = aws.queues(5, 30).await;
    let (sim, user) = slow_sim().await;
    let queue = SqsQueue::connect(aws.sqs.clone(), &queues.terminations)
        .await
        .expect("queue");
    let dlq = SqsQueue::connect(aws.sqs.clone(), &queues.dead_letter)
        .await
        .expect("dlq");
    let pools = [
        Arc::new(pool(&queue, &dlq, &sim, &db.store)),
        Arc::new(pool(&queue, &dlq, &sim, &db.store)),
    ];
    let stop = CancellationToken::new();
    let running: Vec<_> = pools
        .iter()
        .map(|p| {
            let (p, stop) = (p.clone(), stop.clone());
            tokio::spawn(async move { p.run(stop).await })
        })
        .collect();
    // Both pools are polling before the messages exist.
    tokio::time::sleep(Duration::from_millis(500)).await;
    aws.send_raw(&queues.terminations, &message("CL0001", "2026-01-05", 0))
        .await;
    aws.send_raw(&queues.terminations, &message("CL0001", "2026-01-06", 1))
        .await;

    eventually(
        "both terminations reach a terminal outcome",
        LIMIT,
        || async { terminal_by_key(&db.store).await.len() == 2 },
    )
    .await;
    stop.cancel();
    for r in running {
        r.await.expect("pool ends");
    }

    let stats = sim.stats();
    assert_eq!(
        stats.user_patches(),
        1,
        "exactly one deactivating PATCH: {stats:?}"
    );
    let u = sim.user(&user).expect("user");
    assert!(!u.active);
    assert!(u.groups.is_empty());
    let mut outcomes: Vec<Outcome> = terminal_by_key(&db.store)
        .await
        .into_values()
        .flatten()
        .collect();
    outcomes.sort_by_key(|o| o.as_str());
    assert_eq!(outcomes, [Outcome::AlreadyInactive, Outcome::Deactivated]);
    assert_eq!(aws.depth(&queues.terminations).await, 0);
    assert_eq!(aws.depth(&queues.dead_letter).await, 0);
    let Raw::Pg(pg) = &db.raw else {
        unreachable!("PostgreSQL")
    };
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM termination_claims")
        .fetch_one(pg)
        .await
        .expect("claims");
    assert_eq!(left, 0, "every claim is released after its audit row");
}

/// The race itself, step by step: two pools start on the same person at the
/// same moment; one works, the other is told to come back (not an attempt:
/// nothing audited), and its later attempt finds the user already inactive.
#[tokio::test]
async fn the_second_pool_waits_for_the_first_and_finds_the_user_inactive() {
    let aws = aws().await;
    let db = fresh_postgres().await;
    let queues = aws.queues(5, 30).await;
    let (sim, _user) = slow_sim().await;
    let queue = SqsQueue::connect(aws.sqs.clone(), &queues.terminations)
        .await
        .expect("queue");
    let dlq = SqsQueue::connect(aws.sqs.clone(), &queues.dead_letter)
        .await
        .expect("dlq");
    let (a, b) = (
        pool(&queue, &dlq, &sim, &db.store),
        pool(&queue, &dlq, &sim, &db.store),
    );
    aws.send_raw(&queues.terminations, &message("CL0001", "2026-01-05", 0))
        .await;
    aws.send_raw(&queues.terminations, &message("CL0001", "2026-01-06", 1))
        .await;
    let mut got = Vec::new();
    while got.len() < 2 {
        got.extend(
            queue
                .receive(2, Duration::from_secs(2))
                .await
                .expect("receive"),
        );
    }
    let (second, first) = (got.pop().expect("two"), got.pop().expect("two"));
    let (x, y) = tokio::join!(a.handle(first), b.handle(second));
    let (done, waited) = match (&x, &y) {
        (Step::Done(_), Step::Retry { .. }) => (x, y),
        (Step::Retry { .. }, Step::Done(_)) => (y, x),
        other => panic!("expected one done and one told to wait: {other:?}"),
    };
    assert_eq!(done, Step::Done(Outcome::Deactivated));
    let Step::Retry { reason, .. } = waited else {
        unreachable!()
    };
    assert!(
        reason.contains("externalId CL0001 is being worked on elsewhere by pid"),
        "{reason}"
    );
    assert_eq!(
        terminal_by_key(&db.store).await.len(),
        1,
        "the wait is not audited"
    );

    let again = loop {
        let mut m = queue
            .receive(1, Duration::from_secs(5))
            .await
            .expect("receive");
        if let Some(m) = m.pop() {
            break m;
        }
    };
    assert_eq!(b.handle(again).await, Step::Done(Outcome::AlreadyInactive));
    assert_eq!(sim.stats().user_patches(), 1);
}

#[tokio::test]
async fn the_worker_role_may_take_and_release_claims() {
    let db = fresh_postgres().await;
    let user = format!("w_{}", uuid::Uuid::new_v4().simple());
    db.raw
        .exec(&format!(
            "CREATE ROLE {user} LOGIN IN ROLE deprovision_worker"
        ))
        .await
        .expect("create a worker login");
    let url = pg_url_for(db.db_name.as_deref().expect("postgres"), Some(&user));
    let worker = AuditStore::connect(&url).await.expect("worker connects");
    let lease = Duration::from_secs(60);
    assert_eq!(
        worker.claim("E1", "me", lease).await.expect("claim"),
        ClaimState::Taken
    );
    assert!(matches!(
        db.store.claim("E1", "other", lease).await.expect("claim"),
        ClaimState::HeldElsewhere { owner: Some(o), expires_at: Some(_) } if o == "me"
    ));
    worker.release_claim("E1", "me").await.expect("release");
    assert!(
        db.store
            .claim("E1", "other", lease)
            .await
            .expect("claim")
            .is_taken()
    );
    // Still nothing but INSERT and SELECT on the audit table itself.
    let Raw::Pg(pg) = &db.raw else {
        unreachable!("PostgreSQL")
    };
    let (update, delete): (bool, bool) = sqlx::query_as(
        "SELECT has_table_privilege('deprovision_worker', 'scim_audit_log', 'UPDATE'), \
                has_table_privilege('deprovision_worker', 'scim_audit_log', 'DELETE')",
    )
    .fetch_one(pg)
    .await
    .expect("privileges");
    assert!(!update && !delete);
}

#[tokio::test]
async fn deprovision_user_waits_for_a_person_a_worker_holds() {
    let recs = records("CU", 1);
    let (config, seed) = sim_config(&recs);
    let user = user_id_of(&seed, "CU0001");
    let sim = start_sim(config).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("audit.db").display());
    let store = AuditStore::connect(&url).await.expect("store");
    store.migrate().await.expect("migrate");
    assert!(
        store
            .claim("CU0001", "a queue worker", Duration::from_secs(60))
            .await
            .expect("claim")
            .is_taken()
    );
    let cli = || {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_deprovision"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", &url)
            .env("GENESYS_API_URL", sim.base_url().as_str())
            .env("PRIMARY_CLIENT_ID", PRIMARY.0)
            .env("PRIMARY_CLIENT_SECRET", PRIMARY.1)
            .env("RUST_LOG", "warn")
            .args([
                "user",
                "--external-id",
                "CU0001",
                "--deadline-secs",
                "2",
                "--by",
                "it",
            ]);
        cmd
    };
    let out = cli().output().await.expect("run user");
    assert_eq!(out.status.code(), Some(75), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("CU0001 is being worked on elsewhere by a queue worker"),
        "{stderr}"
    );
    assert_eq!(sim.stats().user_patches(), 0, "nothing done while held");
    assert!(sim.user(&user).expect("user").active);

    store
        .release_claim("CU0001", "a queue worker")
        .await
        .expect("release");
    let out = cli().output().await.expect("run user");
    assert!(out.status.success(), "{out:?}");
    assert!(!sim.user(&user).expect("user").active);
    // The operator's own claim is gone once its audit row is written.
    assert!(
        store
            .claim("CU0001", "next", Duration::from_secs(60))
            .await
            .expect("claim")
            .is_taken()
    );
}
