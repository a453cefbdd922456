//! The SQLite backend of the audit store (the embedded default): connection pool,
//! the embedded `migrations/sqlite`, the chained insert under `BEGIN IMMEDIATE`
//! (SQLite's database-wide write lock, so concurrent writers in any process never
//! fork the chain), and the read queries. Instants are stored as fixed-width UTC
//! RFC 3339 text (`chain::instant_text`). Only INSERT and SELECT statements touch
//! `scim_audit_log` here.

use std::ops::Range;
use std::str::FromStr;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
};
use sqlx::{Row, migrate::Migrator};

use super::chain::{self, ChainWalker, RowContent, StoredChainRow, VerifyReport};
use super::{
    Accumulator, AuditEntry, AuditError, BucketCounts, FirstRowLookup, MigrateOutcome,
    first_row_lookup, guards, outcome_code, redact, reduce_terminations, row_columns,
    terminal_outcome, termination_row,
};
use crate::domain::Outcome;

static MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");

#[derive(Clone)]
pub(super) struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// `path` is the file part of `url`; `create` whether a missing file may be
    /// created (read-only commands pass false).
    pub(super) async fn connect(url: &str, path: &str, create: bool) -> Result<Self, AuditError> {
        let err = |source| AuditError::Connect {
            url: redact(url),
            source,
        };
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        if !in_memory && !create && !std::path::Path::new(path).is_file() {
            return Err(AuditError::NoDatabase {
                path: path.to_owned(),
            });
        }
        let options = SqliteConnectOptions::from_str(url)
            .map_err(err)?
            .busy_timeout(Duration::from_secs(30));
        let pool = if in_memory {
            // An in-memory database lives as long as one connection to it: keep
            // exactly one, forever. One connection also avoids shared-cache table
            // locks, which the busy timeout does not wait out.
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_with(options)
                .await
        } else {
            let options = options
                .create_if_missing(create)
                .journal_mode(SqliteJournalMode::Wal);
            let open = || {
                SqlitePoolOptions::new()
                    .max_connections(4)
                    .connect_with(options.clone())
            };
            // Two processes opening a new file at once both read it, then both
            // need the exclusive lock to switch it to WAL: SQLite sees the
            // deadlock and answers BUSY at once instead of calling the busy
            // handler (https://sqlite.org/c3ref/busy_handler.html). Its remedy
            // is to start again, which the loser then does behind the winner.
            open.retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(10))
                    .with_max_delay(Duration::from_millis(500))
                    .with_max_times(20)
                    .with_jitter(),
            )
            .when(is_busy)
            .await
        }
        .map_err(err)?;
        Ok(Self { pool })
    }

    pub(super) async fn migrate(&self) -> Result<MigrateOutcome, AuditError> {
        let migrate = |source| AuditError::Migrate { source };
        // sqlx takes no lock on SQLite: two processes migrating a new file at once
        // both saw no applied migration and one failed with "table already
        // exists". The whole run under the database's write lock serialises them
        // (each migration becomes a savepoint); the second finds them applied.
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| migrate(e.into()))?;
        MIGRATOR.run(&mut *tx).await.map_err(migrate)?;
        tx.commit().await.map_err(|e| migrate(e.into()))?;
        let guard = |source| AuditError::Guards { source };
        let mut conn = self.pool.acquire().await.map_err(guard)?;
        let restored = guards::sqlite_restore(&mut conn).await.map_err(guard)?;
        Ok(MigrateOutcome {
            restored,
            summary_rebuilt: None,
        })
    }

    pub(super) async fn guard_problems(&self) -> Result<guards::GuardProblems, sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        guards::sqlite_check(&mut conn).await
    }

    pub(super) async fn head(&self) -> Result<Option<(i64, String, i64)>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id, row_hash, (SELECT count(*) FROM scim_audit_log) \
             FROM scim_audit_log ORDER BY id DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await
    }

    pub(super) async fn row_id_for_hash(&self, hash: &str) -> Result<Option<i64>, sqlx::Error> {
        sqlx::query_scalar("SELECT id FROM scim_audit_log WHERE row_hash = ?1")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await
    }

    /// The pool, for the working-state tables that share this database: claims
    /// (`super::claims`), held manifests (`super::held`), holds (`super::holds`).
    pub(super) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    pub(super) async fn close(&self) {
        self.pool.close().await;
    }

    pub(super) async fn append(
        &self,
        entry: &AuditEntry,
        created_at: DateTime<Utc>,
    ) -> Result<i64, sqlx::Error> {
        // IMMEDIATE takes the write lock before the head is read, so no other
        // writer can append between the read and the insert.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let head: Option<(i64, String)> =
            sqlx::query_as("SELECT id, row_hash FROM scim_audit_log ORDER BY id DESC LIMIT 1")
                .fetch_optional(&mut *tx)
                .await?;
        let (id, prev) = match head {
            Some((last, hash)) => (last + 1, hash),
            None => (1, chain::GENESIS_HASH.to_owned()),
        };
        let first: Option<(i64, String)> = match first_row_lookup(entry) {
            None => None,
            Some(FirstRowLookup::Key(k)) => {
                sqlx::query_as(concat!(
                    "SELECT termination_first_id, termination_first_at FROM scim_audit_log \
                     WHERE idempotency_key = ?1 AND ",
                    termination_row!(),
                    " ORDER BY id LIMIT 1"
                ))
                .bind(k)
                .fetch_optional(&mut *tx)
                .await?
            }
            Some(FirstRowLookup::ExternalId(e)) => {
                sqlx::query_as(concat!(
                    "SELECT termination_first_id, termination_first_at FROM scim_audit_log \
                     WHERE idempotency_key IS NULL AND external_id = ?1 AND ",
                    termination_row!(),
                    " ORDER BY id LIMIT 1"
                ))
                .bind(e)
                .fetch_optional(&mut *tx)
                .await?
            }
            Some(FirstRowLookup::UserId(u)) => {
                sqlx::query_as(concat!(
                    "SELECT termination_first_id, termination_first_at FROM scim_audit_log \
                     WHERE idempotency_key IS NULL AND external_id IS NULL AND user_id = ?1 AND ",
                    termination_row!(),
                    " ORDER BY id LIMIT 1"
                ))
                .bind(u)
                .fetch_optional(&mut *tx)
                .await?
            }
        };
        let first = match first {
            None => None,
            Some((first_id, text)) => Some((
                first_id,
                DateTime::parse_from_rfc3339(&text)
                    .map_err(|e| sqlx::Error::Decode(Box::new(e)))?
                    .with_timezone(&Utc),
            )),
        };
        let c = RowContent::from_entry(entry, id, created_at, first);
        let row_hash = c.hash(&prev);
        sqlx::query(
            "INSERT INTO scim_audit_log (id, external_id, user_id, action, status_code, success, \
               error_message, created_at, outcome, credential, groups_removed, attempt, \
               sqs_message_id, manifest_bucket, manifest_key, manifest_version, manifest_index, \
               effective_at, correlation_ids, duration_ms, idempotency_key, actor, \
               termination_first_id, termination_first_at, prev_hash, row_hash) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, \
               ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26)",
        )
        .bind(id)
        .bind(&c.external_id)
        .bind(&c.user_id)
        .bind(&c.action)
        .bind(c.status_code)
        .bind(c.success)
        .bind(&c.error_message)
        .bind(&c.created_at)
        .bind(&c.outcome)
        .bind(&c.credential)
        .bind(json_text(&c.groups_removed))
        .bind(c.attempt)
        .bind(&c.sqs_message_id)
        .bind(&c.manifest_bucket)
        .bind(&c.manifest_key)
        .bind(&c.manifest_version)
        .bind(c.manifest_index)
        .bind(&c.effective_at)
        .bind(json_text(&c.correlation_ids))
        .bind(c.duration_ms)
        .bind(&c.idempotency_key)
        .bind(&c.actor)
        .bind(c.termination_first_id)
        .bind(&c.termination_first_at)
        .bind(&prev)
        .bind(&row_hash)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    pub(super) async fn latest_terminal_outcome(
        &self,
        key: &str,
    ) -> Result<Option<(i64, String)>, sqlx::Error> {
        sqlx::query_as(concat!(
            "SELECT id, outcome FROM scim_audit_log WHERE idempotency_key = ?1 AND ",
            terminal_outcome!(),
            " ORDER BY id DESC LIMIT 1"
        ))
        .bind(key)
        .fetch_optional(&self.pool)
        .await
    }

    pub(super) async fn verify(&self) -> Result<VerifyReport, sqlx::Error> {
        let mut walker = ChainWalker::default();
        let mut rows = sqlx::query(concat!(
            "SELECT ",
            row_columns!(),
            " FROM scim_audit_log ORDER BY id"
        ))
        .fetch(&self.pool);
        while let Some(row) = rows.try_next().await? {
            match decode(&row) {
                Ok(r) => walker.push(&r),
                Err(e) => walker.push_unreadable(
                    row.try_get("id")?,
                    row.try_get("row_hash").ok(),
                    e.to_string(),
                ),
            }
        }
        Ok(walker.finish())
    }

    pub(super) async fn weekly_buckets(
        &self,
        bounds: &[DateTime<Utc>],
        as_of: DateTime<Utc>,
    ) -> Result<Vec<BucketCounts>, AuditError> {
        let (Some(from), Some(to)) = (bounds.first(), bounds.last()) else {
            return Ok(Vec::new());
        };
        // The reduction, the outcome code and the SLA hours in SQL; the bucket in
        // Rust by comparing instant texts (fixed width, so text order is time
        // order): nothing is parsed per termination. Hours are whole milliseconds
        // / 3.6e6, as on PostgreSQL (julianday keeps exact milliseconds).
        let rows: Vec<(String, i64, Option<f64>)> = sqlx::query_as(concat!(
            "SELECT first_at, code, CASE WHEN code <= 1 AND eff IS NOT NULL \
               THEN round((julianday(decided_at) - julianday(eff)) * 86400000.0) / 3600000.0 \
             END FROM (",
            reduce_terminations!("?1", "?2", "?3", "LIMIT -1"),
            ")"
        ))
        .bind(chain::instant_text(*from))
        .bind(chain::instant_text(*to))
        .bind(chain::instant_text(as_of))
        .fetch_all(&self.pool)
        .await
        .map_err(|source| AuditError::Read {
            what: "weekly counts",
            source,
        })?;
        let bounds: Vec<String> = bounds.iter().map(|b| chain::instant_text(*b)).collect();
        let mut acc = Accumulator::new(bounds.len().saturating_sub(1));
        for (first_at, code, hours) in rows {
            let Some(bucket) = bounds
                .partition_point(|b| b.as_str() <= first_at.as_str())
                .checked_sub(1)
            else {
                continue;
            };
            let code = usize::try_from(code)
                .ok()
                .filter(|c| *c < Outcome::ALL.len())
                .ok_or_else(|| AuditError::Corrupt {
                    id: 0,
                    column: "outcome",
                    value: format!("code {code} for a termination first seen {first_at}"),
                })?;
            acc.add(bucket, code, hours);
        }
        Ok(acc.finish())
    }

    pub(super) async fn termination_rows(
        &self,
        first_seen: Range<DateTime<Utc>>,
    ) -> Result<Vec<StoredChainRow>, sqlx::Error> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            row_columns!(),
            " FROM scim_audit_log WHERE termination_first_at >= ?1 AND termination_first_at < ?2 \
             ORDER BY id"
        ))
        .bind(chain::instant_text(first_seen.start))
        .bind(chain::instant_text(first_seen.end))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode).collect()
    }
}

