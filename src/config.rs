//! Typed settings, built once at start-up from flags, the environment and `.env`
//! (flags win). This is the only module that reads the environment; everything else
//! receives these structs. Secrets are held in [`SecretString`] so that `Debug`
//! output and logs never show them.
//!
//! The names are design.md's ("Configuration"); the seed's names
//! (`GENESYS_ORG_URL`, `PRIMARY_CLIENT_ID`, …) keep working.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use chrono_tz::Tz;
use secrecy::SecretString;
use url::Url;

use crate::domain::EffectiveAt;

/// A configuration value that cannot be used, naming the variable and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A required setting is absent.
    #[error("{name} is required: {why}")]
    Missing {
        name: &'static str,
        why: &'static str,
    },
    /// A setting is present but unusable.
    #[error("{name} is invalid: {reason}")]
    Invalid { name: &'static str, reason: String },
}

/// Exit status of a configuration that cannot be used (a `.env` that cannot be
/// parsed, or a [`ConfigError`]: a setting missing or invalid): 78, `EX_CONFIG`
/// of BSD `sysexits.h`, distinct from the commands' own statuses (1, 2, 3, 75).
pub const EXIT_CONFIG: u8 = 78;

/// A `.env` file that exists but cannot be used. It never carries text from the
/// file (a value may be a secret): only the path, the 1-based line numbers, the
/// variable's name when the line has a usable one, and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum DotenvError {
    /// The file exists but cannot be read (permissions, a directory, not UTF-8).
    #[error("{path}: cannot be read ({source}); nothing from it was loaded")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// One line is not `NAME=value` as this program accepts it.
    #[error(
        "{path}, line {line}{}: {problem}; nothing from it was loaded, so no command runs (quote values that contain spaces or `#`: NAME=\"a b\"; a literal `$` only in single quotes: NAME='a$b')",
        name.as_deref().map(|n| format!(" ({n})")).unwrap_or_default()
    )]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based physical line number.
        line: usize,
        /// The variable the line sets, when its name is well-formed.
        name: Option<String>,
        /// What is wrong, without the value.
        problem: DotenvProblem,
    },
    /// Two lines set the same variable: which one was meant cannot be known.
    #[error(
        "{path}, lines {first} and {second}: {name} is set twice; nothing from it was loaded, so no command runs (keep one of the two lines)"
    )]
    Duplicate {
        /// The file.
        path: PathBuf,
        /// The variable.
        name: String,
        /// 1-based line of the first assignment.
        first: usize,
        /// 1-based line of the second assignment.
        second: usize,
    },
}

/// What is wrong with one `.env` line (never its text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DotenvProblem {
    /// No `=` after a name.
    #[error("not NAME=value (no `=` after a variable name)")]
    NotAssignment,
    /// The text before `=` is not a variable name.
    #[error(
        "the text before `=` is not a variable name (letters, digits, `_`, `.`; not starting with a digit)"
    )]
    BadName,
    /// A `'` or `"` opened and not closed on the same line.
    #[error(
        "a quote (' or \") is opened and not closed on this line (values spanning several lines are not accepted)"
    )]
    UnclosedQuote,
    /// A `$` outside single quotes: dotenvy would substitute a variable there
    /// (an unset one by nothing), silently changing the value, e.g. a protected
    /// `ADM$X` becoming `ADM`.
    #[error(
        "the value contains `$` outside single quotes, which .env loaders replace with a variable (an unset one by nothing), silently changing it; substitution is not accepted"
    )]
    Substitution,
    /// Text right after a closing quote (`"a"b`), which dotenvy would silently
    /// join to the quoted part.
    #[error(
        "text follows the closing quote; quote the whole value (a `#` comment after it needs a space before the `#`)"
    )]
    TextAfterQuote,
    /// A quote inside an unquoted value (`a"b"`), which dotenvy would silently
    /// drop.
    #[error("a quote inside an unquoted value; quote the whole value instead")]
    QuoteInValue,
    /// A backslash at the end of the line or before a character it cannot escape.
    #[error("a backslash escape that .env files do not know (or one at the end of the line)")]
    BadEscape,
    /// Unquoted text after a space in the value.
    #[error("the unquoted value contains a space")]
    SpaceInValue,
    /// Anything else the parser refused.
    #[error("not a valid NAME=value line")]
    Unparseable,
}

/// Loads `.env` from the working directory, if there is one, into the process
/// environment so that clap's `env` fallbacks see it; variables already set
/// win. Call once, before parsing the command line and before any thread is
/// started.
///
/// Fails closed: every line is checked before any is loaded, so a malformed line
/// (e.g. `PROTECTED_GROUPS=Group 1`, unquoted) stops start-up instead of silently
/// dropping the lines after it. Refused as well, because dotenvy would load a
/// value other than the one written: a `$` outside single quotes (variable
/// substitution), text after a closing quote, a quote inside an unquoted value,
/// a value spanning several lines, and a variable set on two lines
/// ([`DotenvError::Duplicate`]). A missing `.env` is the normal case in
/// production (ECS injects variables): `Ok(None)`. Returns the path loaded.
/// Errors: [`DotenvError`], naming the file, line(s) and variable, never a value.
/// Syntax: dotenvy 0.15's (`export` prefix, `'…'`, `"…"`, `#` comments) minus
/// substitution.
pub fn load_dotenv() -> Result<Option<PathBuf>, DotenvError> {
    let path = std::env::current_dir()
        .map(|d| d.join(".env"))
        .unwrap_or_else(|_| PathBuf::from(".env"));
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(DotenvError::Read { path, source }),
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let pairs = parse_dotenv(text).map_err(|e| match e {
        DotenvReject::Line(line, name, problem) => DotenvError::Line {
            path: path.clone(),
            line,
            name,
            problem,
        },
        DotenvReject::Duplicate {
            name,
            first,
            second,
        } => DotenvError::Duplicate {
            path: path.clone(),
            name,
            first,
            second,
        },
    })?;
    for (key, value) in pairs {
        if std::env::var_os(&key).is_none() {
            // SAFETY: called from `main` before the runtime or any other thread
            // exists, so nothing reads the environment concurrently.
            unsafe { std::env::set_var(&key, value) };
        }
    }
    Ok(Some(path))
}

