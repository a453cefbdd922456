//! The PostgreSQL backend of the audit store: connection pool, the embedded
//! `migrations/postgres`, the chained insert under `pg_advisory_xact_lock`, and the
//! read queries the consumer and the reports use. Only INSERT and SELECT statements
//! touch `scim_audit_log` here; the shared semantics live in `super` and `chain`.

use std::ops::Range;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::types::Json;
use sqlx::{Row, migrate::Migrator};

use super::chain::{self, ChainWalker, RowContent, StoredChainRow, VerifyReport};
use super::{
    AuditEntry, AuditError, BucketCounts, FirstRowLookup, MigrateOutcome, first_row_lookup, guards,
    outcome_code, redact, row_columns, terminal_outcome, termination_row,
};

static MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");

/// The chain head, the next row id and the first row of the termination that
/// `$cond` (on `scim_audit_log`) selects, in one statement.
macro_rules! head_query {
    ($cond:literal) => {
        concat!(
            "SELECT (SELECT row_hash FROM scim_audit_log ORDER BY id DESC LIMIT 1), \
               nextval('scim_audit_log_id_seq'), f.termination_first_id, f.termination_first_at \
             FROM (SELECT 1) AS one LEFT JOIN LATERAL (\
               SELECT termination_first_id, termination_first_at FROM scim_audit_log \
               WHERE ",
            $cond,
            " AND ",
            termination_row!(),
            " ORDER BY id LIMIT 1) AS f ON true"
        )
    };
}

/// The advisory-lock key that serialises chain appends within one database
/// ("SCIMAUDT" in ASCII). Advisory locks are per database, so stores on other
/// databases of the same cluster never contend.
const CHAIN_LOCK_KEY: i64 = 0x5343_494D_4155_4454;

/// The weekly report over the per-termination summary `scim_audit_termination`
/// (migrations/postgres/0005): for each bucket `$1[i]..$1[i + 1]`, the codes of the
/// reported outcomes with their counts, and the SLA sample (size, median and p95
/// by `percentile_cont`, how many over 24 h). One index-only range scan of the
/// summary per week and aspect, no grouping of attempts: 1,000,000 rows report in
/// a few hundred milliseconds (benches/audit.rs). Terminations with a row created
/// after the as-of instant `$4` (normally none) are reduced from their rows up to
/// it, exactly as `reduce_terminations!` does. `$2`/`$3` are the first and last
/// bound.
const WEEKLY_FROM_SUMMARY: &str = concat!(
    "WITH w AS (\
       SELECT i, lo, hi FROM (SELECT i, lo, lead(lo) OVER (ORDER BY i) AS hi \
           FROM unnest($1::timestamptz[]) WITH ORDINALITY AS a(lo, i)) AS x \
       WHERE hi IS NOT NULL), \
     late AS MATERIALIZED (\
       SELECT first_at, code, CASE WHEN code <= 1 AND eff IS NOT NULL \
           THEN round(date_part('epoch', decided_at - eff) * 1000) / 3600000.0::float8 \
         END AS hours \
       FROM (SELECT s.first_at, \
               (COALESCE(max(r.k) FILTER (WHERE r.term), max(r.k)) % 16)::smallint AS code, \
               max(r.effective_at) AS eff, \
               COALESCE(max(r.created_at) FILTER (WHERE r.term), max(r.created_at)) \
                 AS decided_at \
             FROM scim_audit_termination AS s \
             JOIN LATERAL (SELECT effective_at, created_at, id * 16 + ",
    outcome_code!(),
    " AS k, ",
    terminal_outcome!(),
    " AS term \
               FROM scim_audit_log AS l \
               WHERE l.termination_first_at = s.first_at \
                 AND l.termination_first_id = s.termination_first_id \
                 AND l.created_at <= $4) AS r ON true \
             WHERE s.created_max > $4 AND s.first_at >= $2 AND s.first_at < $3 \
             GROUP BY s.termination_first_id, s.first_at) AS t) \
     SELECT w.i, c.codes, c.ns, p.measured, p.pct, p.over \
     FROM w \
     CROSS JOIN LATERAL (\
       SELECT array_agg(code ORDER BY code) AS codes, array_agg(n ORDER BY code) AS ns \
       FROM (SELECT code, count(*) AS n FROM (\
           SELECT code FROM scim_audit_termination \
             WHERE first_at >= w.lo AND first_at < w.hi AND created_max <= $4 \
           UNION ALL \
           SELECT code FROM late WHERE first_at >= w.lo AND first_at < w.hi) AS u \
         GROUP BY code) AS g) AS c \
     CROSS JOIN LATERAL (\
       SELECT count(*) AS measured, \
         percentile_cont(ARRAY[0.5, 0.95]::float8[]) WITHIN GROUP (ORDER BY hours) AS pct, \
         count(*) FILTER (WHERE hours > 24.0::float8) AS over \
       FROM (SELECT hours FROM scim_audit_termination \
             WHERE first_at >= w.lo AND first_at < w.hi AND created_max <= $4 \
               AND hours IS NOT NULL \
           UNION ALL \
           SELECT hours FROM late \
             WHERE first_at >= w.lo AND first_at < w.hi AND hours IS NOT NULL) AS u) AS p \
     ORDER BY w.i"
);

