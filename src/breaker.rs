//! The mass-deactivation breaker: a manifest with more terminations than
//! `MAX_TERMINATIONS_PER_MANIFEST`, or more than `MAX_TERMINATIONS_SHARE` of the
//! org's active users, is held whole — nothing enqueued — until an operator runs
//! `deprovision approve MANIFEST_ID` (dispatch the same bytes, bypassing the
//! breaker) or `deprovision reject MANIFEST_ID` (discard it). Owns the limits,
//! the first-pass count and content hash, the `MANIFEST_ID`, the hold decision and
//! the approve/reject operations with their audit rows.
//!
//! `MANIFEST_ID` is the first 16 hex digits of the SHA-256 of the manifest's
//! bytes: stable across redelivered events and re-uploads of the same content,
//! short enough to type, and tied to the content, so an approval can never
//! release different bytes (approve re-reads the pinned version or ETag and
//! refuses a different hash).
//!
//! The breaker never enqueues (the dispatcher does, after it says proceed) and
//! never deprovisions anyone. Counting active users is one SCIM list request
//! with `count=0`; if it fails the manifest is not dispatched (the event is
//! retried), never dispatched unchecked.

use std::io::{self, Read};
use std::ops::ControlFlow;

use chrono::Utc;
use sha2::{Digest, Sha256};

use crate::audit::{
    AuditEntry, AuditError, AuditStore, HeldManifest, ManifestHoldState, ManifestOrigin,
};
use crate::consume::AuditSink;
use crate::dispatch::{
    Approved, DispatchError, DispatchReport, Dispatcher, ManifestSource, ObjectRef,
};
use crate::domain::{Outcome, RecordAction};
use crate::manifest::{self, Entry, Format, ManifestError, Summary};
use crate::queue::Queue;
use crate::scim::{ScimClient, ScimError};

/// The breaker's limits (`MAX_TERMINATIONS_PER_MANIFEST`,
/// `MAX_TERMINATIONS_SHARE`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// A manifest with more distinct valid terminations than this is held.
    pub max_per_manifest: u64,
    /// A manifest terminating more than this share (0..=1) of the active users
    /// is held; 1 (or more) switches the share check off.
    pub max_share: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_per_manifest: 500,
            max_share: 0.10,
        }
    }
}

impl Limits {
    /// Whether the share check needs the active-user count.
    pub fn checks_share(&self) -> bool {
        self.max_share < 1.0
    }

    /// Why `terminations` trips the count limit, if it does.
    pub fn over_count(&self, terminations: u64) -> Option<String> {
        (terminations > self.max_per_manifest).then(|| {
            format!(
                "{terminations} terminations exceed MAX_TERMINATIONS_PER_MANIFEST={}",
                self.max_per_manifest
            )
        })
    }

    /// Why `terminations` out of `active` active users trips the share limit, if
    /// it does. An org with no active users trips on any termination.
    pub fn over_share(&self, terminations: u64, active: u64) -> Option<String> {
        if !self.checks_share() || terminations == 0 {
            return None;
        }
        #[allow(clippy::cast_precision_loss)]
        let share = if active == 0 {
            f64::INFINITY
        } else {
            terminations as f64 / active as f64
        };
        (share > self.max_share).then(|| {
            format!(
                "{terminations} terminations are {:.1}% of {active} active users, over MAX_TERMINATIONS_SHARE={}",
                share * 100.0,
                self.max_share
            )
        })
    }
}

