//! `deprovision dispatch s3://bucket/key [--version-id V] [--dry-run]`: fans one
//! manifest out onto the terminations queue by hand — the same validation,
//! messages and audit rows as an S3 event would cause. Prints the dispatch report
//! as JSON (counts, rejected records with index, line and reason, the manifest's
//! SHA-256). `--dry-run` reads and validates the manifest (also a local file) and
//! prints what would be enqueued and whether the mass-deactivation breaker would
//! hold it (exit 3, recording no hold), enqueues nothing and audits the manifest
//! and its rejected records as `dry_run`.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use deprovision::audit::AuditStore;
use deprovision::breaker::Breaker;
use deprovision::config::{AuditArgs, AwsArgs, BreakerArgs, PolicyArgs, ScimArgs, SigningArgs};
use deprovision::dispatch::{DispatchOptions, Dispatcher, ManifestSource, s3_client};
use deprovision::plan::PlanBreaker;
use deprovision::queue::sqs::load_aws_config;
use deprovision::queue::{MemoryQueue, SqsQueue};

/// Flags of `deprovision dispatch`.
#[derive(Debug, clap::Args)]
pub struct DispatchArgs {
    /// The manifest, `s3://bucket/key` (the key as stored, not URL-encoded).
    /// Default: the seed's single-manifest mode, `s3://$S3_BUCKET/$S3_MANIFEST_KEY`.
    pub manifest: Option<String>,
    /// A specific object version.
    #[arg(long)]
    pub version_id: Option<String>,
    /// Validate and show what would be enqueued; enqueue nothing (a local file
    /// is accepted too).
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub audit: AuditArgs,
    #[command(flatten)]
    pub policy: PolicyArgs,
    #[command(flatten)]
    pub aws: AwsArgs,
    #[command(flatten)]
    pub signing: SigningArgs,
    #[command(flatten)]
    pub breaker: BreakerArgs,
    /// The SCIM service, for the breaker's active-user count.
    #[command(flatten)]
    pub scim: ScimArgs,
}

/// Dispatches the manifest. Exit 0 when dispatched, 2 when the file was rejected
/// as a whole (audited; nothing enqueued), 3 when the mass-deactivation breaker
/// held it (audited; nothing enqueued; `deprovision approve MANIFEST_ID`).
pub async fn run(args: DispatchArgs) -> anyhow::Result<ExitCode> {
    let manifest = match (
        &args.manifest,
        &args.aws.s3_bucket,
        &args.aws.s3_manifest_key,
    ) {
        (Some(m), _, _) => m.clone(),
        (None, Some(bucket), Some(key)) => format!("s3://{bucket}/{key}"),
        (None, _, _) => anyhow::bail!(
            "dispatch needs a manifest: s3://bucket/key, or S3_BUCKET and S3_MANIFEST_KEY (the seed's single-manifest mode)"
        ),
    };
    let mut source = ManifestSource::parse(&manifest)?;
    match &mut source {
        ManifestSource::S3(object) => object.version_id = args.version_id.clone(),
        ManifestSource::Local(_) if args.dry_run => {}
        ManifestSource::Local(_) => anyhow::bail!(
            "dispatch takes s3://bucket/key; for a local file use `deprovision run FILE` (or `dispatch --dry-run FILE` to validate it)"
        ),
    }
    let aws = load_aws_config().await;
    // A plan signs nothing and records no hold: it needs no keys, and the
    // breaker's active-user count only if the SCIM settings are there.
    if args.dry_run {
        return plan(args, &source, &aws).await;
    }
    let signing = args.signing.auth(false)?;
    let limits = args.breaker.limits()?;
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
    let audit = Arc::new(AuditStore::open(&args.audit).await.context("audit store")?);
    let scim = super::serve::breaker_scim(&args.scim, &limits)?;
    let breaker = Arc::new(Breaker::new(limits, scim, (*audit).clone()));
    let dispatcher = Dispatcher::new(
        Some(s3_client(&aws)),
        queue,
        audit.clone(),
        DispatchOptions {
            hr_timezone: args.policy.hr_timezone,
            effective_at: args.policy.termination_effective_at,
            signing,
            breaker: Some(breaker),
            max_future_days: args.policy.max_future_days,
            ..DispatchOptions::default()
        },
    );
    let report = dispatcher.dispatch(&source, 1).await?;
    audit.close().await;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(match (&report.rejected_file, &report.held) {
        (Some(_), _) => ExitCode::from(2),
        (None, Some(_)) => ExitCode::from(3),
        (None, None) => ExitCode::SUCCESS,
    })
}