#[derive(Clone)]
pub(super) struct PgStore {
    pool: PgPool,
}

impl PgStore {
    pub(super) async fn connect(url: &str) -> Result<Self, AuditError> {
        let err = |source| AuditError::Connect {
            url: redact(url),
            source,
        };
        let options = PgConnectOptions::from_str(url).map_err(err)?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await
            .map_err(err)?;
        Ok(Self { pool })
    }

    pub(super) async fn migrate(
        &self,
        rebuild_summary: bool,
    ) -> Result<MigrateOutcome, AuditError> {
        MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|source| AuditError::Migrate { source })?;
        let guard = |source| AuditError::Guards { source };
        let mut conn = self.pool.acquire().await.map_err(guard)?;
        let (restored, summary_rebuilt) = guards::pg_restore(&mut conn, rebuild_summary)
            .await
            .map_err(guard)?;
        Ok(MigrateOutcome {
            restored,
            summary_rebuilt,
        })
    }

    pub(super) async fn guard_problems(&self) -> Result<guards::GuardProblems, sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        guards::pg_check(&mut conn).await
    }

    pub(super) async fn summary_mismatches(&self) -> Result<(u64, Option<i64>), sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        guards::pg_summary_mismatches(&mut conn).await
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
        sqlx::query_scalar("SELECT id FROM scim_audit_log WHERE row_hash = $1")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await
    }

    /// The pool, for the working-state tables that share this database: claims
    /// (`super::claims`), held manifests (`super::held`), holds (`super::holds`).
    pub(super) fn pool(&self) -> &PgPool {
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
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(CHAIN_LOCK_KEY)
            .execute(&mut *tx)
            .await?;
        // Under the lock (a statement of its own: in READ COMMITTED the next
        // statement's snapshot then sees the previous holder's row): the chain head,
        // a row id larger than every committed one, and this termination's first
        // row, in one round trip to keep the lock short.
        type Head = (Option<String>, i64, Option<i64>, Option<DateTime<Utc>>);
        let (prev, id, first_id, first_at): Head = match first_row_lookup(entry) {
            None => {
                sqlx::query_as(head_query!("false"))
                    .fetch_one(&mut *tx)
                    .await?
            }
            Some(FirstRowLookup::Key(k)) => {
                sqlx::query_as(head_query!("idempotency_key = $1"))
                    .bind(k)
                    .fetch_one(&mut *tx)
                    .await?
            }
            Some(FirstRowLookup::ExternalId(e)) => {
                sqlx::query_as(head_query!("idempotency_key IS NULL AND external_id = $1"))
                    .bind(e)
                    .fetch_one(&mut *tx)
                    .await?
            }
            Some(FirstRowLookup::UserId(u)) => {
                sqlx::query_as(head_query!(
                    "idempotency_key IS NULL AND external_id IS NULL AND user_id = $1"
                ))
                .bind(u)
                .fetch_one(&mut *tx)
                .await?
            }
        };
        let prev = prev.unwrap_or_else(|| chain::GENESIS_HASH.to_owned());
        let stored_at = chain::to_stored_instant(created_at);
        let first = first_id.zip(first_at);
        let c = RowContent::from_entry(entry, id, stored_at, first);
        let first_at = c
            .termination_first_id
            .map(|_| first.map_or(stored_at, |(_, at)| at));
        let row_hash = c.hash(&prev);
        sqlx::query(
            "INSERT INTO scim_audit_log (id, external_id, user_id, action, status_code, success, \
               error_message, created_at, outcome, credential, groups_removed, attempt, \
               sqs_message_id, manifest_bucket, manifest_key, manifest_version, manifest_index, \
               effective_at, correlation_ids, duration_ms, idempotency_key, actor, \
               termination_first_id, termination_first_at, prev_hash, row_hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
               $18, $19, $20, $21, $22, $23, $24, $25, $26)",
        )
        .bind(id)
        .bind(&c.external_id)
        .bind(&c.user_id)
        .bind(&c.action)
        .bind(c.status_code.and_then(|s| i32::try_from(s).ok()))
        .bind(c.success)
        .bind(&c.error_message)
        .bind(stored_at)
        .bind(&c.outcome)
        .bind(&c.credential)
        .bind(Json(&c.groups_removed))
        .bind(c.attempt)
        .bind(&c.sqs_message_id)
        .bind(&c.manifest_bucket)
        .bind(&c.manifest_key)
        .bind(&c.manifest_version)
        .bind(c.manifest_index)
        .bind(entry.effective_at.map(chain::to_stored_instant))
        .bind(Json(&c.correlation_ids))
        .bind(c.duration_ms)
        .bind(&c.idempotency_key)
        .bind(&c.actor)
        .bind(c.termination_first_id)
        .bind(first_at)
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
            "SELECT id, outcome FROM scim_audit_log WHERE idempotency_key = $1 AND ",
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
        let read = |source| AuditError::Read {
            what: "weekly counts",
            source,
        };
        let mut tx = self.pool.begin().await.map_err(read)?;
        // Transaction-local settings: a custom plan, so that `created_max > $4`
        // (normally no row) is planned as the empty index range it is; no JIT,
        // whose compile time exceeds what it saves here; room for the per-week
        // percentile sorts.
        sqlx::query(
            "SELECT set_config('plan_cache_mode', 'force_custom_plan', true), \
               set_config('jit', 'off', true), set_config('work_mem', '64MB', true)",
        )
        .execute(&mut *tx)
        .await
        .map_err(read)?;
        let rows = sqlx::query(WEEKLY_FROM_SUMMARY)
            .bind(bounds)
            .bind(from)
            .bind(to)
            .bind(as_of)
            .fetch_all(&mut *tx)
            .await
            .map_err(read)?;
        tx.commit().await.map_err(read)?;
        let mut buckets = vec![BucketCounts::default(); bounds.len() - 1];
        for row in rows {
            // Buckets are numbered from 1 (WITH ORDINALITY).
            let b: i64 = row.try_get(0).map_err(read)?;
            let Some(bucket) = usize::try_from(b - 1).ok().and_then(|i| buckets.get_mut(i)) else {
                continue;
            };
            let codes: Option<Vec<i16>> = row.try_get(1).map_err(read)?;
            let counts: Option<Vec<i64>> = row.try_get(2).map_err(read)?;
            for (code, n) in codes
                .unwrap_or_default()
                .into_iter()
                .zip(counts.unwrap_or_default())
            {
                if let Some(slot) = usize::try_from(code)
                    .ok()
                    .and_then(|i| bucket.by_outcome.get_mut(i))
                {
                    *slot = u64::try_from(n).unwrap_or(0);
                }
            }
            let measured: i64 = row.try_get(3).map_err(read)?;
            bucket.sla_measured = u64::try_from(measured).unwrap_or(0);
            let pct: Option<Vec<f64>> = row.try_get(4).map_err(read)?;
            let pct = pct.unwrap_or_default();
            bucket.sla_median_hours = pct.first().copied();
            bucket.sla_p95_hours = pct.get(1).copied();
            let over: i64 = row.try_get(5).map_err(read)?;
            bucket.sla_over_24h = u64::try_from(over).unwrap_or(0);
        }
        Ok(buckets)
    }

    pub(super) async fn termination_rows(
        &self,
        first_seen: Range<DateTime<Utc>>,
    ) -> Result<Vec<StoredChainRow>, sqlx::Error> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            row_columns!(),
            " FROM scim_audit_log WHERE termination_first_at >= $1 AND termination_first_at < $2 \
             ORDER BY id"
        ))
        .bind(first_seen.start)
        .bind(first_seen.end)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode).collect()
    }
}