/// Why the breaker, `approve` or `reject` could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum BreakerError {
    /// Not 16 lowercase hex digits.
    #[error(
        "{0:?} is not a MANIFEST_ID (16 hex digits, as shown in the held log line and audit row)"
    )]
    InvalidId(String),
    /// No held manifest has this id.
    #[error("no held manifest has id {0}")]
    NotFound(String),
    /// It was approved or rejected already.
    #[error("manifest {id} was already {} by {} at {}; nothing was done", state.as_str(), by.as_deref().unwrap_or("unknown"), at.map_or_else(|| "unknown time".to_owned(), |t| t.to_rfc3339()))]
    AlreadyDecided {
        /// The id.
        id: String,
        /// Its state.
        state: ManifestHoldState,
        /// Who decided.
        by: Option<String>,
        /// When.
        at: Option<chrono::DateTime<Utc>>,
    },
    /// A local manifest (held by `run`) has no object to re-read from a queue
    /// service; it is approved by running it again with `--approve`.
    #[error(
        "manifest {id} is the local file {key}; approve it with `deprovision run {key} --approve`"
    )]
    Local {
        /// The id.
        id: String,
        /// The path.
        key: String,
    },
    /// The share check needs the active-user count and no SCIM service is
    /// configured.
    #[error(
        "MAX_TERMINATIONS_SHARE needs the org's active-user count, but no SCIM service is configured (set GENESYS_* or SCIM_BASE_URL, or MAX_TERMINATIONS_SHARE=1)"
    )]
    NoScim,
    /// Counting active users failed.
    #[error("cannot count the org's active users for MAX_TERMINATIONS_SHARE: {0}")]
    Count(Box<ScimError>),
    /// The audit store failed.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// Dispatching the approved manifest failed.
    #[error(transparent)]
    Dispatch(Box<DispatchError>),
}

impl From<DispatchError> for BreakerError {
    fn from(e: DispatchError) -> Self {
        Self::Dispatch(Box::new(e))
    }
}

/// What the breaker says about one manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Under the limits (or approved earlier): dispatch it.
    Proceed,
    /// Held whole (or still held, or rejected earlier): enqueue nothing.
    Hold {
        /// Why.
        reason: String,
        /// True when this call recorded the hold (write the audit row then).
        new: bool,
        /// True when an operator rejected this content: no approval releases it.
        rejected: bool,
    },
}

/// What the breaker would do with one manifest, nothing recorded
/// ([`Breaker::preview`]).
#[derive(Debug, Clone)]
pub struct Preview {
    /// Why a dispatch without approval would be held (a limit it trips, a hold
    /// still undecided, or a rejection); `None` when it would proceed.
    pub hold: Option<String>,
    /// The org's active users, when the share limit needed them (or the count
    /// recorded with an earlier hold).
    pub active_users: Option<u64>,
    /// The decision recorded earlier for this content (held, approved or
    /// rejected), if any.
    pub earlier: Option<HeldManifest>,
}

impl Preview {
    /// The earlier rejection of this content, if it was rejected.
    pub fn rejected(&self) -> Option<&HeldManifest> {
        self.earlier
            .as_ref()
            .filter(|h| h.state == ManifestHoldState::Rejected)
    }
}

/// Why content decided earlier is held now: still undecided, or rejected;
/// `None` once approved.
fn decided_reason(existing: &HeldManifest) -> Option<String> {
    match existing.state {
        ManifestHoldState::Approved => None,
        ManifestHoldState::Held => Some(format!(
            "already held since {}: {}",
            existing.held_at.to_rfc3339(),
            existing.reason
        )),
        ManifestHoldState::Rejected => Some(format!(
            "this content was rejected by {} at {}; it is never dispatched",
            existing.decided_by.as_deref().unwrap_or("unknown"),
            existing
                .decided_at
                .map_or_else(String::new, |t| t.to_rfc3339())
        )),
    }
}

/// The breaker: limits, the SCIM client that counts active users, and the store
/// of holds.
#[derive(Debug, Clone)]
pub struct Breaker {
    limits: Limits,
    scim: Option<ScimClient>,
    store: AuditStore,
}

/// The first 16 hex digits of a SHA-256 (64 hex digits): the `MANIFEST_ID`.
pub fn manifest_id(sha256_hex: &str) -> String {
    sha256_hex.chars().take(16).collect()
}

/// True for 16 lowercase hex digits.
pub fn is_manifest_id(raw: &str) -> bool {
    raw.len() == 16 && raw.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A reader that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// What the dispatcher's first pass found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirstPass {
    /// Record counts (`valid` counts distinct records of every action).
    pub summary: Summary,
    /// Distinct valid records with `"action": "terminate"`: what the breaker
    /// counts (rehires deactivate nobody).
    pub terminations: u64,
    /// SHA-256 of every byte (64 lowercase hex digits).
    pub sha256: String,
    /// The file's rehire records, for the second pass to withdraw the
    /// terminations they supersede.
    pub rehires: manifest::RehireIndex,
}