/// `dispatch --dry-run`: the same reading, validation and audit (as `dry_run`)
/// without a terminations queue; prints the report with `dry_run`,
/// `would_enqueue`, `would_hold` and the breaker's verdict (nothing recorded).
/// Exit 2 when the file is rejected whole, 3 when a real dispatch would be held.
async fn plan(
    args: DispatchArgs,
    source: &ManifestSource,
    aws: &aws_config::SdkConfig,
) -> anyhow::Result<ExitCode> {
    let s3 = match source {
        ManifestSource::S3(_) => Some(s3_client(aws)),
        ManifestSource::Local(_) => None,
    };
    let audit = Arc::new(AuditStore::open(&args.audit).await.context("audit store")?);
    // Never sent to: `plan` enqueues nothing.
    let nowhere = MemoryQueue::new("dry-run", std::time::Duration::from_secs(30));
    let dispatcher = Dispatcher::new(
        s3,
        nowhere,
        audit.clone(),
        DispatchOptions {
            hr_timezone: args.policy.hr_timezone,
            effective_at: args.policy.termination_effective_at,
            dry_run: true,
            max_future_days: args.policy.max_future_days,
            ..DispatchOptions::default()
        },
    );
    let report = dispatcher.plan(source).await?;
    let verdict = match (&report.rejected_file, &report.manifest_id) {
        (None, Some(id)) => Some(would_hold(&args, &audit, id, report.terminations).await),
        _ => None,
    };
    audit.close().await;
    let held = verdict
        .as_ref()
        .and_then(|v| v["reason"].as_str().map(str::to_owned));
    let held = held.filter(|_| verdict.as_ref().is_some_and(|v| v["wouldHold"] == true));
    let verdict_rejected = verdict
        .as_ref()
        .is_some_and(|v| v.get("rejected").is_some_and(|r| !r.is_null()));
    let mut value = serde_json::to_value(&report)?;
    if let Some(obj) = value.as_object_mut() {
        obj.insert("dry_run".into(), true.into());
        let would_enqueue = if held.is_some() {
            0
        } else {
            report.summary.valid
        };
        obj.insert("would_enqueue".into(), would_enqueue.into());
        obj.insert("would_hold".into(), held.clone().into());
        if let Some(v) = verdict {
            obj.insert("breaker".into(), v);
        }
    }
    println!("{}", serde_json::to_string_pretty(&value)?);
    if let (Some(reason), Some(id)) = (&held, &report.manifest_id) {
        if verdict_rejected {
            eprintln!(
                "dry run: a real dispatch would be held: an operator rejected this content as {id} ({reason}); no approval releases it"
            );
        } else {
            eprintln!(
                "dry run: a real dispatch would be held by the mass-deactivation breaker as {id} ({reason}); nothing would be enqueued until `deprovision approve {id}`"
            );
        }
    }
    Ok(match (&report.rejected_file, &held) {
        (Some(_), _) => ExitCode::from(2),
        (None, Some(_)) => ExitCode::from(3),
        (None, None) => ExitCode::SUCCESS,
    })
}

/// What the breaker would do with this manifest in a real dispatch, recording
/// nothing: `wouldHold`, `reason`, `activeUsers`, and `rejected` (who, when)
/// when an operator rejected this content. The share limit needs the SCIM
/// settings; without them only the count limit is judged, and `shareChecked`
/// says so.
async fn would_hold(
    args: &DispatchArgs,
    audit: &AuditStore,
    manifest_id: &str,
    terminations: u64,
) -> serde_json::Value {
    let mut limits = match args.breaker.limits() {
        Ok(limits) => limits,
        Err(e) => return serde_json::json!({ "wouldHold": null, "reason": e.to_string() }),
    };
    let (scim, share_note) = match super::serve::breaker_scim(&args.scim, &limits) {
        Ok(scim) => (scim, None),
        Err(e) => {
            limits.max_share = 1.0;
            (None, Some(format!("{e:#}")))
        }
    };
    let share_checked = share_note.is_none() && limits.checks_share();
    let breaker = Breaker::new(limits, scim, audit.clone());
    let preview = breaker.preview(manifest_id, terminations).await;
    let verdict = PlanBreaker::from_preview(manifest_id, terminations, false, &preview);
    let mut value = serde_json::to_value(verdict).unwrap_or_default();
    if let Some(obj) = value.as_object_mut() {
        obj.insert("shareChecked".into(), share_checked.into());
        obj.insert("shareNotChecked".into(), share_note.into());
    }
    value
}
