//! `deprovision approve MANIFEST_ID [--by NAME]` and `deprovision reject
//! MANIFEST_ID [--by NAME]`: an operator's decision on a manifest the
//! mass-deactivation breaker held. Approve dispatches the same object version
//! (refused if its content hash changed) onto the terminations queue, signed like
//! any dispatch; reject discards it. Both are audited with who ran them. Prints
//! the result as JSON. A `MANIFEST_ID` that is not 16 hex digits is refused by
//! the command line (exit 64) before anything is opened; a refusal (unknown id,
//! already decided, changed content) is an error (exit 1) with the reason.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use deprovision::audit::AuditStore;
use deprovision::breaker;
use deprovision::config::{ActorArgs, AuditArgs, AwsArgs, PolicyArgs, SigningArgs};
use deprovision::dispatch::{DispatchOptions, Dispatcher, s3_client};
use deprovision::queue::SqsQueue;
use deprovision::queue::sqs::load_aws_config;

/// Flags of `deprovision approve`.
#[derive(Debug, clap::Args)]
pub struct ApproveArgs {
    /// The held manifest's id (16 hex digits, from the held log line or audit row).
    #[arg(value_parser = parse_manifest_id)]
    pub manifest_id: String,
    /// Who approves (`--by`; recorded in the audit).
    #[command(flatten)]
    pub actor: ActorArgs,
    #[command(flatten)]
    pub audit: AuditArgs,
    #[command(flatten)]
    pub policy: PolicyArgs,
    #[command(flatten)]
    pub aws: AwsArgs,
    #[command(flatten)]
    pub signing: SigningArgs,
}

/// Flags of `deprovision reject`.
#[derive(Debug, clap::Args)]
pub struct RejectArgs {
    /// The held manifest's id (16 hex digits).
    #[arg(value_parser = parse_manifest_id)]
    pub manifest_id: String,
    /// Who rejects (`--by`; recorded in the audit).
    #[command(flatten)]
    pub actor: ActorArgs,
    #[command(flatten)]
    pub audit: AuditArgs,
}

/// `MANIFEST_ID`, trimmed and lowercased. Errors: not 16 hex digits
/// ([`breaker::is_manifest_id`]), refused by clap as a usage error (exit 64).
fn parse_manifest_id(raw: &str) -> Result<String, String> {
    let id = raw.trim().to_ascii_lowercase();
    if breaker::is_manifest_id(&id) {
        Ok(id)
    } else {
        Err(
            "not a MANIFEST_ID: 16 hex digits, as shown in the held log line and audit row"
                .to_owned(),
        )
    }
}

/// Approves and dispatches a held manifest.
pub async fn approve(args: ApproveArgs) -> anyhow::Result<ExitCode> {
    let id = args.manifest_id;
    let signing = args.signing.auth(false)?;
    let store = AuditStore::open(&args.audit).await.context("audit store")?;
    let aws = load_aws_config().await;
    let sqs = aws_sdk_sqs::Client::new(&aws);
    let url = args.aws.terminations_queue_url.as_deref().ok_or(
        deprovision::config::ConfigError::Missing {
            name: "TERMINATIONS_QUEUE_URL",
            why: "the terminations queue's URL",
        },
    )?;
    let queue = SqsQueue::connect(sqs, url)
        .await
        .context("terminations queue")?;
    let dispatcher = Dispatcher::new(
        Some(s3_client(&aws)),
        queue,
        Arc::new(store.clone()),
        DispatchOptions {
            hr_timezone: args.policy.hr_timezone,
            effective_at: args.policy.termination_effective_at,
            signing,
            // Never consulted for a hold here (approvals bypass it); it lets the
            // dispatcher refuse content rejected meanwhile.
            breaker: Some(Arc::new(breaker::Breaker::new(
                breaker::Limits::default(),
                None,
                store.clone(),
            ))),
            ..DispatchOptions::default()
        },
    );
    let result = breaker::approve(&dispatcher, &store, &id, &args.actor.or("operator")).await;
    store.close().await;
    let approval = result.with_context(|| format!("approving manifest {id}"))?;
    println!("{}", serde_json::to_string_pretty(&approval)?);
    Ok(ExitCode::SUCCESS)
}

/// Rejects a held manifest.
pub async fn reject(args: RejectArgs) -> anyhow::Result<ExitCode> {
    let id = args.manifest_id;
    let store = AuditStore::open(&args.audit).await.context("audit store")?;
    let result = breaker::reject(&store, &id, &args.actor.or("operator")).await;
    store.close().await;
    let held = result.with_context(|| format!("rejecting manifest {id}"))?;
    println!("{}", serde_json::to_string_pretty(&held)?);
    Ok(ExitCode::SUCCESS)
}
