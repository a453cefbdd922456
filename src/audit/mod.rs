//! The append-only, hash-chained audit store: one row per termination attempt,
//! manifest event and operator action. PostgreSQL in production, SQLite for the
//! embedded default, chosen by the `DATABASE_URL` scheme, with the same behaviour
//! and the same database-enforced append-only guarantees on both. This module never
//! updates or deletes an audit row (only [`holds`] moves a hold forward, in its own
//! table); it knows nothing about SCIM or queues.
//!
//! - [`chain`]: the canonical row content and the SHA-256 chain (pure).
//! - `postgres` / `sqlite`: the two backends (SQL, locking, type mapping).
//! - [`holds`]: the mutable `termination_holds` table of future-dated
//!   terminations (the one table here that is updated, and only forward).
//! - `guards`: the append-only triggers (and PostgreSQL's report summary), checked
//!   by `verify` and re-asserted by `migrate`.
//!
//! Stored instants are UTC with millisecond precision on both backends: PostgreSQL
//! `timestamptz` bound from a Rust `DateTime<Utc>` (so the session `TimeZone` of the
//! writer never changes the instant), SQLite RFC 3339 text such as
//! `2026-03-02T04:30:00.000Z` (fixed width, so text order is time order).

pub mod chain;
mod claims;
mod guards;
mod held;
pub mod holds;
mod postgres;
mod sqlite;

use std::ops::Range;

use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;

use crate::config::AuditArgs;
use crate::domain::{Credential, IdempotencyKey, Outcome};

pub use chain::{BreakReason, BrokenRow, VerifyReport};
pub use claims::ClaimState;
pub use held::{HeldManifest, ManifestHoldState};
pub use holds::{Hold, HoldState, ManifestRecord, NewHold, Placed, ReleaseBatch, Supersession};

/// Where a termination came from: the manifest object and the record's position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ManifestOrigin {
    /// S3 bucket, or `local` for a file given to `run`.
    pub bucket: String,
    /// Object key or local path.
    pub key: String,
    /// S3 version id, else the ETag, when known.
    pub version: Option<String>,
    /// Zero-based record index within the manifest.
    pub index: Option<u64>,
}

/// One audit row to append (design.md, "Audit table"). The seed's columns come
/// first and keep their meaning; `created_at`, the row id and the hash chain are
/// set by the store.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    /// HR's identifier; `None` only for rows about a whole manifest.
    pub external_id: Option<String>,
    /// The SCIM user id, when resolved (never a placeholder such as `UNKNOWN`).
    pub user_id: Option<String>,
    /// What was attempted: `deactivate`, `manifest`, `replay`, `approve`, `reject`,
    /// `rehire`.
    pub action: String,
    /// The deciding HTTP status, if a SCIM response decided it.
    pub status_code: Option<u16>,
    /// True when access is confirmed gone (`deactivated`, `already_inactive`).
    pub success: bool,
    /// The reason for anything but success.
    pub error_message: Option<String>,
    /// The outcome (design.md, "Outcomes").
    pub outcome: Outcome,
    /// The credential that acted.
    pub credential: Option<Credential>,
    /// Group ids removed.
    pub groups_removed: Vec<String>,
    /// Delivery attempt (SQS `ApproximateReceiveCount`, 1 for in-process runs).
    pub attempt: u32,
    /// SQS message id (in-process runs use a generated id).
    pub sqs_message_id: Option<String>,
    /// The manifest the termination came from.
    pub manifest: Option<ManifestOrigin>,
    /// When the termination takes effect.
    pub effective_at: Option<DateTime<Utc>>,
    /// `ININ-Correlation-Id` values of the SCIM responses.
    pub correlation_ids: Vec<String>,
    /// Time spent on this attempt, milliseconds.
    pub duration_ms: Option<u64>,
    /// The termination's idempotency key.
    pub idempotency_key: Option<IdempotencyKey>,
    /// Who ran an operator action (`approve`, `reject`, `replay`), else `None`.
    pub actor: Option<String>,
}

/// Actions whose rows are not about one termination; reports skip them.
/// A `rehire` row records a reversal, not a termination: it is not counted as one.
pub const NON_TERMINATION_ACTIONS: [&str; 6] = [
    "manifest",
    "replay",
    "approve",
    "reject",
    "rehire",
    REJECT_MESSAGE_ACTION,
];

/// The `action` of the row the consumer writes for a queue message it refused
/// before trusting anything in it (a bad signature): evidence of the attempt,
/// never a termination, so the weekly report and the evidence export skip it.
pub const REJECT_MESSAGE_ACTION: &str = "reject_message";