/// Why [`parse_dotenv`] refused a text (line numbers 1-based, never a value).
#[derive(Debug, PartialEq, Eq)]
enum DotenvReject {
    /// One line: its number, the variable if its name is well-formed, the problem.
    Line(usize, Option<String>, DotenvProblem),
    /// A variable set on two lines.
    Duplicate {
        name: String,
        first: usize,
        second: usize,
    },
}

/// Parses a `.env` text one physical line at a time with dotenvy's parser (so
/// no quote can join lines), after refusing what dotenvy would silently alter
/// (see [`load_dotenv`]). Returns the pairs in file order, each name once.
fn parse_dotenv(text: &str) -> Result<Vec<(String, String)>, DotenvReject> {
    let mut pairs = Vec::new();
    let mut lines_of = std::collections::HashMap::<String, usize>::new();
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let number = i + 1;
        let body = line.trim_end_matches(['\n', '\r']);
        let Some((name, value)) = split_assignment(body) else {
            // Blank or a comment, else dotenvy refuses it and diagnose says why.
            if check_line(body).is_err() {
                let (name, problem) = diagnose_dotenv_line(body);
                return Err(DotenvReject::Line(number, name, problem));
            }
            continue;
        };
        // Before dotenvy: its substitution is what hides the damage (and a `$`
        // before a closing quote makes it fail with a misleading message).
        if has_substitution(value) {
            return Err(DotenvReject::Line(
                number,
                Some(name.to_owned()),
                DotenvProblem::Substitution,
            ));
        }
        let parsed = match check_line(body) {
            Ok(parsed) => parsed,
            Err(()) => {
                let (name, problem) = diagnose_dotenv_line(body);
                return Err(DotenvReject::Line(number, name, problem));
            }
        };
        if let Some(problem) = joined_value(value) {
            return Err(DotenvReject::Line(number, Some(name.to_owned()), problem));
        }
        for (key, value) in parsed {
            if let Some(&first) = lines_of.get(&key) {
                return Err(DotenvReject::Duplicate {
                    name: key,
                    first,
                    second: number,
                });
            }
            lines_of.insert(key.clone(), number);
            pairs.push((key, value));
        }
    }
    Ok(pairs)
}

/// dotenvy's pairs for one line on its own, or `Err` if it refuses the line.
fn check_line(body: &str) -> Result<Vec<(String, String)>, ()> {
    // The newline matters: dotenvy's line reader treats trailing blanks before
    // EOF as an unfinished line.
    let alone = format!("{body}\n");
    dotenvy::from_read_iter(alone.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| ())
}

/// `(name, value)` of a line `[export ]NAME=value` whose name is well-formed,
/// the value with leading blanks removed; `None` for anything else (blank,
/// comment, malformed).
fn split_assignment(line: &str) -> Option<(&str, &str)> {
    let rest = line.trim_start();
    if rest.is_empty() || rest.starts_with('#') {
        return None;
    }
    let (key, value) = assignment(rest)?;
    well_formed_name(key).then_some((key, value.trim_start()))
}

/// `(name, value)` around the first `=` of `[export ]NAME=value`, the name
/// trimmed, whatever the name is; `None` without an `=`.
fn assignment(line: &str) -> Option<(&str, &str)> {
    let mut rest = line.trim_start();
    if let Some(after) = rest.strip_prefix("export")
        && after.starts_with(char::is_whitespace)
    {
        rest = after.trim_start();
    }
    let (key, value) = rest.split_once('=')?;
    Some((key.trim_end(), value))
}

/// A variable name as dotenvy accepts it: letters, digits, `_`, `.`; not
/// starting with a digit.
fn well_formed_name(key: &str) -> bool {
    key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

/// Where a character of a `.env` value stands as dotenvy 0.15's `parse_value`
/// reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quoting {
    /// Right after a backslash outside single quotes.
    Escaped,
    /// Inside single quotes (literal).
    Single,
    /// Inside double quotes.
    Double,
    /// Unquoted.
    Bare,
}

