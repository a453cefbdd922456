//! `deprovision user --external-id ID | --user-id ID [--dry-run] [--format
//! text|json]`: the on-demand path for one person (design.md, "Command line"),
//! through the same engine as the queue workers. Parses the identifiers at the
//! edge (an id that cannot be one is refused before any request), prints the
//! outcome with its evidence, and maps it to an exit code. Its audit row is
//! appended before anything is printed; a termination that cannot be audited is
//! reported as an error (exit 1), never as done.
//!
//! A real run first claims the person in the audit database (the same
//! `termination_claims` lease the queue workers take, keyed by externalId; by
//! `userId:<id>` when only `--user-id` is given), waiting up to the deadline
//! while a worker holds it, so the operator and the service never race on one
//! person. `--dry-run` claims nothing, sends no mutating request, prints the
//! plan and audits it as `dry_run`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use deprovision::audit::{AuditEntry, AuditStore, ClaimState};
use deprovision::config::{ActorArgs, AuditArgs, ProtectionArgs, ScimArgs};
use deprovision::domain::{ExternalId, Outcome, ScimUserId};
use deprovision::engine::{Engine, Report, Subject};
use deprovision::plan::{describe, planned_now, would_label};

/// Output format of `deprovision user`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object.
    Json,
}

/// Flags of `deprovision user`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("who").required(true).multiple(true).args(["external_id", "user_id"])))]
pub struct UserArgs {
    /// HR's identifier (SCIM `externalId`); with `--user-id`, cross-checked.
    #[arg(long, value_parser = parse_external_id)]
    pub external_id: Option<ExternalId>,
    /// The SCIM user id. Alone, exactly that account is deprovisioned.
    #[arg(long, value_parser = parse_user_id)]
    pub user_id: Option<ScimUserId>,
    /// Resolve and show what would be done; send no mutating request.
    #[arg(long)]
    pub dry_run: bool,
    /// How to print the result.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Give up (outcome `retrying`) after this many seconds of retries (at
    /// least 1).
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    pub deadline_secs: u64,
    #[command(flatten)]
    pub actor: ActorArgs,
    #[command(flatten)]
    pub scim: ScimArgs,
    #[command(flatten)]
    pub audit: AuditArgs,
    #[command(flatten)]
    pub protection: ProtectionArgs,
}

fn parse_external_id(raw: &str) -> Result<ExternalId, String> {
    ExternalId::parse(raw).map_err(|e| e.to_string())
}

fn parse_user_id(raw: &str) -> Result<ScimUserId, String> {
    ScimUserId::parse(raw).map_err(|e| e.to_string())
}

impl UserArgs {
    /// Who to deprovision: both ids → cross-checked; one → that lookup.
    pub fn subject(&self) -> Option<Subject> {
        match (&self.user_id, &self.external_id) {
            (Some(user_id), Some(external_id)) => Some(Subject::Checked {
                user_id: user_id.clone(),
                external_id: external_id.clone(),
            }),
            (Some(user_id), None) => Some(Subject::UserId(user_id.clone())),
            (None, Some(external_id)) => Some(Subject::ExternalId(external_id.clone())),
            (None, None) => None,
        }
    }
}

/// Deprovisions one person and returns the report: the seam where the audit
/// row is appended before anything is printed.
pub async fn deprovision_one(
    engine: &Engine,
    subject: &Subject,
    dry_run: bool,
    within: Duration,
) -> Report {
    let deadline = tokio::time::Instant::now() + within;
    engine.deprovision_subject(subject, dry_run, deadline).await
}

