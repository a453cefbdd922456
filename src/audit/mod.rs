//! The append-only, hash-chained audit store: one row per termination attempt,
//! manifest event and operator action. PostgreSQL in production, SQLite for the
//! embedded default, chosen by the `DATABASE_URL` scheme, with the same behaviour
//! and the same database-enforced append-only guarantees on both. This module never
//! updates or deletes a row; it knows nothing about SCIM or queues.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::domain::{Credential, IdempotencyKey, Outcome};

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
    /// What was attempted: `deactivate`, `manifest`, `replay`, `approve`, `reject`.
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