/// Walks `value` as dotenvy 0.15's `parse_value` does, calling `visit` with each
/// character's byte offset, the character and where it stands; stops with the
/// first `Some` from `visit`. Otherwise returns `Err` with the state at the end:
/// an open quote, or `Escaped` for a trailing backslash in unquoted text. The
/// one quoting state machine the `.env` checks share.
fn walk_value<T>(
    value: &str,
    mut visit: impl FnMut(usize, char, Quoting) -> Option<T>,
) -> Result<T, Quoting> {
    let mut state = Quoting::Bare;
    let mut escaped_from = Quoting::Bare;
    for (i, c) in value.char_indices() {
        if let Some(found) = visit(i, c, state) {
            return Ok(found);
        }
        state = match (state, c) {
            (Quoting::Escaped, _) => escaped_from,
            (Quoting::Single, '\'') => Quoting::Bare,
            (Quoting::Double, '"') => Quoting::Bare,
            (Quoting::Bare, '\'') => Quoting::Single,
            (Quoting::Bare, '"') => Quoting::Double,
            (from @ (Quoting::Bare | Quoting::Double), '\\') => {
                escaped_from = from;
                Quoting::Escaped
            }
            (same, _) => same,
        };
    }
    // A backslash last inside double quotes leaves the quote open.
    Err(match (state, escaped_from) {
        (Quoting::Escaped, Quoting::Double) => Quoting::Double,
        _ => state,
    })
}

/// True when dotenvy 0.15's `parse_value` would substitute a variable in
/// `value`: an unescaped `$` outside single quotes, before the value ends (an
/// unquoted blank ends it; what follows is a comment or a refused line).
fn has_substitution(value: &str) -> bool {
    walk_value(value, |_, c, at| match (c, at) {
        ('$', Quoting::Double | Quoting::Bare) => Some(true),
        (' ' | '\t', Quoting::Bare) => Some(false),
        _ => None,
    })
    .unwrap_or(false)
}

/// For a value dotenvy accepted: the problem when it is not one quoted or one
/// unquoted piece, since dotenvy joins `"a"b` into `ab` and drops the quotes of
/// `a"b"`.
fn joined_value(value: &str) -> Option<DotenvProblem> {
    let mut chars = value.char_indices();
    let after_quote = match chars.next() {
        None | Some((_, '#')) => return None,
        Some((_, quote @ ('\'' | '"'))) => {
            let mut escaped = false;
            let mut end = None;
            for (i, c) in chars {
                if escaped {
                    escaped = false;
                } else if c == '\\' && quote == '"' {
                    escaped = true;
                } else if c == quote {
                    end = Some(i + c.len_utf8());
                    break;
                }
            }
            // dotenvy accepted the line, so the quote closes.
            &value[end.unwrap_or(value.len())..]
        }
        Some(_) => {
            let mut escaped = false;
            for c in value.chars() {
                if escaped {
                    escaped = false;
                } else {
                    match c {
                        '\\' => escaped = true,
                        '\'' | '"' => return Some(DotenvProblem::QuoteInValue),
                        ' ' | '\t' => return None,
                        _ => {}
                    }
                }
            }
            return None;
        }
    };
    if after_quote.is_empty() || after_quote.starts_with([' ', '\t']) {
        None
    } else {
        Some(DotenvProblem::TextAfterQuote)
    }
}

/// Why dotenvy refused `line`, and the variable it sets if its name is
/// well-formed. Only called on lines the parser refused.
fn diagnose_dotenv_line(line: &str) -> (Option<String>, DotenvProblem) {
    let Some((key, value)) = assignment(line) else {
        return (None, DotenvProblem::NotAssignment);
    };
    if !well_formed_name(key) {
        return (None, DotenvProblem::BadName);
    }
    (Some(key.to_owned()), diagnose_value(value.trim()))
}

/// Walks a value the way dotenvy 0.15 does (`parse_value`), reporting the first
/// thing it would refuse. Substitution is refused before dotenvy runs, so a
/// value reaching here has no `$` outside single quotes.
fn diagnose_value(value: &str) -> DotenvProblem {
    let found = walk_value(value, |i, c, at| match at {
        Quoting::Escaped if !matches!(c, '\\' | '\'' | '"' | '$' | ' ' | 'n') => {
            Some(DotenvProblem::BadEscape)
        }
        // An unquoted blank ends the value: only blanks or a comment may follow.
        Quoting::Bare if c == ' ' || c == '\t' => {
            let rest = value[i..].trim_start();
            Some(if rest.is_empty() || rest.starts_with('#') {
                DotenvProblem::Unparseable
            } else {
                DotenvProblem::SpaceInValue
            })
        }
        _ => None,
    });
    match found {
        Ok(problem) => problem,
        Err(Quoting::Single | Quoting::Double) => DotenvProblem::UnclosedQuote,
        Err(Quoting::Escaped) => DotenvProblem::BadEscape,
        Err(Quoting::Bare) => DotenvProblem::Unparseable,
    }
}