/// Runs `deprovision user`.
pub async fn run(args: UserArgs) -> anyhow::Result<ExitCode> {
    let Some(subject) = args.subject() else {
        anyhow::bail!("give --external-id or --user-id");
    };
    let requested_at = chrono::Utc::now();
    let engine =
        super::serve::protected_engine(Engine::from_args(&args.scim)?, &args.protection).await?;
    // Open the audit store before touching the account: a change that cannot be
    // recorded must not be made.
    let store = AuditStore::open(&args.audit)
        .await
        .context("opening the audit store (DATABASE_URL)")?;
    let within = Duration::from_secs(args.deadline_secs);
    let claim = if args.dry_run {
        None
    } else {
        let person = claim_key(&subject);
        let owner = format!(
            "pid {} deprovision user by {}",
            std::process::id(),
            args.actor.or("operator")
        );
        match wait_for_claim(&store, &person, &owner, within).await? {
            ClaimState::Taken => Some((person, owner)),
            held => {
                eprintln!(
                    "{person} is {held}; nothing was done. Try again when it is finished (the service may already be deprovisioning this person)."
                );
                return Ok(ExitCode::from(75));
            }
        }
    };
    let report = deprovision_one(&engine, &subject, args.dry_run, within).await;
    let audited = store
        .append(&audit_entry(&args, &report, requested_at))
        .await
        .with_context(|| {
            format!(
                "the termination ended {} but its audit row could not be written",
                report.outcome
            )
        });
    if let Some((person, owner)) = &claim
        && let Err(e) = store.release_claim(person, owner).await
    {
        tracing::warn!(error = %e, "could not release the claim; it lapses with its lease");
    }
    audited?;
    match args.format {
        Format::Json => println!("{}", render_json(&args, &report)?),
        Format::Text => print!("{}", render_text(&args, &report)),
    }
    Ok(exit_code(report.outcome))
}

/// The claim key of a subject: its externalId, else `userId:<id>` (an operator
/// naming only the account is then serialised with other such runs, not with
/// queue workers, which claim by externalId).
fn claim_key(subject: &Subject) -> String {
    match subject {
        Subject::ExternalId(e) | Subject::Checked { external_id: e, .. } => e.as_str().to_owned(),
        Subject::UserId(id) => format!("userId:{id}"),
    }
}

