//! Durable holds: future-dated terminations kept in the audit database (table
//! `termination_holds`) until they fall due, instead of circling on SQS (which
//! burns receive counts and ends in the dead-letter queue). Owns the table's SQL
//! on both backends: placing a hold (idempotent on the termination's key),
//! claiming due holds exclusively for release (PostgreSQL `FOR UPDATE SKIP
//! LOCKED`, SQLite `BEGIN IMMEDIATE`), cancelling a person's pending holds (a
//! rehire), listing what is pending, and the supersession lookup `replay-dlq` and
//! the consumer make against the audit log.
//!
//! A hold only moves forward (pending → released, or pending → cancelled),
//! enforced by a trigger. This module never touches `scim_audit_log` except to
//! read it, and knows nothing about queues: the releaser hands it a send function.

use std::collections::BTreeMap;
use std::future::Future;

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;

use super::chain::instant_text;
use super::{AuditError, AuditStore, Backend, ManifestOrigin, parse_instant};
use crate::domain::IdempotencyKey;

/// A termination to hold until `due_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewHold {
    /// The termination's idempotency key (one hold per key).
    pub idempotency_key: IdempotencyKey,
    /// HR's identifier (a rehire cancels every pending hold with it).
    pub external_id: String,
    /// The Genesys user id, when the record gave one.
    pub user_id: Option<String>,
    /// When it takes effect (UTC; stored to the millisecond).
    pub due_at: DateTime<Utc>,
    /// The message body exactly as received, re-sent unchanged on release.
    pub body: String,
    /// The message attributes to re-send with it.
    pub attributes: BTreeMap<String, String>,
    /// The manifest it came from.
    pub manifest: Option<ManifestOrigin>,
}

/// Where a hold is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldState {
    /// Waiting for `due_at`.
    Pending,
    /// Re-sent to the terminations queue at this instant.
    Released(DateTime<Utc>),
    /// Withdrawn at this instant, for this reason (e.g. a rehire).
    Cancelled {
        /// When.
        at: DateTime<Utc>,
        /// Why.
        reason: String,
    },
}

/// One stored hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// Row id.
    pub id: i64,
    /// The termination's idempotency key.
    pub idempotency_key: IdempotencyKey,
    /// HR's identifier.
    pub external_id: String,
    /// The Genesys user id, when known.
    pub user_id: Option<String>,
    /// When it falls due (UTC, millisecond precision).
    pub due_at: DateTime<Utc>,
    /// The message body to re-send.
    pub body: String,
    /// The message attributes to re-send.
    pub attributes: BTreeMap<String, String>,
    /// The manifest it came from.
    pub manifest: Option<ManifestOrigin>,
    /// When the hold was placed.
    pub created_at: DateTime<Utc>,
    /// Pending, released or cancelled.
    pub state: HoldState,
}

/// What [`AuditStore::place_hold`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// True when this call created the hold; false when one with the same key
    /// already existed (a redelivery or the same termination in two manifests).
    pub created: bool,
    /// The stored hold (the earlier one when it already existed).
    pub hold: Hold,
}

/// A manifest record as the rehire rules judge it: where it came from and when
/// it takes effect. Within one manifest the file's order decides, whichever
/// message is handled first: a rehire withdraws a termination later in the file
/// only when the termination takes effect at or before the rehire (README,
/// "Rehires"); a termination later in the file and dated after the rehire
/// stands.
#[derive(Debug, Clone, Copy)]
pub struct ManifestRecord<'a> {
    /// The manifest and the record's index in it.
    pub origin: &'a ManifestOrigin,
    /// When the record takes effect (UTC).
    pub effective_at: DateTime<Utc>,
}

impl ManifestRecord<'_> {
    /// Whether the termination `self` stands after the rehire `rehire` of the
    /// same person although handled after it: both in one manifest (bucket,
    /// key and version), the termination later in the file and effective after
    /// the rehire. The SQL of [`AuditStore::cancel_holds`] and
    /// [`AuditStore::supersession`] applies the same rule.
    pub fn stands_after(&self, rehire: &ManifestRecord<'_>) -> bool {
        let (t, r) = (self.origin, rehire.origin);
        t.bucket == r.bucket
            && t.key == r.key
            && t.version.as_deref().unwrap_or("") == r.version.as_deref().unwrap_or("")
            && matches!(
                (t.index, r.index),
                (Some(ti), Some(ri))
                    if crate::domain::stands_after_rehire(ti, self.effective_at, ri, rehire.effective_at)
            )
    }

    /// The record's index as the queries bind it: `missing` when unknown, so
    /// that an unknown index never matches "earlier" or "later".
    fn index_or(&self, missing: i64) -> i64 {
        self.origin
            .index
            .map_or(missing, |i| i64::try_from(i).unwrap_or(i64::MAX))
    }
}