/// Where the Genesys Cloud (or any SCIM 2.0) service is and how to authenticate.
#[derive(Debug, Clone, clap::Args)]
pub struct ScimArgs {
    /// Genesys environment, e.g. `mypurecloud.com`, `usw2.pure.cloud`; gives
    /// `https://api.<env>` and `https://login.<env>`.
    #[arg(long, env = "GENESYS_REGION")]
    pub genesys_region: Option<String>,
    /// The seed's name for the API base (e.g. `https://api.mypurecloud.com`).
    #[arg(long, env = "GENESYS_ORG_URL")]
    pub genesys_org_url: Option<Url>,
    /// Full API base URL (overrides the region; used for the simulator).
    #[arg(long, env = "GENESYS_API_URL")]
    pub genesys_api_url: Option<Url>,
    /// Full login base URL (default: derived from the API host, `api.` → `login.`).
    #[arg(long, env = "GENESYS_LOGIN_URL")]
    pub genesys_login_url: Option<Url>,
    /// OAuth client-credentials client used first.
    #[arg(long, env = "PRIMARY_CLIENT_ID")]
    pub primary_client_id: Option<String>,
    /// Secret of the primary client.
    #[arg(long, env = "PRIMARY_CLIENT_SECRET", hide_env_values = true)]
    pub primary_client_secret: Option<SecretString>,
    /// OAuth client used once per termination after a 403 to the primary one.
    #[arg(long, env = "ELEVATED_CLIENT_ID")]
    pub elevated_client_id: Option<String>,
    /// Secret of the elevated client.
    #[arg(long, env = "ELEVATED_CLIENT_SECRET", hide_env_values = true)]
    pub elevated_client_secret: Option<SecretString>,
    /// Base URL of any other SCIM 2.0 service (with `SCIM_BEARER_TOKEN`), e.g.
    /// `http://127.0.0.1:8080/` — the path prefix before `Users`/`Groups`.
    #[arg(long, env = "SCIM_BASE_URL")]
    pub scim_base_url: Option<Url>,
    /// Static bearer token for `SCIM_BASE_URL`.
    #[arg(long, env = "SCIM_BEARER_TOKEN", hide_env_values = true)]
    pub scim_bearer_token: Option<SecretString>,
    /// Requests per minute across all workers (the shared limiter's starting budget).
    #[arg(long, env = "RATE_LIMIT_PER_MINUTE", default_value_t = NonZeroU32::new(300).expect("non-zero"))]
    pub rate_limit_per_minute: NonZeroU32,
    /// Also remove the user's roles in the deactivating PATCH.
    #[arg(long, env = "REMOVE_ROLES", default_value_t = false)]
    pub remove_roles: bool,
    /// Per-request timeout, seconds; at least 1 (0 is refused: every request
    /// would time out).
    #[arg(long, env = "SCIM_TIMEOUT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub scim_timeout_secs: u64,
}

/// Where the audit store is.
#[derive(Debug, Clone, clap::Args)]
pub struct AuditArgs {
    /// `postgres://…` (production) or `sqlite://path` (embedded default).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://deprovision.db",
        hide_env_values = true
    )]
    pub database_url: SecretString,
    /// Skip applying migrations at start-up (apply them with `deprovision migrate`).
    #[arg(long, env = "SKIP_MIGRATIONS", default_value_t = false)]
    pub skip_migrations: bool,
}

/// How terminations are timed.
#[derive(Debug, Clone, clap::Args)]
pub struct PolicyArgs {
    /// IANA zone in which HR's date-only terminations are read.
    #[arg(long, env = "HR_TIMEZONE", default_value = "UTC")]
    pub hr_timezone: Tz,
    /// Which moment of a date-only termination day takes effect.
    #[arg(long, env = "TERMINATION_EFFECTIVE_AT", value_enum, default_value_t = EffectiveAt::StartOfDay)]
    pub termination_effective_at: EffectiveAt,
    /// Concurrent terminations in flight; at least 1 (0 is refused: nothing
    /// would ever start).
    #[arg(long, env = "CONCURRENCY", default_value_t = 8, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub concurrency: usize,
    /// Refuse (as `invalid`) terminations effective more than this many days
    /// ahead, at dispatch and in the consumer.
    #[arg(long, env = "MAX_FUTURE_DAYS", default_value_t = 90)]
    pub max_future_days: u32,
}

/// The hold releaser of `deprovision serve` (future-dated terminations held in
/// the audit database are re-sent to the terminations queue when due).
#[derive(Debug, Clone, clap::Args)]
pub struct HoldArgs {
    /// Seconds between release rounds; at least 1 (0 is refused: a busy loop
    /// against the audit database).
    #[arg(long, env = "HOLD_RELEASE_INTERVAL_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub hold_release_interval_secs: u64,
}

impl HoldArgs {
    /// The pause between release rounds (at least one second).
    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.hold_release_interval_secs.max(1))
    }
}

/// AWS resources (the SDK's own variables — `AWS_REGION`, `AWS_ENDPOINT_URL`, the
/// credential chain — are read by the SDK itself).
#[derive(Debug, Clone, clap::Args)]
pub struct AwsArgs {
    /// Bucket of the seed's single-manifest mode (`deprovision dispatch` without
    /// an argument).
    #[arg(long, env = "S3_BUCKET")]
    pub s3_bucket: Option<String>,
    /// Key of the seed's single-manifest mode.
    #[arg(long, env = "S3_MANIFEST_KEY")]
    pub s3_manifest_key: Option<String>,
    /// Queue receiving S3 event notifications for new manifests.
    #[arg(long, env = "MANIFEST_EVENTS_QUEUE_URL")]
    pub manifest_events_queue_url: Option<String>,
    /// Queue of one message per termination.
    #[arg(long, env = "TERMINATIONS_QUEUE_URL")]
    pub terminations_queue_url: Option<String>,
    /// Dead-letter queue of the terminations queue.
    #[arg(long, env = "DEAD_LETTER_QUEUE_URL")]
    pub dead_letter_queue_url: Option<String>,
}

/// The health and metrics endpoint of `deprovision serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct HealthArgs {
    /// Address of `/healthz` and `/metrics`; `healthcheck` probes its port on
    /// 127.0.0.1.
    #[arg(long, env = "HEALTH_ADDR", default_value = "0.0.0.0:8080")]
    pub health_addr: std::net::SocketAddr,
}

