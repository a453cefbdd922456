//! `deprovision report weekly|evidence|pending`: the compliance reports, read-only, to
//! standard output or `--out FILE`. Flag parsing and output only; the numbers come
//! from `deprovision::report`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use chrono::{NaiveDate, Utc};
use chrono_tz::Tz;
use deprovision::audit::AuditStore;
use deprovision::config::AuditArgs;
use deprovision::report;
use secrecy::ExposeSecret;

/// Flags of `deprovision report`.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    #[command(subcommand)]
    command: ReportCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ReportCommand {
    /// One row per ISO week (Monday start): terminations by latest outcome, and the
    /// SLA (hours from effective time to confirmed deactivation).
    Weekly(WeeklyArgs),
    /// One row per termination with the evidence an auditor samples.
    Evidence(EvidenceArgs),
    /// Future-dated terminations held until their effective time, soonest first.
    Pending(PendingArgs),
}

#[derive(Debug, clap::Args)]
struct PendingArgs {
    #[command(flatten)]
    audit: AuditArgs,
    /// IANA zone in which due times are also shown.
    #[arg(long, default_value = "UTC")]
    tz: Tz,
    /// Output format.
    #[arg(long, value_enum, default_value_t = WeeklyFormat::Table)]
    format: WeeklyFormat,
    /// Write the report to this file instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum WeeklyFormat {
    Table,
    Csv,
    Json,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum EvidenceFormat {
    Csv,
    Json,
}

#[derive(Debug, clap::Args)]
struct WeeklyArgs {
    #[command(flatten)]
    audit: AuditArgs,
    /// How many ISO weeks, ending with the current one.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=520))]
    weeks: u32,
    /// IANA zone in which weeks start (Monday 00:00).
    #[arg(long, default_value = "UTC")]
    tz: Tz,
    /// Output format.
    #[arg(long, value_enum, default_value_t = WeeklyFormat::Table)]
    format: WeeklyFormat,
    /// Write the report to this file instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also draw the weekly counts and SLA lines to this SVG file.
    #[arg(long)]
    chart: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct EvidenceArgs {
    #[command(flatten)]
    audit: AuditArgs,
    /// First day (UTC, inclusive) on which terminations were first seen.
    #[arg(long)]
    from: Option<NaiveDate>,
    /// Last day (UTC, inclusive).
    #[arg(long)]
    to: Option<NaiveDate>,
    /// Output format.
    #[arg(long, value_enum)]
    format: EvidenceFormat,
    /// Write the export to this file instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Runs the report subcommand.
pub async fn run(args: ReportArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        ReportCommand::Weekly(w) => weekly(w).await,
        ReportCommand::Evidence(e) => evidence(e).await,
        ReportCommand::Pending(p) => pending(p).await,
    }
}

async fn pending(args: PendingArgs) -> anyhow::Result<ExitCode> {
    let store = connect(&args.audit).await?;
    let pending = report::pending(&store, args.tz)
        .await
        .context("deprovision report pending")?;
    store.close().await;
    let text = match args.format {
        WeeklyFormat::Table => pending.to_table(),
        WeeklyFormat::Csv => pending.to_csv()?,
        WeeklyFormat::Json => pending.to_json()?,
    };
    emit(&text, args.out.as_ref())?;
    Ok(ExitCode::SUCCESS)
}

async fn connect(audit: &AuditArgs) -> anyhow::Result<AuditStore> {
    AuditStore::connect_existing(audit.database_url.expose_secret())
        .await
        .context("opening the audit store")
}

fn emit(text: &str, out: Option<&PathBuf>) -> anyhow::Result<()> {
    match out {
        Some(path) => std::fs::write(path, text)
            .with_context(|| format!("writing the report to {}", path.display())),
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

async fn weekly(args: WeeklyArgs) -> anyhow::Result<ExitCode> {
    // Refuse a bad chart name before doing any work.
    if let Some(chart) = &args.chart
        && !chart
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("svg"))
    {
        return Err(report::ReportError::ChartFormat {
            path: chart.clone(),
        }
        .into());
    }
    let store = connect(&args.audit).await?;
    let weekly = report::weekly(&store, args.weeks, args.tz, Utc::now())
        .await
        .context("deprovision report weekly")?;
    store.close().await;
    let text = match args.format {
        WeeklyFormat::Table => weekly.to_table(),
        WeeklyFormat::Csv => weekly.to_csv()?,
        WeeklyFormat::Json => weekly.to_json()?,
    };
    emit(&text, args.out.as_ref())?;
    if let Some(chart) = &args.chart {
        report::write_chart(&weekly, chart)?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn evidence(args: EvidenceArgs) -> anyhow::Result<ExitCode> {
    // Refused before the database is opened: a flag value, not a failed report.
    if let (Some(from), Some(to)) = (args.from, args.to)
        && from > to
    {
        return Err(super::UsageError(format!(
            "--from {from} is after --to {to}; give --from on or before --to"
        ))
        .into());
    }
    let store = connect(&args.audit).await?;
    let rows = report::evidence(&store, args.from, args.to)
        .await
        .context("deprovision report evidence")?;
    store.close().await;
    let text = match args.format {
        EvidenceFormat::Csv => report::evidence_csv(&rows)?,
        EvidenceFormat::Json => report::evidence_json(&rows)?,
    };
    emit(&text, args.out.as_ref())?;
    Ok(ExitCode::SUCCESS)
}