/// Why the audit store failed. Messages name the row, termination or URL involved
/// (URLs without their password) and never carry secrets.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// `DATABASE_URL` is neither `postgres://`/`postgresql://` nor `sqlite:`.
    #[error(
        "DATABASE_URL {url} is not usable: use postgres://… or sqlite://path (a file; sqlite:// with no path is refused)"
    )]
    UnsupportedScheme {
        /// The URL without its password.
        url: String,
    },
    /// The database could not be reached or the URL could not be parsed.
    #[error("cannot connect to the audit database {url}: {source}")]
    Connect {
        /// The URL without its password.
        url: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// Applying the embedded migrations failed.
    #[error("cannot apply the audit migrations: {source}")]
    Migrate {
        /// sqlx's migration error.
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    /// Appending a row failed; nothing was written (the insert is one transaction).
    #[error(
        "cannot append the audit row for {subject} (action {action}, outcome {outcome}): {source}"
    )]
    Append {
        /// `externalId …`, `idempotency key …` or `a manifest-level row`.
        subject: String,
        /// The row's action.
        action: String,
        /// The row's outcome.
        outcome: Outcome,
        /// The driver's error (e.g. permission denied, connection lost).
        #[source]
        source: sqlx::Error,
    },
    /// A read query failed.
    #[error("cannot read the audit log ({what}): {source} (has `deprovision migrate` been run?)")]
    Read {
        /// Which read.
        what: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// Taking or releasing a claim on a person failed (see [`AuditStore::claim`]).
    #[error("cannot claim or release externalId {person:?} in termination_claims: {source}")]
    Claim {
        /// The externalId (or `userId:…` key) being claimed.
        person: String,
        /// The driver's error (e.g. the table is missing: run `deprovision migrate`).
        #[source]
        source: sqlx::Error,
    },
    /// Reading or writing the `held_manifests` table (the breaker's holds) failed.
    #[error("cannot {what}: {source} (has `deprovision migrate` been run?)")]
    Held {
        /// Which operation.
        what: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// A query on the holds table failed (nothing was changed by it).
    #[error("cannot {what} the hold of {subject}: {source}")]
    Hold {
        /// Which operation (`place`, `claim`, `cancel`, …).
        what: &'static str,
        /// Which termination or person.
        subject: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// A read-only command was pointed at a SQLite file that does not exist (a
    /// mistyped path would otherwise create an empty database and report nothing).
    #[error(
        "no audit database at {path} (check DATABASE_URL; `deprovision migrate` creates a new one)"
    )]
    NoDatabase {
        /// The path as given.
        path: String,
    },
    /// Checking or restoring the append-only triggers (or the report summary)
    /// failed, e.g. because the role is not the table owner.
    #[error(
        "cannot check or restore the audit log's append-only triggers: {source} (run `deprovision migrate` as the table owner)"
    )]
    Guards {
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// A stored value cannot be turned back into its domain type.
    #[error("audit row {id} has an unreadable {column}: {value:?}")]
    Corrupt {
        /// The row id.
        id: i64,
        /// The column.
        column: &'static str,
        /// The stored value.
        value: String,
    },
}

/// The last row of the chain. A hash chain cannot show rows removed from its end,
/// so auditors record the head (it is printed by `audit verify` and in the weekly
/// report's footer) and later check it with `audit verify --expect-head HASH`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainHead {
    /// The last row's id (ids have gaps on PostgreSQL: a failed insert uses one).
    pub id: i64,
    /// How many rows the log holds.
    pub rows: u64,
    /// The last row's `row_hash` (64 hex digits).
    pub row_hash: String,
}

/// What [`AuditStore::migrate_with`] did besides applying migrations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrateOutcome {
    /// Guards that were missing, disabled or altered and have been restored, e.g.
    /// `scim_audit_log_no_delete (missing)`.
    pub restored: Vec<String>,
    /// PostgreSQL: terminations in the report summary when it was rebuilt.
    pub summary_rebuilt: Option<u64>,
}

/// Which database a store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// PostgreSQL (production).
    Postgres,
    /// SQLite (embedded default).
    Sqlite,
}

#[derive(Clone)]
enum Backend {
    Postgres(postgres::PgStore),
    Sqlite(sqlite::SqliteStore),
}

/// The audit store: a pooled connection to PostgreSQL or SQLite. `Send + Sync`,
/// cheap to clone (clones share the pool).
#[derive(Clone)]
pub struct AuditStore {
    backend: Backend,
}

impl std::fmt::Debug for AuditStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditStore")
            .field("backend", &self.kind())
            .finish_non_exhaustive()
    }
}

/// One bucket (an ISO week) of the weekly report: terminations first seen in it,
/// each counted once under its reported outcome, and the SLA sample.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BucketCounts {
    /// Terminations by reported outcome, indexed like [`Outcome::ALL`].
    pub by_outcome: [u64; Outcome::ALL.len()],
    /// Successful terminations (`deactivated`, `already_inactive`) with a known
    /// effective time.
    pub sla_measured: u64,
    /// Median hours from effective time to the row confirming success.
    pub sla_median_hours: Option<f64>,
    /// 95th percentile of the same (linear interpolation, `percentile_cont`).
    pub sla_p95_hours: Option<f64>,
    /// How many of the sample took longer than [`SLA_HOURS`].
    pub sla_over_24h: u64,
}