/// How the consumer pool of `deprovision serve` paces and bounds its work.
#[derive(Debug, Clone, clap::Args)]
pub struct ConsumerArgs {
    /// Seconds started terminations may take to finish after SIGTERM; keep it
    /// below the ECS task's stopTimeout (30 s by default). At least 1 (0 is
    /// refused: it would abandon every termination in progress at SIGTERM).
    #[arg(long, env = "DRAIN_DEADLINE_SECS", default_value_t = 25, value_parser = clap::value_parser!(u64).range(1..))]
    pub drain_deadline_secs: u64,
    /// Seconds one termination attempt may take (retries of 429/5xx included)
    /// before it is returned to the queue as `retrying`. At least 1 (0 is
    /// refused: no attempt could ever finish).
    #[arg(long, env = "ATTEMPT_TIMEOUT_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub attempt_timeout_secs: u64,
    /// First redelivery delay after a transient failure, seconds; doubles per
    /// receive, jittered, at most 15 minutes. At least 1 (0 is refused: a
    /// throttled or failing termination would be retried at once, forever
    /// doubling zero).
    #[arg(long, env = "RETRY_BASE_SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub retry_base_secs: u64,
}

impl ConsumerArgs {
    /// The drain deadline.
    pub fn drain_deadline(&self) -> Duration {
        Duration::from_secs(self.drain_deadline_secs)
    }

    /// The per-attempt timeout, at least one second.
    pub fn attempt_timeout(&self) -> Duration {
        Duration::from_secs(self.attempt_timeout_secs.max(1))
    }

    /// The first retry delay.
    pub fn retry_base(&self) -> Duration {
        Duration::from_secs(self.retry_base_secs)
    }
}

/// Who runs an operator command (`approve`, `reject`, `run --approve`, `user`,
/// `replay-dlq`), recorded as the actor of its audit rows: `--by`, else `USER`,
/// else the command's fallback (`operator`).
#[derive(Debug, Clone, clap::Args)]
pub struct ActorArgs {
    /// Who ran this, recorded in the audit (default: the OS user, `USER`, else
    /// `operator`). A blank name is refused.
    #[arg(long = "by", visible_alias = "actor", value_parser = parse_actor)]
    pub by: Option<String>,
}

/// `--by`'s value, trimmed. Errors: a blank name (an audit row must say who).
fn parse_actor(raw: &str) -> Result<String, String> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(
            "a blank name cannot be audited; give who runs this, e.g. --by alice (or omit --by to record USER)"
                .to_owned(),
        );
    }
    Ok(name.to_owned())
}

impl ActorArgs {
    /// The actor: `--by`, else a non-blank `USER`, else `fallback` (e.g. in a
    /// container, where `USER` is unset).
    pub fn or(&self, fallback: &str) -> String {
        self.by
            .clone()
            .or_else(|| {
                std::env::var("USER")
                    .ok()
                    .map(|u| u.trim().to_owned())
                    .filter(|u| !u.is_empty())
            })
            .unwrap_or_else(|| fallback.to_owned())
    }
}

/// `MESSAGE_SIGNING`: whether termination messages are signed and verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SigningMode {
    /// Sign and verify with `MESSAGE_SIGNING_KEYS` (the default).
    #[default]
    On,
    /// Neither sign nor verify; logged as a warning at start-up.
    Off,
}

/// Message authenticity (issue 6; [`crate::signing`]).
#[derive(Debug, Clone, clap::Args)]
pub struct SigningArgs {
    /// HMAC-SHA256 keys as `keyid:key[,keyid:key]`: the first key signs, every
    /// key verifies (rotation; deploy/README.md). Each key at least 32
    /// characters, e.g. `k1:$(openssl rand -hex 32)`.
    #[arg(long, env = "MESSAGE_SIGNING_KEYS", hide_env_values = true)]
    pub message_signing_keys: Option<SecretString>,
    /// `off` disables signing and verification (explicitly; a warning is logged).
    /// Without keys and without `off`, `serve` and `dispatch` refuse to start.
    #[arg(long, env = "MESSAGE_SIGNING", value_enum, default_value_t = SigningMode::On)]
    pub message_signing: SigningMode,
}

impl SigningArgs {
    /// The signing set-up: the key ring, or [`crate::signing::MessageAuth::Off`]
    /// when `MESSAGE_SIGNING=off` (a warning is logged). Without keys,
    /// `ephemeral` gives a random in-process key (`run`), else it is an error.
    /// Errors: [`ConfigError`] naming the variable, never a key.
    pub fn auth(&self, ephemeral: bool) -> Result<crate::signing::MessageAuth, ConfigError> {
        use crate::signing::{Keyring, MessageAuth};
        if self.message_signing == SigningMode::Off {
            tracing::warn!(
                "MESSAGE_SIGNING=off: termination messages are neither signed nor verified; anyone who can send to the terminations queue can deactivate users"
            );
            return Ok(MessageAuth::Off);
        }
        let ring = match &self.message_signing_keys {
            Some(raw) => Keyring::parse(raw).map_err(|e| ConfigError::Invalid {
                name: "MESSAGE_SIGNING_KEYS",
                reason: e.to_string(),
            })?,
            None if ephemeral => Keyring::ephemeral(),
            None => {
                return Err(ConfigError::Missing {
                    name: "MESSAGE_SIGNING_KEYS",
                    why: "termination messages must be signed; set keyid:key (or MESSAGE_SIGNING=off to run without signatures)",
                });
            }
        };
        tracing::info!(key_ids = ?ring.key_ids(), "message signing on");
        Ok(MessageAuth::Hmac(std::sync::Arc::new(ring)))
    }
}