/// The dispatcher's first pass: streams the manifest once, counting distinct
/// valid records and, among them, terminations (duplicates collapsed, as the
/// enqueuing pass does; memory bounded by the distinct keys, as there), and
/// hashes every byte of it (SHA-256, lowercase hex). Errors: as
/// [`manifest::read`].
pub fn count_and_hash<R: Read>(
    reader: R,
    hint: Option<Format>,
) -> Result<FirstPass, ManifestError> {
    let mut hashing = Hashing {
        inner: reader,
        hash: Sha256::new(),
    };
    let mut terminations = 0u64;
    let mut rehires = manifest::RehireIndex::default();
    let summary = manifest::read(&mut hashing, hint, |entry| {
        match &entry {
            Entry::Valid {
                record, position, ..
            } => match record.action {
                RecordAction::Terminate => terminations += 1,
                RecordAction::Rehire => rehires.note(position.index, record),
            },
            Entry::Rejected {
                position,
                external_id: Some(external_id),
                rehire: true,
                ..
            } => rehires.note_rejected(position.index, external_id),
            _ => {}
        }
        ControlFlow::Continue(())
    })?;
    // The parser may stop before the end (e.g. trailing whitespace after a JSON
    // array); the hash covers the whole object.
    io::copy(&mut hashing, &mut io::sink())?;
    Ok(FirstPass {
        summary,
        terminations,
        sha256: hex::encode(hashing.hash.finalize()),
        rehires,
    })
}

impl Breaker {
    /// A breaker with these limits. `scim` counts active users for the share
    /// check (required unless `limits.max_share >= 1`); `store` keeps holds.
    pub fn new(limits: Limits, scim: Option<ScimClient>, store: AuditStore) -> Self {
        Self {
            limits,
            scim,
            store,
        }
    }

    /// The hold (or decision) recorded for `manifest_id`, if any. Errors: the
    /// store.
    pub async fn hold_of(&self, manifest_id: &str) -> Result<Option<HeldManifest>, BreakerError> {
        Ok(self.store.held_manifest(manifest_id).await?)
    }

    /// Marks the hold on `manifest_id` approved by `by`, if it is still held
    /// (`run --approve`); returns whether this call decided it. Errors: the
    /// store.
    pub async fn mark_approved(&self, manifest_id: &str, by: &str) -> Result<bool, BreakerError> {
        Ok(self
            .store
            .decide_held_manifest(manifest_id, ManifestHoldState::Approved, by, Utc::now())
            .await?)
    }

    /// Active users now (one SCIM request, 60 s budget). Errors:
    /// [`BreakerError::NoScim`], [`BreakerError::Count`].
    pub async fn active_users(&self) -> Result<u64, BreakerError> {
        let scim = self.scim.as_ref().ok_or(BreakerError::NoScim)?;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        scim.session(deadline)
            .count_active_users()
            .await
            .map_err(|e| BreakerError::Count(Box::new(e)))
    }

    /// Checks `terminations` against the limits without recording anything:
    /// why it trips, if it does, and the active-user count when one was needed
    /// (the count limit is checked first, so a manifest over it costs no
    /// request). Errors: [`BreakerError::NoScim`], [`BreakerError::Count`].
    pub async fn assess(
        &self,
        terminations: u64,
    ) -> Result<(Option<String>, Option<u64>), BreakerError> {
        if let Some(reason) = self.limits.over_count(terminations) {
            return Ok((Some(reason), None));
        }
        if !self.limits.checks_share() || terminations == 0 {
            return Ok((None, None));
        }
        let n = self.active_users().await?;
        Ok((self.limits.over_share(terminations, n), Some(n)))
    }

    /// What [`Breaker::gate`] would decide for `manifest_id` with `terminations`,
    /// recording nothing: for dry runs, and for `run --approve` to audit an
    /// approval only when it overrides a hold. Errors: the store, or the
    /// active-user count ([`Breaker::assess`]).
    pub async fn preview(
        &self,
        manifest_id: &str,
        terminations: u64,
    ) -> Result<Preview, BreakerError> {
        if let Some(existing) = self.store.held_manifest(manifest_id).await? {
            return Ok(Preview {
                hold: decided_reason(&existing),
                active_users: existing.active_users,
                earlier: Some(existing),
            });
        }
        let (hold, active_users) = self.assess(terminations).await?;
        Ok(Preview {
            hold,
            active_users,
            earlier: None,
        })
    }