/// The SLA: access must be gone within this many hours of the effective time.
pub const SLA_HOURS: f64 = 24.0;

/// The `p` quantile of sorted values by linear interpolation between closest
/// ranks (PostgreSQL `percentile_cont`, same arithmetic); `None` when empty.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    #[allow(clippy::cast_precision_loss)]
    let rank = p.clamp(0.0, 1.0) * last as f64;
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let lo = rank.floor() as usize;
    let hi = (lo + 1).min(last);
    let (a, b) = (sorted.get(lo)?, sorted.get(hi)?);
    #[allow(clippy::cast_precision_loss)]
    Some(a + (b - a) * (rank - lo as f64))
}

/// Per-bucket counts and SLA samples, filled one termination at a time and
/// finished into [`BucketCounts`] (SQLite's report; PostgreSQL aggregates in SQL
/// with the same arithmetic).
pub(crate) struct Accumulator {
    buckets: Vec<BucketCounts>,
    hours: Vec<Vec<f64>>,
}

impl Accumulator {
    /// `n` empty buckets.
    pub(crate) fn new(n: usize) -> Self {
        Self {
            buckets: vec![BucketCounts::default(); n],
            hours: vec![Vec::new(); n],
        }
    }

    /// Counts one termination in bucket `bucket` under the outcome with index
    /// `code` in [`Outcome::ALL`], with its SLA hours when it is in the sample.
    /// Out-of-range buckets and codes are ignored.
    pub(crate) fn add(&mut self, bucket: usize, code: usize, hours: Option<f64>) {
        let (Some(b), Some(sample)) = (self.buckets.get_mut(bucket), self.hours.get_mut(bucket))
        else {
            return;
        };
        if let Some(slot) = b.by_outcome.get_mut(code) {
            *slot += 1;
        }
        if let Some(h) = hours {
            sample.push(h);
        }
    }

    /// The buckets with their SLA figures (`percentile_cont` arithmetic).
    pub(crate) fn finish(self) -> Vec<BucketCounts> {
        let mut buckets = self.buckets;
        for (bucket, mut sample) in buckets.iter_mut().zip(self.hours) {
            sample.sort_by(f64::total_cmp);
            bucket.sla_measured = sample.len() as u64;
            bucket.sla_over_24h = sample.iter().filter(|h| **h > SLA_HOURS).count() as u64;
            bucket.sla_median_hours = percentile(&sample, 0.5);
            bucket.sla_p95_hours = percentile(&sample, 0.95);
        }
        buckets
    }
}

/// One termination, reduced (the unit tests' input form).
#[cfg(test)]
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reduced {
    first_seen_at: DateTime<Utc>,
    outcome: Outcome,
    decided_at: DateTime<Utc>,
    effective_at: Option<DateTime<Utc>>,
}

/// Buckets reduced terminations by `bounds` (ascending; bucket `i` is
/// `bounds[i]..bounds[i + 1]`) through [`Accumulator`], hours from whole
/// milliseconds as both backends compute them.
#[cfg(test)]
fn aggregate(terminations: &[Reduced], bounds: &[DateTime<Utc>]) -> Vec<BucketCounts> {
    let mut acc = Accumulator::new(bounds.len().saturating_sub(1));
    for t in terminations {
        let Some(i) = bounds
            .partition_point(|b| *b <= t.first_seen_at)
            .checked_sub(1)
        else {
            continue;
        };
        let code = Outcome::ALL
            .iter()
            .position(|o| *o == t.outcome)
            .unwrap_or(usize::MAX);
        #[allow(clippy::cast_precision_loss)]
        let hours = t
            .effective_at
            .filter(|_| t.outcome.is_success())
            .map(|eff| (t.decided_at - eff).num_milliseconds() as f64 / 3_600_000.0);
        acc.add(i, code, hours);
    }
    acc.finish()
}

/// How a row finds the first row of its termination, if it belongs to one.
pub(crate) enum FirstRowLookup {
    /// By idempotency key.
    Key(String),
    /// Rows without a key: by externalId among rows without a key.
    ExternalId(String),
    /// Rows with neither a key nor an externalId (e.g. `deprovision user
    /// --user-id`): by Genesys userId among rows with neither, so a deactivation
    /// identified by userId only is a termination in the reports too.
    UserId(String),
}

pub(crate) fn first_row_lookup(entry: &AuditEntry) -> Option<FirstRowLookup> {
    if NON_TERMINATION_ACTIONS.contains(&entry.action.as_str()) {
        return None;
    }
    match (&entry.idempotency_key, &entry.external_id) {
        (Some(k), _) => Some(FirstRowLookup::Key(k.as_str().to_owned())),
        (None, Some(e)) => Some(FirstRowLookup::ExternalId(chain::clean(e))),
        (None, None) => entry
            .user_id
            .as_deref()
            .filter(|u| !u.is_empty())
            .map(|u| FirstRowLookup::UserId(chain::clean(u))),
    }
}