/// The mass-deactivation breaker (issue 6; [`crate::breaker`]).
#[derive(Debug, Clone, clap::Args)]
pub struct BreakerArgs {
    /// A manifest with more distinct valid terminations than this is held whole
    /// until approved; 0 holds every manifest with at least one termination
    /// (every dispatch then needs `deprovision approve`).
    #[arg(long, env = "MAX_TERMINATIONS_PER_MANIFEST", default_value_t = 500)]
    pub max_terminations_per_manifest: u64,
    /// A manifest terminating more than this share (0..=1) of the org's active
    /// users is held whole until approved; 1 disables the share check (and the
    /// active-user count request).
    #[arg(long, env = "MAX_TERMINATIONS_SHARE", default_value_t = 0.10)]
    pub max_terminations_share: f64,
}

impl BreakerArgs {
    /// The limits. Errors: a share outside 0..=1 or not a number.
    pub fn limits(&self) -> Result<crate::breaker::Limits, ConfigError> {
        let share = self.max_terminations_share;
        if !(0.0..=1.0).contains(&share) {
            return Err(ConfigError::Invalid {
                name: "MAX_TERMINATIONS_SHARE",
                reason: format!("{share} is not between 0 and 1"),
            });
        }
        Ok(crate::breaker::Limits {
            max_per_manifest: self.max_terminations_per_manifest,
            max_share: share,
        })
    }
}

/// Protected accounts (issue 6; [`crate::protect`]).
#[derive(Debug, Clone, clap::Args)]
pub struct ProtectionArgs {
    /// Comma-separated userIds and/or externalIds that are never deactivated.
    #[arg(long, env = "PROTECTED_USERS")]
    pub protected_users: Option<String>,
    /// Comma-separated Genesys group ids and/or display names whose members are
    /// never deactivated (e.g. break-glass administrators).
    #[arg(long, env = "PROTECTED_GROUPS")]
    pub protected_groups: Option<String>,
    /// Seconds a resolved `PROTECTED_GROUPS` name → id mapping is trusted.
    #[arg(long, env = "PROTECTED_GROUPS_REFRESH_SECS", default_value_t = 300)]
    pub protected_groups_refresh_secs: u64,
}

impl ProtectionArgs {
    /// The protected lists.
    pub fn protection(&self) -> crate::protect::Protection {
        crate::protect::Protection::new(
            self.protected_users.as_deref(),
            self.protected_groups.as_deref(),
            Duration::from_secs(self.protected_groups_refresh_secs),
        )
    }
}

/// The resolved SCIM target: how to reach it and which credentials to use.
#[derive(Debug, Clone)]
pub enum ScimTarget {
    /// Genesys Cloud (or its simulator): OAuth client credentials.
    Genesys {
        /// `https://api.<env>` (no trailing path); SCIM lives under
        /// `/api/v2/scim/v2/`.
        api_base: Url,
        /// `https://login.<env>`; the token endpoint is `/oauth/token`.
        login_base: Url,
        /// The primary client.
        primary: OAuthClient,
        /// The elevated client, if configured.
        elevated: Option<OAuthClient>,
    },
    /// Any SCIM 2.0 service with a static bearer token.
    Static {
        /// The SCIM base, ending in `/`.
        base: Url,
        /// The bearer token.
        token: SecretString,
    },
}

/// One OAuth client's credentials. `Debug` shows the id, never the secret.
#[derive(Debug, Clone)]
pub struct OAuthClient {
    /// Client id (not a secret; appears in logs).
    pub id: String,
    /// Client secret.
    pub secret: SecretString,
}

/// The Genesys API host for a region/environment name, e.g. `usw2.pure.cloud` →
/// `https://api.usw2.pure.cloud` (genesys.md, "Hosts and regions"). Accepts the
/// bare environment, or an AWS-style region name from the published table.
pub fn api_base_for_region(region: &str) -> Result<Url, ConfigError> {
    const REGIONS: &[(&str, &str)] = &[
        ("us-east-1", "mypurecloud.com"),
        ("us-east-2", "use2.us-gov-pure.cloud"),
        ("us-west-2", "usw2.pure.cloud"),
        ("ca-central-1", "cac1.pure.cloud"),
        ("sa-east-1", "sae1.pure.cloud"),
        ("mx-central-1", "mxc1.pure.cloud"),
        ("eu-west-1", "mypurecloud.ie"),
        ("eu-west-2", "euw2.pure.cloud"),
        ("eu-central-1", "mypurecloud.de"),
        ("eu-central-2", "euc2.pure.cloud"),
        ("me-central-1", "mec1.pure.cloud"),
        ("ap-south-1", "aps1.pure.cloud"),
        ("ap-northeast-1", "mypurecloud.jp"),
        ("ap-northeast-2", "apne2.pure.cloud"),
        ("ap-northeast-3", "apne3.pure.cloud"),
        ("ap-southeast-1", "apse1.pure.cloud"),
        ("ap-southeast-2", "mypurecloud.com.au"),
    ];
    let region = region.trim().trim_end_matches('/');
    let env = REGIONS
        .iter()
        .find(|(name, _)| *name == region)
        .map(|(_, env)| *env)
        .unwrap_or_else(|| region.strip_prefix("api.").unwrap_or(region));
    if env.is_empty() || env.contains('/') || !env.contains('.') {
        return Err(ConfigError::Invalid {
            name: "GENESYS_REGION",
            reason: format!("{region:?} is not a Genesys environment such as mypurecloud.com"),
        });
    }
    Url::parse(&format!("https://api.{env}")).map_err(|e| ConfigError::Invalid {
        name: "GENESYS_REGION",
        reason: e.to_string(),
    })
}

