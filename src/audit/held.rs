//! The `held_manifests` table (migrations `postgres/0004`, `sqlite/0003`): manifests
//! the mass-deactivation breaker holds whole until an operator decides. Owns the
//! SQL for both backends: insert a hold once (a redelivered event finds the
//! existing row), read one, and the single conditional move held → approved |
//! rejected. This is working state beside the append-only log, never evidence:
//! the breaker and the approve/reject commands write an audit row for every
//! hold and decision. Never touches `scim_audit_log`.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::chain::{instant_text, to_stored_instant};
use super::{AuditError, AuditStore, Backend};

/// Where a held manifest stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ManifestHoldState {
    /// Waiting for `approve` or `reject`.
    Held,
    /// Approved and dispatched.
    Approved,
    /// Rejected; never dispatched.
    Rejected,
}

impl ManifestHoldState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Held => "held",
            Self::Approved => "approved",
            Self::Rejected => "rejected",
        }
    }

    fn parse(raw: &str) -> Option<Self> {
        [Self::Held, Self::Approved, Self::Rejected]
            .into_iter()
            .find(|s| s.as_str() == raw)
    }
}

/// One held manifest: which object (pinned to its version or ETag), its content
/// hash, the counts the breaker saw, why it tripped, and the decision.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HeldManifest {
    /// First 16 hex digits of `sha256` (the `MANIFEST_ID` operators type).
    pub manifest_id: String,
    /// S3 bucket, or `local` for a file given to `run`.
    pub bucket: String,
    /// Object key or local path.
    pub key: String,
    /// The S3 version id the breaker read, when the bucket is versioned.
    pub version_id: Option<String>,
    /// The ETag the breaker read (without quotes).
    pub etag: Option<String>,
    /// SHA-256 of the manifest's bytes, 64 lowercase hex digits.
    pub sha256: String,
    /// Distinct valid terminations in the manifest.
    pub terminations: u64,
    /// Active users in the org when it was held, if counted.
    pub active_users: Option<u64>,
    /// Why the breaker tripped.
    pub reason: String,
    /// Held, approved or rejected.
    pub state: ManifestHoldState,
    /// When it was held.
    pub held_at: DateTime<Utc>,
    /// Who approved or rejected it.
    pub decided_by: Option<String>,
    /// When.
    pub decided_at: Option<DateTime<Utc>>,
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn err(what: &'static str) -> impl FnOnce(sqlx::Error) -> AuditError {
    move |source| AuditError::Held { what, source }
}

fn corrupt(column: &'static str, value: String) -> AuditError {
    AuditError::Corrupt {
        id: 0,
        column,
        value,
    }
}

const COLUMNS: &str = "manifest_id, bucket, key, version_id, etag, sha256, terminations, \
                       active_users, reason, state, held_at, decided_by, decided_at";

/// Builds a [`HeldManifest`] from a row of either backend (the same column
/// names; instants as RFC 3339 text).
macro_rules! decode_row {
    ($r:expr) => {{
        let r = $r;
        let text = |c: &'static str| -> Result<String, AuditError> {
            r.try_get::<String, _>(c)
                .map_err(|e| corrupt(c, e.to_string()))
        };
        let opt = |c: &'static str| -> Result<Option<String>, AuditError> {
            r.try_get::<Option<String>, _>(c)
                .map_err(|e| corrupt(c, e.to_string()))
        };
        let terminations: Result<i64, AuditError> = r
            .try_get("terminations")
            .map_err(|e| corrupt("terminations", e.to_string()));
        let active_users: Result<Option<i64>, AuditError> = r
            .try_get("active_users")
            .map_err(|e| corrupt("active_users", e.to_string()));
        (|| -> Result<HeldManifest, AuditError> {
            let state_raw = text("state")?;
            let state =
                ManifestHoldState::parse(&state_raw).ok_or_else(|| corrupt("state", state_raw))?;
            Ok(HeldManifest {
                manifest_id: text("manifest_id")?,
                bucket: text("bucket")?,
                key: text("key")?,
                version_id: opt("version_id")?,
                etag: opt("etag")?,
                sha256: text("sha256")?,
                terminations: u64::try_from(terminations?).unwrap_or_default(),
                active_users: active_users?.and_then(|a| u64::try_from(a).ok()),
                reason: text("reason")?,
                state,
                held_at: instant("held_at", text("held_at")?)?,
                decided_by: opt("decided_by")?,
                decided_at: opt("decided_at")?
                    .map(|raw| instant("decided_at", raw))
                    .transpose()?,
            })
        })()
    }};
}