/// What one [`AuditStore::release_due`] call did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReleaseBatch {
    /// Holds re-sent and marked released.
    pub released: Vec<Hold>,
    /// Holds claimed whose send failed; they stay pending for the next round.
    pub failed: Vec<Hold>,
}

/// A later audit entry for the same externalId that reverses or replaces a
/// termination (issue 6, "re-validating replay").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Supersession {
    /// `rehire`, or `deactivate` for a later termination with another date.
    pub action: String,
    /// The superseding row's outcome.
    pub outcome: String,
    /// Its manifest (`bucket/key`), when it came from one.
    pub manifest: Option<String>,
    /// When it was audited.
    pub at: DateTime<Utc>,
    /// Its effective time, when known.
    pub effective_at: Option<DateTime<Utc>>,
}

impl Supersession {
    /// The reason shown to operators, e.g. `rehired by manifest hr/2026-03.csv at
    /// 2026-03-01T10:00:00.000Z`.
    pub fn reason(&self) -> String {
        let manifest = self.manifest.as_deref().unwrap_or("an operator action");
        let at = instant_text(self.at);
        if self.action == "rehire" {
            format!("rehired by manifest {manifest} at {at}")
        } else {
            let effective = self
                .effective_at
                .map_or_else(|| "unknown".to_owned(), instant_text);
            format!(
                "superseded by a later termination effective {effective} (manifest {manifest} at {at})"
            )
        }
    }
}

const HOLD_COLUMNS: &str = "id, idempotency_key, external_id, user_id, due_at, body, \
    attributes, manifest_bucket, manifest_key, manifest_version, manifest_index, created_at, \
    released_at, cancelled_at, cancel_reason";

fn hold_error(
    what: &'static str,
    subject: impl Into<String>,
) -> impl FnOnce(sqlx::Error) -> AuditError {
    let subject = subject.into();
    move |source| AuditError::Hold {
        what,
        subject,
        source,
    }
}

/// The column values of one row, backend-neutral.
struct RawHold {
    id: i64,
    key: String,
    external_id: String,
    user_id: Option<String>,
    due_at: DateTime<Utc>,
    body: String,
    attributes: String,
    bucket: Option<String>,
    manifest_key: Option<String>,
    version: Option<String>,
    index: Option<i64>,
    created_at: DateTime<Utc>,
    released_at: Option<DateTime<Utc>>,
    cancelled_at: Option<DateTime<Utc>>,
    cancel_reason: Option<String>,
}

impl RawHold {
    fn from_pg(row: &PgRow) -> Result<Self, sqlx::Error> {
        let attributes: serde_json::Value = row.try_get("attributes")?;
        Ok(Self {
            id: row.try_get("id")?,
            key: row.try_get("idempotency_key")?,
            external_id: row.try_get("external_id")?,
            user_id: row.try_get("user_id")?,
            due_at: row.try_get("due_at")?,
            body: row.try_get("body")?,
            attributes: attributes.to_string(),
            bucket: row.try_get("manifest_bucket")?,
            manifest_key: row.try_get("manifest_key")?,
            version: row.try_get("manifest_version")?,
            index: row.try_get("manifest_index")?,
            created_at: row.try_get("created_at")?,
            released_at: row.try_get("released_at")?,
            cancelled_at: row.try_get("cancelled_at")?,
            cancel_reason: row.try_get("cancel_reason")?,
        })
    }