/// The login host for an API host: the first label `api` becomes `login`, as the
/// official SDKs do; any other host keeps its origin (a simulator serves both).
pub fn login_base_for_api(api: &Url) -> Url {
    let mut login = api.clone();
    if let Some(host) = api.host_str()
        && let Some(rest) = host.strip_prefix("api.")
    {
        let _ = login.set_host(Some(&format!("login.{rest}")));
    }
    login.set_path("/");
    login
}

/// A setting's value, trimmed, or `None` when unset or blank: `NAME=` in `.env`
/// or the environment means "not set", never an empty client id.
fn set(value: &Option<String>) -> Option<String> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// A secret setting, or `None` when unset or blank (never trimmed: a secret is
/// used exactly as given).
fn set_secret(value: &Option<SecretString>) -> Option<SecretString> {
    use secrecy::ExposeSecret;
    value
        .clone()
        .filter(|v| !v.expose_secret().trim().is_empty())
}

/// `url` when it is `http` or `https`; anything else (e.g. `ftp://`) is refused
/// at start-up naming the variable, rather than failing every request later.
fn http_url(name: &'static str, url: &Url) -> Result<Url, ConfigError> {
    match url.scheme() {
        "http" | "https" => Ok(url.clone()),
        other => Err(ConfigError::Invalid {
            name,
            reason: format!("{url} uses {other}://; only http:// and https:// are supported"),
        }),
    }
}