/// A stored row read back: its id, instant, content and hash.
#[derive(Debug, Clone)]
pub struct StoredRow {
    /// The row id (chain order).
    pub id: i64,
    /// The id of the first row of its termination (its own id for a first row).
    pub termination_id: i64,
    /// When the store wrote it.
    pub created_at: DateTime<Utc>,
    /// What was written (timestamps at millisecond precision).
    pub entry: AuditEntry,
    /// The row's chain hash.
    pub row_hash: String,
}

/// SQL fragments shared by both backends. They are macros, not constants, so that
/// `concat!` can build `&'static str` queries (sqlx only accepts static SQL).
macro_rules! termination_row {
    () => {
        "action NOT IN ('manifest', 'replay', 'approve', 'reject', 'rehire', 'reject_message') \
         AND (idempotency_key IS NOT NULL OR external_id IS NOT NULL OR user_id IS NOT NULL)"
    };
}
macro_rules! terminal_outcome {
    () => {
        "outcome NOT IN ('retrying', 'scheduled', 'held', 'dry_run')"
    };
}
/// The index of each outcome in [`Outcome::ALL`], as SQL (checked by a test).
macro_rules! outcome_code {
    () => {
        "CASE outcome WHEN 'deactivated' THEN 0 WHEN 'already_inactive' THEN 1 \
         WHEN 'not_found' THEN 2 WHEN 'ambiguous' THEN 3 WHEN 'identity_mismatch' THEN 4 \
         WHEN 'protected' THEN 5 WHEN 'invalid' THEN 6 WHEN 'forbidden' THEN 7 \
         WHEN 'failed' THEN 8 WHEN 'retrying' THEN 9 WHEN 'scheduled' THEN 10 \
         WHEN 'held' THEN 11 WHEN 'dry_run' THEN 12 WHEN 'rescinded' THEN 13 \
         ELSE 15 END"
    };
}
/// Per termination (rows grouped by their first row): first seen, latest
/// effective time, the reported outcome's code (latest terminal row by id, else
/// latest row; `id * 16 + code` carries the code through `max`) and when it was
/// decided. `$from`/`$to` bound `termination_first_at`, `$as_of` is the as-of
/// instant (placeholders per backend). Only termination rows have
/// `termination_first_at`. The inner query computes each row's code once, in the
/// covering index's order, behind an optimisation fence (`$fence`: SQLite
/// `LIMIT -1`, PostgreSQL `OFFSET 0`) so that it is neither inlined (which
/// evaluates the CASE twice) nor hashed. SQLite's report uses it; PostgreSQL
/// reads the same reduction from its trigger-maintained summary table
/// (migrations/postgres/0005), which this query took 2.0 s of server CPU to
/// compute for 1,000,000 rows.
macro_rules! reduce_terminations {
    ($from:literal, $to:literal, $as_of:literal, $fence:literal) => {
        concat!(
            "SELECT first_at, max(eff) AS eff, \
               COALESCE(max(k) FILTER (WHERE term), max(k)) % 16 AS code, \
               COALESCE(max(created_at) FILTER (WHERE term), max(created_at)) AS decided_at \
             FROM (SELECT termination_first_at AS first_at, termination_first_id AS tid, \
                 effective_at AS eff, created_at, id * 16 + ",
            outcome_code!(),
            " AS k, ",
            terminal_outcome!(),
            " AS term \
               FROM scim_audit_log WHERE termination_first_at >= ",
            $from,
            " AND termination_first_at < ",
            $to,
            " AND created_at <= ",
            $as_of,
            " ORDER BY termination_first_at, termination_first_id ",
            $fence,
            ") AS r \
             GROUP BY first_at, tid"
        )
    };
}
macro_rules! row_columns {
    () => {
        "id, external_id, user_id, action, status_code, success, error_message, created_at, \
         outcome, credential, groups_removed, attempt, sqs_message_id, manifest_bucket, \
         manifest_key, manifest_version, manifest_index, effective_at, correlation_ids, \
         duration_ms, idempotency_key, actor, termination_first_id, termination_first_at, \
         prev_hash, row_hash"
    };
}
pub(crate) use {
    outcome_code, reduce_terminations, row_columns, terminal_outcome, termination_row,
};

/// The earliest and latest instants a query bound may take on both backends
/// (PostgreSQL's `timestamptz` cannot hold chrono's extremes).
fn unbounded() -> Range<DateTime<Utc>> {
    let lo = Utc.with_ymd_and_hms(1, 1, 1, 0, 0, 0).single();
    let hi = Utc.with_ymd_and_hms(9999, 12, 31, 0, 0, 0).single();
    lo.unwrap_or(DateTime::<Utc>::MIN_UTC)..hi.unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// `url` with any password removed, for messages.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "<unparseable URL>".to_owned(),
    }
}

