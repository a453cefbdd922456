//! The command line (design.md, "Command line"): one clap subcommand per file, each
//! a thin adapter from flags to a library call and from its result to output and an
//! exit code. `anyhow` lives here and in `main.rs` only.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use deprovision::telemetry::LogFormat;

mod approve;
mod audit;
mod dispatch;
mod healthcheck;
mod migrate;
mod replay;
mod report;
mod run;
mod serve;
mod simulate;
mod user;

/// Deprovision terminated employees from Genesys Cloud through SCIM 2.0.
#[derive(Debug, Parser)]
#[command(name = "deprovision", version, about, long_about = None)]
pub struct Cli {
    /// Log line format on standard error.
    #[arg(long, global = true, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a manifest end to end in one process (the embedded default).
    Run(Box<run::RunArgs>),
    /// The ECS service: dispatcher, consumer pool, health endpoints.
    Serve(Box<serve::ServeArgs>),
    /// Fan one S3 manifest out onto the terminations queue.
    Dispatch(Box<dispatch::DispatchArgs>),
    /// Move dead-lettered terminations back to the terminations queue.
    #[command(name = "replay-dlq")]
    ReplayDlq(Box<replay::ReplayArgs>),
    /// Run the Genesys Cloud SCIM simulator on a port.
    Simulate(simulate::SimulateArgs),
    /// Deprovision one person now: deactivate, strip groups, verify.
    User(Box<user::UserArgs>),
    /// Probe a running `serve`'s `/healthz` (the container HEALTHCHECK); exit 0 if healthy.
    Healthcheck(healthcheck::HealthcheckArgs),
    /// Apply the audit migrations to DATABASE_URL.
    Migrate(migrate::MigrateArgs),
    /// Compliance reports: weekly summary with SLA, evidence export.
    Report(report::ReportArgs),
    /// Audit log integrity: verify the hash chain.
    Audit(audit::AuditCommandArgs),
    /// Release a manifest held by the mass-deactivation breaker: dispatch it.
    Approve(Box<approve::ApproveArgs>),
    /// Discard a manifest held by the mass-deactivation breaker.
    Reject(Box<approve::RejectArgs>),
}

/// Runs one command to completion.
pub async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run(args) => run::run(*args).await,
        Command::Serve(args) => serve::run(*args).await,
        Command::Dispatch(args) => dispatch::run(*args).await,
        Command::ReplayDlq(args) => replay::run(*args).await,
        Command::Simulate(args) => simulate::run(args).await,
        Command::User(args) => user::run(*args).await,
        Command::Healthcheck(args) => healthcheck::run(args).await,
        Command::Migrate(args) => migrate::run(args).await,
        Command::Report(args) => report::run(args).await,
        Command::Audit(args) => audit::run(args).await,
        Command::Approve(args) => approve::approve(*args).await,
        Command::Reject(args) => approve::reject(*args).await,
    }
}
