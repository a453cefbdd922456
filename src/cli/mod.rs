//! The command line (design.md, "Command line"): one clap subcommand per file, each
//! a thin adapter from flags to a library call and from its result to output and an
//! exit code. `anyhow` lives here and in `main.rs` only.

use std::process::ExitCode;

use clap::error::{ContextKind, ContextValue};
use clap::{CommandFactory, Parser, Subcommand};
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

/// A flag value that is well-formed on its own but unusable with the others
/// (e.g. `--from` after `--to`), found after parsing: exits [`EXIT_USAGE`].
/// The message names the flag.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// How a failed command ends: [`EXIT_USAGE`] when a flag value cannot be used,
/// `EX_CONFIG` ([`deprovision::config::EXIT_CONFIG`]) when a setting cannot be
/// used (missing or invalid variable, unsupported `DATABASE_URL`, an unusable
/// SCIM URL, a `PROTECTED_GROUPS` entry naming no group), else 1: a start-up
/// failure that is not configuration (a login refused, a database that cannot
/// be reached) and every failed run.
///
/// Looks through the whole `anyhow` chain and into the library's transparent
/// wrappers (`EngineError`, `ReportError::Audit`, `BreakerError::Audit`), whose
/// `source()` skips the error they wrap.
pub fn exit_code(e: &anyhow::Error) -> ExitCode {
    let kinds = e.chain().filter_map(classify).collect::<Vec<_>>();
    if kinds.contains(&Failure::Usage) {
        ExitCode::from(EXIT_USAGE)
    } else if kinds.contains(&Failure::Config) {
        ExitCode::from(deprovision::config::EXIT_CONFIG)
    } else {
        ExitCode::FAILURE
    }
}

/// A failure that is not a failed run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// A flag value ([`EXIT_USAGE`]).
    Usage,
    /// A setting (`EX_CONFIG`).
    Config,
}

/// The kind of one error of a chain, when it is a usage or configuration one.
fn classify(e: &(dyn std::error::Error + 'static)) -> Option<Failure> {
    use deprovision::audit::AuditError;
    use deprovision::breaker::BreakerError;
    use deprovision::config::ConfigError;
    use deprovision::engine::EngineError;
    use deprovision::report::ReportError;
    use deprovision::scim::ScimError;

    if e.is::<UsageError>() {
        return Some(Failure::Usage);
    }
    if e.is::<ConfigError>() {
        return Some(Failure::Config);
    }
    if let Some(e) = e.downcast_ref::<EngineError>() {
        return match e {
            EngineError::Config(_) => Some(Failure::Config),
            EngineError::Scim(s) => classify(s.as_ref()),
        };
    }
    if let Some(ScimError::Config(_)) = e.downcast_ref::<ScimError>() {
        return Some(Failure::Config);
    }
    if let Some(e) = e.downcast_ref::<AuditError>() {
        return match e {
            AuditError::UnsupportedScheme { .. } => Some(Failure::Config),
            // The URL itself cannot be parsed (not: the server cannot be reached).
            AuditError::Connect {
                source: sqlx::Error::Configuration(_),
                ..
            } => Some(Failure::Config),
            _ => None,
        };
    }
    if let Some(e) = e.downcast_ref::<ReportError>() {
        return match e {
            ReportError::EmptyRange { .. } | ReportError::ChartFormat { .. } => {
                Some(Failure::Usage)
            }
            ReportError::Audit(a) => classify(a),
            _ => None,
        };
    }
    if let Some(e) = e.downcast_ref::<BreakerError>() {
        return match e {
            BreakerError::InvalidId(_) => Some(Failure::Usage),
            BreakerError::Audit(a) => classify(a),
            _ => None,
        };
    }
    None
}

/// Exit status of a command line that cannot be used (an unknown flag, a bad
/// value, a blank `--by`, whether given as a flag or through its environment
/// variable): 64, `EX_USAGE` of BSD `sysexits.h`. Exit 2 stays reserved for a
/// manifest rejected whole.
pub const EXIT_USAGE: u8 = 64;

/// Prints clap's error (or the help/version it carries) and gives the exit
/// status: 0 for `--help`/`--version`, else [`EXIT_USAGE`]. When the refused
/// value came from an environment variable (or `.env`) rather than the command
/// line, says which variable, since clap names only the flag.
pub fn usage_error(e: &clap::Error) -> ExitCode {
    let _ = e.print();
    if !e.use_stderr() {
        return ExitCode::SUCCESS;
    }
    if let Some(var) = env_source(e) {
        use std::io::Write;
        // A closed stderr must not turn the usage error into a panic (exit 101).
        let _ = writeln!(
            std::io::stderr(),
            "note: that value comes from the environment variable {var} (or .env), not from the command line"
        );
    }
    ExitCode::from(EXIT_USAGE)
}

/// The environment variable that supplied the argument `e` refuses, when it is
/// set and its flag is not on the command line.
fn env_source(e: &clap::Error) -> Option<String> {
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    // "--remove-roles <REMOVE_ROLES>" → "remove-roles"
    let long = arg
        .split_whitespace()
        .next()?
        .strip_prefix("--")?
        .to_owned();
    let on_line =
        std::env::args().any(|a| a == format!("--{long}") || a.starts_with(&format!("--{long}=")));
    if on_line {
        return None;
    }
    let var = find_env(&Cli::command(), &long)?;
    std::env::var_os(&var).is_some().then_some(var)
}

/// The `env` of the flag `--long` in `command` or any of its subcommands.
fn find_env(command: &clap::Command, long: &str) -> Option<String> {
    command
        .get_arguments()
        .find(|a| a.get_long() == Some(long))
        .and_then(|a| a.get_env())
        .map(|v| v.to_string_lossy().into_owned())
        .or_else(|| {
            command
                .get_subcommands()
                .find_map(|sub| find_env(sub, long))
        })
}
