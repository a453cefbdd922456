//! `deprovision serve`: the ECS service. Runs the dispatcher on the
//! manifest-events queue and the consumer pool on the terminations queue in one
//! process, with the hold releaser (future-dated terminations back onto the
//! terminations queue when due, every `HOLD_RELEASE_INTERVAL_SECS`), serves `/healthz` (alive), `/metrics` and `/readyz` (queues, audit
//! database and token endpoint reachable) on `HEALTH_ADDR`, and on SIGTERM or SIGINT drains (stops intake,
//! lets started terminations finish within the drain deadline, releases the
//! rest) and exits 0. Also holds the queue and signal wiring the other queue
//! commands share.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use deprovision::audit::AuditStore;
use deprovision::breaker::{Breaker, Limits};
use deprovision::config::{
    AuditArgs, AwsArgs, BreakerArgs, ConsumerArgs, HealthArgs, HoldArgs, PolicyArgs,
    ProtectionArgs, ScimArgs, ScimTarget, SigningArgs,
};
use deprovision::consume::{AuditSink, Consumer, ConsumerOptions};
use deprovision::dispatch::{DispatchOptions, Dispatcher, s3_client};
use deprovision::domain::IdempotencyKey;
use deprovision::engine::Engine;
use deprovision::queue::SqsQueue;
use deprovision::queue::sqs::load_aws_config;
use deprovision::release::{Releaser, ReleaserOptions};
use tokio_util::sync::CancellationToken;
use url::Url;

/// Flags of `deprovision serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Plan only: consumers resolve each person, audit the plan as `dry_run` and
    /// delete the message; no mutating SCIM request is sent. Run it on its own
    /// rehearsal queues: it consumes what it reads.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub consumer: ConsumerArgs,
    #[command(flatten)]
    pub health: HealthArgs,
    #[command(flatten)]
    pub scim: ScimArgs,
    #[command(flatten)]
    pub audit: AuditArgs,
    #[command(flatten)]
    pub policy: PolicyArgs,
    #[command(flatten)]
    pub aws: AwsArgs,
    #[command(flatten)]
    pub holds: HoldArgs,
    #[command(flatten)]
    pub signing: SigningArgs,
    #[command(flatten)]
    pub breaker: BreakerArgs,
    #[command(flatten)]
    pub protection: ProtectionArgs,
}

/// The SCIM client the breaker counts active users with: only when the share
/// check is on, and then the SCIM settings are required.
pub fn breaker_scim(
    scim: &ScimArgs,
    limits: &Limits,
) -> anyhow::Result<Option<deprovision::scim::ScimClient>> {
    if !limits.checks_share() {
        return Ok(None);
    }
    let engine = Engine::from_args(scim).context(
        "MAX_TERMINATIONS_SHARE needs the SCIM settings to count the org's active users (or set MAX_TERMINATIONS_SHARE=1)",
    )?;
    Ok(Some(engine.client().clone()))
}

/// The engine with the protected accounts of `protection`, logging what is
/// protected (counts only). Resolves the `PROTECTED_GROUPS` names once (one SCIM
/// query per name, 60 s budget) so that a name matching no group stops the
/// command at start-up instead of protecting nobody. Errors: an unresolvable
/// name, or the lookup failing.
pub async fn protected_engine(
    engine: Engine,
    protection: &ProtectionArgs,
) -> anyhow::Result<Engine> {
    let p = protection.protection();
    let (users, groups) = p.counts();
    if !p.is_empty() {
        tracing::info!(users, groups, "protected accounts configured");
    }
    if groups > 0 {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        p.verify(&mut engine.client().session(deadline))
            .await
            .context("refusing to start: PROTECTED_GROUPS cannot be resolved")?;
    }
    Ok(engine.with_protection(Arc::new(p)))
}