    fn from_sqlite(row: &SqliteRow) -> Result<Self, AuditError> {
        let id: i64 = row.try_get("id").map_err(hold_error("read", "a hold"))?;
        let get = |c: &'static str| -> Result<Option<String>, AuditError> {
            row.try_get::<Option<String>, _>(c)
                .map_err(hold_error("read", format!("hold {id}")))
        };
        let text = |c: &'static str| -> Result<String, AuditError> {
            get(c)?.ok_or(AuditError::Corrupt {
                id,
                column: c,
                value: "NULL".into(),
            })
        };
        let instant = |c: &'static str| -> Result<Option<DateTime<Utc>>, AuditError> {
            get(c)?.map(|t| parse_instant(id, c, &t)).transpose()
        };
        let required = |c: &'static str| -> Result<DateTime<Utc>, AuditError> {
            instant(c)?.ok_or(AuditError::Corrupt {
                id,
                column: c,
                value: "NULL".into(),
            })
        };
        Ok(Self {
            id,
            key: text("idempotency_key")?,
            external_id: text("external_id")?,
            user_id: get("user_id")?,
            due_at: required("due_at")?,
            body: text("body")?,
            attributes: text("attributes")?,
            bucket: get("manifest_bucket")?,
            manifest_key: get("manifest_key")?,
            version: get("manifest_version")?,
            index: row
                .try_get("manifest_index")
                .map_err(hold_error("read", format!("hold {id}")))?,
            created_at: required("created_at")?,
            released_at: instant("released_at")?,
            cancelled_at: instant("cancelled_at")?,
            cancel_reason: get("cancel_reason")?,
        })
    }

    fn into_hold(self) -> Result<Hold, AuditError> {
        let id = self.id;
        let corrupt =
            |column: &'static str, value: String| AuditError::Corrupt { id, column, value };
        let idempotency_key =
            IdempotencyKey::from_hex(&self.key).map_err(|v| corrupt("idempotency_key", v))?;
        let attributes: BTreeMap<String, String> = serde_json::from_str(&self.attributes)
            .map_err(|_| corrupt("attributes", self.attributes.clone()))?;
        let manifest = match (self.bucket, self.manifest_key) {
            (Some(bucket), Some(key)) => Some(ManifestOrigin {
                bucket,
                key,
                version: self.version,
                index: self.index.and_then(|i| u64::try_from(i).ok()),
            }),
            _ => None,
        };
        let state = match (self.released_at, self.cancelled_at) {
            (Some(at), _) => HoldState::Released(at),
            (None, Some(at)) => HoldState::Cancelled {
                at,
                reason: self.cancel_reason.unwrap_or_default(),
            },
            (None, None) => HoldState::Pending,
        };
        Ok(Hold {
            id,
            idempotency_key,
            external_id: self.external_id,
            user_id: self.user_id,
            due_at: self.due_at,
            body: self.body,
            attributes,
            manifest,
            created_at: self.created_at,
            state,
        })
    }
}

fn pg_holds(rows: &[PgRow], what: &'static str) -> Result<Vec<Hold>, AuditError> {
    rows.iter()
        .map(|r| {
            RawHold::from_pg(r)
                .map_err(hold_error(what, "a hold"))?
                .into_hold()
        })
        .collect()
}

fn sqlite_holds(rows: &[SqliteRow]) -> Result<Vec<Hold>, AuditError> {
    rows.iter()
        .map(|r| RawHold::from_sqlite(r)?.into_hold())
        .collect()
}

fn attributes_json(attributes: &BTreeMap<String, String>) -> serde_json::Value {
    serde_json::Value::Object(
        attributes
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect(),
    )
}