fn subject(entry: &AuditEntry) -> String {
    match (&entry.external_id, &entry.idempotency_key) {
        (Some(e), _) => format!("externalId {e:?}"),
        (None, Some(k)) => format!("idempotency key {k}"),
        (None, None) => "a manifest-level row".to_owned(),
    }
}

impl AuditStore {
    /// Connects to `url`: `postgres://…`/`postgresql://…` (PostgreSQL),
    /// `sqlite://path` (created if missing; WAL journal), or `sqlite::memory:` (one
    /// private in-memory database, lost when the store is dropped). Does not migrate.
    ///
    /// Errors: [`AuditError::UnsupportedScheme`], [`AuditError::Connect`].
    pub async fn connect(url: &str) -> Result<Self, AuditError> {
        Self::connect_with(url, true).await
    }

    /// Like [`AuditStore::connect`] for read-only commands (`report`, `audit
    /// verify`): a SQLite file must already exist, so a mistyped path is an error
    /// instead of a new empty database. Errors: [`AuditError::NoDatabase`] and
    /// those of `connect`.
    pub async fn connect_existing(url: &str) -> Result<Self, AuditError> {
        Self::connect_with(url, false).await
    }

    async fn connect_with(url: &str, create: bool) -> Result<Self, AuditError> {
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres(postgres::PgStore::connect(url).await?)
        } else if url.starts_with("sqlite:") {
            // `sqlite://` with no path (an unset variable in `sqlite://$DBPATH`)
            // would silently be an in-memory database: evidence lost at exit.
            let path = url.trim_start_matches("sqlite:").trim_start_matches("//");
            let path = path.split('?').next().unwrap_or_default();
            if path.is_empty() {
                return Err(AuditError::UnsupportedScheme { url: redact(url) });
            }
            Backend::Sqlite(sqlite::SqliteStore::connect(url, path, create).await?)
        } else {
            return Err(AuditError::UnsupportedScheme { url: redact(url) });
        };
        Ok(Self { backend })
    }

    /// The start-up helper: connects to `DATABASE_URL` and applies the migrations
    /// unless `SKIP_MIGRATIONS` is set (a worker running as the least-privilege role
    /// cannot create tables; it sets `SKIP_MIGRATIONS=true` and an owner runs
    /// `deprovision migrate`).
    pub async fn open(args: &AuditArgs) -> Result<Self, AuditError> {
        use secrecy::ExposeSecret;
        let store = Self::connect(args.database_url.expose_secret()).await?;
        if !args.skip_migrations {
            store.migrate().await?;
        }
        Ok(store)
    }

    /// Which backend this store uses.
    pub fn kind(&self) -> BackendKind {
        match &self.backend {
            Backend::Postgres(_) => BackendKind::Postgres,
            Backend::Sqlite(_) => BackendKind::Sqlite,
        }
    }

    /// Applies the embedded migrations (`migrations/postgres` or
    /// `migrations/sqlite`), then re-asserts the append-only triggers (see
    /// [`AuditStore::migrate_with`]); idempotent and safe to run from several
    /// processes at once (PostgreSQL: sqlx's advisory lock; SQLite: the whole run
    /// under `BEGIN IMMEDIATE`, so two processes creating a new file both succeed).
    /// Errors: [`AuditError::Migrate`], [`AuditError::Guards`].
    pub async fn migrate(&self) -> Result<(), AuditError> {
        self.migrate_with(false).await.map(|_| ())
    }

    /// [`AuditStore::migrate`], reporting what it restored: after the migrations,
    /// every append-only trigger (PostgreSQL also: its function, and the weekly
    /// report summary's table, function and trigger) that is missing, disabled or
    /// altered is re-created, appends blocked meanwhile; sqlx never re-runs an
    /// applied migration, so this is what undoes a superuser's `DROP TRIGGER`.
    /// PostgreSQL rebuilds the summary from the log when its trigger was restored
    /// or `rebuild_summary` is set. Errors: [`AuditError::Migrate`],
    /// [`AuditError::Guards`].
    pub async fn migrate_with(&self, rebuild_summary: bool) -> Result<MigrateOutcome, AuditError> {
        let outcome = match &self.backend {
            Backend::Postgres(s) => s.migrate(rebuild_summary).await,
            Backend::Sqlite(s) => s.migrate().await,
        }?;
        if !outcome.restored.is_empty() {
            tracing::warn!(
                restored = ?outcome.restored,
                "audit log guards were missing, disabled or altered and have been restored"
            );
        }
        Ok(outcome)
    }

    /// The chain head (last row and row count), `None` for an empty log.
    /// Errors: [`AuditError::Read`].
    pub async fn head(&self) -> Result<Option<ChainHead>, AuditError> {
        let found = match &self.backend {
            Backend::Postgres(s) => s.head().await,
            Backend::Sqlite(s) => s.head().await,
        }
        .map_err(|source| AuditError::Read {
            what: "chain head",
            source,
        })?;
        Ok(found.map(|(id, row_hash, rows)| ChainHead {
            id,
            rows: u64::try_from(rows).unwrap_or(0),
            row_hash,
        }))
    }

    /// The id of the row whose `row_hash` is `hash`, if the log holds one (for
    /// `audit verify --expect-head`). Errors: [`AuditError::Read`].
    pub async fn row_id_for_hash(&self, hash: &str) -> Result<Option<i64>, AuditError> {
        match &self.backend {
            Backend::Postgres(s) => s.row_id_for_hash(hash).await,
            Backend::Sqlite(s) => s.row_id_for_hash(hash).await,
        }
        .map_err(|source| AuditError::Read {
            what: "row by hash",
            source,
        })
    }

    /// Appends one row, created now; returns its id. See [`AuditStore::append_at`].
    pub async fn append(&self, entry: &AuditEntry) -> Result<i64, AuditError> {
        self.append_at(entry, Utc::now()).await
    }

    /// Appends one row with `created_at` = `created_at` (truncated to milliseconds);
    /// returns its id. The chain head is read and the row written in one
    /// transaction under the chain lock (PostgreSQL `pg_advisory_xact_lock`, SQLite
    /// `BEGIN IMMEDIATE`), so concurrent writers in any number of processes never
    /// fork the chain. Ids grow in chain order. `append` is the normal entry point;
    /// this one exists for imports, tests and benchmarks that need a given instant.
    ///
    /// Errors: [`AuditError::Append`], in which case nothing was written.
    pub async fn append_at(
        &self,
        entry: &AuditEntry,
        created_at: DateTime<Utc>,
    ) -> Result<i64, AuditError> {
        let result = match &self.backend {
            Backend::Postgres(s) => s.append(entry, created_at).await,
            Backend::Sqlite(s) => s.append(entry, created_at).await,
        };
        result.map_err(|source| AuditError::Append {
            subject: subject(entry),
            action: entry.action.clone(),
            outcome: entry.outcome,
            source,
        })
    }

    /// The latest *terminal* outcome recorded for this termination, if any; the
    /// consumer checks it so that a redelivered message is neither deprovisioned
    /// nor counted twice. Errors: [`AuditError::Read`], [`AuditError::Corrupt`].
    pub async fn latest_terminal_outcome(
        &self,
        key: &IdempotencyKey,
    ) -> Result<Option<Outcome>, AuditError> {
        let found = match &self.backend {
            Backend::Postgres(s) => s.latest_terminal_outcome(key.as_str()).await,
            Backend::Sqlite(s) => s.latest_terminal_outcome(key.as_str()).await,
        }
        .map_err(|source| AuditError::Read {
            what: "latest terminal outcome",
            source,
        })?;
        found
            .map(|(id, raw)| {
                Outcome::parse(&raw).ok_or(AuditError::Corrupt {
                    id,
                    column: "outcome",
                    value: raw,
                })
            })
            .transpose()
    }

    /// Walks the whole chain in id order (streaming, constant memory) and reports
    /// every row whose `prev_hash` or `row_hash` is wrong, the first one first;
    /// then lists the guards (append-only triggers, PostgreSQL's report summary)
    /// that are missing, disabled or altered, and on PostgreSQL compares the
    /// report summary with the log. [`VerifyReport::passes`] sums it up.
    /// Errors: [`AuditError::Read`], [`AuditError::Guards`].
    pub async fn verify(&self) -> Result<VerifyReport, AuditError> {
        let read = |source| AuditError::Read {
            what: "verify",
            source,
        };
        let mut report = match &self.backend {
            Backend::Postgres(s) => s.verify().await,
            Backend::Sqlite(s) => s.verify().await,
        }
        .map_err(read)?;
        let guards = match &self.backend {
            Backend::Postgres(s) => s.guard_problems().await,
            Backend::Sqlite(s) => s.guard_problems().await,
        }
        .map_err(|source| AuditError::Guards { source })?;
        let summary_present = !guards.problems.iter().any(|p| p.contains("table missing"));
        report.guards_missing = guards.problems;
        if let Backend::Postgres(s) = &self.backend
            && summary_present
        {
            let (n, first) = s.summary_mismatches().await.map_err(read)?;
            report.summary_mismatches = n;
            report.summary_first_mismatch = first;
        }
        Ok(report)
    }

    /// The weekly report's counts: for each bucket `bounds[i]..bounds[i + 1]`
    /// (ascending instants), the terminations first seen in it, considering only
    /// rows created at or before `as_of`, each under its reported outcome (latest
    /// terminal by id, else latest), with the SLA figures. A termination is every
    /// row sharing an idempotency key, or (rows without one) an externalId, or
    /// (rows with neither, e.g. `deprovision user --user-id`) a Genesys userId;
    /// manifest and operator rows are not terminations. PostgreSQL computes this in
    /// one query over its per-termination summary table (kept by a trigger);
    /// SQLite reduces the rows in SQL and buckets in Rust. Both give the same figures.
    ///
    /// Errors: [`AuditError::Read`], [`AuditError::Corrupt`].
    pub async fn weekly_buckets(
        &self,
        bounds: &[DateTime<Utc>],
        as_of: DateTime<Utc>,
    ) -> Result<Vec<BucketCounts>, AuditError> {
        if bounds.len() < 2 {
            return Ok(Vec::new());
        }
        match &self.backend {
            Backend::Postgres(s) => s.weekly_buckets(bounds, as_of).await,
            Backend::Sqlite(s) => s.weekly_buckets(bounds, as_of).await,
        }
    }

    /// Every row (in id order) of the terminations first seen at or after `from`
    /// and before `to` (`None` = unbounded), for the evidence export.
    /// Errors: [`AuditError::Read`], [`AuditError::Corrupt`].
    pub async fn termination_rows(
        &self,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
    ) -> Result<Vec<StoredRow>, AuditError> {
        let all = unbounded();
        let range = from.unwrap_or(all.start)..to.unwrap_or(all.end);
        let raw = match &self.backend {
            Backend::Postgres(s) => s.termination_rows(range).await,
            Backend::Sqlite(s) => s.termination_rows(range).await,
        }
        .map_err(|source| AuditError::Read {
            what: "termination rows",
            source,
        })?;
        raw.into_iter()
            .map(|c| stored_row(c.content, c.row_hash))
            .collect()
    }

    /// Closes the pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        match &self.backend {
            Backend::Postgres(s) => s.close().await,
            Backend::Sqlite(s) => s.close().await,
        }
    }
}