/// The terminations queue and its dead-letter queue (from
/// `DEAD_LETTER_QUEUE_URL`, else the terminations queue's redrive policy).
pub async fn termination_queues(
    sqs: &aws_sdk_sqs::Client,
    aws: &AwsArgs,
) -> anyhow::Result<(SqsQueue, SqsQueue)> {
    let url =
        aws.terminations_queue_url
            .as_deref()
            .ok_or(deprovision::config::ConfigError::Missing {
                name: "TERMINATIONS_QUEUE_URL",
                why: "the terminations queue's URL",
            })?;
    let terminations = SqsQueue::connect(sqs.clone(), url)
        .await
        .context("terminations queue")?;
    let dead_letter = match aws.dead_letter_queue_url.as_deref() {
        Some(url) => SqsQueue::connect(sqs.clone(), url)
            .await
            .context("dead-letter queue")?,
        None => terminations
            .dead_letter_queue()
            .await
            .context("dead-letter queue from the redrive policy")?
            .context("set DEAD_LETTER_QUEUE_URL or give the terminations queue a redrive policy")?,
    };
    Ok((terminations, dead_letter))
}

/// A token cancelled on the first SIGTERM or SIGINT.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received; draining");
        cancel.cancel();
    });
    token
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the service");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

/// What `/readyz` checks.
struct Readiness {
    queues: Vec<SqsQueue>,
    audit: AuditStore,
    token_endpoint: Url,
    http: reqwest::Client,
}

impl Readiness {
    async fn check(&self) -> (bool, serde_json::Value) {
        let mut queues = Vec::new();
        let mut ok = true;
        for q in &self.queues {
            let r = q.ping().await;
            ok &= r.is_ok();
            queues.push(serde_json::json!({"queue": q.url(), "ok": r.is_ok(), "error": r.err().map(|e| e.to_string())}));
        }
        // Any well-formed key will do: the query is what is being checked.
        let probe = IdempotencyKey::from_hex(&"0".repeat(64)).ok();
        let db = match probe {
            Some(key) => AuditSink::latest_terminal_outcome(&self.audit, &key)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            None => Err("no probe key".to_owned()),
        };
        ok &= db.is_ok();
        // The claims table must exist and be writable (a database migrated by an
        // older build, with SKIP_MIGRATIONS, would make every message retry):
        // releasing a claim nobody holds touches no row.
        let claims = self
            .audit
            .release_claim("readyz probe", "readyz probe")
            .await
            .map_err(|e| e.to_string());
        ok &= claims.is_ok();
        // Reachable means it answers HTTP at all; no credentials are sent.
        let token = self
            .http
            .get(self.token_endpoint.clone())
            .send()
            .await
            .map(|r| r.status().as_u16())
            .map_err(|e| e.to_string());
        ok &= token.is_ok();
        (
            ok,
            serde_json::json!({
                "ready": ok,
                "queues": queues,
                "database": {"ok": db.is_ok(), "error": db.err()},
                "claims": {"ok": claims.is_ok(), "error": claims.err()},
                "token_endpoint": {"url": self.token_endpoint.as_str(), "ok": token.is_ok(), "status": token.as_ref().ok(), "error": token.err()},
            }),
        )
    }
}

fn token_endpoint(target: &ScimTarget) -> Url {
    match target {
        ScimTarget::Genesys { login_base, .. } => login_base
            .join("oauth/token")
            .unwrap_or_else(|_| login_base.clone()),
        ScimTarget::Static { base, .. } => base.clone(),
    }
}

