//! Consumer-pool throughput against the Genesys Cloud simulator with a quota of
//! 3,000 requests per minute per client and 50 ms mean latency: the achieved SCIM
//! request rate as a share of the quota (target ≥ 95 %), the 429s received
//! (target: none once adapted), and SCIM calls per termination. The whole path
//! after the queue is real: the in-process queue, the consumer pool (8 workers),
//! the engine with its shared rate limiter and token cache, the SQLite audit.
//!
//! One measurement of about 80 s, not a statistical sample (a rate against a
//! per-minute quota needs minutes, not iterations). Run:
//! `cargo bench --bench pipeline`.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deprovision::audit::{AuditStore, ManifestOrigin};
use deprovision::config::ScimArgs;
use deprovision::consume::{Consumer, ConsumerOptions};
use deprovision::domain::{EffectiveAt, ExternalId, Outcome, TerminationDate, TerminationRecord};
use deprovision::engine::Engine;
use deprovision::queue::{MemoryQueue, OutgoingMessage, Queue, TerminationMessage};
use deprovision::sim::{RunningSim, Seed, SimConfig};
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

const QUOTA_PER_MINUTE: u32 = 3_000;
const TERMINATIONS: usize = 900;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(measure());
}

async fn measure() {
    let records: Vec<TerminationRecord> = (1..=TERMINATIONS)
        .map(|i| TerminationRecord {
            external_id: ExternalId::parse(&format!("TP{i:05}")).expect("id"),
            user_id: None,
            termination_date: TerminationDate::parse("2026-01-05").expect("date"),
            action: deprovision::domain::RecordAction::Terminate,
        })
        .collect();
    let seed = Seed::from_records(records.iter().map(|r| (r.external_id.clone(), None)));
    let mut config = SimConfig::default()
        .with_seed(seed)
        .with_client("bench", "bench-secret")
        .with_rate_limit(QUOTA_PER_MINUTE, Duration::from_secs(60));
    config.latency = Duration::from_millis(50);
    let sim = RunningSim::start(config, SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("simulator");

    let scim = ScimArgs {
        genesys_region: None,
        genesys_org_url: None,
        genesys_api_url: Some(sim.base_url()),
        genesys_login_url: None,
        primary_client_id: Some("bench".into()),
        primary_client_secret: Some(SecretString::from("bench-secret")),
        elevated_client_id: None,
        elevated_client_secret: None,
        scim_base_url: None,
        scim_bearer_token: None,
        rate_limit_per_minute: NonZeroU32::new(QUOTA_PER_MINUTE).expect("non-zero"),
        remove_roles: false,
        scim_timeout_secs: 30,
    };
    let engine = Arc::new(Engine::from_args(&scim).expect("engine"));
    let audit = AuditStore::connect("sqlite::memory:").await.expect("audit");
    audit.migrate().await.expect("migrate");
    let audit = Arc::new(audit);

    let dead_letter = MemoryQueue::new("dlq", Duration::from_secs(60));
    let queue = MemoryQueue::with_dead_letter(
        "terminations",
        Duration::from_secs(60),
        dead_letter.clone(),
        5,
    );
    let origin = ManifestOrigin {
        bucket: "bench".into(),
        key: "bench.json".into(),
        version: None,
        index: None,
    };
    for chunk in records.chunks(10) {
        let batch: Vec<OutgoingMessage> = chunk
            .iter()
            .map(|r| OutgoingMessage {
                body: TerminationMessage::new(
                    r.clone(),
                    origin.clone(),
                    chrono_tz::UTC,
                    EffectiveAt::StartOfDay,
                )
                .encode(),
                ..OutgoingMessage::default()
            })
            .collect();
        queue.send_batch(&batch).await.expect("enqueue");
    }

    let consumer = Consumer::new(
        queue.clone(),
        dead_letter.clone(),
        engine,
        audit,
        ConsumerOptions {
            concurrency: 8,
            retry_base: Duration::from_secs(1),
            ..ConsumerOptions::default()
        },
    );
    let stop = CancellationToken::new();
    let started = Instant::now();
    let run = {
        let stop = stop.clone();
        tokio::spawn(async move { consumer.run(stop).await })
    };
    queue.wait_empty().await;
    let elapsed = started.elapsed();
    stop.cancel();
    let report = run.await.expect("pool");
    let stats = sim.stats();
    // Requests that carried the client's token: SCIM calls, not token grants.
    let scim_requests = stats.by_client.get("bench").map_or(0, |c| c.requests);
    let minutes = elapsed.as_secs_f64() / 60.0;
    let rate = scim_requests as f64 / minutes;
    println!(
        "consumer throughput, simulator quota {QUOTA_PER_MINUTE}/min per client, 50 ms mean latency, 8 workers:"
    );
    println!(
        "  {} terminations ({} deactivated, {} dead-lettered) in {:.1} s",
        TERMINATIONS,
        report.tally.count(Outcome::Deactivated),
        dead_letter.len(),
        elapsed.as_secs_f64()
    );
    println!(
        "  SCIM requests {scim_requests} → {rate:.0}/min = {:.1} % of the quota",
        100.0 * rate / f64::from(QUOTA_PER_MINUTE)
    );
    println!(
        "  429s received {} (rate limiter), statuses {:?}",
        stats.rate_limited, stats.by_status
    );
    println!(
        "  SCIM calls per termination {:.2} (requests by method {:?})",
        scim_requests as f64 / TERMINATIONS as f64,
        stats.by_method
    );
    sim.shutdown().await;
}