    /// Decides whether the manifest `draft` describes (state and decision fields
    /// are ignored) may be dispatched. An id decided earlier keeps its decision
    /// (approved content proceeds; rejected or still-held content is held);
    /// otherwise the limits are checked and a trip is recorded as a new hold.
    /// Errors: the store, or the active-user count.
    pub async fn gate(&self, draft: &HeldManifest) -> Result<Gate, BreakerError> {
        if let Some(existing) = self.store.held_manifest(&draft.manifest_id).await? {
            return Ok(match decided_reason(&existing) {
                None => Gate::Proceed,
                Some(reason) => Gate::Hold {
                    reason,
                    new: false,
                    rejected: existing.state == ManifestHoldState::Rejected,
                },
            });
        }
        let (reason, active) = self.assess(draft.terminations).await?;
        let Some(reason) = reason else {
            return Ok(Gate::Proceed);
        };
        let held = HeldManifest {
            active_users: active,
            reason: reason.clone(),
            state: ManifestHoldState::Held,
            held_at: Utc::now(),
            decided_by: None,
            decided_at: None,
            ..draft.clone()
        };
        let new = self.store.insert_held_manifest(&held).await?;
        Ok(Gate::Hold {
            reason,
            new,
            rejected: false,
        })
    }
}

/// The audit row of a hold or decision on a whole manifest.
pub fn manifest_row(
    action: &str,
    outcome: Outcome,
    success: bool,
    message: String,
    origin: ManifestOrigin,
    actor: Option<String>,
) -> AuditEntry {
    AuditEntry {
        external_id: None,
        user_id: None,
        action: action.into(),
        status_code: None,
        success,
        error_message: Some(message),
        outcome,
        credential: None,
        groups_removed: Vec::new(),
        attempt: 1,
        sqs_message_id: None,
        manifest: Some(origin),
        effective_at: None,
        correlation_ids: Vec::new(),
        duration_ms: None,
        idempotency_key: None,
        actor,
    }
}

fn origin_of(h: &HeldManifest) -> ManifestOrigin {
    ManifestOrigin {
        bucket: h.bucket.clone(),
        key: h.key.clone(),
        version: h.version_id.clone().or_else(|| h.etag.clone()),
        index: None,
    }
}

/// Loads a held manifest that is still undecided. Errors: invalid id, not
/// found, already decided.
async fn undecided(store: &AuditStore, id: &str) -> Result<HeldManifest, BreakerError> {
    if !is_manifest_id(id) {
        return Err(BreakerError::InvalidId(id.to_owned()));
    }
    let held = store
        .held_manifest(id)
        .await?
        .ok_or_else(|| BreakerError::NotFound(id.to_owned()))?;
    if held.state != ManifestHoldState::Held {
        return Err(BreakerError::AlreadyDecided {
            id: id.to_owned(),
            state: held.state,
            by: held.decided_by,
            at: held.decided_at,
        });
    }
    Ok(held)
}

/// What `approve` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Approval {
    /// The manifest as it was held.
    pub held: HeldManifest,
    /// The dispatch of the approved bytes.
    pub dispatch: DispatchReport,
}

/// `deprovision approve MANIFEST_ID --by NAME`: re-reads the held object pinned
/// to the version (or ETag) the breaker read, refuses it if its SHA-256 differs,
/// dispatches it bypassing the breaker, marks the hold approved and appends an
/// `approve` audit row (outcome `scheduled`, actor `by`). Errors: invalid or
/// unknown id, already approved or rejected, a local manifest, the content
/// changed ([`DispatchError::ContentChanged`]), queue or store failures.
pub async fn approve<Q: Queue, A: AuditSink>(
    dispatcher: &Dispatcher<Q, A>,
    store: &AuditStore,
    id: &str,
    by: &str,
) -> Result<Approval, BreakerError> {
    let held = undecided(store, id).await?;
    if held.bucket == "local" {
        return Err(BreakerError::Local {
            id: id.to_owned(),
            key: held.key,
        });
    }
    let source = ManifestSource::S3(ObjectRef {
        bucket: held.bucket.clone(),
        key: held.key.clone(),
        version_id: held.version_id.clone(),
    });
    let approved = Approved {
        sha256: Some(held.sha256.clone()),
        version_id: held.version_id.clone(),
        etag: held.etag.clone(),
        // The approval row and the hold's new state are written by the
        // dispatcher before anything is enqueued.
        by: Some(by.to_owned()),
    };
    let dispatch = dispatcher.dispatch_approved(&source, 1, &approved).await?;
    tracing::info!(
        manifest_id = id,
        by,
        enqueued = dispatch.enqueued,
        "held manifest approved and dispatched"
    );
    Ok(Approval { held, dispatch })
}

