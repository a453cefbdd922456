//! `deprovision audit verify`: walks the audit hash chain and names the first
//! broken row, prints the chain head for auditors to record, checks a recorded
//! head (`--expect-head`, `--expect-count`) and the database's append-only
//! guards. Read-only; exits 0 when all pass, 3 when any fails (1 on other errors,
//! as every command).

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
    /// Check the hash chain of every audit row and the append-only triggers; exit
    /// 3 and name the first broken row when any was edited, removed or reordered,
    /// when a trigger is missing or disabled, or when a recorded head is gone.
    Verify(VerifyArgs),
}

#[derive(Debug, clap::Args)]
struct VerifyArgs {
    #[command(flatten)]
    audit: AuditArgs,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// A head recorded earlier (the `row_hash` printed by `audit verify` or in a
    /// weekly report's footer): fail unless that row is still in the chain. A hash
    /// chain alone cannot show rows removed from its end.
    #[arg(long, value_name = "ROW_HASH", value_parser = parse_row_hash)]
    expect_head: Option<String>,
    /// A row count recorded earlier: fail if the log now holds fewer rows.
    #[arg(long, value_name = "N")]
    expect_count: Option<u64>,
}

/// Runs the audit subcommand.
pub async fn run(args: AuditCommandArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        AuditCommand::Verify(v) => verify(v).await,
    }
}

async fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let store = AuditStore::connect_existing(args.audit.database_url.expose_secret())
        .await
        .context("deprovision audit verify")?;
    let report = store.verify().await.context("deprovision audit verify")?;
    let head_found = match &args.expect_head {
        Some(hash) => Some(
            store
                .row_id_for_hash(hash.trim())
                .await
                .context("deprovision audit verify")?,
        ),
        None => None,
    };
    store.close().await;
    let mut failures: Vec<String> = Vec::new();
    if let Some(first) = report.first_broken() {
        failures.push(format!(
            "the audit chain is broken; first broken row is {} ({})",
            first.id, first.reason
        ));
    }
    if !report.guards_missing.is_empty() {
        failures.push(format!(
            "append-only triggers missing: {} (run `deprovision migrate` as the table owner to restore them)",
            report.guards_missing.join(", ")
        ));
    }
    if report.summary_mismatches > 0 {
        failures.push(format!(
            "the weekly report summary disagrees with the audit log for {} terminations (first: termination {}); run `deprovision migrate --rebuild-summary`",
            report.summary_mismatches,
            report
                .summary_first_mismatch
                .map_or_else(|| "?".to_owned(), |id| id.to_string())
        ));
    }
    if let (Some(hash), Some(None)) = (&args.expect_head, &head_found) {
        failures.push(format!(
            "the recorded head {} is no longer in the chain: rows were removed from its end (it now ends at {})",
            hash.trim(),
            head_text(&report)
        ));
    }
    if let Some(n) = args.expect_count
        && report.rows < n
    {
        failures.push(format!(
            "the audit log holds {} rows, fewer than the {n} recorded: rows were removed",
            report.rows
        ));
    }
    if args.json {
        #[derive(serde::Serialize)]
        struct Out<'a> {
            #[serde(flatten)]
            report: &'a deprovision::audit::VerifyReport,
            expected_head_row: Option<Option<i64>>,
            failures: &'a [String],
        }
        let out = Out {
            report: &report,
            expected_head_row: head_found,
            failures: &failures,
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        match &report.head {
            Some((id, hash)) => println!(
                "{} rows checked; head is row {id} with row_hash {hash}\n\
                 record it; later `deprovision audit verify --expect-head {hash}` fails if rows were removed from the end",
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
        if let (Some(hash), Some(Some(id))) = (&args.expect_head, &head_found) {
            println!("recorded head {} found at row {id}", hash.trim());
        }
    }
    if failures.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        for f in &failures {
            eprintln!("error: {f}");
        }
        Ok(ExitCode::from(BROKEN))
    }
}

fn head_text(report: &deprovision::audit::VerifyReport) -> String {
    match &report.head {
        Some((id, hash)) => format!("row {id} with row_hash {hash}, {} rows", report.rows),
        None => "no row: the log is empty".to_owned(),
    }
}

/// `--expect-head`: a row hash is 64 hex digits (SHA-256); anything else is a
/// typo, not evidence that rows were removed. Lowercased, as the chain stores it.
fn parse_row_hash(raw: &str) -> Result<String, String> {
    let hash = raw.trim().to_ascii_lowercase();
    if hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hash)
    } else {
        Err("a row hash is 64 hex digits (the row_hash `audit verify` prints)".to_owned())
    }
}
