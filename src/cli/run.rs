//! `deprovision run MANIFEST [--sandbox] [--dry-run] [--approve]`: the embedded
//! default. One
//! process runs the whole path on a local file or `s3://` object — the same
//! dispatcher, an in-process queue (with a dead-letter queue and redrive), the
//! same consumer pool and engine, and the audit store — then prints a summary
//! that reconciles every record to exactly one end state. `--sandbox` starts the
//! Genesys Cloud simulator in-process, seeded with the manifest's people in one
//! or two groups each, so the path can be watched without any account.
//!
//! The summary names who was not deprovisioned (`not_found`, `protected`,
//! dead-lettered, scheduled) and the rejected records, the first few in text and
//! up to 1,000 in JSON. `--dry-run --format json` prints the plan instead: one
//! document a reviewer can approve ([`PlanDocument`]).
//!
//! Exit status: 0 when the manifest reconciles and nobody was dead-lettered, in
//! this run or an earlier one (`ambiguous`, `identity_mismatch`, `invalid`,
//! `forbidden`, `failed`); 1 otherwise (also when interrupted); 2 when the
//! manifest was rejected whole; 3 when the mass-deactivation breaker holds it.

use std::io::IsTerminal;
use std::net::{Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use deprovision::audit::AuditStore;
use deprovision::breaker::Breaker;
use deprovision::config::{
    ActorArgs, AuditArgs, BreakerArgs, PolicyArgs, ProtectionArgs, ScimArgs, SigningArgs,
};
use deprovision::consume::{Consumer, ConsumerOptions, TallySnapshot};
use deprovision::dispatch::{
    Approved, DispatchOptions, DispatchReport, Dispatcher, ManifestSource, s3_client,
};
use deprovision::domain::Outcome;
use deprovision::engine::Engine;
use deprovision::plan::{Decision, Journal, PlanBreaker, PlanDocument, PlanSettings, would_label};
use deprovision::queue::sqs::load_aws_config;
use deprovision::queue::{MemoryQueue, TerminationMessage, attr};
use deprovision::release::{Releaser, ReleaserOptions};
use deprovision::sim::{RunningSim, Seed, SimConfig};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

/// Flags of `deprovision run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The manifest: a local file or `s3://bucket/key` (JSON array, NDJSON or
    /// CSV with a header).
    pub manifest: String,
    /// Run against the built-in Genesys Cloud simulator, seeded from the
    /// manifest, instead of a real org. Audits to `--sandbox-database-url`, never
    /// to DATABASE_URL, so rehearsals cannot mark real terminations as done.
    #[arg(long)]
    pub sandbox: bool,
    /// The audit database of `--sandbox` runs.
    #[arg(long, default_value = "sqlite://deprovision-sandbox.db")]
    pub sandbox_database_url: String,
    /// Resolve and plan only; change nothing (audit rows say `dry_run`).
    #[arg(long)]
    pub dry_run: bool,
    /// Attempt again the terminations an earlier run left failed, forbidden,
    /// ambiguous or mismatched (after fixing the cause); finished ones are
    /// still skipped.
    #[arg(long)]
    pub retry_failed: bool,
    /// Summary format on standard output.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Dispatch even if the mass-deactivation breaker would hold the manifest
    /// (audited as approved by `--by`, before anything is enqueued); refused for
    /// content an operator rejected.
    #[arg(long)]
    pub approve: bool,
    /// Who approves with `--approve` (`--by`; recorded in the audit).
    #[command(flatten)]
    pub actor: ActorArgs,
    #[command(flatten)]
    pub scim: ScimArgs,
    #[command(flatten)]
    pub audit: AuditArgs,
    #[command(flatten)]
    pub policy: PolicyArgs,
    #[command(flatten)]
    pub signing: SigningArgs,
    #[command(flatten)]
    pub breaker: BreakerArgs,
    #[command(flatten)]
    pub protection: ProtectionArgs,
}