/// `deprovision reject MANIFEST_ID --by NAME`: marks the hold rejected (its
/// content is never dispatched, even if uploaded again) and appends a `reject`
/// audit row (outcome `invalid`, actor `by`). Errors: invalid or unknown id,
/// already decided, store failures.
pub async fn reject(store: &AuditStore, id: &str, by: &str) -> Result<HeldManifest, BreakerError> {
    let held = undecided(store, id).await?;
    let now = Utc::now();
    if !store
        .decide_held_manifest(id, ManifestHoldState::Rejected, by, now)
        .await?
    {
        // Decided between the read and the update.
        return Err(match store.held_manifest(id).await? {
            Some(h) => BreakerError::AlreadyDecided {
                id: id.to_owned(),
                state: h.state,
                by: h.decided_by,
                at: h.decided_at,
            },
            None => BreakerError::NotFound(id.to_owned()),
        });
    }
    store
        .append(&manifest_row(
            "reject",
            Outcome::Invalid,
            false,
            format!(
                "manifest {id} rejected by {by}: discarded, nothing enqueued (held because {})",
                held.reason
            ),
            origin_of(&held),
            Some(by.to_owned()),
        ))
        .await?;
    tracing::warn!(manifest_id = id, by, "held manifest rejected");
    Ok(HeldManifest {
        state: ManifestHoldState::Rejected,
        decided_by: Some(by.to_owned()),
        decided_at: Some(now),
        ..held
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_trip_strictly_above() {
        let l = Limits {
            max_per_manifest: 500,
            max_share: 0.10,
        };
        assert_eq!(l.over_count(500), None);
        assert!(
            l.over_count(501)
                .unwrap()
                .contains("MAX_TERMINATIONS_PER_MANIFEST=500")
        );
        assert_eq!(l.over_share(10, 100), None);
        assert!(l.over_share(11, 100).unwrap().contains("11.0% of 100"));
        assert!(l.over_share(1, 0).is_some());
        assert_eq!(l.over_share(0, 0), None);
        let off = Limits {
            max_share: 1.0,
            ..l
        };
        assert!(!off.checks_share());
        assert_eq!(off.over_share(1000, 1), None);
    }

    #[test]
    fn the_hash_covers_every_byte_and_the_count_collapses_duplicates() {
        let body = "externalId,terminationDate\nE1,2026-03-02\nE1,2026-03-02\nE2,2026-03-02\n";
        let first = count_and_hash(body.as_bytes(), Some(Format::Csv)).unwrap();
        let summary = first.summary;
        assert_eq!(
            (summary.records, summary.valid, summary.duplicates),
            (3, 2, 1)
        );
        assert_eq!(first.terminations, 2);
        assert_eq!(first.sha256, hex::encode(Sha256::digest(body.as_bytes())));
        let json = "[{\"externalId\":\"E1\",\"terminationDate\":\"2026-03-02\"}]\n\n  ";
        let sha = count_and_hash(json.as_bytes(), None).unwrap().sha256;
        assert_eq!(sha, hex::encode(Sha256::digest(json.as_bytes())));
        assert_eq!(manifest_id(&sha).len(), 16);
        assert!(is_manifest_id(&manifest_id(&sha)));
        assert!(!is_manifest_id("ABCDEF0123456789"));
    }

    #[test]
    fn rehires_are_not_counted_as_terminations() {
        let mut body = String::from("[");
        for i in 0..8 {
            let action = if i < 5 { "terminate" } else { "rehire" };
            if i > 0 {
                body.push(',');
            }
            body.push_str(&format!(
                "{{\"externalId\":\"E{i}\",\"terminationDate\":\"2026-03-02\",\"action\":\"{action}\"}}"
            ));
        }
        body.push(']');
        let first = count_and_hash(body.as_bytes(), None).unwrap();
        assert_eq!(first.summary.valid, 8);
        assert_eq!(first.terminations, 5);
        let l = Limits {
            max_per_manifest: 5,
            max_share: 1.0,
        };
        assert_eq!(l.over_count(first.terminations), None);
    }
}