impl ScimArgs {
    /// Resolves which SCIM service to talk to. A static target wins when
    /// `SCIM_BASE_URL` is set. Errors name the missing or invalid variable.
    pub fn target(&self) -> Result<ScimTarget, ConfigError> {
        if let Some(base) = &self.scim_base_url {
            let token = set_secret(&self.scim_bearer_token).ok_or(ConfigError::Missing {
                name: "SCIM_BEARER_TOKEN",
                why: "SCIM_BASE_URL is set",
            })?;
            let mut base = http_url("SCIM_BASE_URL", base)?;
            if !base.path().ends_with('/') {
                let path = format!("{}/", base.path());
                base.set_path(&path);
            }
            return Ok(ScimTarget::Static { base, token });
        }
        let api_base = match (
            &self.genesys_api_url,
            &self.genesys_org_url,
            &self.genesys_region,
        ) {
            (Some(url), _, _) => http_url("GENESYS_API_URL", url)?,
            (None, Some(url), _) => http_url("GENESYS_ORG_URL", url)?,
            (None, None, Some(region)) if !region.trim().is_empty() => api_base_for_region(region)?,
            (None, None, _) => {
                return Err(ConfigError::Missing {
                    name: "GENESYS_REGION",
                    why: "set GENESYS_REGION (or GENESYS_API_URL), or SCIM_BASE_URL with SCIM_BEARER_TOKEN",
                });
            }
        };
        let login_base = match &self.genesys_login_url {
            Some(url) => http_url("GENESYS_LOGIN_URL", url)?,
            None => login_base_for_api(&api_base),
        };
        let primary = match (
            set(&self.primary_client_id),
            set_secret(&self.primary_client_secret),
        ) {
            (Some(id), Some(secret)) => OAuthClient { id, secret },
            (None, _) => {
                return Err(ConfigError::Missing {
                    name: "PRIMARY_CLIENT_ID",
                    why: "Genesys Cloud needs an OAuth client",
                });
            }
            (Some(_), None) => {
                return Err(ConfigError::Missing {
                    name: "PRIMARY_CLIENT_SECRET",
                    why: "PRIMARY_CLIENT_ID is set",
                });
            }
        };
        let elevated = match (
            set(&self.elevated_client_id),
            set_secret(&self.elevated_client_secret),
        ) {
            (Some(id), Some(secret)) => Some(OAuthClient { id, secret }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::Missing {
                    name: "ELEVATED_CLIENT_SECRET",
                    why: "ELEVATED_CLIENT_ID is set",
                });
            }
            (None, Some(_)) => {
                return Err(ConfigError::Missing {
                    name: "ELEVATED_CLIENT_ID",
                    why: "ELEVATED_CLIENT_SECRET is set",
                });
            }
        };
        Ok(ScimTarget::Genesys {
            api_base,
            login_base,
            primary,
            elevated,
        })
    }

    /// The per-request timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.scim_timeout_secs.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn each_malformed_env_line_is_refused_with_its_number_and_name_never_its_value() {
        let cases = [
            (
                "PROTECTED_GROUPS=Group 1",
                Some("PROTECTED_GROUPS"),
                DotenvProblem::SpaceInValue,
            ),
            ("NOTE=it's fine", Some("NOTE"), DotenvProblem::UnclosedQuote),
            ("KEY=va\"lue", Some("KEY"), DotenvProblem::UnclosedQuote),
            ("FOO=${BAR", Some("FOO"), DotenvProblem::Substitution),
            ("this is not valid", None, DotenvProblem::NotAssignment),
            (
                "export SECRET=a\\q",
                Some("SECRET"),
                DotenvProblem::BadEscape,
            ),
            ("9LIVES=x", None, DotenvProblem::BadName),
            // The tester's `$` shapes: unquoted, double-quoted, before the
            // closing quote, a default, a `$` alone.
            (
                "PROTECTED_USERS=\"ADM$X,OTHER\"",
                Some("PROTECTED_USERS"),
                DotenvProblem::Substitution,
            ),
            (
                "DATABASE_URL=\"sqlite://pa$sword.db\"",
                Some("DATABASE_URL"),
                DotenvProblem::Substitution,
            ),
            ("P=\"ADM$X\"", Some("P"), DotenvProblem::Substitution),
            ("P=ADM$X", Some("P"), DotenvProblem::Substitution),
            ("P=\"a${NOPE:-x}b\"", Some("P"), DotenvProblem::Substitution),
            ("P=cost$", Some("P"), DotenvProblem::Substitution),
            ("P='a'$X", Some("P"), DotenvProblem::Substitution),
            (
                "S=\"s3cr3t\"value",
                Some("S"),
                DotenvProblem::TextAfterQuote,
            ),
            ("S='it''s'", Some("S"), DotenvProblem::TextAfterQuote),
            ("S=\"a\"#b", Some("S"), DotenvProblem::TextAfterQuote),
            ("S=a\"b\"", Some("S"), DotenvProblem::QuoteInValue),
        ];
        for (bad, name, problem) in cases {
            let text = format!("# comment\nA=1\r\n{bad}\nPROTECTED_USERS=EMP1\n");
            let got = parse_dotenv(&text).unwrap_err();
            assert_eq!(
                got,
                DotenvReject::Line(3, name.map(str::to_owned), problem),
                "{bad}"
            );
        }
    }

    #[test]
    fn well_formed_env_lines_pass_including_quoted_spaces_literal_dollars_and_trailing_blanks() {
        let text = "A=1\nexport B=\"Group 1\"\nC='ADM$X,OTHER'\nD=x # note $HOME\nE=\nF='${A}'  \n\n  # c $X\nG=\"a\\\"b\"\nH=\"pa\\$sword\"\nI=\"x\" # done\nJ=a#b";
        let pairs = parse_dotenv(text).unwrap();
        let get = |k: &str| {
            pairs
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("B"), Some("Group 1"));
        assert_eq!(get("C"), Some("ADM$X,OTHER"));
        assert_eq!(get("D"), Some("x"));
        assert_eq!(get("E"), Some(""));
        assert_eq!(get("F"), Some("${A}"));
        assert_eq!(get("G"), Some("a\"b"));
        assert_eq!(get("H"), Some("pa$sword"));
        assert_eq!(get("I"), Some("x"));
        assert_eq!(get("J"), Some("a#b"));
        assert_eq!(pairs.len(), 10);
    }

    #[test]
    fn a_variable_set_twice_is_refused_naming_both_lines() {
        let text = "A=1\nPROTECTED_USERS=ADM1\n# c\nexport PROTECTED_USERS=ADM2\n";
        assert_eq!(
            parse_dotenv(text).unwrap_err(),
            DotenvReject::Duplicate {
                name: "PROTECTED_USERS".into(),
                first: 2,
                second: 4
            }
        );
        let e = DotenvError::Duplicate {
            path: PathBuf::from("/tmp/x/.env"),
            name: "PROTECTED_USERS".into(),
            first: 2,
            second: 4,
        }
        .to_string();
        assert!(
            e.contains("/tmp/x/.env, lines 2 and 4: PROTECTED_USERS is set twice"),
            "{e}"
        );
    }

    #[test]
    fn the_error_message_names_the_file_line_and_variable_but_not_the_value() {
        let e = DotenvError::Line {
            path: PathBuf::from("/tmp/x/.env"),
            line: 5,
            name: Some("PROTECTED_GROUPS".into()),
            problem: DotenvProblem::SpaceInValue,
        }
        .to_string();
        assert!(
            e.contains("/tmp/x/.env, line 5 (PROTECTED_GROUPS)") && e.contains("quote values"),
            "{e}"
        );
    }

    #[test]
    fn region_names_and_environments_give_api_and_login_hosts() {
        let api = api_base_for_region("usw2.pure.cloud").unwrap();
        assert_eq!(api.as_str(), "https://api.usw2.pure.cloud/");
        assert_eq!(
            login_base_for_api(&api).as_str(),
            "https://login.usw2.pure.cloud/"
        );
        let api = api_base_for_region("eu-central-1").unwrap();
        assert_eq!(api.as_str(), "https://api.mypurecloud.de/");
        assert!(api_base_for_region("nowhere").is_err());
    }

    #[test]
    fn simulator_urls_keep_their_origin() {
        let api = Url::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(login_base_for_api(&api).as_str(), "http://127.0.0.1:8080/");
    }

    #[test]
    fn a_url_that_is_not_http_is_refused_naming_its_variable() {
        let ftp = Url::parse("ftp://api.example.com/").unwrap();
        let e = http_url("GENESYS_API_URL", &ftp).unwrap_err().to_string();
        assert!(e.contains("GENESYS_API_URL") && e.contains("ftp://"), "{e}");
        let https = Url::parse("https://api.mypurecloud.com").unwrap();
        assert_eq!(http_url("GENESYS_API_URL", &https).unwrap(), https);
    }

    #[test]
    fn debug_never_shows_secrets() {
        let c = OAuthClient {
            id: "primary".into(),
            secret: SecretString::from("hunter2-very-secret"),
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(c.secret.expose_secret(), "hunter2-very-secret");
    }
}