async fn serve_health(
    addr: SocketAddr,
    readiness: Arc<Readiness>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    // `/healthz` and `/metrics` come from telemetry; readiness is ours.
    let app = deprovision::telemetry::health_router().merge(
        axum::Router::new()
            .route(
                "/readyz",
                get(|State(r): State<Arc<Readiness>>| async move {
                    let (ok, body) = r.check().await;
                    let status = if ok {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    (status, axum::Json(body))
                }),
            )
            .with_state(readiness),
    );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for health checks on {addr}"))?;
    tracing::info!(addr = %listener.local_addr().unwrap_or(addr), "health endpoints listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
        .context("health server")
}

/// Runs the service until SIGTERM/SIGINT, then drains and returns 0.
pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let shutdown = shutdown_on_signal();
    let target = args.scim.target()?;
    let signing = args.signing.auth(false)?;
    let limits = args.breaker.limits()?;
    let engine = protected_engine(
        Engine::from_args(&args.scim).context("SCIM client")?,
        &args.protection,
    )
    .await?;
    let breaker_scim = limits.checks_share().then(|| engine.client().clone());
    let engine = Arc::new(engine);
    let audit = Arc::new(AuditStore::open(&args.audit).await.context("audit store")?);
    let aws = load_aws_config().await;
    let sqs = aws_sdk_sqs::Client::new(&aws);
    let (terminations, dead_letter) = termination_queues(&sqs, &args.aws).await?;
    let events = match args.aws.manifest_events_queue_url.as_deref() {
        Some(url) => Some(
            SqsQueue::connect(sqs.clone(), url)
                .await
                .context("manifest-events queue")?,
        ),
        None => {
            tracing::warn!("MANIFEST_EVENTS_QUEUE_URL is not set: consuming only, no dispatcher");
            None
        }
    };

    let mut probed = vec![terminations.clone(), dead_letter.clone()];
    probed.extend(events.clone());
    let readiness = Arc::new(Readiness {
        queues: probed,
        audit: (*audit).clone(),
        token_endpoint: token_endpoint(&target),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .build()
            .context("HTTP client for readiness")?,
    });
    let health_stop = CancellationToken::new();
    let health = tokio::spawn(serve_health(
        args.health.health_addr,
        readiness,
        health_stop.clone(),
    ));

    if args.dry_run {
        tracing::warn!(
            queue = terminations.url(),
            "dry run: every termination message received is planned, audited as dry_run and deleted; nothing is changed in SCIM"
        );
    }
    let options = ConsumerOptions {
        concurrency: args.policy.concurrency.max(1),
        drain_deadline: args.consumer.drain_deadline(),
        attempt_timeout: args.consumer.attempt_timeout(),
        retry_base: args.consumer.retry_base(),
        dry_run: args.dry_run,
        signing: signing.clone(),
        max_future_days: args.policy.max_future_days,
        ..ConsumerOptions::default()
    };
    // A dry run must not release holds: they would be marked released while the
    // pool only plans them.
    let release_holds = !options.dry_run;
    let consumer = Consumer::new(
        terminations.clone(),
        dead_letter,
        engine,
        audit.clone(),
        options,
    );
    let releaser = Releaser::new(
        (*audit).clone(),
        terminations.clone(),
        ReleaserOptions {
            interval: args.holds.interval(),
            signing: signing.clone(),
            ..ReleaserOptions::default()
        },
    );
    let dispatcher = Dispatcher::new(
        Some(s3_client(&aws)),
        terminations,
        audit.clone(),
        DispatchOptions {
            hr_timezone: args.policy.hr_timezone,
            effective_at: args.policy.termination_effective_at,
            dry_run: args.dry_run,
            signing,
            breaker: Some(Arc::new(Breaker::new(
                limits,
                breaker_scim,
                (*audit).clone(),
            ))),
            max_future_days: args.policy.max_future_days,
            ..DispatchOptions::default()
        },
    );
    let dispatch = async {
        if let Some(events) = &events {
            dispatcher.run_events(events, shutdown.clone()).await;
        }
    };
    let (report, (), ()) = tokio::join!(consumer.run(shutdown.clone()), dispatch, async {
        if release_holds {
            releaser.run(shutdown.clone()).await;
        }
    });
    health_stop.cancel();
    match health.await {
        Ok(Err(e)) => tracing::warn!(
            error = format!("{e:#}"),
            "health server stopped with an error"
        ),
        Err(e) => tracing::warn!(error = %e, "health server task failed"),
        Ok(Ok(())) => {}
    }
    audit.close().await;
    tracing::info!(drained = report.drained, released = report.released, tally = ?report.tally, "service stopped");
    Ok(ExitCode::SUCCESS)
}