fn instant(column: &'static str, raw: String) -> Result<DateTime<Utc>, AuditError> {
    DateTime::parse_from_rfc3339(&raw)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| corrupt(column, raw))
}

impl AuditStore {
    /// Records a hold unless one with this `manifest_id` exists. Returns `true`
    /// when this call inserted it (so exactly one `held` audit row is written
    /// per manifest however often its event is delivered). Errors:
    /// [`AuditError::Held`].
    pub async fn insert_held_manifest(&self, h: &HeldManifest) -> Result<bool, AuditError> {
        let sql = format!(
            "INSERT INTO held_manifests ({COLUMNS}) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'held', $10, NULL, NULL) \
             ON CONFLICT (manifest_id) DO NOTHING"
        );
        let held_at = instant_text(h.held_at);
        let held_at_pg = to_stored_instant(h.held_at);
        let affected = match &self.backend {
            Backend::Postgres(s) => sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(&h.manifest_id)
                .bind(&h.bucket)
                .bind(&h.key)
                .bind(&h.version_id)
                .bind(&h.etag)
                .bind(&h.sha256)
                .bind(i64_of(h.terminations))
                .bind(h.active_users.map(i64_of))
                .bind(&h.reason)
                .bind(held_at_pg)
                .execute(s.pool())
                .await
                .map(|r| r.rows_affected()),
            Backend::Sqlite(s) => sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(&h.manifest_id)
                .bind(&h.bucket)
                .bind(&h.key)
                .bind(&h.version_id)
                .bind(&h.etag)
                .bind(&h.sha256)
                .bind(i64_of(h.terminations))
                .bind(h.active_users.map(i64_of))
                .bind(&h.reason)
                .bind(&held_at)
                .execute(s.pool())
                .await
                .map(|r| r.rows_affected()),
        }
        .map_err(err("insert held manifest"))?;
        Ok(affected == 1)
    }

    /// The held manifest with this id, if any. Errors: [`AuditError::Held`],
    /// [`AuditError::Corrupt`].
    pub async fn held_manifest(
        &self,
        manifest_id: &str,
    ) -> Result<Option<HeldManifest>, AuditError> {
        let found = match &self.backend {
            Backend::Postgres(s) => {
                // Instants come back as the same RFC 3339 text SQLite stores.
                let sql = "SELECT manifest_id, bucket, key, version_id, etag, sha256, terminations, \
                     active_users, reason, state, \
                     to_char(held_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS held_at, decided_by, \
                     to_char(decided_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS decided_at \
                     FROM held_manifests WHERE manifest_id = $1";
                sqlx::query(sql)
                    .bind(manifest_id)
                    .fetch_optional(s.pool())
                    .await
                    .map_err(err("read held manifest"))?
                    .map(|r| decode_row!(&r))
            }
            Backend::Sqlite(s) => {
                let sql = format!("SELECT {COLUMNS} FROM held_manifests WHERE manifest_id = $1");
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(manifest_id)
                    .fetch_optional(s.pool())
                    .await
                    .map_err(err("read held manifest"))?
                    .map(|r| decode_row!(&r))
            }
        };
        found.transpose()
    }

    /// Moves a held manifest to `state` (approved or rejected), once: only a row
    /// still `held` changes. Returns `true` when this call decided it. Errors:
    /// [`AuditError::Held`].
    pub async fn decide_held_manifest(
        &self,
        manifest_id: &str,
        state: ManifestHoldState,
        by: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, AuditError> {
        let at_text = instant_text(at);
        let affected = match &self.backend {
            Backend::Postgres(s) => sqlx::query(
                "UPDATE held_manifests SET state = $1, decided_by = $2, decided_at = $3 \
                 WHERE manifest_id = $4 AND state = 'held'",
            )
            .bind(state.as_str())
            .bind(by)
            .bind(to_stored_instant(at))
            .bind(manifest_id)
            .execute(s.pool())
            .await
            .map(|r| r.rows_affected()),
            Backend::Sqlite(s) => sqlx::query(
                "UPDATE held_manifests SET state = $1, decided_by = $2, decided_at = $3 \
                 WHERE manifest_id = $4 AND state = 'held'",
            )
            .bind(state.as_str())
            .bind(by)
            .bind(&at_text)
            .bind(manifest_id)
            .execute(s.pool())
            .await
            .map(|r| r.rows_affected()),
        }
        .map_err(err("decide held manifest"))?;
        Ok(affected == 1)
    }
}