/// Takes the claim, polling once a second while someone else holds it, until
/// `within` has passed. Errors: the audit database refused the claim.
async fn wait_for_claim(
    store: &AuditStore,
    person: &str,
    owner: &str,
    within: Duration,
) -> anyhow::Result<ClaimState> {
    // The lease outlives the deadline by a margin for the audit write.
    let lease = within + Duration::from_secs(60);
    let give_up = tokio::time::Instant::now() + within;
    loop {
        let state = store
            .claim(person, owner, lease)
            .await
            .context("claiming the person in the audit database")?;
        if state.is_taken() || tokio::time::Instant::now() + Duration::from_secs(1) > give_up {
            return Ok(state);
        }
        tracing::info!(person, %state, "person busy elsewhere; waiting");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// In a dry run, what a real run would do now (the engine's outcome when it
/// could not tell, e.g. `retrying`).
fn planned(report: &Report) -> Outcome {
    match report.outcome {
        Outcome::Retrying => Outcome::Retrying,
        _ => planned_now(report),
    }
}

/// The dry-run plan in words, as audited and printed.
fn plan_text(report: &Report) -> String {
    describe(
        planned(report),
        None,
        report.user_id.as_ref().map(|u| u.as_str()),
        &report.groups_removed,
        &report.roles_removed,
        None,
        report.detail.as_deref(),
    )
}

/// The audit row of an on-demand deprovisioning: no message, no manifest; the
/// operator is the actor. A dry run's row is `dry_run` whatever it found, and
/// says what would have been done.
fn audit_entry(
    args: &UserArgs,
    report: &Report,
    requested_at: chrono::DateTime<chrono::Utc>,
) -> AuditEntry {
    AuditEntry {
        external_id: args.external_id.as_ref().map(|e| e.as_str().to_owned()),
        user_id: report
            .user_id
            .as_ref()
            .or(args.user_id.as_ref())
            .map(|u| u.as_str().to_owned()),
        action: "deactivate".into(),
        status_code: report.status_code,
        success: report.outcome.is_success() && !args.dry_run,
        error_message: if args.dry_run {
            Some(plan_text(report))
        } else {
            report.detail.clone()
        },
        outcome: if args.dry_run {
            Outcome::DryRun
        } else {
            report.outcome
        },
        credential: report.credential,
        groups_removed: report.groups_removed.iter().map(|g| g.id.clone()).collect(),
        attempt: 1,
        sqs_message_id: None,
        manifest: None,
        // On demand means effective now: the SLA clock starts when the operator asks.
        effective_at: Some(requested_at),
        correlation_ids: report.correlation_ids.clone(),
        duration_ms: Some(report.elapsed.as_millis().try_into().unwrap_or(u64::MAX)),
        idempotency_key: None,
        actor: Some(args.actor.or("operator")),
    }
}

/// 0 when access is gone (or a dry run), 75 (EX_TEMPFAIL) when a retry may
/// succeed, 1 otherwise.
fn exit_code(outcome: Outcome) -> ExitCode {
    if outcome.is_success() || outcome == Outcome::DryRun {
        ExitCode::SUCCESS
    } else if outcome == Outcome::Retrying {
        ExitCode::from(75)
    } else {
        ExitCode::FAILURE
    }
}

fn render_json(args: &UserArgs, report: &Report) -> anyhow::Result<String> {
    let mut value = serde_json::to_value(report)?;
    if let Some(obj) = value.as_object_mut() {
        obj.insert(
            "external_id".into(),
            serde_json::to_value(args.external_id.as_ref().map(ExternalId::as_str))?,
        );
        obj.insert("dry_run".into(), args.dry_run.into());
        if args.dry_run {
            obj.insert("planned".into(), planned(report).as_str().into());
            obj.insert("plan".into(), plan_text(report).into());
        }
    }
    Ok(serde_json::to_string_pretty(&value)?)
}

fn render_text(args: &UserArgs, report: &Report) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let none = "-".to_owned();
    let _ = writeln!(out, "outcome:         {}", report.outcome);
    if args.dry_run {
        let _ = writeln!(out, "plan:            {}", would_label(planned(report)));
    }
    if let Some(e) = &args.external_id {
        let _ = writeln!(out, "externalId:      {e}");
    }
    let _ = writeln!(
        out,
        "user id:         {}",
        report
            .user_id
            .as_ref()
            .map_or(none.clone(), ToString::to_string)
    );
    let _ = writeln!(
        out,
        "credential:      {}",
        report.credential.map_or("-", |c| c.as_str())
    );
    let verb = if args.dry_run {
        "groups to leave:"
    } else {
        "groups removed: "
    };
    let groups: Vec<String> = report
        .groups_removed
        .iter()
        .map(|g| match &g.display {
            Some(d) => format!("{d} ({})", g.id),
            None => g.id.clone(),
        })
        .collect();
    let _ = writeln!(
        out,
        "{verb} {}",
        if groups.is_empty() {
            none.clone()
        } else {
            groups.join(", ")
        }
    );
    if !report.roles_removed.is_empty() {
        let label = if args.dry_run {
            "roles to remove:"
        } else {
            "roles removed:  "
        };
        let _ = writeln!(out, "{label} {}", report.roles_removed.join(", "));
    }
    let _ = writeln!(
        out,
        "status:          {}",
        report.status_code.map_or(none.clone(), |s| s.to_string())
    );
    let _ = writeln!(out, "requests:        {}", report.requests);
    if !report.correlation_ids.is_empty() {
        let _ = writeln!(
            out,
            "correlation ids: {}",
            report.correlation_ids.join(", ")
        );
    }
    let _ = writeln!(out, "elapsed:         {} ms", report.elapsed.as_millis());
    if let Some(d) = &report.detail {
        let _ = writeln!(out, "detail:          {d}");
    }
    out
}
