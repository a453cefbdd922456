//! Deprovisions one person in the SCIM service: resolve, deactivate, strip every
//! group membership, verify the end state, and classify what happened into an
//! [`Outcome`] with its evidence. Owns the per-termination decisions of design.md's
//! error table (401 replay, 403 escalation, 404 fallback, version retry, 429 and
//! 5xx backoff within a deadline). Knows nothing about queues or the audit store:
//! it returns a [`Report`] and the caller records it.

use std::time::Duration;

use serde::Serialize;

use crate::domain::{Credential, ExternalId, Outcome, ScimUserId};

/// One deprovisioning request.
#[derive(Debug, Clone)]
pub struct Request {
    /// HR's identifier; always checked against the user found.
    pub external_id: ExternalId,
    /// The Genesys user id from the manifest, if HR gave one.
    pub user_id: Option<ScimUserId>,
    /// Resolve and plan only; send no mutating request.
    pub dry_run: bool,
    /// No retry or backoff may run past this instant (e.g. the end of the
    /// message's visibility window). A termination that cannot finish by then is
    /// reported as [`Outcome::Retrying`].
    pub deadline: tokio::time::Instant,
}

/// A group the user was (or, in a dry run, would be) removed from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupRef {
    /// The SCIM group id.
    pub id: String,
    /// Its `displayName`, when the server gave one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
}

/// What happened, with the evidence an auditor samples.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The classification (terminal, or `retrying` / `dry_run`).
    pub outcome: Outcome,
    /// The resolved SCIM user id, when one was found.
    pub user_id: Option<ScimUserId>,
    /// The credential that made (or would make) the change.
    pub credential: Option<Credential>,
    /// Groups left (dry run: groups that would be left).
    pub groups_removed: Vec<GroupRef>,
    /// Roles removed (dry run: that would be removed), when `REMOVE_ROLES` is on.
    pub roles_removed: Vec<String>,
    /// The HTTP status of the last SCIM response that decided the outcome.
    pub status_code: Option<u16>,
    /// `ININ-Correlation-Id` of every SCIM response, in order.
    pub correlation_ids: Vec<String>,
    /// SCIM HTTP requests sent for this termination (token requests excluded).
    pub requests: u32,
    /// The reason for any outcome but success, with the server's detail.
    pub detail: Option<String>,
    /// For `retrying`: how long the caller should wait before the next attempt.
    #[serde(skip)]
    pub retry_after: Option<Duration>,
    /// Wall time spent.
    #[serde(with = "duration_ms")]
    pub elapsed: Duration,
}

mod duration_ms {
    use serde::Serializer;
    pub fn serialize<S: Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis().try_into().unwrap_or(u64::MAX))
    }
}

/// Anything that can deprovision one person: the real [`Engine`] (filled in by the
/// engine issue), or a fake in the consumer's unit tests.
pub trait Deprovision: Send + Sync {
    /// Deprovisions one person. Never fails: every error is classified into the
    /// report's outcome.
    fn deprovision(&self, request: &Request) -> impl Future<Output = Report> + Send;
}