impl AuditStore {
    /// Places a hold, idempotent on the idempotency key: the first call creates it
    /// (`created: true`); later ones (a redelivery, the same termination in
    /// another manifest) return the stored hold unchanged, whatever its state.
    /// `now` is the creation instant. Errors: [`AuditError::Hold`],
    /// [`AuditError::Corrupt`].
    pub async fn place_hold(
        &self,
        hold: &NewHold,
        now: DateTime<Utc>,
    ) -> Result<Placed, AuditError> {
        let subject = format!("externalId {:?}", hold.external_id);
        let (bucket, key, version, index) = match &hold.manifest {
            Some(m) => (
                Some(m.bucket.clone()),
                Some(m.key.clone()),
                m.version.clone(),
                m.index.and_then(|i| i64::try_from(i).ok()),
            ),
            None => (None, None, None, None),
        };
        let inserted = match &self.backend {
            Backend::Postgres(s) => {
                let sql = format!(
                    "INSERT INTO termination_holds (idempotency_key, external_id, user_id, due_at, \
                     body, attributes, manifest_bucket, manifest_key, manifest_version, \
                     manifest_index, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
                     ON CONFLICT (idempotency_key) DO NOTHING RETURNING {HOLD_COLUMNS}"
                );
                let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(hold.idempotency_key.as_str())
                    .bind(&hold.external_id)
                    .bind(&hold.user_id)
                    .bind(super::chain::to_stored_instant(hold.due_at))
                    .bind(&hold.body)
                    .bind(attributes_json(&hold.attributes))
                    .bind(bucket)
                    .bind(key)
                    .bind(version)
                    .bind(index)
                    .bind(super::chain::to_stored_instant(now))
                    .fetch_optional(s.pool())
                    .await
                    .map_err(hold_error("place", subject.clone()))?;
                row.as_ref()
                    .map(|r| pg_holds(std::slice::from_ref(r), "place"))
                    .transpose()?
            }
            Backend::Sqlite(s) => {
                let sql = format!(
                    "INSERT INTO termination_holds (idempotency_key, external_id, user_id, due_at, \
                     body, attributes, manifest_bucket, manifest_key, manifest_version, \
                     manifest_index, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) \
                     ON CONFLICT (idempotency_key) DO NOTHING RETURNING {HOLD_COLUMNS}"
                );
                let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(hold.idempotency_key.as_str())
                    .bind(&hold.external_id)
                    .bind(&hold.user_id)
                    .bind(instant_text(hold.due_at))
                    .bind(&hold.body)
                    .bind(attributes_json(&hold.attributes).to_string())
                    .bind(bucket)
                    .bind(key)
                    .bind(version)
                    .bind(index)
                    .bind(instant_text(now))
                    .fetch_optional(s.pool())
                    .await
                    .map_err(hold_error("place", subject.clone()))?;
                row.as_ref()
                    .map(|r| sqlite_holds(std::slice::from_ref(r)))
                    .transpose()?
            }
        };
        if let Some(mut created) = inserted {
            return match created.pop() {
                Some(hold) => Ok(Placed {
                    created: true,
                    hold,
                }),
                None => Err(AuditError::Corrupt {
                    id: 0,
                    column: "termination_holds",
                    value: "INSERT … RETURNING gave no row".into(),
                }),
            };
        }
        match self.hold(&hold.idempotency_key).await? {
            Some(hold) => Ok(Placed {
                created: false,
                hold,
            }),
            None => Err(AuditError::Corrupt {
                id: 0,
                column: "termination_holds",
                value: format!("a conflicting hold for {subject} vanished"),
            }),
        }
    }

    /// The hold of this termination, if one was ever placed.
    /// Errors: [`AuditError::Hold`], [`AuditError::Corrupt`].
    pub async fn hold(&self, key: &IdempotencyKey) -> Result<Option<Hold>, AuditError> {
        let subject = format!("idempotency key {key}");
        let mut found = match &self.backend {
            Backend::Postgres(s) => {
                let sql = format!(
                    "SELECT {HOLD_COLUMNS} FROM termination_holds WHERE idempotency_key = $1"
                );
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(key.as_str())
                    .fetch_all(s.pool())
                    .await
                    .map_err(hold_error("read", subject))?;
                pg_holds(&rows, "read")?
            }
            Backend::Sqlite(s) => {
                let sql = format!(
                    "SELECT {HOLD_COLUMNS} FROM termination_holds WHERE idempotency_key = ?1"
                );
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(key.as_str())
                    .fetch_all(s.pool())
                    .await
                    .map_err(hold_error("read", subject))?;
                sqlite_holds(&rows)?
            }
        };
        Ok(found.pop())
    }

    /// Every pending hold, soonest due first (`deprovision report pending`).
    /// Errors: [`AuditError::Hold`], [`AuditError::Corrupt`].
    pub async fn pending_holds(&self) -> Result<Vec<Hold>, AuditError> {
        const WHERE: &str =
            "WHERE released_at IS NULL AND cancelled_at IS NULL ORDER BY due_at, id";
        let sql = format!("SELECT {HOLD_COLUMNS} FROM termination_holds {WHERE}");
        match &self.backend {
            Backend::Postgres(s) => {
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .fetch_all(s.pool())
                    .await
                    .map_err(hold_error("list", "pending holds"))?;
                pg_holds(&rows, "list")
            }
            Backend::Sqlite(s) => {
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .fetch_all(s.pool())
                    .await
                    .map_err(hold_error("list", "pending holds"))?;
                sqlite_holds(&rows)
            }
        }
    }

