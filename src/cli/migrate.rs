//! `deprovision migrate`: applies the embedded audit migrations to `DATABASE_URL`
//! and re-asserts the append-only triggers (run it as the table owner; the worker
//! role cannot create tables). Nothing else.

use std::process::ExitCode;

use anyhow::Context;
use deprovision::audit::AuditStore;
use deprovision::config::AuditArgs;
use secrecy::ExposeSecret;

/// Flags of `deprovision migrate`.
#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    audit: AuditArgs,
    /// PostgreSQL: also recompute the weekly report's summary table from the log
    /// (when `audit verify` says they disagree).
    #[arg(long)]
    rebuild_summary: bool,
}

/// Connects, migrates and re-asserts the guards; prints what it did.
pub async fn run(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    let store = AuditStore::connect(args.audit.database_url.expose_secret())
        .await
        .context("deprovision migrate")?;
    let outcome = store
        .migrate_with(args.rebuild_summary)
        .await
        .context("deprovision migrate")?;
    store.close().await;
    let backend = match store.kind() {
        deprovision::audit::BackendKind::Postgres => "PostgreSQL",
        deprovision::audit::BackendKind::Sqlite => "SQLite",
    };
    println!("audit migrations applied ({backend})");
    if !outcome.restored.is_empty() {
        println!(
            "restored append-only guards: {}",
            outcome.restored.join(", ")
        );
    }
    if let Some(n) = outcome.summary_rebuilt {
        println!("rebuilt the weekly report summary ({n} terminations)");
    }
    Ok(ExitCode::SUCCESS)
}