/// A list of strings as compact JSON. Serialising strings cannot fail; the fallback
/// keeps the column's CHECK (an array) satisfied regardless.
fn json_text(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".to_owned())
}

fn json_list(row: &SqliteRow, column: &str) -> Result<Vec<String>, sqlx::Error> {
    let text: String = row.try_get(column)?;
    serde_json::from_str(&text).map_err(|e| sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: Box::new(e),
    })
}

/// One `row_columns!` row back into its chain content, exactly as stored.
fn decode(row: &SqliteRow) -> Result<StoredChainRow, sqlx::Error> {
    Ok(StoredChainRow {
        content: RowContent {
            action: row.try_get("action")?,
            actor: row.try_get("actor")?,
            attempt: row.try_get("attempt")?,
            correlation_ids: json_list(row, "correlation_ids")?,
            created_at: row.try_get("created_at")?,
            credential: row.try_get("credential")?,
            duration_ms: row.try_get("duration_ms")?,
            effective_at: row.try_get("effective_at")?,
            error_message: row.try_get("error_message")?,
            external_id: row.try_get("external_id")?,
            groups_removed: json_list(row, "groups_removed")?,
            id: row.try_get("id")?,
            idempotency_key: row.try_get("idempotency_key")?,
            manifest_bucket: row.try_get("manifest_bucket")?,
            manifest_index: row.try_get("manifest_index")?,
            manifest_key: row.try_get("manifest_key")?,
            manifest_version: row.try_get("manifest_version")?,
            outcome: row.try_get("outcome")?,
            sqs_message_id: row.try_get("sqs_message_id")?,
            status_code: row.try_get("status_code")?,
            success: row.try_get("success")?,
            termination_first_at: row.try_get("termination_first_at")?,
            termination_first_id: row.try_get("termination_first_id")?,
            user_id: row.try_get("user_id")?,
        },
        prev_hash: row.try_get("prev_hash")?,
        row_hash: row.try_get("row_hash")?,
    })
}

/// Whether `e` is SQLite's SQLITE_BUSY (primary code 5, any extended code such as
/// SQLITE_BUSY_RECOVERY 261): the database was locked and the statement may be
/// run again.
fn is_busy(e: &sqlx::Error) -> bool {
    const SQLITE_BUSY: i64 = 5;
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|c| c.parse::<i64>().ok())
            .is_some_and(|c| c & 0xff == SQLITE_BUSY),
        _ => false,
    }
}