    /// Releases up to `limit` holds due at `now`: claims them exclusively (on
    /// PostgreSQL `SELECT … FOR UPDATE SKIP LOCKED`, so concurrent releasers in
    /// any number of processes take disjoint rows; on SQLite a `BEGIN IMMEDIATE`
    /// transaction, the database-wide write lock), calls `send` once with the
    /// claimed holds (soonest due first), and in the same transaction marks
    /// released exactly those `send` reports as sent (`send` returns one `bool`
    /// per hold, in order). A hold is therefore released once; if the commit
    /// fails after a send, the hold stays pending and is sent again later, which
    /// the consumer's idempotency check makes harmless.
    ///
    /// Errors: [`AuditError::Hold`], [`AuditError::Corrupt`] (nothing is marked).
    pub async fn release_due<F, Fut>(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        send: F,
    ) -> Result<ReleaseBatch, AuditError>
    where
        F: FnOnce(Vec<Hold>) -> Fut,
        Fut: Future<Output = Vec<bool>>,
    {
        let err = |what| hold_error(what, "due holds");
        match &self.backend {
            Backend::Postgres(s) => {
                let mut tx = s.pool().begin().await.map_err(err("claim"))?;
                let sql = format!(
                    "SELECT {HOLD_COLUMNS} FROM termination_holds \
                     WHERE released_at IS NULL AND cancelled_at IS NULL AND due_at <= $1 \
                     ORDER BY due_at, id LIMIT $2 FOR UPDATE SKIP LOCKED"
                );
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(now)
                    .bind(i64::from(limit))
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(err("claim"))?;
                let claimed = pg_holds(&rows, "claim")?;
                if claimed.is_empty() {
                    return Ok(ReleaseBatch::default());
                }
                let batch = split(claimed.clone(), send(claimed).await);
                let ids: Vec<i64> = batch.released.iter().map(|h| h.id).collect();
                sqlx::query("UPDATE termination_holds SET released_at = $1 WHERE id = ANY($2)")
                    .bind(now)
                    .bind(&ids)
                    .execute(&mut *tx)
                    .await
                    .map_err(err("mark released"))?;
                tx.commit().await.map_err(err("commit release"))?;
                Ok(stamp(batch, now))
            }
            Backend::Sqlite(s) => {
                let mut tx = s
                    .pool()
                    .begin_with("BEGIN IMMEDIATE")
                    .await
                    .map_err(err("claim"))?;
                let sql = format!(
                    "SELECT {HOLD_COLUMNS} FROM termination_holds \
                     WHERE released_at IS NULL AND cancelled_at IS NULL AND due_at <= ?1 \
                     ORDER BY due_at, id LIMIT ?2"
                );
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(instant_text(now))
                    .bind(i64::from(limit))
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(err("claim"))?;
                let claimed = sqlite_holds(&rows)?;
                if claimed.is_empty() {
                    return Ok(ReleaseBatch::default());
                }
                let batch = split(claimed.clone(), send(claimed).await);
                for hold in &batch.released {
                    sqlx::query("UPDATE termination_holds SET released_at = ?1 WHERE id = ?2")
                        .bind(instant_text(now))
                        .bind(hold.id)
                        .execute(&mut *tx)
                        .await
                        .map_err(err("mark released"))?;
                }
                tx.commit().await.map_err(err("commit release"))?;
                Ok(stamp(batch, now))
            }
        }
    }

