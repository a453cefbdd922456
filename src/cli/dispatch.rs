//! `deprovision dispatch s3://bucket/key [--version-id V]`: fans one manifest out
//! onto the terminations queue by hand — the same validation, messages and audit
//! rows as an S3 event would cause. Prints the dispatch report as JSON.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use deprovision::audit::AuditStore;
use deprovision::config::{AuditArgs, AwsArgs, PolicyArgs};
use deprovision::dispatch::{DispatchOptions, Dispatcher, ManifestSource, s3_client};
use deprovision::queue::SqsQueue;
use deprovision::queue::sqs::load_aws_config;

/// Flags of `deprovision dispatch`.
#[derive(Debug, clap::Args)]
pub struct DispatchArgs {
    /// The manifest, `s3://bucket/key` (the key as stored, not URL-encoded).
    pub manifest: String,
    /// A specific object version.
    #[arg(long)]
    pub version_id: Option<String>,
    #[command(flatten)]
    pub audit: AuditArgs,
    #[command(flatten)]
    pub policy: PolicyArgs,
    #[command(flatten)]
    pub aws: AwsArgs,
}

/// Dispatches the manifest. Exit 0 when dispatched, 2 when the file was rejected
/// as a whole (audited; nothing enqueued).
pub async fn run(args: DispatchArgs) -> anyhow::Result<ExitCode> {
    let mut source = ManifestSource::parse(&args.manifest)?;
    match &mut source {
        ManifestSource::S3(object) => object.version_id = args.version_id.clone(),
        ManifestSource::Local(_) => anyhow::bail!(
            "dispatch takes s3://bucket/key; for a local file use `deprovision run FILE`"
        ),
    }
    let aws = load_aws_config().await;
    let sqs = aws_sdk_sqs::Client::new(&aws);
    let url = args
        .aws
        .terminations_queue_url
        .as_deref()
        .context("TERMINATIONS_QUEUE_URL is required")?;
    let queue = SqsQueue::connect(sqs, url)
        .await
        .context("terminations queue")?;
    let audit = Arc::new(AuditStore::open(&args.audit).await.context("audit store")?);
    let dispatcher = Dispatcher::new(
        Some(s3_client(&aws)),
        queue,
        audit.clone(),
        DispatchOptions {
            hr_timezone: args.policy.hr_timezone,
            effective_at: args.policy.termination_effective_at,
            max_future_days: args.policy.max_future_days,
            ..DispatchOptions::default()
        },
    );
    let report = dispatcher.dispatch(&source, 1).await?;
    audit.close().await;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(match report.rejected_file {
        Some(_) => ExitCode::from(2),
        None => ExitCode::SUCCESS,
    })
}
