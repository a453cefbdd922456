//! The evidence export: one row per termination with what an auditor samples
//! (who, when effective, when confirmed gone, by which credential, which groups,
//! how many attempts, which message and manifest, which correlation ids, outcome).
//! Built from [`AuditStore::termination_rows`]; rendered in `render`.

use std::collections::HashMap;

use chrono::{DateTime, Days, NaiveDate, Utc};
use serde::Serialize;

use super::ReportError;
use crate::audit::{AuditStore, ManifestOrigin, StoredRow};
use crate::domain::{Credential, Outcome};

/// One termination as evidence.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvidenceRow {
    /// HR's identifier; `None` for a termination identified by userId only
    /// (`deprovision user --user-id`), which `user_id` then keys.
    #[serde(rename = "externalId")]
    pub external_id: Option<String>,
    /// The Genesys user id, as last resolved.
    #[serde(rename = "userId")]
    pub user_id: Option<String>,
    /// The termination's idempotency key, when its rows carry one.
    pub idempotency_key: Option<String>,
    /// When the termination took effect.
    pub effective_at: Option<DateTime<Utc>>,
    /// When the first row for it was written.
    pub first_seen_at: DateTime<Utc>,
    /// When deactivation was confirmed (the row recording `deactivated` or
    /// `already_inactive`), else `None`.
    pub confirmed_deactivated_at: Option<DateTime<Utc>>,
    /// The reported outcome (latest terminal, else latest).
    pub outcome: Outcome,
    /// The credential of the reported row, else the last one recorded.
    pub credential: Option<Credential>,
    /// Every group removed across attempts, in first-removal order.
    pub groups_removed: Vec<String>,
    /// Audit rows recorded for this termination (one per attempt).
    pub attempts: u32,
    /// SQS message ids seen, in order, without repeats.
    pub sqs_message_ids: Vec<String>,
    /// The manifest of its first row.
    pub manifest: Option<ManifestOrigin>,
    /// `ININ-Correlation-Id` values across attempts, in order, without repeats.
    pub correlation_ids: Vec<String>,
    /// The reason recorded with the reported outcome, if not a success.
    pub error_message: Option<String>,
    /// The audit row ids, so each claim can be traced to a chained row.
    pub audit_row_ids: Vec<i64>,
}

fn push_new(into: &mut Vec<String>, items: impl IntoIterator<Item = String>) {
    for item in items {
        if !into.contains(&item) {
            into.push(item);
        }
    }
}

/// The evidence of every termination first seen between `from` and `to`
/// (inclusive UTC dates; `None` = unbounded), ordered by when first seen, one
/// row per termination. A termination is keyed by its idempotency key, else its
/// externalId, else (a deactivation by `deprovision user --user-id` alone) its
/// Genesys userId: every attempt for that userId without a key or externalId is
/// one termination, shown with an empty externalId. Rows of messages rejected
/// before they were trusted (`reject_message`) are not terminations and are
/// not listed (they stay in the audit log).
///
/// Errors: [`ReportError::EmptyRange`] when `from` > `to`; [`ReportError::Audit`].
pub async fn evidence(
    store: &AuditStore,
    from: Option<NaiveDate>,
    to: Option<NaiveDate>,
) -> Result<Vec<EvidenceRow>, ReportError> {
    if let (Some(from), Some(to)) = (from, to)
        && from > to
    {
        return Err(ReportError::EmptyRange { from, to });
    }
    let start = from
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc());
    let end = to
        .and_then(|d| d.checked_add_days(Days::new(1)))
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc());
    let rows = store.termination_rows(start, end).await?;
    Ok(group(rows))
}

/// Groups rows (in id order) into terminations, in order of first appearance.
pub(super) fn group(rows: Vec<StoredRow>) -> Vec<EvidenceRow> {
    let mut order: Vec<i64> = Vec::new();
    let mut by_termination: HashMap<i64, Vec<StoredRow>> = HashMap::new();
    for row in rows {
        by_termination
            .entry(row.termination_id)
            .or_insert_with(|| {
                order.push(row.termination_id);
                Vec::new()
            })
            .push(row);
    }
    order
        .into_iter()
        .filter_map(|k| by_termination.remove(&k))
        .filter_map(|rows| one(&rows))
        .collect()
}

fn one(rows: &[StoredRow]) -> Option<EvidenceRow> {
    let first = rows.first()?;
    let reported = rows
        .iter()
        .rev()
        .find(|r| r.entry.outcome.is_terminal())
        .or_else(|| rows.last())?;
    let mut groups = Vec::new();
    let mut messages = Vec::new();
    let mut correlation = Vec::new();
    for r in rows {
        push_new(&mut groups, r.entry.groups_removed.iter().cloned());
        push_new(&mut messages, r.entry.sqs_message_id.iter().cloned());
        push_new(&mut correlation, r.entry.correlation_ids.iter().cloned());
    }
    let outcome = reported.entry.outcome;
    Some(EvidenceRow {
        external_id: rows.iter().rev().find_map(|r| r.entry.external_id.clone()),
        user_id: rows.iter().rev().find_map(|r| r.entry.user_id.clone()),
        idempotency_key: first.entry.idempotency_key.as_ref().map(|k| k.to_string()),
        effective_at: rows.iter().rev().find_map(|r| r.entry.effective_at),
        first_seen_at: first.created_at,
        confirmed_deactivated_at: outcome.is_success().then_some(reported.created_at),
        outcome,
        credential: reported
            .entry
            .credential
            .or_else(|| rows.iter().rev().find_map(|r| r.entry.credential)),
        groups_removed: groups,
        attempts: u32::try_from(rows.len()).unwrap_or(u32::MAX),
        sqs_message_ids: messages,
        manifest: rows.iter().find_map(|r| r.entry.manifest.clone()),
        correlation_ids: correlation,
        error_message: if outcome.is_success() {
            None
        } else {
            reported.entry.error_message.clone()
        },
        audit_row_ids: rows.iter().map(|r| r.id).collect(),
    })
}