    /// Cancels the pending holds of `external_id` that the rehire `rehire`
    /// withdraws, at `now` with `reason`: all of them, except a termination of
    /// the rehire's own manifest that comes later in the file and takes effect
    /// after the rehire ([`ManifestRecord`]). Returns the holds cancelled (empty
    /// when none was). Released holds are left alone. Errors:
    /// [`AuditError::Hold`], [`AuditError::Corrupt`].
    pub async fn cancel_holds(
        &self,
        external_id: &str,
        rehire: ManifestRecord<'_>,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<Hold>, AuditError> {
        let subject = format!("externalId {external_id:?}");
        // COALESCE: a hold without a manifest or index is never kept back.
        let sql = format!(
            "UPDATE termination_holds SET cancelled_at = $1, cancel_reason = $2 \
             WHERE external_id = $3 AND released_at IS NULL AND cancelled_at IS NULL \
               AND NOT COALESCE(due_at > $4 AND manifest_bucket = $5 AND manifest_key = $6 \
                   AND COALESCE(manifest_version, '') = $7 AND manifest_index > $8, false) \
             RETURNING {HOLD_COLUMNS}"
        );
        let version = rehire.origin.version.as_deref().unwrap_or("");
        let index = rehire.index_or(i64::MAX);
        match &self.backend {
            Backend::Postgres(s) => {
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(super::chain::to_stored_instant(now))
                    .bind(reason)
                    .bind(external_id)
                    .bind(rehire.effective_at)
                    .bind(&rehire.origin.bucket)
                    .bind(&rehire.origin.key)
                    .bind(version)
                    .bind(index)
                    .fetch_all(s.pool())
                    .await
                    .map_err(hold_error("cancel", subject))?;
                pg_holds(&rows, "cancel")
            }
            Backend::Sqlite(s) => {
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(instant_text(now))
                    .bind(reason)
                    .bind(external_id)
                    .bind(instant_text(rehire.effective_at))
                    .bind(&rehire.origin.bucket)
                    .bind(&rehire.origin.key)
                    .bind(version)
                    .bind(index)
                    .fetch_all(s.pool())
                    .await
                    .map_err(hold_error("cancel", subject))?;
                sqlite_holds(&rows)
            }
        }
    }

    /// The latest audit entry that supersedes the termination `key` of
    /// `external_id` (the record `termination`): a `rehire` row, or a
    /// `deactivate` row of another termination (another date) that is not a dry
    /// run, written after the termination's first row, except a rehire earlier
    /// in the termination's own manifest and effective before it
    /// ([`ManifestRecord`]). `None` when the termination has no row yet (nothing
    /// can be shown to be later) or nothing supersedes it.
    /// Errors: [`AuditError::Read`], [`AuditError::Corrupt`].
    pub async fn supersession(
        &self,
        external_id: &str,
        key: &IdempotencyKey,
        termination: ManifestRecord<'_>,
    ) -> Result<Option<Supersession>, AuditError> {
        let read = |source| AuditError::Read {
            what: "supersession",
            source,
        };
        const SQL: &str = "SELECT id, action, outcome, manifest_bucket, manifest_key, created_at, effective_at \
             FROM scim_audit_log \
             WHERE external_id = $1 AND idempotency_key IS NOT NULL \
               AND idempotency_key <> $2 AND action IN ('rehire', 'deactivate') \
               AND outcome <> 'dry_run' \
               AND id > (SELECT min(id) FROM scim_audit_log WHERE idempotency_key = $2) \
               AND NOT COALESCE(action = 'rehire' AND effective_at < $3 \
                   AND manifest_bucket = $4 AND manifest_key = $5 \
                   AND COALESCE(manifest_version, '') = $6 AND manifest_index < $7, false) \
             ORDER BY id DESC LIMIT 1";
        let version = termination.origin.version.as_deref().unwrap_or("");
        let index = termination.index_or(-1);
        match &self.backend {
            Backend::Postgres(s) => {
                let row: Option<SupersedingRow<DateTime<Utc>>> = sqlx::query_as(SQL)
                    .bind(external_id)
                    .bind(key.as_str())
                    .bind(termination.effective_at)
                    .bind(&termination.origin.bucket)
                    .bind(&termination.origin.key)
                    .bind(version)
                    .bind(index)
                    .fetch_optional(s.pool())
                    .await
                    .map_err(read)?;
                Ok(row.map(superseding_pg))
            }
            Backend::Sqlite(s) => {
                let row: Option<SupersedingRow<String>> = sqlx::query_as(SQL)
                    .bind(external_id)
                    .bind(key.as_str())
                    .bind(instant_text(termination.effective_at))
                    .bind(&termination.origin.bucket)
                    .bind(&termination.origin.key)
                    .bind(version)
                    .bind(index)
                    .fetch_optional(s.pool())
                    .await
                    .map_err(read)?;
                row.map(superseding_sqlite).transpose()
            }
        }
    }
}