/// Summary format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A table for people.
    Text,
    /// One JSON document.
    Json,
}

/// One dead-lettered termination in the summary.
#[derive(Debug, Serialize)]
struct DeadLetter {
    external_id: Option<String>,
    reason: String,
    detail: Option<String>,
}

/// One person who was not deprovisioned (or, in a dry run, one planned
/// person), in the summary.
#[derive(Debug, Serialize)]
struct Person {
    #[serde(rename = "externalId")]
    external_id: Option<String>,
    #[serde(rename = "userId")]
    user_id: Option<String>,
    /// The recorded outcome (dry run: the planned one).
    outcome: Outcome,
    index: Option<u64>,
    reason: Option<String>,
}

impl Person {
    fn of(d: &Decision) -> Self {
        Self {
            external_id: d.external_id.clone(),
            user_id: d.user_id.clone(),
            outcome: d.shown(),
            index: d.index,
            reason: d.reason.clone(),
        }
    }
}

/// People listed in the JSON summary (the text lists [`TEXT_LISTED`]).
const REVIEW_KEPT: usize = 1000;
/// People and rejected records listed in the text summary.
const TEXT_LISTED: usize = 20;

/// The closing summary.
#[derive(Debug, Serialize)]
struct Summary {
    manifest: DispatchReport,
    sandbox: bool,
    dry_run: bool,
    audit: String,
    tally: TallySnapshot,
    dead_lettered: Vec<DeadLetter>,
    /// Who was not deprovisioned (`not_found`, `protected`, dead-lettered,
    /// `scheduled`), in manifest order; in a dry run, who would not be.
    not_deprovisioned: Vec<Person>,
    /// How many more than those listed.
    not_deprovisioned_more: u64,
    /// Held terminations of earlier runs that were due at start and were
    /// released into this run's queue (they are accounted for too).
    released_holds: u64,
    /// The earliest due time among the holds still pending at the end.
    next_due: Option<chrono::DateTime<chrono::Utc>>,
    /// Distinct terminations that reached an end state (terminal outcome,
    /// dry run, held for later, or already finished by an earlier run).
    accounted: u64,
    reconciled: bool,
    interrupted: bool,
    failed: u64,
}

const SANDBOX_PRIMARY: (&str, &str) = ("sandbox-primary", "sandbox-primary-secret");
const SANDBOX_ELEVATED: (&str, &str) = ("sandbox-elevated", "sandbox-elevated-secret");

