//! `deprovision audit verify`: walks the audit hash chain and names the first
//! broken row. Read-only; exits 0 when intact, 3 when any row is broken (1 on
//! other errors, as every command).

use std::process::ExitCode;

use anyhow::Context;
use deprovision::audit::AuditStore;
use deprovision::config::AuditArgs;
use secrecy::ExposeSecret;

/// Exit code of `audit verify` when the chain is broken.
const BROKEN: u8 = 3;

/// Flags of `deprovision audit`.
#[derive(Debug, clap::Args)]
pub struct AuditCommandArgs {
    #[command(subcommand)]
    command: AuditCommand,
}

#[derive(Debug, clap::Subcommand)]
enum AuditCommand {
    /// Check the hash chain of every audit row; exit 3 and name the first broken
    /// row when any was edited, removed or reordered.
    Verify(VerifyArgs),
}

#[derive(Debug, clap::Args)]
struct VerifyArgs {
    #[command(flatten)]
    audit: AuditArgs,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs the audit subcommand.
pub async fn run(args: AuditCommandArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        AuditCommand::Verify(v) => verify(v).await,
    }
}

async fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let store = AuditStore::connect(args.audit.database_url.expose_secret())
        .await
        .context("deprovision audit verify")?;
    let report = store.verify().await.context("deprovision audit verify")?;
    store.close().await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        match &report.head {
            Some((id, hash)) => println!(
                "{} rows checked; head is row {id} with row_hash {hash}",
                report.rows
            ),
            None => println!("0 rows checked; the audit log is empty"),
        }
        for b in &report.broken {
            println!("BROKEN row {}: {}", b.id, b.reason);
        }
        if report.broken_total > report.broken.len() as u64 {
            println!(
                "… and {} more broken rows",
                report.broken_total - report.broken.len() as u64
            );
        }
    }
    match report.first_broken() {
        None => Ok(ExitCode::SUCCESS),
        Some(first) => {
            eprintln!(
                "error: the audit chain is broken; first broken row is {} ({})",
                first.id, first.reason
            );
            Ok(ExitCode::from(BROKEN))
        }
    }
}