impl AuditStore {
    /// The latest rehire of `external_id` that makes the termination record
    /// `termination` stale: a rehire effective at
    /// or after that time, whenever it was recorded (the person must not be
    /// locked out), or a later record of the same manifest (the file's order
    /// decides, whichever message is handled first). `dry_run` rows do not
    /// count. Errors: [`AuditError::Read`].
    pub async fn rehired_since(
        &self,
        external_id: &str,
        termination: ManifestRecord<'_>,
    ) -> Result<Option<Supersession>, AuditError> {
        let origin = termination.origin;
        let index = termination.index_or(i64::MAX);
        let read = |source| AuditError::Read {
            what: "rehires",
            source,
        };
        const SQL: &str = "SELECT id, action, outcome, manifest_bucket, manifest_key, created_at, effective_at \
             FROM scim_audit_log \
             WHERE external_id = $1 AND action = 'rehire' AND outcome <> 'dry_run' \
               AND (effective_at >= $2 \
                 OR (manifest_bucket = $3 AND manifest_key = $4 \
                     AND COALESCE(manifest_version, '') = $5 AND manifest_index > $6)) \
             ORDER BY id DESC LIMIT 1";
        match &self.backend {
            Backend::Postgres(s) => {
                let row: Option<SupersedingRow<DateTime<Utc>>> = sqlx::query_as(SQL)
                    .bind(external_id)
                    .bind(termination.effective_at)
                    .bind(&origin.bucket)
                    .bind(&origin.key)
                    .bind(origin.version.as_deref().unwrap_or(""))
                    .bind(index)
                    .fetch_optional(s.pool())
                    .await
                    .map_err(read)?;
                Ok(row.map(superseding_pg))
            }
            Backend::Sqlite(s) => {
                let row: Option<SupersedingRow<String>> = sqlx::query_as(SQL)
                    .bind(external_id)
                    .bind(instant_text(termination.effective_at))
                    .bind(&origin.bucket)
                    .bind(&origin.key)
                    .bind(origin.version.as_deref().unwrap_or(""))
                    .bind(index)
                    .fetch_optional(s.pool())
                    .await
                    .map_err(read)?;
                row.map(superseding_sqlite).transpose()
            }
        }
    }
}

fn superseding_pg(row: SupersedingRow<DateTime<Utc>>) -> Supersession {
    let (_, action, outcome, bucket, key, at, effective_at) = row;
    Supersession {
        action,
        outcome,
        manifest: manifest_name(bucket, key),
        at,
        effective_at,
    }
}

fn superseding_sqlite(row: SupersedingRow<String>) -> Result<Supersession, AuditError> {
    let (id, action, outcome, bucket, key, at, effective_at) = row;
    Ok(Supersession {
        action,
        outcome,
        manifest: manifest_name(bucket, key),
        at: parse_instant(id, "created_at", &at)?,
        effective_at: effective_at
            .map(|t| parse_instant(id, "effective_at", &t))
            .transpose()?,
    })
}

/// id, action, outcome, manifest bucket, manifest key, created_at, effective_at
/// (instants as `T`: `DateTime<Utc>` on PostgreSQL, text on SQLite).
type SupersedingRow<T> = (
    i64,
    String,
    String,
    Option<String>,
    Option<String>,
    T,
    Option<T>,
);

fn manifest_name(bucket: Option<String>, key: Option<String>) -> Option<String> {
    match (bucket, key) {
        (Some(b), Some(k)) => Some(format!("{b}/{k}")),
        (None, Some(k)) => Some(k),
        _ => None,
    }
}

/// Pairs claimed holds with the send results; a missing result counts as failed.
fn split(claimed: Vec<Hold>, sent: Vec<bool>) -> ReleaseBatch {
    let mut batch = ReleaseBatch::default();
    for (i, hold) in claimed.into_iter().enumerate() {
        if sent.get(i).copied().unwrap_or(false) {
            batch.released.push(hold);
        } else {
            batch.failed.push(hold);
        }
    }
    batch
}

fn stamp(mut batch: ReleaseBatch, now: DateTime<Utc>) -> ReleaseBatch {
    let at = super::chain::to_stored_instant(now);
    for hold in &mut batch.released {
        hold.state = HoldState::Released(at);
    }
    batch
}