/// Runs the manifest to completion and prints the summary.
pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let shutdown = super::serve::shutdown_on_signal();
    let source = ManifestSource::parse(&args.manifest)?;
    // The in-process queue never leaves the process: without keys an ephemeral
    // one signs and verifies, so the same checks run as in the service.
    let signing = args.signing.auth(true)?;
    let mut limits = args.breaker.limits()?;
    if args.sandbox {
        // The sandbox org holds only the manifest's people: every manifest would
        // be 100% of it.
        limits.max_share = 1.0;
    }
    let s3 = match &source {
        ManifestSource::S3(_) => Some(s3_client(&load_aws_config().await)),
        ManifestSource::Local(_) => None,
    };
    let mut audit_args = args.audit.clone();
    if args.sandbox {
        audit_args.database_url = SecretString::from(args.sandbox_database_url.clone());
    }
    let audit_url = redact(audit_args.database_url.expose_secret());
    let audit = Arc::new(AuditStore::open(&audit_args).await.context("audit store")?);

    let dead_letter = MemoryQueue::new("dead-letter", Duration::from_secs(60));
    let queue = MemoryQueue::with_dead_letter(
        "terminations",
        Duration::from_secs(60),
        dead_letter.clone(),
        5,
    );
    let dispatcher = Dispatcher::new(
        s3.clone(),
        queue.clone(),
        audit.clone(),
        DispatchOptions {
            hr_timezone: args.policy.hr_timezone,
            effective_at: args.policy.termination_effective_at,
            dry_run: args.dry_run,
            max_future_days: args.policy.max_future_days,
            ..DispatchOptions::default()
        },
    );

    let (engine, sim) = if args.sandbox {
        let sim = start_sandbox(&dispatcher, &source).await?;
        let scim = ScimArgs {
            genesys_region: None,
            genesys_org_url: None,
            genesys_api_url: Some(sim.base_url()),
            genesys_login_url: None,
            primary_client_id: Some(SANDBOX_PRIMARY.0.into()),
            primary_client_secret: Some(SecretString::from(SANDBOX_PRIMARY.1)),
            elevated_client_id: Some(SANDBOX_ELEVATED.0.into()),
            elevated_client_secret: Some(SecretString::from(SANDBOX_ELEVATED.1)),
            scim_base_url: None,
            scim_bearer_token: None,
            rate_limit_per_minute: NonZeroU32::new(60_000)
                .unwrap_or(args.scim.rate_limit_per_minute),
            remove_roles: args.scim.remove_roles,
            scim_timeout_secs: args.scim.scim_timeout_secs,
        };
        (
            Engine::from_args(&scim).context("sandbox SCIM client")?,
            Some(sim),
        )
    } else {
        (Engine::from_args(&args.scim).context("SCIM client")?, None)
    };
    // Credentials the login server refuses would fail every termination one by
    // one: refuse to start instead (the token is cached for the run).
    let login_deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    if let Err(e) = engine.client().login(login_deadline).await {
        if let Some(sim) = sim {
            sim.shutdown().await;
        }
        return Err(anyhow::Error::new(e)
            .context("refusing to start: cannot get a token for the primary OAuth client"));
    }
    let scim_target = match &sim {
        Some(sim) => format!("sandbox simulator at {}", sim.base_url()),
        None => match args.scim.target() {
            Ok(deprovision::config::ScimTarget::Genesys { api_base, .. }) => api_base.to_string(),
            Ok(deprovision::config::ScimTarget::Static { base, .. }) => base.to_string(),
            Err(e) => format!("unresolved ({e})"),
        },
    };
    let engine = match super::serve::protected_engine(engine, &args.protection).await {
        Ok(engine) => engine,
        Err(e) => {
            if let Some(sim) = sim {
                sim.shutdown().await;
            }
            return Err(e);
        }
    };
    let breaker = Arc::new(Breaker::new(
        limits,
        limits.checks_share().then(|| engine.client().clone()),
        (*audit).clone(),
    ));
    let dispatcher = Dispatcher::new(
        s3,
        queue.clone(),
        audit.clone(),
        DispatchOptions {
            hr_timezone: args.policy.hr_timezone,
            effective_at: args.policy.termination_effective_at,
            dry_run: args.dry_run,
            max_future_days: args.policy.max_future_days,
            signing: signing.clone(),
            // A dry run changes nothing, and is how a reviewer sees the plan of
            // a manifest the breaker would hold: it is assessed, not held.
            breaker: (!args.dry_run).then(|| breaker.clone()),
            retry_dead_lettered: args.retry_failed,
            approve_command: Some(format!("deprovision run {} --approve", args.manifest)),
            ..DispatchOptions::default()
        },
    );

    let consumer = Consumer::new(
        queue.clone(),
        dead_letter.clone(),
        Arc::new(engine),
        audit.clone(),
        ConsumerOptions {
            concurrency: args.policy.concurrency.max(1),
            dry_run: args.dry_run,
            max_future_days: args.policy.max_future_days,
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            signing: signing.clone(),
            ..ConsumerOptions::default()
        },
    );
    let tally = consumer.tally();
    let journal = Arc::new(if args.dry_run {
        Journal::everyone()
    } else {
        Journal::needing_review(REVIEW_KEPT)
    });
    {
        let journal = journal.clone();
        consumer.observe(move |d| journal.record(d));
    }
    let stop_pool = shutdown.child_token();
    let pool = {
        let stop = stop_pool.clone();
        tokio::spawn(async move { consumer.run(stop).await })
    };

    // Holds of earlier runs that are due now go first. A dry run leaves them
    // held: releasing them would mark them released with nothing done.
    let released_holds = if args.dry_run {
        let now = chrono::Utc::now();
        let due = audit
            .pending_holds()
            .await
            .context("reading held terminations")?
            .iter()
            .filter(|h| h.due_at <= now)
            .count();
        if due > 0 {
            eprintln!("{due} held termination(s) are due; a dry run leaves them held");
        }
        0
    } else {
        let releaser = Releaser::new(
            (*audit).clone(),
            queue.clone(),
            ReleaserOptions {
                signing: signing.clone(),
                ..ReleaserOptions::default()
            },
        );
        let round = releaser
            .release_due()
            .await
            .context("releasing due held terminations")?;
        if !round.released.is_empty() {
            eprintln!(
                "released {} held termination(s) now due from {audit_url}",
                round.released.len()
            );
        }
        round.released.len() as u64
    };

    let dispatched = if args.approve {
        dispatcher
            .dispatch_approved(
                &source,
                1,
                // The approval is audited (and the hold marked approved)
                // before anything is enqueued.
                &Approved {
                    by: Some(args.actor.or("operator")),
                    ..Approved::default()
                },
            )
            .await
    } else {
        dispatcher.dispatch(&source, 1).await
    };
    let report = match dispatched {
        Ok(report) => report,
        Err(e) => {
            stop_pool.cancel();
            let _ = pool.await;
            return Err(e).context("dispatching the manifest");
        }
    };
    if let Some(reason) = &report.rejected_file {
        stop_pool.cancel();
        let _ = pool.await;
        eprintln!("manifest rejected as a whole, nothing was done: {reason}");
        return Ok(ExitCode::from(2));
    }
    if let Some(reason) = &report.held {
        stop_pool.cancel();
        let _ = pool.await;
        audit.close().await;
        let id = report.manifest_id.as_deref().unwrap_or("-");
        if report.held_rejected {
            eprintln!(
                "manifest {id} was rejected by an operator, nothing was done: {reason}\n\
                 no approval releases it, not even --approve; if terminations in it are \
                 still due, send them in a corrected manifest"
            );
        } else {
            eprintln!(
                "manifest held by the mass-deactivation breaker as {id}, nothing was done: {reason}\n\
                 if this many terminations are intended, run again with --approve \
                 (or `deprovision reject {id}` to discard it)"
            );
        }
        if args.format == Format::Json {
            println!(
                "{}",
                serde_json::to_string_pretty(&held_document(&args, &report, reason))?
            );
        }
        return Ok(ExitCode::from(3));
    }
    let mut breaker_verdict = PlanBreaker {
        terminations: report.terminations,
        approved: args.approve,
        ..PlanBreaker::default()
    };
    if args.dry_run {
        let id = report.manifest_id.clone().unwrap_or_default();
        let preview = breaker.preview(&id, report.terminations).await;
        breaker_verdict =
            PlanBreaker::from_preview(&id, report.terminations, args.approve, &preview);
        match &preview {
            Ok(p) => {
                if let Some(rejected) = p.rejected() {
                    eprintln!(
                        "dry run: this content (manifest {id}) was rejected by {} at {}; a real run refuses it, even with --approve",
                        rejected.decided_by.as_deref().unwrap_or("unknown"),
                        rejected
                            .decided_at
                            .map_or_else(|| "an unknown time".to_owned(), |t| t.to_rfc3339())
                    );
                } else if let (Some(reason), false) = (&p.hold, args.approve) {
                    eprintln!(
                        "dry run: a real run would be held by the mass-deactivation breaker ({reason}); it would need --approve"
                    );
                }
            }
            Err(e) => eprintln!(
                "dry run: the mass-deactivation breaker could not assess this manifest: {e}"
            ),
        }
    }

    let progress = progress_bar(report.summary.valid);
    let ticker = progress.clone().map(|bar| {
        let tally = tally.clone();
        tokio::spawn(async move {
            loop {
                let t = tally.snapshot();
                bar.set_position(t.finished() + t.already_done + t.not_due);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    });
    let interrupted = tokio::select! {
        () = queue.wait_empty() => false,
        () = shutdown.cancelled() => true,
    };
    stop_pool.cancel();
    let pool_report = pool.await.context("consumer pool")?;
    if let Some(t) = ticker {
        t.abort();
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    if let Some(sim) = sim {
        sim.shutdown().await;
    }
    let next_due = if pool_report.tally.not_due > 0 {
        audit
            .pending_holds()
            .await
            .context("reading held terminations")?
            .first()
            .map(|h| h.due_at)
    } else {
        None
    };
    audit.close().await;

    let tally = pool_report.tally;
    let accounted = tally.finished() + tally.already_done + tally.not_due;
    // Everyone matched but not safely deprovisioned (ambiguous, identity mismatch,
    // invalid message, forbidden, failed) makes the run fail: a scheduler must not
    // read it as done. Rejected records are listed in the summary.
    let failed: u64 = Outcome::ALL
        .into_iter()
        .filter(|o| o.is_dead_lettered())
        .map(|o| tally.count(o))
        .sum();
    let reconciled = !interrupted
        && report.summary.reconciles()
        && accounted == report.summary.valid + released_holds;
    let dead_lettered = dead_letter
        .snapshot()
        .into_iter()
        .map(|(body, attrs)| DeadLetter {
            external_id: TerminationMessage::decode(&body)
                .ok()
                .map(|m| m.record.external_id.as_str().to_owned()),
            reason: attrs
                .get(attr::REASON)
                .cloned()
                .unwrap_or_else(|| "unknown".into()),
            detail: attrs.get(attr::DETAIL).cloned(),
        })
        .collect();
    let (decisions, more) = journal.finish();
    // A rerun that finds people an earlier run dead-lettered still fails: they
    // are still not deprovisioned, and a scheduler must not read it as done.
    let failed = failed
        + decisions
            .iter()
            .filter(|d| d.earlier && d.outcome.is_dead_lettered())
            .count() as u64;
    if args.dry_run && args.format == Format::Json {
        let settings = PlanSettings {
            scim_target,
            sandbox: args.sandbox,
            remove_roles: args.scim.remove_roles,
            hr_timezone: args.policy.hr_timezone.name().to_owned(),
            termination_effective_at: args.policy.termination_effective_at,
            audit: audit_url,
        };
        let plan = PlanDocument::new(&report, settings, breaker_verdict, &decisions, reconciled);
        println!("{}", serde_json::to_string_pretty(&plan)?);
        return Ok(if reconciled {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let review: Vec<&Decision> = decisions
        .iter()
        .filter(|d| !d.shown().is_success())
        .collect();
    let summary = Summary {
        manifest: report,
        sandbox: args.sandbox,
        dry_run: args.dry_run,
        audit: audit_url,
        tally,
        dead_lettered,
        not_deprovisioned: review
            .iter()
            .take(REVIEW_KEPT)
            .map(|d| Person::of(d))
            .collect(),
        not_deprovisioned_more: more + review.len().saturating_sub(REVIEW_KEPT) as u64,
        released_holds,
        next_due,
        accounted,
        reconciled,
        interrupted,
        failed,
    };
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&summary)?),
        Format::Text => print!("{}", render_text(&summary, &decisions)),
    }
    Ok(if reconciled && failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The `--format json` document of a manifest the breaker holds: nothing was
/// done, why, and the commands that proceed (exit status 3).
fn held_document(args: &RunArgs, report: &DispatchReport, reason: &str) -> serde_json::Value {
    let id = report.manifest_id.as_deref().unwrap_or("-");
    serde_json::json!({
        "held": true,
        "manifestId": id,
        "manifest": args.manifest,
        "reason": reason,
        "terminations": report.terminations,
        "enqueued": 0,
        "sandbox": args.sandbox,
        "rejected": report.held_rejected,
        "approve": (!report.held_rejected)
            .then(|| format!("deprovision run {} --approve --by NAME", args.manifest)),
        "reject": (!report.held_rejected).then(|| format!("deprovision reject {id} --by NAME")),
        "message": if report.held_rejected {
            "an operator rejected this content; nothing was done, and no approval releases it. Send terminations that are still due in a corrected manifest."
        } else {
            "held by the mass-deactivation breaker; nothing was done. If this many terminations are intended, run again with --approve; otherwise reject it."
        },
    })
}

/// Starts the simulator seeded with the manifest's valid records.
async fn start_sandbox(
    dispatcher: &Dispatcher<MemoryQueue, AuditStore>,
    source: &ManifestSource,
) -> anyhow::Result<RunningSim> {
    // A manifest broken as a whole seeds nobody; dispatch then reports it.
    let records = dispatcher.records(source).await.unwrap_or_default();
    let seed = Seed::from_records(records.into_iter().map(|r| (r.external_id, r.user_id)));
    let config = SimConfig::default()
        .with_seed(seed)
        .with_client(SANDBOX_PRIMARY.0, SANDBOX_PRIMARY.1)
        .with_elevated_client(SANDBOX_ELEVATED.0, SANDBOX_ELEVATED.1);
    let sim = RunningSim::start(config, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .context("starting the sandbox simulator")?;
    eprintln!("sandbox: Genesys Cloud simulator at {}", sim.base_url());
    Ok(sim)
}

fn progress_bar(total: u64) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} {bar:40} {pos}/{len} terminations  {elapsed_precise}",
    ) {
        bar.set_style(style);
    }
    Some(bar)
}

fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "<unparseable URL>".into(),
    }
}

fn render_text(s: &Summary, decisions: &[Decision]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let m = &s.manifest.summary;
    let mode = match (s.sandbox, s.dry_run) {
        (true, true) => " [sandbox, dry run]",
        (true, false) => " [sandbox]",
        (false, true) => " [dry run]",
        (false, false) => "",
    };
    let _ = writeln!(
        out,
        "manifest {}{mode}: {} records = {} terminations + {} rejected + {} duplicates",
        s.manifest.origin.key, m.records, m.valid, m.rejected, m.duplicates,
    );
    if let Some(sha) = &s.manifest.sha256 {
        let _ = writeln!(out, "sha256 {sha}");
    }
    let _ = writeln!(out);
    if s.dry_run {
        let _ = writeln!(out, "  {:<24} {:>7}", "plan (nothing changed)", "count");
        for (outcome, n) in &s.tally.would {
            let _ = writeln!(out, "  {:<24} {n:>7}", would_label(*outcome));
        }
    } else {
        let _ = writeln!(out, "  {:<24} {:>7}", "outcome", "count");
        for (outcome, n) in &s.tally.outcomes {
            let _ = writeln!(out, "  {:<24} {:>7}", outcome.as_str(), n);
        }
    }
    if s.tally.not_due > 0 {
        let next = s
            .next_due
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_else(|| "unknown".into());
        let _ = writeln!(
            out,
            "  {:<24} {:>7}   (next due {next}; held in the audit database, released by `run` or `serve` once due)",
            "scheduled", s.tally.not_due
        );
    }
    if s.released_holds > 0 {
        let _ = writeln!(
            out,
            "  {:<20} {:>7}   (held by earlier runs, due now, released into this run)",
            "released holds", s.released_holds
        );
    }
    if s.tally.already_done > 0 {
        let _ = writeln!(
            out,
            "  {:<24} {:>7}   (finished by an earlier run; not acted on again)",
            "already done", s.tally.already_done
        );
    }
    if m.rejected > 0 {
        let _ = writeln!(
            out,
            "  {:<24} {:>7}   (records rejected by the manifest reader)",
            "invalid records", m.rejected
        );
    }
    let _ = writeln!(out);
    if s.dry_run {
        let planned: Vec<&Decision> = decisions.iter().filter(|d| !d.earlier).collect();
        if !planned.is_empty() {
            let _ = writeln!(out, "plan:");
            for d in planned.iter().take(TEXT_LISTED) {
                let what = match (d.shown(), d.when_due) {
                    (Outcome::Scheduled, Some(then)) => format!(
                        "scheduled for {}; when due: {}",
                        d.effective_at
                            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                            .unwrap_or_default(),
                        would_label(then)
                    ),
                    (o, _) if o.is_success() => format!(
                        "{}, {} group(s){}",
                        would_label(o),
                        d.groups.len(),
                        if d.roles.is_empty() {
                            String::new()
                        } else {
                            format!(", roles {}", d.roles.join(", "))
                        }
                    ),
                    (o, _) => format!("{}: {}", would_label(o), d.reason.as_deref().unwrap_or("")),
                };
                let _ = writeln!(
                    out,
                    "  {:<16} {:<38} {what}",
                    id_cell(d.external_id.as_deref()),
                    id_cell(d.user_id.as_deref()),
                );
            }
            more_line(
                &mut out,
                planned.len(),
                "run with --format json for the whole plan",
            );
            let _ = writeln!(out);
        }
    } else if !s.not_deprovisioned.is_empty() {
        let _ = writeln!(out, "not deprovisioned (needs review):");
        for p in s.not_deprovisioned.iter().take(TEXT_LISTED) {
            let _ = writeln!(
                out,
                "  {:<16} {:<18} {}",
                id_cell(p.external_id.as_deref()),
                p.outcome.as_str(),
                p.reason.as_deref().unwrap_or("")
            );
        }
        more_line(
            &mut out,
            s.not_deprovisioned.len() + s.not_deprovisioned_more as usize,
            "every one is in the audit; --format json lists up to 1000",
        );
        let _ = writeln!(out);
    }
    let rejected = &s.manifest.rejected_records;
    if !rejected.is_empty() {
        let _ = writeln!(out, "rejected records:");
        for r in rejected.iter().take(TEXT_LISTED) {
            let _ = writeln!(
                out,
                "  record {} (line {})  {:<16} {}",
                r.index,
                r.line,
                id_cell(r.external_id.as_deref()),
                r.reason
            );
        }
        more_line(
            &mut out,
            usize::try_from(m.rejected).unwrap_or(usize::MAX),
            "every one is in the audit",
        );
        let _ = writeln!(out);
    }
    let _ = writeln!(
        out,
        "{}: {} of {} terminations accounted for; audit in {}",
        if s.reconciled {
            "reconciled"
        } else {
            "NOT RECONCILED"
        },
        s.accounted,
        m.valid + s.released_holds,
        s.audit
    );
    if s.interrupted {
        let _ = writeln!(
            out,
            "interrupted: the rest stays undone; run again to finish (finished ones are skipped)"
        );
    }
    if s.failed > 0 {
        let _ = writeln!(
            out,
            "{} termination(s) not deprovisioned (failed in this run, or left failed by an \
             earlier one): fix the cause, then run again with --retry-failed",
            s.failed
        );
    }
    out
}

/// An ID column of the summary table: `-` when absent, else the ID with control
/// and bidi characters escaped (`deprovision::report::escape_control`), so an
/// externalId from the manifest cannot move the cursor, recolour the terminal or
/// break the table's lines.
fn id_cell(id: Option<&str>) -> String {
    id.map_or_else(
        || "-".to_owned(),
        |v| deprovision::report::escape_control(v).into_owned(),
    )
}

/// "  … and N more (hint)" when `total` exceeds what the text lists.
fn more_line(out: &mut String, total: usize, hint: &str) {
    use std::fmt::Write;
    if total > TEXT_LISTED {
        let _ = writeln!(out, "  … and {} more ({hint})", total - TEXT_LISTED);
    }
}