fn parse_instant(id: i64, column: &'static str, raw: &str) -> Result<DateTime<Utc>, AuditError> {
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| AuditError::Corrupt {
            id,
            column,
            value: raw.to_owned(),
        })
}

fn parse_outcome(id: i64, raw: &str) -> Result<Outcome, AuditError> {
    Outcome::parse(raw).ok_or_else(|| AuditError::Corrupt {
        id,
        column: "outcome",
        value: raw.to_owned(),
    })
}

/// Rebuilds the typed row from its stored content.
fn stored_row(c: chain::RowContent, row_hash: String) -> Result<StoredRow, AuditError> {
    let id = c.id;
    let termination_id = c.termination_first_id.unwrap_or(id);
    let corrupt = |column: &'static str, value: String| AuditError::Corrupt { id, column, value };
    let credential = match c.credential.as_deref() {
        None => None,
        Some("primary") => Some(Credential::Primary),
        Some("elevated") => Some(Credential::Elevated),
        Some("static") => Some(Credential::Static),
        Some(other) => return Err(corrupt("credential", other.to_owned())),
    };
    let idempotency_key = c
        .idempotency_key
        .as_deref()
        .map(IdempotencyKey::from_hex)
        .transpose()
        .map_err(|v| corrupt("idempotency_key", v))?;
    let manifest = match (c.manifest_bucket, c.manifest_key) {
        (Some(bucket), Some(key)) => Some(ManifestOrigin {
            bucket,
            key,
            version: c.manifest_version,
            index: c.manifest_index.and_then(|i| u64::try_from(i).ok()),
        }),
        _ => None,
    };
    let entry = AuditEntry {
        external_id: c.external_id,
        user_id: c.user_id,
        action: c.action,
        status_code: c.status_code.and_then(|s| u16::try_from(s).ok()),
        success: c.success,
        error_message: c.error_message,
        outcome: parse_outcome(id, &c.outcome)?,
        credential,
        groups_removed: c.groups_removed,
        attempt: u32::try_from(c.attempt).unwrap_or(u32::MAX),
        sqs_message_id: c.sqs_message_id,
        manifest,
        effective_at: c
            .effective_at
            .as_deref()
            .map(|t| parse_instant(id, "effective_at", t))
            .transpose()?,
        correlation_ids: c.correlation_ids,
        duration_ms: c.duration_ms.and_then(|d| u64::try_from(d).ok()),
        idempotency_key,
        actor: c.actor,
    };
    Ok(StoredRow {
        id,
        termination_id,
        created_at: parse_instant(id, "created_at", &c.created_at)?,
        entry,
        row_hash,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bare(action: &str, external_id: Option<&str>, user_id: Option<&str>) -> AuditEntry {
        AuditEntry {
            external_id: external_id.map(str::to_owned),
            user_id: user_id.map(str::to_owned),
            action: action.to_owned(),
            status_code: None,
            success: false,
            error_message: None,
            outcome: Outcome::Invalid,
            credential: None,
            groups_removed: Vec::new(),
            attempt: 1,
            sqs_message_id: None,
            manifest: None,
            effective_at: None,
            correlation_ids: Vec::new(),
            duration_ms: None,
            idempotency_key: None,
            actor: None,
        }
    }

    #[test]
    fn a_user_id_alone_keys_a_termination_and_a_rejected_message_is_none() {
        let lookup = |e: &AuditEntry| match first_row_lookup(e) {
            None => "none".to_owned(),
            Some(FirstRowLookup::Key(k)) => format!("key {k}"),
            Some(FirstRowLookup::ExternalId(x)) => format!("externalId {x}"),
            Some(FirstRowLookup::UserId(u)) => format!("userId {u}"),
        };
        assert_eq!(
            lookup(&bare("deactivate", None, Some("u-31"))),
            "userId u-31"
        );
        assert_eq!(
            lookup(&bare("deactivate", Some("E1"), Some("u-31"))),
            "externalId E1"
        );
        assert_eq!(lookup(&bare("deactivate", None, Some(""))), "none");
        assert_eq!(lookup(&bare("deactivate", None, None)), "none");
        assert_eq!(
            lookup(&bare(REJECT_MESSAGE_ACTION, Some("E1"), Some("u-31"))),
            "none"
        );
        assert!(termination_row!().contains("user_id IS NOT NULL"));
    }

    #[test]
    fn sql_terminal_list_matches_the_domain() {
        let sql = terminal_outcome!();
        for o in Outcome::ALL {
            let listed = sql.contains(&format!("'{}'", o.as_str()));
            assert_eq!(listed, !o.is_terminal(), "{o} in {sql}");
        }
        for a in NON_TERMINATION_ACTIONS {
            assert!(termination_row!().contains(&format!("'{a}'")));
        }
    }

    #[test]
    fn sql_outcome_codes_match_outcome_all() {
        let sql = outcome_code!();
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert!(
                sql.contains(&format!("WHEN '{}' THEN {i} ", o.as_str())),
                "{o}"
            );
        }
    }

    #[test]
    fn aggregate_buckets_by_bounds_and_measures_success_only() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let bounds = [
            t("2026-03-02T00:00:00Z"),
            t("2026-03-09T00:00:00Z"),
            t("2026-03-16T00:00:00Z"),
        ];
        let r = |first: &str, outcome, decided: &str, eff: Option<&str>| Reduced {
            first_seen_at: t(first),
            outcome,
            decided_at: t(decided),
            effective_at: eff.map(t),
        };
        let b = aggregate(
            &[
                r(
                    "2026-03-01T23:59:59Z",
                    Outcome::Deactivated,
                    "2026-03-02T00:00:00Z",
                    None,
                ),
                r(
                    "2026-03-02T00:00:00Z",
                    Outcome::Deactivated,
                    "2026-03-02T10:00:00Z",
                    Some("2026-03-02T00:00:00Z"),
                ),
                r(
                    "2026-03-03T00:00:00Z",
                    Outcome::AlreadyInactive,
                    "2026-03-04T06:00:00Z",
                    Some("2026-03-03T00:00:00Z"),
                ),
                r(
                    "2026-03-03T00:00:00Z",
                    Outcome::Failed,
                    "2026-03-09T00:00:00Z",
                    Some("2026-03-03T00:00:00Z"),
                ),
                r(
                    "2026-03-15T23:00:00Z",
                    Outcome::DryRun,
                    "2026-03-15T23:00:00Z",
                    None,
                ),
                r(
                    "2026-03-16T00:00:00Z",
                    Outcome::Deactivated,
                    "2026-03-16T00:00:00Z",
                    None,
                ),
            ],
            &bounds,
        );
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].by_outcome[0], 1);
        assert_eq!(b[0].by_outcome[1], 1);
        assert_eq!(b[0].by_outcome[8], 1);
        assert_eq!(b[0].sla_measured, 2);
        assert_eq!(b[0].sla_median_hours, Some(20.0));
        assert_eq!(b[0].sla_over_24h, 1);
        assert_eq!(b[1].by_outcome[12], 1);
        assert_eq!(b[1].sla_median_hours, None);
    }

    #[test]
    fn percentile_interpolates_like_percentile_cont() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 0.5), Some(2.5));
        let p95 = percentile(&v, 0.95).unwrap();
        assert!((p95 - 3.85).abs() < 1e-9, "{p95}");
        assert_eq!(percentile(&[7.0], 0.95), Some(7.0));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn redact_hides_passwords() {
        let r = redact("postgres://worker:s3cret@db.internal:5432/audit");
        assert!(!r.contains("s3cret"), "{r}");
        assert!(r.contains("db.internal"), "{r}");
    }
}
