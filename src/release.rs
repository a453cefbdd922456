//! The hold releaser: moves durable holds (future-dated terminations the
//! consumer parked in the audit database) back onto the terminations queue once
//! they are due, by the injected [`Clock`]. Several releasers (service instances)
//! may run against one database: each hold is claimed by exactly one of them
//! (`FOR UPDATE SKIP LOCKED` / `BEGIN IMMEDIATE`, see
//! [`AuditStore::release_due`]) and marked released in the same transaction, only
//! after its send succeeded. Each release is audited (`scheduled` row saying it
//! was released).
//!
//! It sends the held body unchanged, with the held attributes (trace context)
//! plus [`attr::RELEASED`], signed afresh with the current signing key: the
//! consumer verified the message before it placed the hold, and a hold may
//! outlive the key that signed it (rotation; `run`'s per-process key). It never deletes or dead-letters a
//! message, never talks SCIM, and never decides whether a person is terminated:
//! the consumer re-checks everything when the message arrives.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::audit::{AuditEntry, AuditError, AuditStore, Hold};
use crate::clock::Clock;
use crate::domain::Outcome;
use crate::queue::{MAX_BATCH, OutgoingMessage, Queue, attr};

/// Releaser settings. [`Default`] gives the production values.
#[derive(Debug, Clone)]
pub struct ReleaserOptions {
    /// Pause between rounds (`HOLD_RELEASE_INTERVAL_SECS`, default 30 s).
    pub interval: Duration,
    /// Holds claimed per transaction (at most one SendMessageBatch: 10).
    pub batch: u32,
    /// "Now", for the due check.
    pub clock: Clock,
    /// How released messages are signed (`MESSAGE_SIGNING_KEYS`; the same set-up
    /// as the dispatcher's).
    pub signing: crate::signing::MessageAuth,
}

impl Default for ReleaserOptions {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(30),
            batch: MAX_BATCH as u32,
            clock: Clock::system(),
            signing: crate::signing::MessageAuth::Off,
        }
    }
}

/// What one [`Releaser::release_due`] call did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReleaseRound {
    /// Holds re-sent and marked released, in release order.
    pub released: Vec<Hold>,
    /// Holds whose send failed (still pending; tried again next round).
    pub failed: u64,
}

/// Why a release round stopped early (what was released before stays released).
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// The holds table could not be read or updated.
    #[error("hold release failed: {0}")]
    Store(#[from] AuditError),
}

/// Re-sends due holds to the terminations queue.
pub struct Releaser<Q: Queue> {
    store: AuditStore,
    queue: Q,
    options: ReleaserOptions,
}

impl<Q: Queue> Releaser<Q> {
    /// A releaser of `store`'s holds onto `queue` (the terminations queue).
    pub fn new(store: AuditStore, queue: Q, options: ReleaserOptions) -> Self {
        Self {
            store,
            queue,
            options,
        }
    }

    /// Releases every hold due now, batch by batch, until none is due or a
    /// batch could not be sent at all (the queue is down: the rest waits for the
    /// next round). Errors: [`ReleaseError::Store`].
    pub async fn release_due(&self) -> Result<ReleaseRound, ReleaseError> {
        let mut round = ReleaseRound::default();
        loop {
            let now = self.options.clock.now();
            let queue = &self.queue;
            let signing = &self.options.signing;
            let batch = self
                .store
                .release_due(
                    now,
                    self.options.batch.clamp(1, MAX_BATCH as u32),
                    |holds| send(queue, signing, holds, now),
                )
                .await?;
            let progressed = !batch.released.is_empty();
            round.failed += batch.failed.len() as u64;
            for hold in &batch.released {
                info!(external_id = hold.external_id, idempotency_key = %hold.idempotency_key, due_at = %hold.due_at, "hold released");
                if let Err(e) = self.store.append(&released_entry(hold, now)).await {
                    // The release itself is recorded in the holds table; the
                    // consumer's rows follow when the message is handled.
                    warn!(error = %e, external_id = hold.external_id, "could not audit a hold release");
                }
            }
            round.released.extend(batch.released);
            if !progressed || !batch.failed.is_empty() {
                return Ok(round);
            }
        }
    }

    /// Runs rounds every `interval` until `shutdown` is cancelled; a failed
    /// round is logged and retried next time. A round in progress finishes
    /// (its transaction is short) before the loop stops.
    pub async fn run(&self, shutdown: CancellationToken) {
        info!(
            interval_s = self.options.interval.as_secs(),
            queue = self.queue.name(),
            "hold releaser started"
        );
        loop {
            match self.release_due().await {
                Ok(r) if !r.released.is_empty() || r.failed > 0 => {
                    info!(
                        released = r.released.len(),
                        failed = r.failed,
                        "hold release round"
                    );
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "hold release round failed; retrying next round"),
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(self.options.interval) => {}
            }
        }
        info!("hold releaser stopped");
    }
}

/// Sends the claimed holds in one batch; one `bool` per hold (sent or not).
async fn send<Q: Queue>(
    queue: &Q,
    signing: &crate::signing::MessageAuth,
    holds: Vec<Hold>,
    now: DateTime<Utc>,
) -> Vec<bool> {
    let messages: Vec<OutgoingMessage> = holds
        .iter()
        .map(|h| {
            let mut attributes = h.attributes.clone();
            attributes.remove(attr::SIGNATURE_KEY_ID);
            attributes.remove(attr::SIGNATURE);
            attributes.extend(signing.sign(&h.body));
            attributes.insert(attr::RELEASED.to_owned(), now.to_rfc3339());
            OutgoingMessage {
                body: h.body.clone(),
                attributes,
                delay: Duration::ZERO,
            }
        })
        .collect();
    match queue.send_batch(&messages).await {
        Ok(failures) => {
            let mut sent = vec![true; holds.len()];
            for f in failures {
                warn!(
                    code = f.code,
                    message = f.message,
                    "could not release a hold"
                );
                if let Some(slot) = sent.get_mut(f.index) {
                    *slot = false;
                }
            }
            sent
        }
        Err(e) => {
            warn!(error = %e, "could not release holds: the queue refused the batch");
            vec![false; holds.len()]
        }
    }
}

fn released_entry(hold: &Hold, now: DateTime<Utc>) -> AuditEntry {
    AuditEntry {
        external_id: Some(hold.external_id.clone()),
        user_id: hold.user_id.clone(),
        action: "deactivate".into(),
        status_code: None,
        success: false,
        error_message: Some(format!(
            "hold released to the terminations queue at {} (due {})",
            now.to_rfc3339(),
            hold.due_at.to_rfc3339()
        )),
        outcome: Outcome::Scheduled,
        credential: None,
        groups_removed: Vec::new(),
        attempt: 0,
        sqs_message_id: None,
        manifest: hold.manifest.clone(),
        effective_at: Some(hold.due_at),
        correlation_ids: Vec::new(),
        duration_ms: None,
        idempotency_key: Some(hold.idempotency_key.clone()),
        actor: None,
    }
}
