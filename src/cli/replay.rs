//! `deprovision replay-dlq [--max N] [--reason R] [--dry-run]`: moves
//! dead-lettered terminations back to the terminations queue after their cause is
//! fixed (receive, send, delete; each replay audited with the operator's name).
//! Each message is re-checked first: its signature with this process's own keys
//! (`MESSAGE_SIGNING_KEYS` / `MESSAGE_SIGNING=off`, the same set-up as `serve`;
//! one that still fails is skipped, audited and kept on the DLQ as evidence); a
//! termination superseded by a later rehire or termination is skipped (audited,
//! removed from the DLQ) and one not yet due is held durably instead. One run is
//! one pass (`consume::replay_dead_letters`): it ends although a running `serve`
//! dead-letters replays again. `--reason` accepts only the reasons the consumer
//! writes. Prints one line per message handled (with the reason for each skip),
//! then a count. Does not decide anything itself: the pass logic is in
//! `consume`.

use std::process::ExitCode;

use anyhow::Context;
use deprovision::audit::AuditStore;
use deprovision::config::{ActorArgs, AuditArgs, AwsArgs, SigningArgs};
use deprovision::consume::{ReplayOptions, dead_letter_reasons, replay_dead_letters};
use deprovision::queue::sqs::load_aws_config;

/// Flags of `deprovision replay-dlq`.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Replay at most this many messages (at least 1).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub max: Option<u64>,
    /// Replay only messages dead-lettered for this reason: a reason the
    /// consumer writes (`forbidden`, `failed`, `bad_signature`, …; `unknown` for
    /// messages SQS moved on its own). Anything else is refused at start-up.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(dead_letter_reasons()))]
    pub reason: Option<String>,
    /// List what would be replayed; move nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub actor: ActorArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    #[command(flatten)]
    pub audit: AuditArgs,
    #[command(flatten)]
    pub aws: AwsArgs,
    /// The keys each message's signature is checked with before it is sent back.
    #[command(flatten)]
    pub signing: SigningArgs,
}

/// Output format of `replay-dlq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One line per message.
    Text,
    /// One JSON document.
    Json,
}

/// Replays; exit 0 unless a queue or audit call failed (or the signing set-up
/// is missing: without `MESSAGE_SIGNING_KEYS` and without `MESSAGE_SIGNING=off`
/// it refuses to start, like `serve`).
pub async fn run(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let signing = args.signing.auth(false)?;
    let aws = load_aws_config().await;
    let sqs = aws_sdk_sqs::Client::new(&aws);
    let (terminations, dead_letter) = super::serve::termination_queues(&sqs, &args.aws).await?;
    let audit = AuditStore::open(&args.audit).await.context("audit store")?;
    let options = ReplayOptions {
        max: args.max,
        reason: args.reason.clone(),
        dry_run: args.dry_run,
        actor: args.actor.or("operator"),
        signing,
        ..ReplayOptions::default()
    };
    let report = replay_dead_letters(&dead_letter, &terminations, &audit, &options)
        .await
        .context("replay-dlq")?;
    audit.close().await;
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Text => {
            for item in &report.items {
                let verb = match (item.replayed, args.dry_run) {
                    (true, true) => "would replay",
                    (true, false) => "replayed",
                    (false, dry) => match (&item.skipped, item.held_until, dry) {
                        (Some(_), _, true) => "would skip",
                        (Some(_), _, false) => "skipped",
                        (None, Some(_), true) => "would hold",
                        (None, Some(_), false) => "held",
                        (None, None, _) => "kept",
                    },
                };
                println!(
                    "{verb:<12} {}  externalId={}  reason={}{}",
                    shown(&item.message_id),
                    item.external_id.as_deref().map_or("-".into(), shown),
                    shown(&item.reason),
                    item.detail
                        .as_deref()
                        .map(|d| format!("  ({})", shown(d)))
                        .unwrap_or_default()
                );
                if let Some(why) = &item.skipped {
                    println!("{:<12} why: {}", "", shown(why));
                }
                if let Some(until) = item.held_until {
                    println!(
                        "{:<12} not due until {}: held durably, not replayed",
                        "",
                        until.to_rfc3339()
                    );
                }
            }
            let n = report.replayed();
            let seen = report.items.len();
            if args.dry_run {
                println!("{n} of {seen} dead-lettered messages would be replayed");
            } else {
                println!("{n} of {seen} dead-lettered messages replayed");
            }
            if report.left_for_next_run > 0 {
                println!(
                    "{} more left for the next run (dead-lettered again, or after this run started, or a copy of one handled above)",
                    report.left_for_next_run
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Text from a dead-lettered message (its body and attributes are untrusted: a
/// forgery is listed too) as one printable line of at most 300 characters:
/// control characters escaped (`report::escape_control`), so that it cannot
/// fake lines of this report or drive the terminal.
fn shown(text: &str) -> String {
    deprovision::queue::truncate(&deprovision::report::escape_control(text), 300)
}

#[cfg(test)]
mod tests {
    use super::shown;

    #[test]
    fn untrusted_text_is_one_printable_line() {
        let forged = "boom\n\u{1b}[32mreplayed fake-id\u{1b}[0m\r\n1 of 1 replayed";
        let line = shown(forged);
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert!(line.contains("\\n") && line.contains("\\u{1b}"), "{line}");
        assert_eq!(shown(&"x".repeat(1000)).chars().count(), 301);
        assert_eq!(shown("EMP00060"), "EMP00060");
    }
}
