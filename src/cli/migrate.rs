//! `deprovision migrate`: applies the embedded audit migrations to `DATABASE_URL`
//! (run it as the table owner; the worker role cannot create tables). Nothing else.

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
}

/// Connects and migrates; prints one line on success.
pub async fn run(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    let store = AuditStore::connect(args.audit.database_url.expose_secret())
        .await
        .context("deprovision migrate")?;
    store.migrate().await.context("deprovision migrate")?;
    store.close().await;
    let backend = match store.kind() {
        deprovision::audit::BackendKind::Postgres => "PostgreSQL",
        deprovision::audit::BackendKind::Sqlite => "SQLite",
    };
    println!("audit migrations applied ({backend})");
    Ok(ExitCode::SUCCESS)
}