/// One `row_columns!` row back into its chain content, exactly as stored.
fn decode(row: &PgRow) -> Result<StoredChainRow, sqlx::Error> {
    let created_at: DateTime<Utc> = row.try_get("created_at")?;
    let effective_at: Option<DateTime<Utc>> = row.try_get("effective_at")?;
    let groups: Json<Vec<String>> = row.try_get("groups_removed")?;
    let correlation: Json<Vec<String>> = row.try_get("correlation_ids")?;
    let status: Option<i32> = row.try_get("status_code")?;
    let first_at: Option<DateTime<Utc>> = row.try_get("termination_first_at")?;
    Ok(StoredChainRow {
        content: RowContent {
            action: row.try_get("action")?,
            actor: row.try_get("actor")?,
            attempt: row.try_get("attempt")?,
            correlation_ids: correlation.0,
            created_at: chain::read_back_text(created_at),
            credential: row.try_get("credential")?,
            duration_ms: row.try_get("duration_ms")?,
            effective_at: effective_at.map(chain::read_back_text),
            error_message: row.try_get("error_message")?,
            external_id: row.try_get("external_id")?,
            groups_removed: groups.0,
            id: row.try_get("id")?,
            idempotency_key: row.try_get("idempotency_key")?,
            manifest_bucket: row.try_get("manifest_bucket")?,
            manifest_index: row.try_get("manifest_index")?,
            manifest_key: row.try_get("manifest_key")?,
            manifest_version: row.try_get("manifest_version")?,
            outcome: row.try_get("outcome")?,
            sqs_message_id: row.try_get("sqs_message_id")?,
            status_code: status.map(i64::from),
            success: row.try_get("success")?,
            termination_first_at: first_at.map(chain::read_back_text),
            termination_first_id: row.try_get("termination_first_id")?,
            user_id: row.try_get("user_id")?,
        },
        prev_hash: row.try_get("prev_hash")?,
        row_hash: row.try_get("row_hash")?,
    })
}
