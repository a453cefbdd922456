//! The consumer pool: receives termination messages, deprovisions each person
//! through the [`Deprovision`] engine, writes the audit row, and only then deletes
//! the message — or sends it to the dead-letter queue with its reason, or returns
//! it to the queue with a backoff (design.md, "Data flow" and "Error
//! classification"). Owns the per-message decisions: is the body usable, was this
//! termination already finished (idempotency key against the audit), is it due,
//! what to do with the engine's outcome, and when to give up.
//!
//! Shutdown is a parameter ([`CancellationToken`]): cancelling it stops intake at
//! once (an open long poll is abandoned), lets started terminations finish within
//! the drain deadline, and releases received-but-unstarted messages. The pool never
//! stops between a SCIM write and its audit row.
//!
//! A termination not yet due is held durably in the audit database (the
//! `termination_holds` table, through [`HoldSink`]) and its message deleted; the
//! releaser (`release`) re-sends it when due. A rehire record cancels the
//! person's pending holds and is audited as `rescinded`; a termination that a
//! later rehire withdrew is never acted on. "Now" comes from the injected
//! [`Clock`].
//!
//! This is the only module that deletes termination messages or sends them to the
//! dead-letter queue. It does not talk SCIM (the engine does), does not parse
//! manifests, and never updates an audit row (the store is append-only).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, warn};

use crate::audit::{
    AuditEntry, ClaimState, Hold, HoldState, ManifestOrigin, ManifestRecord, NewHold, Placed,
    Supersession,
};
use crate::clock::Clock;
use crate::domain::{IdempotencyKey, Outcome, RecordAction};
use crate::engine::{Deprovision, Report, Request};
use crate::plan::{Decision, planned_now};
use crate::queue::{
    MAX_BATCH, MAX_DELAY, MAX_VISIBILITY, OutgoingMessage, Queue, QueueError, ReceivedMessage,
    TerminationMessage, attr, truncate,
};
use crate::signing::SignatureError;

/// The two audit-store operations the pipeline needs (implemented by the audit
/// store; tests use fakes). Append-only: there is no update.
pub trait AuditSink: Send + Sync + 'static {
    /// The store's error type.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Appends one row; returns its id.
    fn append(&self, entry: &AuditEntry) -> impl Future<Output = Result<i64, Self::Error>> + Send;

    /// The most recent terminal outcome recorded for this termination, if any.
    fn latest_terminal_outcome(
        &self,
        key: &IdempotencyKey,
    ) -> impl Future<Output = Result<Option<Outcome>, Self::Error>> + Send;

    /// Claims `person` (an externalId) for `owner` for `lease`, across processes
    /// (see [`crate::audit::AuditStore::claim`]). The default grants every claim:
    /// for sinks that are never shared between processes (test fakes).
    fn claim(
        &self,
        person: &str,
        owner: &str,
        lease: Duration,
    ) -> impl Future<Output = Result<ClaimState, Self::Error>> + Send {
        let _ = (person, owner, lease);
        async { Ok(ClaimState::Taken) }
    }

    /// Releases `owner`'s claim on `person`. The default does nothing.
    fn release_claim(
        &self,
        person: &str,
        owner: &str,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        let _ = (person, owner);
        async { Ok(()) }
    }
}

impl AuditSink for crate::audit::AuditStore {
    type Error = crate::audit::AuditError;

    async fn append(&self, entry: &AuditEntry) -> Result<i64, Self::Error> {
        crate::audit::AuditStore::append(self, entry).await
    }

    async fn latest_terminal_outcome(
        &self,
        key: &IdempotencyKey,
    ) -> Result<Option<Outcome>, Self::Error> {
        crate::audit::AuditStore::latest_terminal_outcome(self, key).await
    }

    async fn claim(
        &self,
        person: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<ClaimState, Self::Error> {
        crate::audit::AuditStore::claim(self, person, owner, lease).await
    }

    async fn release_claim(&self, person: &str, owner: &str) -> Result<(), Self::Error> {
        crate::audit::AuditStore::release_claim(self, person, owner).await
    }
}

/// How much longer than one attempt a claim on a person lasts: room for the
/// audit write and the delete after the engine's deadline. A holder that dies
/// frees the person after `attempt_timeout` + this.
const CLAIM_MARGIN: Duration = Duration::from_secs(60);

/// Shortest and longest wait before a message whose person is busy elsewhere
/// comes back (jittered, so two waiting workers do not collide again).
const BUSY_WAIT_MS: (u64, u64) = (1_000, 3_000);

/// Receives each [`Decision`] (see [`Consumer::observe`]).
pub type Observer = Arc<dyn Fn(&Decision) + Send + Sync>;

/// The durable-hold operations and the supersession lookup the pipeline needs,
/// beside [`AuditSink`] (implemented by the audit store's `termination_holds`
/// table and audit log; tests use fakes).
pub trait HoldSink: AuditSink {
    /// Places a hold, idempotent on its idempotency key; returns the stored hold
    /// and whether this call created it.
    fn place_hold(
        &self,
        hold: &NewHold,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Placed, Self::Error>> + Send;

    /// Cancels the pending holds of `external_id` that the rehire `rehire`
    /// withdraws (see [`crate::audit::AuditStore::cancel_holds`]) with
    /// `reason`; returns them.
    fn cancel_holds(
        &self,
        external_id: &str,
        rehire: ManifestRecord<'_>,
        reason: &str,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Vec<Hold>, Self::Error>> + Send;

    /// The latest later entry (a rehire, or another termination of the same
    /// person) that supersedes the termination `key` (the record
    /// `termination`), if any (see [`crate::audit::AuditStore::supersession`]).
    fn supersession(
        &self,
        external_id: &str,
        key: &IdempotencyKey,
        termination: ManifestRecord<'_>,
    ) -> impl Future<Output = Result<Option<Supersession>, Self::Error>> + Send;

    /// The latest rehire that makes this termination stale (see
    /// [`crate::audit::AuditStore::rehired_since`]). Default: none (fakes).
    fn rehired_since(
        &self,
        _external_id: &str,
        _termination: ManifestRecord<'_>,
    ) -> impl Future<Output = Result<Option<Supersession>, Self::Error>> + Send {
        std::future::ready(Ok(None))
    }
}

impl HoldSink for crate::audit::AuditStore {
    async fn rehired_since(
        &self,
        external_id: &str,
        termination: ManifestRecord<'_>,
    ) -> Result<Option<Supersession>, Self::Error> {
        crate::audit::AuditStore::rehired_since(self, external_id, termination).await
    }

    async fn place_hold(&self, hold: &NewHold, now: DateTime<Utc>) -> Result<Placed, Self::Error> {
        crate::audit::AuditStore::place_hold(self, hold, now).await
    }

    async fn cancel_holds(
        &self,
        external_id: &str,
        rehire: ManifestRecord<'_>,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<Hold>, Self::Error> {
        crate::audit::AuditStore::cancel_holds(self, external_id, rehire, reason, now).await
    }

    async fn supersession(
        &self,
        external_id: &str,
        key: &IdempotencyKey,
        termination: ManifestRecord<'_>,
    ) -> Result<Option<Supersession>, Self::Error> {
        crate::audit::AuditStore::supersession(self, external_id, key, termination).await
    }
}

/// Default `MAX_FUTURE_DAYS`: a termination effective further ahead is refused
/// as `invalid` (a typo such as 2062 for 2026 must not sit in a hold for decades).
pub const DEFAULT_MAX_FUTURE_DAYS: u32 = 90;

/// The reason recorded when a termination is further ahead than
/// `max_future_days` from `now`, or `None` when it is within the limit.
pub fn too_far_ahead(
    effective_at: DateTime<Utc>,
    now: DateTime<Utc>,
    max_future_days: u32,
) -> Option<String> {
    let horizon = now + chrono::Duration::days(i64::from(max_future_days));
    (effective_at > horizon).then(|| {
        format!(
            "effective {} is more than MAX_FUTURE_DAYS={max_future_days} days ahead",
            effective_at.to_rfc3339()
        )
    })
}

/// How the pool behaves. [`Default`] gives the production values.
#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    /// Terminations in flight at once (`CONCURRENCY`).
    pub concurrency: usize,
    /// Long-poll wait per receive (SQS allows at most 20 s).
    pub receive_wait: Duration,
    /// How long one engine attempt may take before it is reported as
    /// `retrying` (the engine's deadline).
    pub attempt_timeout: Duration,
    /// How long started terminations may take to finish after shutdown begins.
    /// Keep it below ECS's `stopTimeout` (30 s by default).
    pub drain_deadline: Duration,
    /// First retry delay after a transient failure; doubles per receive.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Resolve and plan only: nothing is changed, nothing is dead-lettered, and
    /// audit rows say `dry_run` (so a later real run is not suppressed).
    pub dry_run: bool,
    /// Message authenticity: with keys, every message is verified before
    /// anything else and an unsigned, altered or unknown-key message is
    /// dead-lettered as `bad_signature` without contacting the SCIM service.
    pub signing: crate::signing::MessageAuth,
    /// "Now" for the due check and `MAX_FUTURE_DAYS` (the system clock; tests
    /// inject a manual one).
    pub clock: Clock,
    /// Terminations effective more than this many days ahead are dead-lettered
    /// as `invalid` (`MAX_FUTURE_DAYS`).
    pub max_future_days: u32,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        Self {
            concurrency: 8,
            receive_wait: crate::queue::MAX_WAIT,
            attempt_timeout: Duration::from_secs(60),
            drain_deadline: Duration::from_secs(25),
            retry_base: Duration::from_secs(5),
            retry_max: Duration::from_secs(15 * 60),
            dry_run: false,
            signing: crate::signing::MessageAuth::Off,
            clock: Clock::system(),
            max_future_days: DEFAULT_MAX_FUTURE_DAYS,
        }
    }
}

/// What one message came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A terminal outcome that is not dead-lettered (`deactivated`,
    /// `already_inactive`, `not_found`, `protected`): audited, message deleted.
    Done(Outcome),
    /// A permanent failure: copied to the dead-letter queue with its reason,
    /// audited, message deleted.
    DeadLettered(Outcome),
    /// The audit already holds a terminal outcome for this termination: deleted
    /// without acting or counting again.
    AlreadyDone(Outcome),
    /// Returned to the queue, to be received again after `delay` (a transient
    /// failure, an audit write that failed, or the same termination in progress
    /// in another worker).
    Retry {
        /// Why.
        reason: String,
        /// How long it stays hidden.
        delay: Duration,
    },
    /// Not due by this pool's clock, but its hold was already released (a
    /// releaser whose clock runs ahead): hidden until its effective time here (at
    /// most 12 h at a time).
    NotDue {
        /// How long it stays hidden.
        delay: Duration,
    },
    /// Not due yet: held durably in the audit database (the releaser re-sends it
    /// when due), recorded as `scheduled`, message deleted.
    Deferred {
        /// When it takes effect.
        effective_at: chrono::DateTime<Utc>,
    },
    /// A dry run: what would happen was recorded as `dry_run`; message deleted.
    /// Carries the planned outcome: `deactivated` (would deactivate),
    /// `already_inactive`, `not_found`, `ambiguous`, `protected`, …, or
    /// `scheduled` when not yet due.
    DryRun(Outcome),
    /// The step could not finish talking to the queue (e.g. the delete failed);
    /// the message will be received again and the audit check makes that
    /// harmless.
    QueueFailed(String),
}

impl Step {
    /// The outcome this step counts as (design.md, "Outcomes"): the terminal
    /// outcome, `dry_run`, `retrying` for a message returned to the queue,
    /// `scheduled` for one not yet due. `None` for a redelivery of finished work
    /// and for a step that could not finish its queue call: neither is a new
    /// outcome of the termination.
    pub fn outcome(&self) -> Option<Outcome> {
        match self {
            Step::Done(o) | Step::DeadLettered(o) => Some(*o),
            Step::DryRun(_) => Some(Outcome::DryRun),
            Step::Retry { .. } => Some(Outcome::Retrying),
            Step::NotDue { .. } | Step::Deferred { .. } => Some(Outcome::Scheduled),
            Step::AlreadyDone(_) | Step::QueueFailed(_) => None,
        }
    }

    /// The step's name in logs: `done`, `dead_lettered`, `already_done`,
    /// `retry`, `not_due`, `deferred`, `dry_run` or `queue_failed`.
    pub fn kind(&self) -> &'static str {
        match self {
            Step::Done(_) => "done",
            Step::DeadLettered(_) => "dead_lettered",
            Step::AlreadyDone(_) => "already_done",
            Step::Retry { .. } => "retry",
            Step::NotDue { .. } => "not_due",
            Step::Deferred { .. } => "deferred",
            Step::DryRun(_) => "dry_run",
            Step::QueueFailed(_) => "queue_failed",
        }
    }
}

/// The `termination` span of a received message, continuing the dispatcher's
/// trace, with the message's queue lag recorded.
fn termination_span(message: &ReceivedMessage) -> tracing::Span {
    crate::telemetry::termination_span(
        &message.message_id,
        message.receive_count,
        &message.attributes,
        message.sent_at,
    )
}

/// `Some("bad_signature")` when the signature check failed: such a message is
/// counted in `deprovision_messages_rejected_total`, not as a termination.
fn rejected_reason(authentic: &Result<(), SignatureError>) -> Option<&'static str> {
    authentic.is_err().then_some(crate::signing::BAD_SIGNATURE)
}

/// Closes a termination's span: its outcome counted (or, when `rejected`
/// gives a reason code, the message counted as rejected, not as a
/// termination), its one final log line.
fn finish(
    span: &tracing::Span,
    message: &ReceivedMessage,
    step: &Step,
    rejected: Option<&'static str>,
) {
    let decoded = TerminationMessage::decode(&message.body).ok();
    let external_id = decoded
        .as_ref()
        .map(|t| t.record.external_id.as_str().to_owned())
        .or_else(|| raw_external_id(&message.body));
    let counted = step.outcome();
    crate::telemetry::finish_termination(
        span,
        &crate::telemetry::TerminationEnd {
            message_id: &message.message_id,
            attempt: message.receive_count,
            external_id: external_id.as_deref(),
            idempotency_key: decoded.as_ref().map(|t| t.idempotency_key.as_str()),
            counted,
            rejected,
            shown: match step {
                Step::AlreadyDone(previous) => Some(*previous),
                _ => counted,
            },
            step: step.kind(),
            reason: match step {
                Step::Retry { reason, .. } => Some(reason.as_str()),
                Step::QueueFailed(error) => Some(error.as_str()),
                _ => None,
            },
            failed: matches!(step, Step::DeadLettered(_) | Step::QueueFailed(_)),
        },
    );
}

/// Running counts, readable while the pool runs (progress bars) and at the end.
#[derive(Debug, Default)]
pub struct Tally {
    outcomes: [AtomicU64; Outcome::ALL.len()],
    would: [AtomicU64; Outcome::ALL.len()],
    already_done: AtomicU64,
    retried: AtomicU64,
    not_due: AtomicU64,
    queue_failures: AtomicU64,
}

/// A copy of [`Tally`] at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct TallySnapshot {
    /// Terminations finished, by terminal outcome (and `dry_run`), counted once
    /// each.
    pub outcomes: Vec<(Outcome, u64)>,
    /// In a dry run: what each termination would come to (`deactivated` for
    /// "would deactivate", `scheduled` for not yet due, …).
    pub would: Vec<(Outcome, u64)>,
    /// Redeliveries of already-finished terminations, deleted without acting.
    pub already_done: u64,
    /// Messages returned to the queue for another attempt.
    pub retried: u64,
    /// Messages held (or deferred) because they were not yet due.
    pub not_due: u64,
    /// Steps that could not complete a queue call.
    pub queue_failures: u64,
}

impl TallySnapshot {
    /// The count for one outcome.
    pub fn count(&self, outcome: Outcome) -> u64 {
        self.outcomes
            .iter()
            .find(|(o, _)| *o == outcome)
            .map_or(0, |(_, n)| *n)
    }

    /// Terminations that reached a final state (terminal outcomes and dry runs).
    pub fn finished(&self) -> u64 {
        self.outcomes.iter().map(|(_, n)| n).sum()
    }
}

impl Tally {
    fn index(outcome: Outcome) -> usize {
        Outcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or_default()
    }

    fn record(&self, step: &Step) {
        let counter = match step {
            Step::Done(o) | Step::DeadLettered(o) => &self.outcomes[Self::index(*o)],
            Step::DryRun(would) => {
                self.would[Self::index(*would)].fetch_add(1, Ordering::Relaxed);
                &self.outcomes[Self::index(Outcome::DryRun)]
            }
            Step::AlreadyDone(_) => &self.already_done,
            Step::Retry { .. } => &self.retried,
            Step::NotDue { .. } | Step::Deferred { .. } => &self.not_due,
            Step::QueueFailed(_) => &self.queue_failures,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts now.
    pub fn snapshot(&self) -> TallySnapshot {
        TallySnapshot {
            outcomes: Outcome::ALL
                .iter()
                .map(|o| (*o, self.outcomes[Self::index(*o)].load(Ordering::Relaxed)))
                .filter(|(_, n)| *n > 0)
                .collect(),
            would: Outcome::ALL
                .iter()
                .map(|o| (*o, self.would[Self::index(*o)].load(Ordering::Relaxed)))
                .filter(|(_, n)| *n > 0)
                .collect(),
            already_done: self.already_done.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            not_due: self.not_due.load(Ordering::Relaxed),
            queue_failures: self.queue_failures.load(Ordering::Relaxed),
        }
    }
}

/// How the pool ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerReport {
    /// The counts.
    pub tally: TallySnapshot,
    /// False when the drain deadline passed with terminations still running
    /// (their messages become visible again when their visibility lapses).
    pub drained: bool,
    /// Received-but-unstarted messages released at shutdown.
    pub released: u64,
}

/// The pool. Build one, then [`Consumer::run`] it, or drive single messages with
/// [`Consumer::handle`] (tests).
pub struct Consumer<Q: Queue, E: Deprovision + 'static, A: HoldSink> {
    shared: Arc<Shared<Q, E, A>>,
    /// The batch-delete task, started on first use, stopped when the pool is
    /// dropped.
    deleter: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl<Q: Queue, E: Deprovision + 'static, A: HoldSink> Drop for Consumer<Q, E, A> {
    fn drop(&mut self) {
        if let Some(h) = lock(&self.deleter).take() {
            h.abort();
        }
    }
}

struct Shared<Q, E, A> {
    queue: Q,
    dead_letter: Q,
    engine: Arc<E>,
    audit: Arc<A>,
    options: ConsumerOptions,
    tally: Arc<Tally>,
    /// Message id → its latest receipt handle, for messages being worked on. A
    /// redelivery of one of them (its visibility lapsed) only refreshes the handle.
    inflight: Mutex<HashMap<String, String>>,
    /// Idempotency keys being worked on in this process: the same termination
    /// from two manifests is never run twice at once.
    busy: Mutex<HashSet<IdempotencyKey>>,
    /// Names this pool in the owner of its claims (with the process id and the
    /// message id), so a claim row says who holds it.
    pool_id: String,
    observer: OnceLock<Observer>,
    deletes: mpsc::Sender<DeleteRequest>,
    deletes_rx: Mutex<Option<mpsc::Receiver<DeleteRequest>>>,
}

struct DeleteRequest {
    message_id: String,
    done: oneshot::Sender<Result<(), String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<Q: Queue, E: Deprovision + 'static, A: HoldSink> Consumer<Q, E, A> {
    /// A pool receiving from `queue` and dead-lettering into `dead_letter`.
    pub fn new(
        queue: Q,
        dead_letter: Q,
        engine: Arc<E>,
        audit: Arc<A>,
        options: ConsumerOptions,
    ) -> Self {
        let (tx, rx) = mpsc::channel(256);
        Self {
            shared: Arc::new(Shared {
                queue,
                dead_letter,
                engine,
                audit,
                options,
                tally: Arc::new(Tally::default()),
                inflight: Mutex::new(HashMap::new()),
                busy: Mutex::new(HashSet::new()),
                pool_id: uuid::Uuid::new_v4().simple().to_string()[..8].to_owned(),
                observer: OnceLock::new(),
                deletes: tx,
                deletes_rx: Mutex::new(Some(rx)),
            }),
            deleter: Mutex::new(None),
        }
    }

    /// The live counts (shared; cheap to clone).
    pub fn tally(&self) -> Arc<Tally> {
        self.shared.tally.clone()
    }

    /// Calls `observer` with each person's [`Decision`] once it is audited (the
    /// run summary's list of people to review, a dry run's plan). Set once,
    /// before [`Consumer::run`]; a second call is ignored.
    pub fn observe(&self, observer: impl Fn(&Decision) + Send + Sync + 'static) {
        let _ = self.shared.observer.set(Arc::new(observer));
    }

    /// Runs until `shutdown` is cancelled, then drains: started terminations
    /// finish (up to the drain deadline), unstarted ones are released
    /// (visibility 0). Receive errors are logged and retried with backoff; they
    /// never end the pool.
    pub async fn run(&self, shutdown: CancellationToken) -> ConsumerReport {
        let shared = &self.shared;
        self.ensure_deleter();
        let concurrency = shared.options.concurrency.max(1);
        let permits = Arc::new(Semaphore::new(concurrency));
        let tracker = TaskTracker::new();
        let mut released = 0u64;
        let mut receive_failures = 0u32;
        info!(
            queue = shared.queue.name(),
            concurrency,
            visibility_s = shared.queue.settings().visibility_timeout.as_secs(),
            max_receive_count = shared.queue.settings().max_receive_count,
            "consumer started"
        );
        'intake: loop {
            // A permit before receiving: never hold a message that cannot start.
            let first = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                p = permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let mut batch_permits = vec![first];
            while batch_permits.len() < MAX_BATCH {
                match permits.clone().try_acquire_owned() {
                    Ok(p) => batch_permits.push(p),
                    Err(_) => break,
                }
            }
            let received = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                r = shared.queue.receive(batch_permits.len() as u32, shared.options.receive_wait) => r,
            };
            let messages = match received {
                Ok(m) => {
                    receive_failures = 0;
                    m
                }
                Err(e) => {
                    receive_failures = receive_failures.saturating_add(1);
                    let delay = backoff(
                        Duration::from_secs(1),
                        Duration::from_secs(30),
                        receive_failures,
                    );
                    warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "receive failed");
                    drop(batch_permits);
                    tokio::select! {
                        () = shutdown.cancelled() => break 'intake,
                        () = tokio::time::sleep(delay) => continue 'intake,
                    }
                }
            };
            let mut batch_permits = batch_permits.into_iter();
            for message in messages {
                if shutdown.is_cancelled() {
                    released += 1;
                    shared.release(&message).await;
                    continue;
                }
                {
                    let mut inflight = lock(&shared.inflight);
                    if let Some(handle) = inflight.get_mut(&message.message_id) {
                        // Its visibility lapsed while we work on it: keep the newest
                        // handle so our deletes and extensions still apply.
                        debug!(message_id = %message.message_id, "redelivered while in progress");
                        *handle = message.receipt_handle.clone();
                        continue;
                    }
                    inflight.insert(message.message_id.clone(), message.receipt_handle.clone());
                }
                let Some(permit) = batch_permits.next() else {
                    // Unreachable: a receive never returns more than asked for.
                    lock(&shared.inflight).remove(&message.message_id);
                    released += 1;
                    shared.release(&message).await;
                    continue;
                };
                let shared = shared.clone();
                tracker.spawn(async move {
                    shared.work(message, permit).await;
                });
            }
        }
        tracker.close();
        info!(in_flight = tracker.len(), "consumer draining");
        let drained = tokio::time::timeout(shared.options.drain_deadline, tracker.wait())
            .await
            .is_ok();
        if !drained {
            warn!(
                still_running = tracker.len(),
                "drain deadline passed; unfinished messages reappear when their visibility lapses"
            );
        }
        let report = ConsumerReport {
            tally: shared.tally.snapshot(),
            drained,
            released,
        };
        info!(?report, "consumer stopped");
        report
    }

    /// Handles one received message to its end state (the step function of the
    /// pool, without the concurrency, extension and drain around it). The message
    /// must not be in flight elsewhere in this pool.
    pub async fn handle(&self, message: ReceivedMessage) -> Step {
        self.ensure_deleter();
        lock(&self.shared.inflight)
            .insert(message.message_id.clone(), message.receipt_handle.clone());
        let span = termination_span(&message);
        let authentic = self.shared.authentic(&message);
        let step = self
            .shared
            .step(&message, &authentic)
            .instrument(span.clone())
            .await;
        lock(&self.shared.inflight).remove(&message.message_id);
        self.shared.tally.record(&step);
        finish(&span, &message, &step, rejected_reason(&authentic));
        step
    }

    fn ensure_deleter(&self) {
        if let Some(rx) = lock(&self.shared.deletes_rx).take() {
            let shared = self.shared.clone();
            *lock(&self.deleter) = Some(tokio::spawn(async move { shared.run_deleter(rx).await }));
        }
    }
}

/// Exponential backoff from `base`, doubling per attempt (1-based), capped at
/// `max`, with jitter over the upper half so retries from many workers spread.
fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let exp = base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(max);
    let low = exp / 2;
    let jitter_ms = rand::random_range(0..=(exp - low).as_millis().min(u64::MAX as u128) as u64);
    low + Duration::from_millis(jitter_ms)
}

/// The attributes a held message is re-sent with: its own, without the
/// dead-letter bookkeeping and any earlier release mark.
fn held_attributes(
    attributes: &std::collections::BTreeMap<String, String>,
) -> std::collections::BTreeMap<String, String> {
    const DROPPED: [&str; 5] = [
        attr::REASON,
        attr::DETAIL,
        attr::SOURCE_MESSAGE_ID,
        attr::RECEIVE_COUNT,
        attr::RELEASED,
    ];
    attributes
        .iter()
        .filter(|(k, _)| !DROPPED.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// `bucket/key` of a manifest, for reasons shown to people.
fn origin_name(origin: &ManifestOrigin) -> String {
    format!("{}/{}", origin.bucket, origin.key)
}

/// Best effort: the externalId of a body that did not decode, for the audit row.
fn raw_external_id(body: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    v.get("record")?
        .get("externalId")?
        .as_str()
        .map(str::to_owned)
}

impl<Q: Queue, E: Deprovision + 'static, A: HoldSink> Shared<Q, E, A> {
    /// The message's signature check (once per message: `step` acts on it and
    /// `finish` counts a failure as a rejected message, not a termination).
    fn authentic(&self, message: &ReceivedMessage) -> Result<(), SignatureError> {
        self.options
            .signing
            .verify(&message.body, &message.attributes)
            .map(|_| ())
    }

    /// One message, in its worker task: the step, with the visibility extended
    /// while it runs.
    async fn work(self: Arc<Self>, message: ReceivedMessage, permit: OwnedSemaphorePermit) {
        let span = termination_span(&message);
        let authentic = self.authentic(&message);
        let step = async {
            tokio::select! {
                biased;
                step = self.step(&message, &authentic) => step,
                never = self.extend_visibility(&message.message_id) => match never {},
            }
        }
        .instrument(span.clone())
        .await;
        lock(&self.inflight).remove(&message.message_id);
        self.tally.record(&step);
        finish(&span, &message, &step, rejected_reason(&authentic));
        drop(permit);
    }

    /// Keeps the message hidden while its termination runs: every half visibility
    /// timeout, set it to a full one again, using the newest receipt handle.
    async fn extend_visibility(&self, message_id: &str) -> std::convert::Infallible {
        let lease = self
            .queue
            .settings()
            .visibility_timeout
            .max(Duration::from_secs(2));
        loop {
            tokio::time::sleep(lease / 2).await;
            let Some(receipt) = lock(&self.inflight).get(message_id).cloned() else {
                continue;
            };
            if let Err(e) = self.queue.change_visibility(&receipt, lease).await {
                warn!(error = %e, "could not extend visibility");
            }
        }
    }

    fn current_receipt(&self, message: &ReceivedMessage) -> String {
        lock(&self.inflight)
            .get(&message.message_id)
            .cloned()
            .unwrap_or_else(|| message.receipt_handle.clone())
    }

    fn is_last_receive(&self, message: &ReceivedMessage) -> bool {
        self.queue
            .settings()
            .max_receive_count
            .is_some_and(|max| message.receive_count >= max)
    }

    /// The decisions for one message, whose signature check came out as
    /// `authentic`.
    async fn step(
        &self,
        message: &ReceivedMessage,
        authentic: &Result<(), SignatureError>,
    ) -> Step {
        let started = Instant::now();
        // Authenticity first: nothing in an unauthentic body is trusted, not even
        // for the idempotency check.
        if let Err(e) = authentic {
            tracing::error!(error = %e, "termination message failed signature verification; dead-lettering without acting");
            // Evidence of the attempt, but not a termination: the action
            // `reject_message` keeps the row out of the reports (it is in
            // NON_TERMINATION_ACTIONS, so it gets no termination id), and the
            // externalId the unverified body claims goes into `error_message`
            // (escaped, truncated), not `external_id`: that column holds only
            // identifiers HR signed, so a forger cannot plant rows under a real
            // employee's externalId in the seed's `WHERE external_id = …` lookups.
            let mut entry = self.entry(message, None, Outcome::Invalid, started);
            entry.action = crate::audit::REJECT_MESSAGE_ACTION.into();
            let claimed = raw_external_id(&message.body)
                .map(|c| format!("{:?}", truncate(c.trim(), 256)))
                .unwrap_or_else(|| "none".into());
            entry.error_message = Some(format!("{e}; claimed externalId {claimed} (unverified)"));
            return self
                .dead_letter_coded(
                    message,
                    entry,
                    crate::signing::BAD_SIGNATURE,
                    &e.to_string(),
                )
                .await;
        }
        let termination = match TerminationMessage::decode(&message.body) {
            Ok(t) => t,
            Err(e) => {
                warn!(error = %e, "undecodable termination message");
                let mut entry = self.entry(message, None, Outcome::Invalid, started);
                entry.external_id = raw_external_id(&message.body);
                entry.error_message = Some(e.to_string());
                let external_id = entry.external_id.clone();
                let step = self.dead_letter(message, entry, &e.to_string()).await;
                self.notify(&step, None, None, |d| {
                    d.external_id = external_id;
                    d.reason = Some(e.to_string());
                });
                return step;
            }
        };
        tracing::Span::current().record("external_id", termination.record.external_id.as_str());
        tracing::Span::current().record("idempotency_key", termination.idempotency_key.as_str());
        let key = termination.idempotency_key.clone();

        if let Some(step) = self.finished_before(message, &termination).await {
            return step;
        }

        if !lock(&self.busy).insert(key.clone()) {
            return self
                .person_busy(
                    message,
                    "the same termination is in progress in another worker of this process".into(),
                )
                .await;
        }
        let step = self.claimed(message, &termination, started).await;
        lock(&self.busy).remove(&key);
        step
    }

    /// `Some(step)` when the audit already holds a terminal outcome for this
    /// termination (the redelivery is deleted without acting or counting again;
    /// a replayed dead-lettered one is attempted again), or the audit cannot be
    /// read (the message comes back later).
    async fn finished_before(
        &self,
        message: &ReceivedMessage,
        termination: &TerminationMessage,
    ) -> Option<Step> {
        match self
            .audit
            .latest_terminal_outcome(&termination.idempotency_key)
            .await
        {
            Ok(Some(previous)) => {
                let replayed = message.attributes.contains_key(attr::REPLAYED);
                if previous.is_dead_lettered() && replayed {
                    return None;
                }
                info!(%previous, "termination already finished; deleting the redelivery");
                let step = match self.delete(message).await {
                    Ok(()) => Step::AlreadyDone(previous),
                    Err(e) => Step::QueueFailed(e),
                };
                self.notify(&step, Some(termination), None, |_| {});
                Some(step)
            }
            Ok(None) => None,
            Err(e) => Some(
                self.retry(message, format!("audit store unreadable: {e}"), None)
                    .await,
            ),
        }
    }

    /// Someone else is working on this person: the message comes back after a
    /// short, jittered wait. Not an attempt: nothing is audited and the wait
    /// does not grow with the receive count.
    async fn person_busy(&self, message: &ReceivedMessage, reason: String) -> Step {
        let delay = Duration::from_millis(rand::random_range(BUSY_WAIT_MS.0..=BUSY_WAIT_MS.1));
        info!(
            reason,
            delay_ms = delay.as_millis() as u64,
            "person busy elsewhere; returning message to the queue"
        );
        match self.hold(message, delay).await {
            Ok(()) => Step::Retry { reason, delay },
            Err(e) => Step::QueueFailed(e),
        }
    }

    /// Takes the cross-process claim on the person (not in a dry run, which
    /// changes nothing), runs the termination, and releases the claim once its
    /// audit row is written.
    async fn claimed(
        &self,
        message: &ReceivedMessage,
        termination: &TerminationMessage,
        started: Instant,
    ) -> Step {
        if self.options.dry_run {
            return self.decide(message, termination, started).await;
        }
        let person = termination.record.external_id.as_str();
        let owner = format!(
            "pid {} pool {} message {}",
            std::process::id(),
            self.pool_id,
            message.message_id
        );
        let lease = self.options.attempt_timeout.saturating_add(CLAIM_MARGIN);
        match self.audit.claim(person, &owner, lease).await {
            Ok(ClaimState::Taken) => {}
            Ok(held) => {
                return self
                    .person_busy(message, format!("externalId {person} is {held}"))
                    .await;
            }
            Err(e) => {
                return self
                    .retry(message, format!("cannot claim the person: {e}"), None)
                    .await;
            }
        }
        // Another worker may have finished this termination between the first
        // audit check and the claim.
        let step = match self.finished_before(message, termination).await {
            Some(step) => step,
            None => self.decide(message, termination, started).await,
        };
        if let Err(e) = self.audit.release_claim(person, &owner).await {
            warn!(error = %e, "could not release the claim; it lapses with its lease");
        }
        step
    }

    /// Under the person's claim (so that a rehire and a termination of one
    /// person are never decided at once): a rehire is recorded; a termination
    /// too far ahead is refused, one superseded by a rehire is rescinded, one not
    /// yet due is held, and a due one is attempted.
    async fn decide(
        &self,
        message: &ReceivedMessage,
        termination: &TerminationMessage,
        started: Instant,
    ) -> Step {
        let key = termination.idempotency_key.clone();
        if termination.record.action == RecordAction::Rehire {
            let step = self.rehire(message, termination, started).await;
            self.notify(&step, Some(termination), None, |d| {
                d.reason = Some(
                    "a rehire record: cancels this person's pending terminations; \
                     Genesys not contacted"
                        .into(),
                );
            });
            return step;
        }

        // The dispatcher saw the whole file: a rehire of this person later in it,
        // or dated at or after this termination, withdraws it even when this
        // message is handled first (the rehire may not be recorded yet).
        if let Some(rehire) = termination.rehired_in_manifest {
            let reason = match rehire.effective_at {
                Some(at) => format!(
                    "rehired by record {} of the same manifest {} (effective {})",
                    rehire.index,
                    origin_name(&termination.origin),
                    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                ),
                None => format!(
                    "record {} of the same manifest {} rehires this person but was rejected; \
                     not acted on until HR sends a corrected file",
                    rehire.index,
                    origin_name(&termination.origin),
                ),
            };
            let step = self.rescind(message, termination, &reason, started).await;
            self.notify(&step, Some(termination), None, |d| d.reason = Some(reason));
            return step;
        }

        let now = self.options.clock.now();
        if let Some(reason) =
            too_far_ahead(termination.effective_at, now, self.options.max_future_days)
        {
            warn!(effective_at = %termination.effective_at, "too far ahead; refused");
            let mut entry = self.entry(message, Some(termination), Outcome::Invalid, started);
            entry.error_message = Some(reason.clone());
            let step = self.dead_letter(message, entry, &reason).await;
            self.notify(&step, Some(termination), None, |d| d.reason = Some(reason));
            return step;
        }

        // A rehire audited after this termination was first seen withdraws it
        // (e.g. a hold released while the rehire was cancelling it, or a retry),
        // and so does a rehire effective on or after this termination's time,
        // whenever it was recorded (this termination is stale).
        let external_id = termination.record.external_id.as_str();
        let superseding = match self
            .audit
            .supersession(external_id, &key, termination.record_at())
            .await
        {
            Ok(None) => {
                self.audit
                    .rehired_since(external_id, termination.record_at())
                    .await
            }
            other => other,
        };
        match superseding {
            Ok(Some(s)) if s.action == RecordAction::Rehire.as_str() => {
                let step = self
                    .rescind(message, termination, &s.reason(), started)
                    .await;
                self.notify(&step, Some(termination), None, |d| {
                    d.reason = Some(s.reason());
                });
                return step;
            }
            Ok(_) => {}
            Err(e) => {
                return self
                    .retry(message, format!("audit store unreadable: {e}"), None)
                    .await;
            }
        }

        let not_due = termination.effective_at > now;
        if not_due && !self.options.dry_run {
            let step = self.hold_durably(message, termination, now, started).await;
            self.notify(&step, Some(termination), None, |_| {});
            return step;
        }

        self.attempt(message, termination, started, not_due).await
    }

    /// Runs the engine and acts on its report.
    async fn attempt(
        &self,
        message: &ReceivedMessage,
        termination: &TerminationMessage,
        started: Instant,
        not_due: bool,
    ) -> Step {
        let report = self
            .engine
            .deprovision(&Request {
                external_id: termination.record.external_id.clone(),
                user_id: termination.record.user_id.clone(),
                dry_run: self.options.dry_run,
                deadline: Instant::now() + self.options.attempt_timeout,
            })
            .await;
        let step = self
            .conclude(message, termination, &report, started, not_due)
            .await;
        self.notify(&step, Some(termination), Some(&report), |_| {});
        step
    }

    /// Tells the observer, if any, how a person ended: only for steps that end
    /// the termination (audited and deleted), never for one that comes back.
    fn notify(
        &self,
        step: &Step,
        termination: Option<&TerminationMessage>,
        report: Option<&Report>,
        adjust: impl FnOnce(&mut Decision),
    ) {
        let Some(observer) = self.observer.get() else {
            return;
        };
        let (outcome, planned, earlier) = match step {
            Step::Done(o) | Step::DeadLettered(o) => (*o, None, false),
            Step::DryRun(planned) => (Outcome::DryRun, Some(*planned), false),
            Step::Deferred { .. } => (Outcome::Scheduled, None, false),
            Step::AlreadyDone(o) => (*o, None, true),
            Step::Retry { .. } | Step::NotDue { .. } | Step::QueueFailed(_) => return,
        };
        let when_due = (planned == Some(Outcome::Scheduled))
            .then(|| report.map(planned_now))
            .flatten();
        let mut decision = Decision {
            external_id: termination.map(|t| t.record.external_id.as_str().to_owned()),
            index: termination.and_then(|t| t.origin.index),
            user_id: report
                .and_then(|r| r.user_id.as_ref())
                .or_else(|| termination.and_then(|t| t.record.user_id.as_ref()))
                .map(|u| u.as_str().to_owned()),
            outcome,
            planned,
            when_due,
            groups: report.map(|r| r.groups_removed.clone()).unwrap_or_default(),
            roles: report.map(|r| r.roles_removed.clone()).unwrap_or_default(),
            effective_at: termination.map(|t| t.effective_at),
            reason: if earlier {
                Some(format!(
                    "finished by an earlier run as {outcome}; not acted on again"
                ))
            } else {
                report.and_then(|r| r.detail.clone())
            },
            earlier,
        };
        if (outcome == Outcome::Scheduled || planned == Some(Outcome::Scheduled))
            && let Some(t) = termination
        {
            let due = format!(
                "not due until {}",
                t.effective_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            );
            decision.reason = Some(match decision.reason.take() {
                Some(detail) => format!("{due}; {detail}"),
                None => due,
            });
        }
        adjust(&mut decision);
        observer(&decision);
    }

    /// Not yet due: place the durable hold (idempotent), audit `scheduled`, then
    /// delete the message. The releaser re-sends the held body when due.
    async fn hold_durably(
        &self,
        message: &ReceivedMessage,
        termination: &TerminationMessage,
        now: DateTime<Utc>,
        started: Instant,
    ) -> Step {
        let new = NewHold {
            idempotency_key: termination.idempotency_key.clone(),
            external_id: termination.record.external_id.as_str().to_owned(),
            user_id: termination
                .record
                .user_id
                .as_ref()
                .map(|u| u.as_str().to_owned()),
            due_at: termination.effective_at,
            body: message.body.clone(),
            attributes: held_attributes(&message.attributes),
            manifest: Some(termination.origin.clone()),
        };
        let placed = match self.audit.place_hold(&new, now).await {
            Ok(p) => p,
            Err(e) => {
                return self
                    .retry(message, format!("cannot place the hold: {e}"), None)
                    .await;
            }
        };
        match &placed.hold.state {
            HoldState::Pending => {}
            HoldState::Released(at) => {
                // Released by a releaser whose clock is ahead of ours: keep the
                // message and look again when it is due by this clock.
                let delay = (termination.effective_at - now)
                    .to_std()
                    .unwrap_or_default()
                    .min(MAX_VISIBILITY);
                info!(released_at = %at, "hold already released but not due by this clock");
                return match self.hold(message, delay).await {
                    Ok(()) => Step::NotDue { delay },
                    Err(e) => Step::QueueFailed(e),
                };
            }
            HoldState::Cancelled { reason, .. } => {
                let reason = reason.clone();
                return self.rescind(message, termination, &reason, started).await;
            }
        }
        info!(effective_at = %termination.effective_at, hold = placed.hold.id, created = placed.created, "not yet due; held durably");
        let mut entry = self.entry(message, Some(termination), Outcome::Scheduled, started);
        entry.error_message = Some(format!(
            "not due until {}; held durably (hold {}); nothing was changed",
            termination.effective_at.to_rfc3339(),
            placed.hold.id
        ));
        self.audit_then_delete(
            message,
            &entry,
            Step::Deferred {
                effective_at: termination.effective_at,
            },
        )
        .await
    }

    /// A rehire record: cancel the person's pending holds (each audited as
    /// `rescinded` under its own termination's key), audit the rehire itself
    /// (action `rehire`, outcome `rescinded`), delete the message. Genesys is
    /// never contacted.
    async fn rehire(
        &self,
        message: &ReceivedMessage,
        termination: &TerminationMessage,
        started: Instant,
    ) -> Step {
        let external_id = termination.record.external_id.as_str();
        let reason = format!(
            "rehired by manifest {} (record {})",
            origin_name(&termination.origin),
            termination
                .origin
                .index
                .map_or_else(|| "-".to_owned(), |i| i.to_string())
        );
        let mut entry = self.entry(message, Some(termination), Outcome::Rescinded, started);
        entry.action = RecordAction::Rehire.as_str().into();
        if self.options.dry_run {
            entry.outcome = Outcome::DryRun;
            entry.error_message = Some(format!(
                "dry run: would record the rehire and cancel pending holds ({reason})"
            ));
            return self
                .audit_then_delete(message, &entry, Step::DryRun(Outcome::Rescinded))
                .await;
        }
        let now = self.options.clock.now();
        let cancelled = match self
            .audit
            .cancel_holds(external_id, termination.record_at(), &reason, now)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                return self
                    .retry(message, format!("cannot cancel holds: {e}"), None)
                    .await;
            }
        };
        for hold in &cancelled {
            info!(hold = hold.id, due_at = %hold.due_at, "held termination cancelled by a rehire");
            let row = AuditEntry {
                external_id: Some(hold.external_id.clone()),
                user_id: hold.user_id.clone(),
                action: "deactivate".into(),
                status_code: None,
                success: false,
                error_message: Some(format!(
                    "hold cancelled, never released: {reason}; nothing was changed"
                )),
                outcome: Outcome::Rescinded,
                credential: None,
                groups_removed: Vec::new(),
                attempt: message.receive_count,
                sqs_message_id: Some(message.message_id.clone()),
                manifest: hold.manifest.clone(),
                effective_at: Some(hold.due_at),
                correlation_ids: Vec::new(),
                duration_ms: None,
                idempotency_key: Some(hold.idempotency_key.clone()),
                actor: None,
            };
            if let Err(e) = self.audit.append(&row).await {
                // The cancellation stands in the holds table with its reason.
                warn!(error = %e, hold = hold.id, "could not audit a cancelled hold");
            }
        }
        entry.error_message = Some(format!(
            "rehire recorded; {} pending hold(s) cancelled; Genesys not contacted",
            cancelled.len()
        ));
        info!(cancelled = cancelled.len(), "rehire recorded");
        match self.audit.append(&entry).await {
            Ok(_) => match self.delete(message).await {
                Ok(()) => Step::Done(Outcome::Rescinded),
                Err(e) => Step::QueueFailed(e),
            },
            Err(e) => self.audit_failed(message, entry, e.to_string()).await,
        }
    }

    /// The termination was withdrawn (`reason`: a rehire): audit `rescinded`,
    /// delete the message, change nothing.
    async fn rescind(
        &self,
        message: &ReceivedMessage,
        termination: &TerminationMessage,
        reason: &str,
        started: Instant,
    ) -> Step {
        info!(reason, "termination withdrawn; not acted on");
        let mut entry = self.entry(message, Some(termination), Outcome::Rescinded, started);
        entry.error_message = Some(format!("{reason}; not deactivated"));
        if self.options.dry_run {
            entry.outcome = Outcome::DryRun;
            entry.error_message = Some(format!("dry run: would be rescinded: {reason}"));
            return self
                .audit_then_delete(message, &entry, Step::DryRun(Outcome::Rescinded))
                .await;
        }
        match self.audit.append(&entry).await {
            Ok(_) => match self.delete(message).await {
                Ok(()) => Step::Done(Outcome::Rescinded),
                Err(e) => Step::QueueFailed(e),
            },
            Err(e) => self.audit_failed(message, entry, e.to_string()).await,
        }
    }

    /// Audit, then delete: the message goes only once its row is written. `done`
    /// is the step when both succeed; a failed write returns the message to the
    /// queue for a retry, a failed delete is [`Step::QueueFailed`].
    async fn audit_then_delete(
        &self,
        message: &ReceivedMessage,
        entry: &AuditEntry,
        done: Step,
    ) -> Step {
        match self.audit.append(entry).await {
            Ok(_) => match self.delete(message).await {
                Ok(()) => done,
                Err(e) => Step::QueueFailed(e),
            },
            Err(e) => {
                self.retry(message, format!("audit write failed: {e}"), None)
                    .await
            }
        }
    }

    /// Acts on the engine's report.
    async fn conclude(
        &self,
        message: &ReceivedMessage,
        termination: &TerminationMessage,
        report: &Report,
        started: Instant,
        not_due: bool,
    ) -> Step {
        let mut entry = self.entry(message, Some(termination), report.outcome, started);
        entry.user_id = report.user_id.as_ref().map(|u| u.as_str().to_owned());
        entry.status_code = report.status_code;
        entry.credential = report.credential;
        entry.groups_removed = report.groups_removed.iter().map(|g| g.id.clone()).collect();
        entry.correlation_ids = report.correlation_ids.clone();
        entry.error_message = report.detail.clone();
        entry.success = report.outcome.is_success();

        if self.options.dry_run {
            if report.outcome == Outcome::Retrying && !self.is_last_receive(message) {
                // The plan for this person is not known yet: try again later, as
                // a real run would; an attempt that planned nothing is not audited.
                let reason = report.detail.clone().unwrap_or_else(|| "retrying".into());
                return self.retry(message, reason, report.retry_after).await;
            }
            // A dry run must not look terminal to a later real run.
            let now = planned_now(report);
            let planned = if not_due { Outcome::Scheduled } else { now };
            entry.outcome = Outcome::DryRun;
            entry.success = false;
            entry.error_message = Some(crate::plan::describe(
                planned,
                not_due.then_some(now),
                entry.user_id.as_deref(),
                &report.groups_removed,
                &report.roles_removed,
                Some(termination.effective_at),
                report.detail.as_deref(),
            ));
            return self
                .audit_then_delete(message, &entry, Step::DryRun(planned))
                .await;
        }
        match report.outcome {
            o if o.is_terminal() && !o.is_dead_lettered() => {
                match self.audit.append(&entry).await {
                    Ok(_) => {
                        if o == Outcome::Deactivated {
                            crate::telemetry::metrics()
                                .record_deactivation_delay(termination.effective_at, Utc::now());
                        }
                        match self.delete(message).await {
                            Ok(()) => Step::Done(o),
                            Err(e) => Step::QueueFailed(e),
                        }
                    }
                    Err(e) => self.audit_failed(message, entry, e.to_string()).await,
                }
            }
            o if o.is_terminal() => {
                let reason = report.detail.clone().unwrap_or_else(|| o.to_string());
                self.dead_letter(message, entry, &reason).await
            }
            Outcome::Retrying if self.is_last_receive(message) => {
                let detail = format!(
                    "transient failure on the last allowed receive ({}): {}",
                    message.receive_count,
                    report.detail.as_deref().unwrap_or("no detail")
                );
                entry.outcome = Outcome::Failed;
                entry.error_message = Some(detail.clone());
                self.dead_letter(message, entry, &detail).await
            }
            // Retrying, Held (and Scheduled, which the engine does not return):
            // the attempt is recorded, then the message comes back later.
            o => {
                let reason = report.detail.clone().unwrap_or_else(|| o.to_string());
                if let Err(e) = self.audit.append(&entry).await {
                    warn!(error = %e, "could not audit a non-terminal attempt");
                }
                self.retry(message, reason, report.retry_after).await
            }
        }
    }

    /// The audit row for this message, filled with what the message tells.
    fn entry(
        &self,
        message: &ReceivedMessage,
        termination: Option<&TerminationMessage>,
        outcome: Outcome,
        started: Instant,
    ) -> AuditEntry {
        AuditEntry {
            external_id: termination.map(|t| t.record.external_id.as_str().to_owned()),
            user_id: termination
                .and_then(|t| t.record.user_id.as_ref())
                .map(|u| u.as_str().to_owned()),
            action: "deactivate".into(),
            status_code: None,
            success: outcome.is_success(),
            error_message: None,
            outcome,
            credential: None,
            groups_removed: Vec::new(),
            attempt: message.receive_count,
            sqs_message_id: Some(message.message_id.clone()),
            manifest: termination.map(|t| t.origin.clone()),
            effective_at: termination.map(|t| t.effective_at),
            correlation_ids: Vec::new(),
            duration_ms: Some(started.elapsed().as_millis().try_into().unwrap_or(u64::MAX)),
            idempotency_key: termination.map(|t| t.idempotency_key.clone()),
            actor: None,
        }
    }

    /// Permanent failure: DLQ copy first (so an audit row saying "dead-lettered"
    /// always has a copy to replay), then the audit row, then the delete.
    async fn dead_letter(
        &self,
        message: &ReceivedMessage,
        entry: AuditEntry,
        reason: &str,
    ) -> Step {
        let code = entry.outcome.as_str();
        self.dead_letter_coded(message, entry, code, reason).await
    }

    /// [`Self::dead_letter`] with the DLQ reason code given (e.g.
    /// `bad_signature`) rather than the outcome's name. The copy keeps the
    /// original's attributes (signature included, so a replay still verifies).
    async fn dead_letter_coded(
        &self,
        message: &ReceivedMessage,
        entry: AuditEntry,
        code: &str,
        reason: &str,
    ) -> Step {
        let outcome = entry.outcome;
        if self.options.dry_run {
            let mut entry = entry;
            entry.outcome = Outcome::DryRun;
            entry.success = false;
            entry.error_message =
                Some(format!("dry run: would dead-letter as {outcome}: {reason}"));
            return self
                .audit_then_delete(message, &entry, Step::DryRun(outcome))
                .await;
        }
        let mut attributes = message.attributes.clone();
        attributes.extend([
            (attr::REASON.to_owned(), code.to_owned()),
            (attr::DETAIL.to_owned(), truncate(reason, 1000)),
            (
                attr::SOURCE_MESSAGE_ID.to_owned(),
                message.message_id.clone(),
            ),
            (
                attr::RECEIVE_COUNT.to_owned(),
                message.receive_count.to_string(),
            ),
        ]);
        // A replayed message carries its earlier replay mark; the DLQ copy is a
        // fresh dead-lettering.
        attributes.remove(attr::REPLAYED);
        let mut copy = OutgoingMessage {
            body: message.body.clone(),
            attributes,
            delay: Duration::ZERO,
        };
        // A replay (which keeps the attributes) then continues this trace, under
        // the termination that dead-lettered it.
        crate::telemetry::inject_into(&tracing::Span::current(), &mut copy.attributes);
        match self
            .dead_letter
            .send_batch(std::slice::from_ref(&copy))
            .await
        {
            Ok(failures) if failures.is_empty() => {}
            Ok(failures) => {
                let why = failures
                    .first()
                    .map(|f| format!("{}: {}", f.code, f.message))
                    .unwrap_or_default();
                return self
                    .retry(message, format!("dead-letter send failed: {why}"), None)
                    .await;
            }
            Err(e) => {
                return self
                    .retry(message, format!("dead-letter send failed: {e}"), None)
                    .await;
            }
        }
        tracing::Span::current().record("reason", truncate(reason, 1000));
        warn!(%outcome, reason, "dead-lettered");
        if let Err(e) = self.audit.append(&entry).await {
            // The DLQ holds the copy; leaving the original too means a second copy
            // at worst, never a lost termination.
            return self
                .retry(
                    message,
                    format!("audit write failed after dead-lettering: {e}"),
                    None,
                )
                .await;
        }
        match self.delete(message).await {
            Ok(()) => Step::DeadLettered(outcome),
            Err(e) => Step::QueueFailed(e),
        }
    }

    /// The terminal outcome could not be audited: keep the message (it is not
    /// acknowledged), unless this was its last allowed receive, in which case it
    /// goes to the DLQ with the reason rather than being moved there silently.
    async fn audit_failed(
        &self,
        message: &ReceivedMessage,
        mut entry: AuditEntry,
        error: String,
    ) -> Step {
        warn!(
            error,
            "audit write failed; the message stays unacknowledged"
        );
        if self.is_last_receive(message) {
            let detail = format!(
                "audit write failed on the last allowed receive after outcome {}: {error}",
                entry.outcome
            );
            entry.error_message = Some(detail.clone());
            entry.outcome = Outcome::Failed;
            entry.success = false;
            return self.dead_letter(message, entry, &detail).await;
        }
        self.retry(message, format!("audit write failed: {error}"), None)
            .await
    }

    /// Returns the message to the queue after a jittered backoff (at least the
    /// server's `retry_after`). At the last allowed receive the message is
    /// re-sent fresh instead, so that a wait never becomes a silent redrive.
    async fn retry(
        &self,
        message: &ReceivedMessage,
        reason: String,
        retry_after: Option<Duration>,
    ) -> Step {
        let mut delay = backoff(
            self.options.retry_base,
            self.options.retry_max,
            message.receive_count,
        );
        if let Some(after) = retry_after {
            delay = delay.max(after);
        }
        let delay = delay.min(MAX_VISIBILITY);
        info!(
            reason,
            delay_ms = delay.as_millis() as u64,
            "returning message to the queue"
        );
        match self.hold(message, delay).await {
            Ok(()) => Step::Retry { reason, delay },
            Err(e) => Step::QueueFailed(e),
        }
    }

    /// Hides the message for `delay`. On its last allowed receive a visibility
    /// change would let the redrive policy move it to the DLQ without a reason on
    /// the next receive, so a fresh copy (receive count reset, delay ≤ 15 min) is
    /// sent and the original deleted.
    async fn hold(&self, message: &ReceivedMessage, delay: Duration) -> Result<(), String> {
        if self.is_last_receive(message) {
            let copy = OutgoingMessage {
                body: message.body.clone(),
                attributes: message.attributes.clone(),
                delay: delay.min(MAX_DELAY),
            };
            match self.queue.send_batch(std::slice::from_ref(&copy)).await {
                Ok(f) if f.is_empty() => {}
                Ok(f) => {
                    let why = f
                        .first()
                        .map(|f| format!("{}: {}", f.code, f.message))
                        .unwrap_or_default();
                    return Err(format!("re-send failed: {why}"));
                }
                Err(e) => return Err(e.to_string()),
            }
            return self.delete(message).await;
        }
        let receipt = self.current_receipt(message);
        self.queue
            .change_visibility(&receipt, delay)
            .await
            .map_err(|e| e.to_string())
    }

    /// Releases an unstarted message at shutdown: visible again at once (or
    /// re-sent fresh on its last receive), so no attempt is lost or counted.
    async fn release(&self, message: &ReceivedMessage) {
        let result = if self.is_last_receive(message) {
            self.hold(message, Duration::ZERO).await
        } else {
            self.queue
                .change_visibility(&message.receipt_handle, Duration::ZERO)
                .await
                .map_err(|e| e.to_string())
        };
        if let Err(e) = result {
            warn!(message_id = %message.message_id, error = e, "could not release message");
        }
    }

    /// Deletes through the batching task; resolves when the delete (with its
    /// retries) is done.
    async fn delete(&self, message: &ReceivedMessage) -> Result<(), String> {
        let (done, rx) = oneshot::channel();
        let request = DeleteRequest {
            message_id: message.message_id.clone(),
            done,
        };
        if self.deletes.send(request).await.is_err() {
            return Err("the delete task has stopped".into());
        }
        rx.await
            .unwrap_or_else(|_| Err("the delete task has stopped".into()))
    }

    /// Collects deletes from all workers into DeleteMessageBatch calls of up to
    /// ten, inspects each entry's result, and retries the failed entries (up to
    /// three times) with the message's current receipt handle.
    async fn run_deleter(&self, mut rx: mpsc::Receiver<DeleteRequest>) {
        while let Some(first) = rx.recv().await {
            let mut pending = vec![first];
            while pending.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(r) => pending.push(r),
                    Err(_) => break,
                }
            }
            let mut last_error = String::new();
            for attempt in 1..=3u32 {
                let receipts: Vec<String> = {
                    let inflight = lock(&self.inflight);
                    pending
                        .iter()
                        .map(|r| inflight.get(&r.message_id).cloned().unwrap_or_default())
                        .collect()
                };
                match self.queue.delete_batch(&receipts).await {
                    Ok(failures) => {
                        let failed: HashSet<usize> = failures.iter().map(|f| f.index).collect();
                        if let Some(f) = failures.first() {
                            last_error = format!("{}: {}", f.code, f.message);
                        }
                        let mut still = Vec::new();
                        for (i, r) in pending.into_iter().enumerate() {
                            if failed.contains(&i) {
                                still.push(r);
                            } else {
                                let _ = r.done.send(Ok(()));
                            }
                        }
                        pending = still;
                    }
                    Err(e) => last_error = e.to_string(),
                }
                if pending.is_empty() {
                    break;
                }
                warn!(
                    failed = pending.len(),
                    attempt,
                    error = last_error,
                    "delete failed; retrying failed entries"
                );
                tokio::time::sleep(backoff(
                    Duration::from_millis(200),
                    Duration::from_secs(2),
                    attempt,
                ))
                .await;
            }
            for r in pending {
                let _ = r.done.send(Err(format!("delete failed: {last_error}")));
            }
        }
    }
}

/// The `deprovision.reason` ([`attr::REASON`]) of a dead-lettered message that
/// carries none: SQS's redrive policy moved it on its own.
pub const UNKNOWN_REASON: &str = "unknown";

/// The dead-letter reasons `replay-dlq --reason` accepts: every
/// [`attr::REASON`] value this consumer writes on a DLQ copy (the name of each
/// outcome for which [`Outcome::is_dead_lettered`] holds, and
/// [`crate::signing::BAD_SIGNATURE`]), then [`UNKNOWN_REASON`]. Derived from
/// those definitions so that a new dead-lettering outcome is accepted at once.
pub fn dead_letter_reasons() -> Vec<&'static str> {
    Outcome::ALL
        .into_iter()
        .filter(|o| o.is_dead_lettered())
        .map(Outcome::as_str)
        .chain([crate::signing::BAD_SIGNATURE, UNKNOWN_REASON])
        .collect()
}

/// `replay-dlq` settings.
#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    /// Stop after this many replays.
    pub max: Option<u64>,
    /// Replay only messages dead-lettered with this reason, one of
    /// [`dead_letter_reasons`] (messages moved by the redrive policy itself have
    /// none and match [`UNKNOWN_REASON`]); anything else is refused with
    /// [`ReplayError::Reason`] before the queue is touched.
    pub reason: Option<String>,
    /// List what would be replayed; move nothing.
    pub dry_run: bool,
    /// Who asked (recorded in each replay's audit row).
    pub actor: String,
    /// "Now", for the still-due re-check. The pass's own start (compared with
    /// the queue's `SentTimestamp`) is the wall clock, not this.
    pub clock: Clock,
    /// How each message's signature is re-checked before it is sent back: the
    /// same set-up as `serve` (`MESSAGE_SIGNING_KEYS`, or `MESSAGE_SIGNING=off`,
    /// which checks nothing).
    pub signing: crate::signing::MessageAuth,
}

/// One dead-lettered message seen by `replay-dlq`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReplayItem {
    /// Its id on the dead-letter queue.
    pub message_id: String,
    /// The termination's externalId, when the body is readable (for a message
    /// whose signature fails, what the untrusted body claims).
    pub external_id: Option<String>,
    /// The dead-letter reason ([`UNKNOWN_REASON`] when SQS moved it without one).
    pub reason: String,
    /// The detail recorded with the reason.
    pub detail: Option<String>,
    /// True when it was (or, in a dry run, would be) replayed.
    pub replayed: bool,
    /// Why it was not replayed although it matched: its signature still fails
    /// with this process's keys (kept on the DLQ as evidence), superseded (e.g.
    /// "rehired by manifest X at T"; deleted from the DLQ after auditing, except
    /// in a dry run), or not due with an earlier hold that cannot be reused
    /// (kept).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// Not yet due: held durably until this instant instead of replayed
    /// (deleted from the DLQ, except in a dry run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_until: Option<DateTime<Utc>>,
}

/// What `replay-dlq` did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReplayReport {
    /// Every distinct message content this pass handled, in order.
    pub items: Vec<ReplayItem>,
    /// Messages seen but left on the DLQ untouched and unaudited for the next
    /// run: copies of content this pass already handled (a replay the consumer
    /// dead-lettered again, or a duplicate), or messages dead-lettered after the
    /// pass started.
    pub left_for_next_run: usize,
}

impl ReplayReport {
    /// Messages replayed (or that would be, in a dry run).
    pub fn replayed(&self) -> usize {
        self.items.iter().filter(|i| i.replayed).count()
    }
}

/// Why a replay stopped early, or did not start.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// `--reason` is not a reason the consumer writes.
    #[error("--reason {given:?} is not a dead-letter reason; accepted: {}", accepted.join(", "))]
    Reason {
        /// What was asked for.
        given: String,
        /// [`dead_letter_reasons`].
        accepted: Vec<&'static str>,
    },
    /// A queue call failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// Sending to the terminations queue failed for a message.
    #[error("cannot send dead-lettered message {message_id} back: {detail}")]
    Send {
        /// The DLQ message id.
        message_id: String,
        /// The failure.
        detail: String,
    },
    /// The replay could not be audited; the message was sent back but stays on
    /// the DLQ too (the consumer's idempotency check makes the copy harmless).
    #[error("cannot audit the replay of {message_id}: {detail}")]
    Audit {
        /// The DLQ message id.
        message_id: String,
        /// The store's error.
        detail: String,
    },
}

/// What a pass keys "the same message" by: SHA-256 over the body and the
/// signature attributes (key id, signature), each length-prefixed. These are
/// exactly what survives a re-dead-lettering: the consumer's DLQ copy keeps the
/// body and the original attributes, but gets a new message id, a new reason,
/// detail and trace context. The idempotency key is not needed on top (it is
/// derived from the body), and a body that does not decode still has a key. The
/// signature is part of it so that a forged copy of a real body (same body, bad
/// signature) cannot make the pass pass over the authentic copy.
fn content_key(message: &ReceivedMessage) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    let mut part = |value: Option<&str>| match value {
        None => hash.update([0u8]),
        Some(v) => {
            hash.update([1u8]);
            hash.update((v.len() as u64).to_be_bytes());
            hash.update(v.as_bytes());
        }
    };
    part(Some(&message.body));
    part(
        message
            .attributes
            .get(attr::SIGNATURE_KEY_ID)
            .map(String::as_str),
    );
    part(message.attributes.get(attr::SIGNATURE).map(String::as_str));
    hash.finalize().into()
}

/// Moves dead-lettered messages back to the terminations queue: receive from the
/// DLQ, send the same body with its original attributes (signature included:
/// never re-signed, so a replay cannot turn a forgery into a validly signed
/// message) plus [`attr::REPLAYED`] (so the consumer attempts it although its
/// last outcome dead-lettered it), audit the replay (action `replay`, outcome
/// `retrying`), then delete it from the DLQ. Works against any [`Queue`] (moto
/// has no StartMessageMoveTask).
///
/// One call is one pass: it handles each message content (see `content_key`:
/// body and signature) at most once, so a replay that the running consumer
/// dead-letters again under a new message id is left for the next run, as is
/// anything dead-lettered after the pass started (by the queue's
/// `SentTimestamp` against the wall clock). The pass ends when a receive yields
/// nothing it has not handled (or nothing at all), or at `options.max` replays.
/// Every message left on the DLQ (not matching `--reason`, skipped and kept,
/// left for the next run, everything in a dry run) is kept hidden until the end
/// and then made visible again. Each handled message is audited at most once.
///
/// Each matching message is re-checked first:
/// 1. its signature, with `options.signing` (issue 6; every reason, not only
///    `bad_signature`): one that still fails (unsigned, altered, forged, an
///    unknown key) is not sent back, not trusted for anything else, kept on the
///    DLQ as evidence, audited (action `replay`, outcome `invalid`, no
///    idempotency key) and reported in [`ReplayItem::skipped`]; one that verifies
///    now (e.g. a key rotation fixed) goes on;
/// 2. a termination superseded by a later audit entry for the same externalId
///    (a rehire, or a termination with another date) is not replayed: its skip is
///    audited (`rescinded`, with the operator) and it is deleted from the DLQ;
/// 3. one not yet due (by `options.clock`) is held durably instead
///    ([`ReplayItem::held_until`]) and deleted from the DLQ.
///
/// A dry run audits nothing and only reports. Errors: [`ReplayError`]; messages
/// held so far are made visible again first.
pub async fn replay_dead_letters<Q: Queue, A: HoldSink>(
    dead_letter: &Q,
    target: &Q,
    audit: &A,
    options: &ReplayOptions,
) -> Result<ReplayReport, ReplayError> {
    if let Some(given) = &options.reason {
        let accepted = dead_letter_reasons();
        if !accepted.contains(&given.as_str()) {
            return Err(ReplayError::Reason {
                given: given.clone(),
                accepted,
            });
        }
    }
    // Compared with the queue's SentTimestamp, so the wall clock, not the
    // injectable "now" of the due check.
    let started = Utc::now();
    let mut report = ReplayReport::default();
    let mut handled: HashSet<[u8; 32]> = HashSet::new();
    // Message ids this pass handled or left, so that one seen again after its
    // visibility lapsed is neither handled twice nor counted twice.
    let mut known: HashSet<String> = HashSet::new();
    // Message id → latest receipt handle of everything left on the DLQ.
    let mut kept: HashMap<String, String> = HashMap::new();
    let result = async {
        loop {
            let room = options.max.map_or(MAX_BATCH as u64, |m| {
                m.saturating_sub(report.replayed() as u64)
            });
            if room == 0 {
                break;
            }
            let batch = dead_letter
                .receive(room.min(MAX_BATCH as u64) as u32, Duration::from_secs(1))
                .await?;
            let mut fresh = false;
            for message in batch {
                let key = content_key(&message);
                let first_look = known.insert(message.message_id.clone());
                let in_pass = message.sent_at.is_none_or(|at| at <= started);
                if !first_look || !in_pass || !handled.insert(key) {
                    if first_look {
                        report.left_for_next_run += 1;
                    }
                    // Also one this pass deleted whose delete failed: it is
                    // visible again at the end rather than after its timeout.
                    kept.insert(message.message_id.clone(), message.receipt_handle);
                    continue;
                }
                fresh = true;
                let wanted = options
                    .reason
                    .as_ref()
                    .is_none_or(|r| *r == reason_of(&message))
                    && options.max.is_none_or(|m| (report.replayed() as u64) < m);
                let id = message.message_id.clone();
                let receipt = message.receipt_handle.clone();
                let (item, gone) =
                    match replay_one(message, wanted, dead_letter, target, audit, options).await {
                        Ok(done) => done,
                        Err(e) => {
                            kept.insert(id, receipt);
                            return Err(e);
                        }
                    };
                if !gone {
                    kept.insert(id, receipt);
                }
                report.items.push(item);
            }
            if !fresh {
                break;
            }
        }
        Ok(())
    }
    .await;
    for receipt in kept.values() {
        if let Err(e) = dead_letter.change_visibility(receipt, Duration::ZERO).await {
            warn!(error = %e, "could not release a dead-lettered message");
        }
    }
    result.map(|()| report)
}

/// The message's dead-letter reason ([`UNKNOWN_REASON`] when it has none).
fn reason_of(message: &ReceivedMessage) -> String {
    message
        .attributes
        .get(attr::REASON)
        .cloned()
        .unwrap_or_else(|| UNKNOWN_REASON.to_owned())
}

/// Deletes one DLQ message; a per-entry failure is only logged (the copy left
/// behind is seen again by the next run).
async fn delete_dead_letter<Q: Queue>(
    dead_letter: &Q,
    message: &ReceivedMessage,
    what: &str,
) -> Result<(), ReplayError> {
    let failures = dead_letter
        .delete_batch(std::slice::from_ref(&message.receipt_handle))
        .await?;
    if let Some(f) = failures.first() {
        warn!(message_id = %message.message_id, code = f.code, "{what} but not deleted from the DLQ");
    }
    Ok(())
}

/// One message the pass has not handled before: re-check it and replay, skip
/// or hold it (only report it when not `wanted` or in a dry run). Returns the
/// report line and whether the message is gone from the DLQ.
async fn replay_one<Q: Queue, A: HoldSink>(
    message: ReceivedMessage,
    wanted: bool,
    dead_letter: &Q,
    target: &Q,
    audit: &A,
    options: &ReplayOptions,
) -> Result<(ReplayItem, bool), ReplayError> {
    let reason = reason_of(&message);
    let decoded = TerminationMessage::decode(&message.body).ok();
    // For display only; nothing else is taken from the body before it verifies.
    let mut item = ReplayItem {
        message_id: message.message_id.clone(),
        external_id: decoded
            .as_ref()
            .map(|t| t.record.external_id.as_str().to_owned())
            .or_else(|| raw_external_id(&message.body).map(|e| truncate(e.trim(), 256))),
        reason: reason.clone(),
        detail: message.attributes.get(attr::DETAIL).cloned(),
        replayed: false,
        skipped: None,
        held_until: None,
    };
    if !wanted {
        return Ok((item, false));
    }
    // Authenticity first, as in the consumer: nothing in a body that fails is
    // trusted, so it can neither be held (the releaser signs what it re-sends)
    // nor count as superseded (which would delete the evidence).
    if let Err(e) = options.signing.verify(&message.body, &message.attributes) {
        warn!(message_id = %message.message_id, error = %e, "signature still fails; not replayed, kept on the DLQ");
        item.skipped = Some(format!(
            "{e} (checked again with this process's keys); not sent back, kept in the dead-letter queue as evidence"
        ));
        if !options.dry_run {
            let entry = AuditEntry {
                external_id: raw_external_id(&message.body).map(|e| truncate(e.trim(), 256)),
                user_id: None,
                action: "replay".into(),
                status_code: None,
                success: false,
                error_message: Some(format!(
                    "replay-dlq skipped it: {e}; not sent back, kept in the dead-letter queue (reason {reason})"
                )),
                outcome: Outcome::Invalid,
                credential: None,
                groups_removed: Vec::new(),
                attempt: message.receive_count,
                sqs_message_id: Some(message.message_id.clone()),
                manifest: None,
                effective_at: None,
                correlation_ids: Vec::new(),
                duration_ms: None,
                idempotency_key: None,
                actor: Some(options.actor.clone()),
            };
            audit.append(&entry).await.map_err(|e| ReplayError::Audit {
                message_id: message.message_id.clone(),
                detail: e.to_string(),
            })?;
        }
        return Ok((item, false));
    }
    if let Some(t) = decoded
        .as_ref()
        .filter(|t| t.record.action == RecordAction::Terminate)
    {
        match revalidate(&message, t, audit, options).await {
            Ok(Revalidated::Replay) => {}
            Ok(Revalidated::Skipped { reason, remove }) => {
                item.skipped = Some(reason);
                let gone = remove && !options.dry_run;
                if gone {
                    delete_dead_letter(dead_letter, &message, "skipped").await?;
                }
                return Ok((item, gone));
            }
            Ok(Revalidated::Held { until }) => {
                item.held_until = Some(until);
                if !options.dry_run {
                    delete_dead_letter(dead_letter, &message, "held").await?;
                }
                return Ok((item, !options.dry_run));
            }
            Err(detail) => {
                return Err(ReplayError::Audit {
                    message_id: message.message_id,
                    detail,
                });
            }
        }
    }
    if options.dry_run {
        item.replayed = true;
        return Ok((item, false));
    }
    let mut attributes = message.attributes.clone();
    attributes.insert(attr::REPLAYED.to_owned(), Utc::now().to_rfc3339());
    let copy = OutgoingMessage {
        body: message.body.clone(),
        attributes,
        delay: Duration::ZERO,
    };
    let failures = target.send_batch(std::slice::from_ref(&copy)).await?;
    if let Some(f) = failures.first() {
        return Err(ReplayError::Send {
            message_id: message.message_id,
            detail: format!("{}: {}", f.code, f.message),
        });
    }
    let entry = AuditEntry {
        external_id: item.external_id.clone(),
        user_id: decoded
            .as_ref()
            .and_then(|t| t.record.user_id.as_ref())
            .map(|u| u.as_str().to_owned()),
        action: "replay".into(),
        status_code: None,
        success: false,
        error_message: Some(format!(
            "replayed from the dead-letter queue (reason {reason}{})",
            item.detail
                .as_ref()
                .map(|d| format!(": {d}"))
                .unwrap_or_default()
        )),
        outcome: Outcome::Retrying,
        credential: None,
        groups_removed: Vec::new(),
        attempt: message.receive_count,
        sqs_message_id: Some(message.message_id.clone()),
        manifest: decoded.as_ref().map(|t| t.origin.clone()),
        effective_at: decoded.as_ref().map(|t| t.effective_at),
        correlation_ids: Vec::new(),
        duration_ms: None,
        idempotency_key: decoded.as_ref().map(|t| t.idempotency_key.clone()),
        actor: Some(options.actor.clone()),
    };
    if let Err(e) = audit.append(&entry).await {
        return Err(ReplayError::Audit {
            message_id: message.message_id,
            detail: e.to_string(),
        });
    }
    delete_dead_letter(
        dead_letter,
        &message,
        "replayed (the copy left there is harmless)",
    )
    .await?;
    info!(message_id = %message.message_id, reason, external_id = item.external_id.as_deref().unwrap_or("-"), "replayed");
    item.replayed = true;
    Ok((item, true))
}

/// What the re-check of one dead-lettered termination decided.
enum Revalidated {
    /// Still due and not superseded: replay it.
    Replay,
    /// Not replayed; `remove` when it is also taken off the DLQ (superseded,
    /// and the skip audited — except in a dry run, which audits nothing).
    Skipped { reason: String, remove: bool },
    /// Not yet due: held durably until `until` (in a dry run: would be).
    Held { until: DateTime<Utc> },
}

/// The replay re-check: superseded? still due? Errors: the store's error, as text.
async fn revalidate<A: HoldSink>(
    message: &ReceivedMessage,
    t: &TerminationMessage,
    audit: &A,
    options: &ReplayOptions,
) -> Result<Revalidated, String> {
    let external_id = t.record.external_id.as_str();
    let row = |outcome: Outcome, detail: String| AuditEntry {
        external_id: Some(external_id.to_owned()),
        user_id: t.record.user_id.as_ref().map(|u| u.as_str().to_owned()),
        action: "deactivate".into(),
        status_code: None,
        success: false,
        error_message: Some(detail),
        outcome,
        credential: None,
        groups_removed: Vec::new(),
        attempt: message.receive_count,
        sqs_message_id: Some(message.message_id.clone()),
        manifest: Some(t.origin.clone()),
        effective_at: Some(t.effective_at),
        correlation_ids: Vec::new(),
        duration_ms: None,
        idempotency_key: Some(t.idempotency_key.clone()),
        actor: Some(options.actor.clone()),
    };
    let superseding = match audit
        .supersession(external_id, &t.idempotency_key, t.record_at())
        .await
        .map_err(|e| e.to_string())?
    {
        Some(s) => Some(s),
        None => audit
            .rehired_since(external_id, t.record_at())
            .await
            .map_err(|e| e.to_string())?,
    };
    if let Some(s) = superseding {
        let reason = s.reason();
        info!(message_id = %message.message_id, external_id, reason, "superseded; not replayed");
        if !options.dry_run {
            audit
                .append(&row(
                    Outcome::Rescinded,
                    format!("replay-dlq skipped it: {reason}; removed from the dead-letter queue"),
                ))
                .await
                .map_err(|e| e.to_string())?;
        }
        return Ok(Revalidated::Skipped {
            reason,
            remove: true,
        });
    }
    let now = options.clock.now();
    if t.effective_at <= now {
        return Ok(Revalidated::Replay);
    }
    if options.dry_run {
        return Ok(Revalidated::Held {
            until: t.effective_at,
        });
    }
    let mut attributes = held_attributes(&message.attributes);
    attributes.insert(attr::REPLAYED.to_owned(), now.to_rfc3339());
    let new = NewHold {
        idempotency_key: t.idempotency_key.clone(),
        external_id: external_id.to_owned(),
        user_id: t.record.user_id.as_ref().map(|u| u.as_str().to_owned()),
        due_at: t.effective_at,
        body: message.body.clone(),
        attributes,
        manifest: Some(t.origin.clone()),
    };
    let placed = audit
        .place_hold(&new, now)
        .await
        .map_err(|e| e.to_string())?;
    if placed.hold.state != HoldState::Pending {
        return Ok(Revalidated::Skipped {
            reason: format!(
                "not due until {}, and its earlier hold {} is no longer pending; kept on the DLQ",
                t.effective_at.to_rfc3339(),
                placed.hold.id
            ),
            remove: false,
        });
    }
    audit
        .append(&row(
            Outcome::Scheduled,
            format!(
                "replay-dlq: not due until {}; held durably (hold {}) instead of replayed",
                t.effective_at.to_rfc3339(),
                placed.hold.id
            ),
        ))
        .await
        .map_err(|e| e.to_string())?;
    Ok(Revalidated::Held {
        until: t.effective_at,
    })
}

impl From<QueueError> for Step {
    fn from(e: QueueError) -> Self {
        Step::QueueFailed(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::ManifestOrigin;
    use crate::domain::{EffectiveAt, ExternalId, ScimUserId, TerminationDate, TerminationRecord};
    use crate::queue::MemoryQueue;
    use std::collections::BTreeMap;
    use std::sync::atomic::AtomicBool;

    /// Audit fake: an in-memory append-only list, with a switch that makes writes
    /// fail.
    #[derive(Default)]
    struct FakeAudit {
        rows: Mutex<Vec<AuditEntry>>,
        holds: Mutex<Vec<Hold>>,
        fail_writes: AtomicBool,
        /// Live claims: person → owner. Persons in `elsewhere` are held by
        /// another process.
        claims: Mutex<HashMap<String, String>>,
        elsewhere: Mutex<HashSet<String>>,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("fake audit store is down")]
    struct Down;

    impl AuditSink for FakeAudit {
        type Error = Down;
        async fn append(&self, entry: &AuditEntry) -> Result<i64, Down> {
            if self.fail_writes.load(Ordering::SeqCst) {
                return Err(Down);
            }
            let mut rows = lock(&self.rows);
            rows.push(entry.clone());
            Ok(rows.len() as i64)
        }
        async fn latest_terminal_outcome(
            &self,
            key: &IdempotencyKey,
        ) -> Result<Option<Outcome>, Down> {
            Ok(lock(&self.rows)
                .iter()
                .rev()
                .filter(|r| r.idempotency_key.as_ref() == Some(key) && r.outcome.is_terminal())
                .map(|r| r.outcome)
                .next())
        }
        async fn claim(
            &self,
            person: &str,
            owner: &str,
            _lease: Duration,
        ) -> Result<ClaimState, Down> {
            if lock(&self.elsewhere).contains(person) {
                return Ok(ClaimState::HeldElsewhere {
                    owner: Some("other".into()),
                    expires_at: None,
                });
            }
            let mut claims = lock(&self.claims);
            match claims.get(person) {
                Some(holder) if holder != owner => Ok(ClaimState::HeldElsewhere {
                    owner: Some(holder.clone()),
                    expires_at: None,
                }),
                _ => {
                    claims.insert(person.to_owned(), owner.to_owned());
                    Ok(ClaimState::Taken)
                }
            }
        }
        async fn release_claim(&self, person: &str, owner: &str) -> Result<(), Down> {
            let mut claims = lock(&self.claims);
            if claims.get(person).map(String::as_str) == Some(owner) {
                claims.remove(person);
            }
            Ok(())
        }
    }

    impl HoldSink for FakeAudit {
        async fn place_hold(&self, hold: &NewHold, now: DateTime<Utc>) -> Result<Placed, Down> {
            let mut holds = lock(&self.holds);
            if let Some(h) = holds
                .iter()
                .find(|h| h.idempotency_key == hold.idempotency_key)
            {
                return Ok(Placed {
                    created: false,
                    hold: h.clone(),
                });
            }
            let h = Hold {
                id: holds.len() as i64 + 1,
                idempotency_key: hold.idempotency_key.clone(),
                external_id: hold.external_id.clone(),
                user_id: hold.user_id.clone(),
                due_at: hold.due_at,
                body: hold.body.clone(),
                attributes: hold.attributes.clone(),
                manifest: hold.manifest.clone(),
                created_at: now,
                state: HoldState::Pending,
            };
            holds.push(h.clone());
            Ok(Placed {
                created: true,
                hold: h,
            })
        }
        async fn cancel_holds(
            &self,
            external_id: &str,
            rehire: ManifestRecord<'_>,
            reason: &str,
            now: DateTime<Utc>,
        ) -> Result<Vec<Hold>, Down> {
            let mut out = Vec::new();
            for h in lock(&self.holds).iter_mut() {
                let stands = h.manifest.as_ref().is_some_and(|origin| {
                    ManifestRecord {
                        origin,
                        effective_at: h.due_at,
                    }
                    .stands_after(&rehire)
                });
                if h.external_id == external_id && h.state == HoldState::Pending && !stands {
                    h.state = HoldState::Cancelled {
                        at: now,
                        reason: reason.to_owned(),
                    };
                    out.push(h.clone());
                }
            }
            Ok(out)
        }
        async fn supersession(
            &self,
            external_id: &str,
            key: &IdempotencyKey,
            termination: ManifestRecord<'_>,
        ) -> Result<Option<Supersession>, Down> {
            let rows = lock(&self.rows);
            let Some(first) = rows
                .iter()
                .position(|r| r.idempotency_key.as_ref() == Some(key))
            else {
                return Ok(None);
            };
            Ok(rows[first + 1..]
                .iter()
                .rev()
                .find(|r| {
                    r.external_id.as_deref() == Some(external_id)
                        && r.idempotency_key.as_ref().is_some_and(|k| k != key)
                        && matches!(r.action.as_str(), "rehire" | "deactivate")
                        && r.outcome != Outcome::DryRun
                        && !(r.action == "rehire"
                            && r.manifest.as_ref().zip(r.effective_at).is_some_and(
                                |(origin, effective_at)| {
                                    termination.stands_after(&ManifestRecord {
                                        origin,
                                        effective_at,
                                    })
                                },
                            ))
                })
                .map(|r| Supersession {
                    action: r.action.clone(),
                    outcome: r.outcome.as_str().to_owned(),
                    manifest: r
                        .manifest
                        .as_ref()
                        .map(|m| format!("{}/{}", m.bucket, m.key)),
                    at: Utc::now(),
                    effective_at: r.effective_at,
                }))
        }
    }

    impl FakeAudit {
        fn outcomes(&self) -> Vec<Outcome> {
            lock(&self.rows).iter().map(|r| r.outcome).collect()
        }
    }

    /// Engine fake: a scripted outcome per externalId (default `deactivated`),
    /// counting calls.
    #[derive(Default)]
    struct FakeEngine {
        script: Mutex<HashMap<String, Vec<Outcome>>>,
        calls: Mutex<Vec<String>>,
        /// When set, each call waits for a permit (to hold a termination open).
        gate: Mutex<Option<Arc<Semaphore>>>,
        started: tokio::sync::Notify,
    }

    impl FakeEngine {
        fn script(&self, external_id: &str, outcomes: &[Outcome]) {
            lock(&self.script).insert(external_id.into(), outcomes.to_vec());
        }
        fn calls(&self, external_id: &str) -> usize {
            lock(&self.calls)
                .iter()
                .filter(|c| *c == external_id)
                .count()
        }
    }

    impl Deprovision for FakeEngine {
        async fn deprovision(&self, request: &Request) -> Report {
            let id = request.external_id.as_str().to_owned();
            lock(&self.calls).push(id.clone());
            self.started.notify_one();
            let gate = lock(&self.gate).clone();
            if let Some(gate) = gate {
                let _permit = gate.acquire().await;
            }
            let outcome = {
                let mut script = lock(&self.script);
                match script.get_mut(&id) {
                    Some(list) if !list.is_empty() => list.remove(0),
                    _ => Outcome::Deactivated,
                }
            };
            Report {
                outcome: if request.dry_run && outcome.is_success() {
                    Outcome::DryRun
                } else {
                    outcome
                },
                planned: (request.dry_run && outcome.is_success()).then_some(outcome),
                user_id: ScimUserId::parse("u-1").ok(),
                credential: None,
                groups_removed: Vec::new(),
                roles_removed: Vec::new(),
                status_code: Some(200),
                correlation_ids: Vec::new(),
                requests: 2,
                detail: (!outcome.is_success()).then(|| format!("scripted {outcome}")),
                retry_after: None,
                elapsed: Duration::ZERO,
            }
        }
    }

    fn body(external_id: &str, date: &str) -> String {
        body_with(external_id, date, RecordAction::Terminate)
    }

    fn body_with(external_id: &str, date: &str, action: RecordAction) -> String {
        body_at(external_id, date, action, 0)
    }

    /// The message of manifest `local/m.json`'s record `index`.
    fn body_at(external_id: &str, date: &str, action: RecordAction, index: u64) -> String {
        TerminationMessage::new(
            TerminationRecord {
                external_id: ExternalId::parse(external_id).unwrap(),
                user_id: None,
                termination_date: TerminationDate::parse(date).unwrap(),
                action,
            },
            ManifestOrigin {
                bucket: "local".into(),
                key: "m.json".into(),
                version: None,
                index: Some(index),
            },
            chrono_tz::UTC,
            EffectiveAt::StartOfDay,
        )
        .encode()
    }

    struct Fixture {
        queue: MemoryQueue,
        dlq: MemoryQueue,
        engine: Arc<FakeEngine>,
        audit: Arc<FakeAudit>,
        consumer: Consumer<MemoryQueue, FakeEngine, FakeAudit>,
    }

    fn fixture(max_receives: u32, options: ConsumerOptions) -> Fixture {
        let dlq = MemoryQueue::new("dlq", Duration::from_secs(600));
        let queue =
            MemoryQueue::with_dead_letter("q", Duration::from_secs(600), dlq.clone(), max_receives);
        let engine = Arc::new(FakeEngine::default());
        let audit = Arc::new(FakeAudit::default());
        let consumer = Consumer::new(
            queue.clone(),
            dlq.clone(),
            engine.clone(),
            audit.clone(),
            options,
        );
        Fixture {
            queue,
            dlq,
            engine,
            audit,
            consumer,
        }
    }

    fn quick() -> ConsumerOptions {
        ConsumerOptions {
            concurrency: 4,
            receive_wait: Duration::from_millis(50),
            retry_base: Duration::ZERO,
            retry_max: Duration::ZERO,
            ..ConsumerOptions::default()
        }
    }

    async fn send(q: &MemoryQueue, bodies: &[String]) {
        let msgs: Vec<OutgoingMessage> = bodies
            .iter()
            .map(|b| OutgoingMessage {
                body: b.clone(),
                ..OutgoingMessage::default()
            })
            .collect();
        q.send_batch(&msgs).await.unwrap();
    }

    async fn receive_one(q: &MemoryQueue) -> ReceivedMessage {
        q.receive(1, Duration::from_secs(5))
            .await
            .unwrap()
            .remove(0)
    }

    #[tokio::test]
    async fn success_is_audited_then_deleted_and_redelivery_is_not_acted_on() {
        let f = fixture(5, quick());
        send(
            &f.queue,
            &[body("E1", "2020-01-01"), body("E1", "2020-01-01")],
        )
        .await;
        assert_eq!(
            f.consumer.handle(receive_one(&f.queue).await).await,
            Step::Done(Outcome::Deactivated)
        );
        assert_eq!(
            f.consumer.handle(receive_one(&f.queue).await).await,
            Step::AlreadyDone(Outcome::Deactivated)
        );
        assert_eq!(f.engine.calls("E1"), 1);
        assert_eq!(f.audit.outcomes(), [Outcome::Deactivated]);
        assert!(f.queue.is_empty());
    }

    #[tokio::test]
    async fn failed_audit_write_keeps_the_message_and_is_counted_once_later() {
        let f = fixture(5, quick());
        send(&f.queue, &[body("E1", "2020-01-01")]).await;
        f.audit.fail_writes.store(true, Ordering::SeqCst);
        let step = f.consumer.handle(receive_one(&f.queue).await).await;
        assert!(matches!(step, Step::Retry { .. }), "{step:?}");
        assert_eq!(f.queue.len(), 1, "message must not be deleted");
        assert!(f.audit.outcomes().is_empty());

        f.audit.fail_writes.store(false, Ordering::SeqCst);
        f.engine.script("E1", &[Outcome::AlreadyInactive]);
        let step = f.consumer.handle(receive_one(&f.queue).await).await;
        assert_eq!(step, Step::Done(Outcome::AlreadyInactive));
        assert_eq!(
            f.audit.outcomes(),
            [Outcome::AlreadyInactive],
            "one terminal row"
        );
        assert!(f.queue.is_empty());
    }

    #[tokio::test]
    async fn permanent_failure_goes_to_the_dlq_with_reason() {
        let f = fixture(5, quick());
        f.engine.script("E1", &[Outcome::Forbidden]);
        send(&f.queue, &[body("E1", "2020-01-01")]).await;
        let step = f.consumer.handle(receive_one(&f.queue).await).await;
        assert_eq!(step, Step::DeadLettered(Outcome::Forbidden));
        assert!(f.queue.is_empty());
        let dead = f.dlq.snapshot();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].1[attr::REASON], "forbidden");
        assert!(dead[0].1[attr::DETAIL].contains("scripted forbidden"));
        assert_eq!(f.audit.outcomes(), [Outcome::Forbidden]);
    }

    #[tokio::test]
    async fn unauthentic_messages_are_dead_lettered_before_anything_else() {
        use crate::signing::{Keyring, MessageAuth};
        let ring = Arc::new(
            Keyring::parse(&secrecy::SecretString::from(
                "k1:0123456789abcdef0123456789abcdef",
            ))
            .unwrap(),
        );
        let f = fixture(
            5,
            ConsumerOptions {
                signing: MessageAuth::Hmac(ring.clone()),
                ..quick()
            },
        );
        let good = body("E1", "2020-01-01");
        let altered = body("E2", "2020-01-01");
        let unsigned = body("E3", "2020-01-01");
        let forbidden = body("E4", "2020-01-01");
        f.engine.script("E4", &[Outcome::Forbidden]);
        let messages = [
            (good.clone(), ring.sign(&good)),
            (altered, ring.sign(&good)),
            (unsigned, BTreeMap::new()),
            (forbidden.clone(), ring.sign(&forbidden)),
        ];
        for (body, attributes) in messages {
            f.queue
                .send_batch(&[OutgoingMessage {
                    body,
                    attributes,
                    ..OutgoingMessage::default()
                }])
                .await
                .unwrap();
        }
        let mut steps = Vec::new();
        for _ in 0..4 {
            steps.push(f.consumer.handle(receive_one(&f.queue).await).await);
        }
        assert_eq!(
            steps,
            [
                Step::Done(Outcome::Deactivated),
                Step::DeadLettered(Outcome::Invalid),
                Step::DeadLettered(Outcome::Invalid),
                Step::DeadLettered(Outcome::Forbidden),
            ]
        );
        assert_eq!(
            f.engine.calls("E2") + f.engine.calls("E3"),
            0,
            "never acted on"
        );
        let dead = f.dlq.snapshot();
        let reasons: Vec<&str> = dead.iter().map(|(_, a)| a[attr::REASON].as_str()).collect();
        assert_eq!(reasons, ["bad_signature", "bad_signature", "forbidden"]);
        // The signed copy keeps its signature, so a replay verifies.
        assert_eq!(ring.verify(&dead[2].0, &dead[2].1), Ok("k1".into()));
        let rows = lock(&f.audit.rows);
        assert!(
            rows[1]
                .error_message
                .as_deref()
                .unwrap()
                .contains("does not match")
        );
        assert!(
            rows[2]
                .error_message
                .as_deref()
                .unwrap()
                .contains("not signed")
        );
        // Kept as evidence of the attempt, not as a termination: the claimed
        // externalId is in the message, not in `external_id`.
        assert_eq!(rows[2].action, crate::audit::REJECT_MESSAGE_ACTION);
        assert_eq!(rows[2].external_id, None);
        assert_eq!(rows[2].idempotency_key, None);
        assert!(
            rows[2]
                .error_message
                .as_deref()
                .unwrap()
                .contains("claimed externalId \"E3\" (unverified)")
        );
    }

    #[tokio::test]
    async fn redelivered_dead_lettered_message_is_dropped_but_a_replay_is_attempted() {
        let f = fixture(5, quick());
        f.engine.script("E1", &[Outcome::Forbidden]);
        send(
            &f.queue,
            &[body("E1", "2020-01-01"), body("E1", "2020-01-01")],
        )
        .await;
        f.consumer.handle(receive_one(&f.queue).await).await;
        assert_eq!(
            f.consumer.handle(receive_one(&f.queue).await).await,
            Step::AlreadyDone(Outcome::Forbidden)
        );
        let replay = OutgoingMessage {
            body: body("E1", "2020-01-01"),
            attributes: [(attr::REPLAYED.to_owned(), "1".to_owned())]
                .into_iter()
                .collect(),
            delay: Duration::ZERO,
        };
        f.queue.send_batch(&[replay]).await.unwrap();
        assert_eq!(
            f.consumer.handle(receive_one(&f.queue).await).await,
            Step::Done(Outcome::Deactivated)
        );
        assert_eq!(f.engine.calls("E1"), 2);
    }

    #[tokio::test]
    async fn transient_failure_backs_off_then_is_dead_lettered_explicitly_on_the_last_receive() {
        let f = fixture(2, quick());
        f.engine
            .script("E1", &[Outcome::Retrying, Outcome::Retrying]);
        send(&f.queue, &[body("E1", "2020-01-01")]).await;
        let step = f.consumer.handle(receive_one(&f.queue).await).await;
        assert!(matches!(step, Step::Retry { .. }), "{step:?}");
        let second = receive_one(&f.queue).await;
        assert_eq!(second.receive_count, 2);
        assert_eq!(
            f.consumer.handle(second).await,
            Step::DeadLettered(Outcome::Failed)
        );
        let dead = f.dlq.snapshot();
        assert_eq!(dead[0].1[attr::REASON], "failed");
        assert!(dead[0].1[attr::DETAIL].contains("last allowed receive"));
        assert_eq!(f.audit.outcomes(), [Outcome::Retrying, Outcome::Failed]);
    }

    #[tokio::test]
    async fn unknown_version_is_dead_lettered_as_invalid() {
        let f = fixture(5, quick());
        send(
            &f.queue,
            &[r#"{"v":2,"record":{"externalId":"E9"}}"#.to_owned()],
        )
        .await;
        let step = f.consumer.handle(receive_one(&f.queue).await).await;
        assert_eq!(step, Step::DeadLettered(Outcome::Invalid));
        assert_eq!(f.dlq.snapshot()[0].1[attr::REASON], "invalid");
        assert_eq!(lock(&f.audit.rows)[0].external_id.as_deref(), Some("E9"));
        assert_eq!(f.engine.calls("E9"), 0);
    }

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn at_clock(now: &str) -> (crate::clock::ManualClock, ConsumerOptions) {
        let manual = crate::clock::ManualClock::new(t(now));
        let options = ConsumerOptions {
            clock: manual.clock(),
            ..quick()
        };
        (manual, options)
    }

    #[tokio::test]
    async fn future_termination_is_held_durably_and_the_message_deleted() {
        let (_clock, options) = at_clock("2026-03-01T00:00:00Z");
        let f = fixture(5, options);
        send(
            &f.queue,
            &[body("E1", "2026-03-10"), body("E1", "2026-03-10")],
        )
        .await;
        let step = f.consumer.handle(receive_one(&f.queue).await).await;
        assert_eq!(
            step,
            Step::Deferred {
                effective_at: t("2026-03-10T00:00:00Z")
            }
        );
        // The same termination again (another manifest): still one hold.
        let step = f.consumer.handle(receive_one(&f.queue).await).await;
        assert!(matches!(step, Step::Deferred { .. }), "{step:?}");
        assert_eq!(f.engine.calls("E1"), 0);
        assert!(f.queue.is_empty(), "held in the store, not on the queue");
        assert_eq!(lock(&f.audit.holds).len(), 1);
        assert_eq!(f.audit.outcomes(), [Outcome::Scheduled, Outcome::Scheduled]);
    }

    #[tokio::test]
    async fn due_by_the_injected_clock_is_attempted() {
        let (clock, options) = at_clock("2026-03-01T00:00:00Z");
        let f = fixture(5, options);
        clock.set(t("2026-03-10T00:00:00Z"));
        send(&f.queue, &[body("E1", "2026-03-10")]).await;
        assert_eq!(
            f.consumer.handle(receive_one(&f.queue).await).await,
            Step::Done(Outcome::Deactivated)
        );
        assert!(lock(&f.audit.holds).is_empty());
    }

    #[tokio::test]
    async fn beyond_max_future_days_is_dead_lettered_as_invalid() {
        let (_clock, options) = at_clock("2026-03-01T00:00:00Z");
        let f = fixture(
            5,
            ConsumerOptions {
                max_future_days: 30,
                ..options
            },
        );
        send(&f.queue, &[body("E1", "2026-04-01")]).await;
        let step = f.consumer.handle(receive_one(&f.queue).await).await;
        assert_eq!(step, Step::DeadLettered(Outcome::Invalid));
        let dead = f.dlq.snapshot();
        assert!(
            dead[0].1[attr::DETAIL].contains("MAX_FUTURE_DAYS=30"),
            "{dead:?}"
        );
        assert!(lock(&f.audit.holds).is_empty());
        assert_eq!(f.engine.calls("E1"), 0);
    }

    #[tokio::test]
    async fn rehire_cancels_the_pending_hold_and_never_touches_genesys() {
        let (_clock, options) = at_clock("2026-03-01T00:00:00Z");
        let f = fixture(5, options);
        send(
            &f.queue,
            &[
                body("E1", "2026-03-10"),
                body_with("E1", "2026-03-05", RecordAction::Rehire),
            ],
        )
        .await;
        f.consumer.handle(receive_one(&f.queue).await).await;
        assert_eq!(
            f.consumer.handle(receive_one(&f.queue).await).await,
            Step::Done(Outcome::Rescinded)
        );
        assert!(matches!(
            lock(&f.audit.holds)[0].state,
            HoldState::Cancelled { .. }
        ));
        let rows = lock(&f.audit.rows).clone();
        let actions: Vec<(&str, Outcome)> = rows
            .iter()
            .map(|r| (r.action.as_str(), r.outcome))
            .collect();
        assert_eq!(
            actions,
            [
                ("deactivate", Outcome::Scheduled),
                ("deactivate", Outcome::Rescinded),
                ("rehire", Outcome::Rescinded),
            ]
        );
        assert_eq!(rows[1].idempotency_key, rows[0].idempotency_key);
        assert_eq!(f.engine.calls("E1"), 0);
        // The termination redelivered later is already finished (rescinded).
        send(&f.queue, &[body("E1", "2026-03-10")]).await;
        assert_eq!(
            f.consumer.handle(receive_one(&f.queue).await).await,
            Step::AlreadyDone(Outcome::Rescinded)
        );
    }

    #[tokio::test]
    async fn a_released_hold_racing_a_rehire_is_rescinded_not_deactivated() {
        let (clock, options) = at_clock("2026-03-01T00:00:00Z");
        let f = fixture(5, options);
        send(&f.queue, &[body("E1", "2026-03-10")]).await;
        f.consumer.handle(receive_one(&f.queue).await).await;
        // The rehire is audited after the hold was released (it found no pending hold).
        lock(&f.audit.holds)[0].state = HoldState::Released(t("2026-03-10T00:00:00Z"));
        send(
            &f.queue,
            &[body_with("E1", "2026-03-09", RecordAction::Rehire)],
        )
        .await;
        f.consumer.handle(receive_one(&f.queue).await).await;
        clock.set(t("2026-03-10T00:00:00Z"));
        send(&f.queue, &[body("E1", "2026-03-10")]).await;
        assert_eq!(
            f.consumer.handle(receive_one(&f.queue).await).await,
            Step::Done(Outcome::Rescinded)
        );
        assert_eq!(f.engine.calls("E1"), 0);
    }

    /// A termination the dispatcher marked as withdrawn by a rehire later in
    /// its file is rescinded without contacting Genesys, even though no rehire
    /// is recorded yet (it is handled first).
    #[tokio::test]
    async fn a_termination_marked_rehired_in_its_manifest_is_rescinded_first() {
        let (_clock, options) = at_clock("2026-03-01T00:00:00Z");
        let f = fixture(5, options);
        let mut m =
            TerminationMessage::decode(&body_at("E1", "2026-02-20", RecordAction::Terminate, 0))
                .unwrap();
        m.rehired_in_manifest = Some(crate::domain::SameManifestRehire {
            index: 7,
            effective_at: Some(t("2026-02-21T00:00:00Z")),
        });
        send(&f.queue, &[m.encode()]).await;
        assert_eq!(
            f.consumer.handle(receive_one(&f.queue).await).await,
            Step::Done(Outcome::Rescinded)
        );
        assert_eq!(f.engine.calls("E1"), 0);
        let rows = lock(&f.audit.rows).clone();
        assert_eq!(rows.len(), 1);
        let reason = rows[0].error_message.clone().unwrap_or_default();
        assert!(
            reason.contains("rehired by record 7 of the same manifest local/m.json"),
            "{reason}"
        );
    }

    /// One manifest: record 0 rehires E1 on 03-05, record 1 terminates E1 on
    /// 03-10. Handled termination first, the rehire leaves its hold alone (the
    /// file's order decides), and the termination is carried out when due.
    #[tokio::test]
    async fn a_rehire_earlier_in_the_file_leaves_a_later_dated_termination_held() {
        let (clock, options) = at_clock("2026-03-01T00:00:00Z");
        let f = fixture(5, options);
        let termination = body_at("E1", "2026-03-10", RecordAction::Terminate, 1);
        send(&f.queue, std::slice::from_ref(&termination)).await;
        assert_eq!(
            f.consumer.handle(receive_one(&f.queue).await).await,
            Step::Deferred {
                effective_at: t("2026-03-10T00:00:00Z")
            }
        );
        send(
            &f.queue,
            &[body_at("E1", "2026-03-05", RecordAction::Rehire, 0)],
        )
        .await;
        assert_eq!(
            f.consumer.handle(receive_one(&f.queue).await).await,
            Step::Done(Outcome::Rescinded)
        );
        assert_eq!(lock(&f.audit.holds)[0].state, HoldState::Pending);
        let rehire_row = lock(&f.audit.rows).last().cloned().expect("rehire row");
        assert_eq!(rehire_row.action, "rehire");
        assert!(
            rehire_row
                .error_message
                .as_deref()
                .is_some_and(|m| m.contains("0 pending hold(s) cancelled")),
            "{rehire_row:?}"
        );
        // Released when due: not superseded by the rehire recorded meanwhile.
        lock(&f.audit.holds)[0].state = HoldState::Released(t("2026-03-10T00:00:00Z"));
        clock.set(t("2026-03-10T00:00:00Z"));
        send(&f.queue, &[termination]).await;
        assert_eq!(
            f.consumer.handle(receive_one(&f.queue).await).await,
            Step::Done(Outcome::Deactivated)
        );
        assert_eq!(f.engine.calls("E1"), 1);
    }

    #[tokio::test]
    async fn dry_run_records_dry_run_rows_only() {
        let f = fixture(
            5,
            ConsumerOptions {
                dry_run: true,
                ..quick()
            },
        );
        f.engine.script("E2", &[Outcome::NotFound]);
        send(
            &f.queue,
            &[body("E1", "2020-01-01"), body("E2", "2020-01-01")],
        )
        .await;
        let seen = Arc::new(Mutex::new(Vec::new()));
        {
            let seen = seen.clone();
            f.consumer.observe(move |d| lock(&seen).push(d.clone()));
        }
        assert_eq!(
            f.consumer.handle(receive_one(&f.queue).await).await,
            Step::DryRun(Outcome::Deactivated),
            "the planned action, not `dry_run`"
        );
        assert_eq!(
            f.consumer.handle(receive_one(&f.queue).await).await,
            Step::DryRun(Outcome::NotFound)
        );
        assert_eq!(f.audit.outcomes(), [Outcome::DryRun, Outcome::DryRun]);
        let texts: Vec<String> = lock(&f.audit.rows)
            .iter()
            .map(|r| r.error_message.clone().unwrap_or_default())
            .collect();
        assert_eq!(
            texts[0],
            "dry run: would deactivate user u-1; no group to remove"
        );
        assert_eq!(texts[1], "dry run: would be not_found: scripted not_found");
        assert!(f.queue.is_empty());
        assert!(lock(&f.audit.claims).is_empty(), "a dry run claims nobody");
        let seen = lock(&seen).clone();
        let planned: Vec<_> = seen.iter().map(|d| (d.outcome, d.planned)).collect();
        assert_eq!(
            planned,
            [
                (Outcome::DryRun, Some(Outcome::Deactivated)),
                (Outcome::DryRun, Some(Outcome::NotFound))
            ]
        );
        assert_eq!(seen[0].user_id.as_deref(), Some("u-1"));
        let t = f.consumer.tally().snapshot();
        assert_eq!(t.would, [(Outcome::Deactivated, 1), (Outcome::NotFound, 1)]);
    }

    #[tokio::test]
    async fn a_dry_run_plans_a_future_termination_as_scheduled() {
        let f = fixture(
            5,
            ConsumerOptions {
                dry_run: true,
                ..quick()
            },
        );
        // Within MAX_FUTURE_DAYS, which a date such as 2999 is not.
        let future = (Utc::now() + chrono::Duration::days(30))
            .format("%Y-%m-%d")
            .to_string();
        send(&f.queue, &[body("E1", &future)]).await;
        assert_eq!(
            f.consumer.handle(receive_one(&f.queue).await).await,
            Step::DryRun(Outcome::Scheduled)
        );
        assert_eq!(f.engine.calls("E1"), 1, "the person is still resolved");
        let row = lock(&f.audit.rows)[0].clone();
        assert_eq!(row.outcome, Outcome::DryRun);
        assert_eq!(
            row.error_message.as_deref(),
            Some(
                format!(
                    "dry run: scheduled for {future}T00:00:00Z (not due); when due, would deactivate user u-1; no group to remove"
                )
                .as_str()
            )
        );
    }

    #[tokio::test]
    async fn a_person_claimed_elsewhere_comes_back_soon_without_an_attempt() {
        let f = fixture(5, quick());
        lock(&f.audit.elsewhere).insert("E1".into());
        send(&f.queue, &[body("E1", "2020-01-01")]).await;
        let step = f.consumer.handle(receive_one(&f.queue).await).await;
        match &step {
            Step::Retry { reason, delay } => {
                assert!(
                    reason.contains("externalId E1 is being worked on elsewhere by other"),
                    "{reason}"
                );
                assert!(*delay <= Duration::from_millis(BUSY_WAIT_MS.1), "{delay:?}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            f.engine.calls("E1"),
            0,
            "no attempt while claimed elsewhere"
        );
        assert!(
            lock(&f.audit.rows).is_empty(),
            "a busy person is not an attempt"
        );

        lock(&f.audit.elsewhere).clear();
        let again = f
            .queue
            .receive(1, Duration::from_secs(10))
            .await
            .unwrap()
            .remove(0);
        assert_eq!(
            f.consumer.handle(again).await,
            Step::Done(Outcome::Deactivated)
        );
        assert!(
            lock(&f.audit.claims).is_empty(),
            "the claim is released after the audit row"
        );
    }

    #[tokio::test]
    async fn a_termination_finished_while_waiting_for_the_claim_is_not_repeated() {
        let f = fixture(5, quick());
        send(&f.queue, &[body("E1", "2020-01-01")]).await;
        let message = receive_one(&f.queue).await;
        // Another process finished the same termination after our first check:
        // simulated by a row that appears when the claim is taken.
        let mut done = AuditEntry {
            idempotency_key: TerminationMessage::decode(&message.body)
                .ok()
                .map(|t| t.idempotency_key),
            ..f.consumer
                .shared
                .entry(&message, None, Outcome::Deactivated, Instant::now())
        };
        done.success = true;
        let step = {
            let shared = f.consumer.shared.clone();
            let termination = TerminationMessage::decode(&message.body).unwrap();
            lock(&f.audit.rows).push(done);
            f.consumer.ensure_deleter();
            lock(&shared.inflight)
                .insert(message.message_id.clone(), message.receipt_handle.clone());
            shared.claimed(&message, &termination, Instant::now()).await
        };
        assert_eq!(step, Step::AlreadyDone(Outcome::Deactivated));
        assert_eq!(f.engine.calls("E1"), 0);
        assert!(lock(&f.audit.claims).is_empty());
    }

    #[tokio::test]
    async fn pool_processes_everything_and_drains_on_shutdown() {
        let f = fixture(5, quick());
        let bodies: Vec<String> = (0..25)
            .map(|i| body(&format!("E{i}"), "2020-01-01"))
            .collect();
        for chunk in bodies.chunks(10) {
            send(&f.queue, chunk).await;
        }
        f.engine.script("E3", &[Outcome::Retrying]);
        f.engine.script("E4", &[Outcome::Ambiguous]);
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let queue = f.queue.clone();
        tokio::spawn(async move {
            queue.wait_empty().await;
            stop.cancel();
        });
        let report = f.consumer.run(shutdown).await;
        assert!(report.drained);
        assert_eq!(report.tally.count(Outcome::Deactivated), 24);
        assert_eq!(report.tally.count(Outcome::Ambiguous), 1);
        assert_eq!(report.tally.retried, 1);
        assert_eq!(report.tally.finished(), 25);
        assert_eq!(f.dlq.len(), 1);
    }

    #[tokio::test]
    async fn shutdown_lets_the_started_termination_finish_and_leaves_the_rest() {
        let f = fixture(
            5,
            ConsumerOptions {
                concurrency: 1,
                ..quick()
            },
        );
        let gate = Arc::new(Semaphore::new(0));
        *lock(&f.engine.gate) = Some(gate.clone());
        send(
            &f.queue,
            &[body("E1", "2020-01-01"), body("E2", "2020-01-01")],
        )
        .await;
        let shutdown = CancellationToken::new();
        let run = {
            let consumer = f.consumer;
            let shutdown = shutdown.clone();
            tokio::spawn(async move { consumer.run(shutdown).await })
        };
        f.engine.started.notified().await;
        // E1 is in the engine; E2 was never received (one permit, taken).
        shutdown.cancel();
        gate.add_permits(1);
        let report = run.await.unwrap();
        assert!(report.drained);
        assert_eq!(report.tally.count(Outcome::Deactivated), 1);
        assert_eq!(f.audit.outcomes(), [Outcome::Deactivated]);
        let rest = receive_one(&f.queue).await;
        assert_eq!(
            rest.receive_count, 1,
            "never received before, so never attempted"
        );
        assert!(f.dlq.is_empty());
    }

    #[tokio::test]
    async fn drain_deadline_bounds_the_wait() {
        let f = fixture(
            5,
            ConsumerOptions {
                drain_deadline: Duration::from_millis(50),
                ..quick()
            },
        );
        *lock(&f.engine.gate) = Some(Arc::new(Semaphore::new(0)));
        send(&f.queue, &[body("E1", "2020-01-01")]).await;
        let shutdown = CancellationToken::new();
        let started = f.engine.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            started.started.notified().await;
            stop.cancel();
        });
        let report = f.consumer.run(shutdown).await;
        assert!(!report.drained);
        assert!(f.audit.outcomes().is_empty());
        assert_eq!(f.queue.len(), 1, "unfinished message stays for redelivery");
    }

    #[tokio::test]
    async fn replay_moves_matching_messages_back_audited_and_keeps_the_rest() {
        let f = fixture(5, quick());
        f.engine.script("E1", &[Outcome::Forbidden]);
        f.engine.script("E2", &[Outcome::Ambiguous]);
        f.engine.script("E3", &[Outcome::Forbidden]);
        send(
            &f.queue,
            &[
                body("E1", "2020-01-01"),
                body("E2", "2020-01-01"),
                body("E3", "2020-01-01"),
            ],
        )
        .await;
        for _ in 0..3 {
            f.consumer.handle(receive_one(&f.queue).await).await;
        }
        assert_eq!(f.dlq.len(), 3);

        let dry = ReplayOptions {
            reason: Some("forbidden".into()),
            clock: Clock::system(),
            dry_run: true,
            actor: "tester".into(),
            ..ReplayOptions::default()
        };
        let report = replay_dead_letters(&f.dlq, &f.queue, f.audit.as_ref(), &dry)
            .await
            .unwrap();
        assert_eq!((report.items.len(), report.replayed()), (3, 2));
        assert_eq!(f.dlq.len(), 3);
        assert!(f.queue.is_empty());

        let real = ReplayOptions {
            dry_run: false,
            max: Some(1),
            ..dry
        };
        let report = replay_dead_letters(&f.dlq, &f.queue, f.audit.as_ref(), &real)
            .await
            .unwrap();
        assert_eq!(report.replayed(), 1);
        assert_eq!((f.dlq.len(), f.queue.len()), (2, 1));
        let row = lock(&f.audit.rows).last().cloned().unwrap();
        assert_eq!(
            (row.action.as_str(), row.outcome, row.actor.as_deref()),
            ("replay", Outcome::Retrying, Some("tester"))
        );

        // The replayed message is attempted again despite its dead-lettered past.
        let step = f.consumer.handle(receive_one(&f.queue).await).await;
        assert_eq!(step, Step::Done(Outcome::Deactivated));
        // Everything left on the DLQ is visible again for the next replay.
        assert_eq!(f.dlq.receive(10, Duration::ZERO).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn replay_holds_what_is_not_yet_due_and_skips_what_a_rehire_superseded() {
        let (clock, options) = at_clock("2026-03-01T00:00:00Z");
        let f = fixture(5, options);
        f.engine.script("E1", &[Outcome::Forbidden]);
        f.engine.script("E2", &[Outcome::Forbidden]);
        send(
            &f.queue,
            &[body("E1", "2026-02-01"), body("E2", "2026-02-01")],
        )
        .await;
        for _ in 0..2 {
            f.consumer.handle(receive_one(&f.queue).await).await;
        }
        send(
            &f.queue,
            &[body_with("E1", "2026-02-20", RecordAction::Rehire)],
        )
        .await;
        assert_eq!(
            f.consumer.handle(receive_one(&f.queue).await).await,
            Step::Done(Outcome::Rescinded)
        );
        // Seen from a clock before E2's date (e.g. a wrong date fixed by HR).
        clock.set(t("2026-01-15T00:00:00Z"));
        let options = ReplayOptions {
            actor: "tester".into(),
            clock: clock.clock(),
            ..ReplayOptions::default()
        };
        let report = replay_dead_letters(&f.dlq, &f.queue, f.audit.as_ref(), &options)
            .await
            .unwrap();
        assert_eq!(report.replayed(), 0);
        let by_id: HashMap<_, _> = report
            .items
            .iter()
            .map(|i| (i.external_id.clone().unwrap(), i.clone()))
            .collect();
        assert!(
            by_id["E1"]
                .skipped
                .as_deref()
                .is_some_and(|s| s.starts_with("rehired by manifest local/m.json")),
            "{report:?}"
        );
        assert_eq!(by_id["E2"].held_until, Some(t("2026-02-01T00:00:00Z")));
        assert!(f.dlq.is_empty() && f.queue.is_empty());
        let holds = lock(&f.audit.holds).clone();
        assert_eq!(holds.len(), 1);
        assert_eq!(holds[0].external_id, "E2");
        assert!(holds[0].attributes.contains_key(attr::REPLAYED));
        assert!(!holds[0].attributes.contains_key(attr::REASON));
        assert_eq!(f.engine.calls("E1"), 1);
    }

    fn keyring(raw: &str) -> Arc<crate::signing::Keyring> {
        Arc::new(
            crate::signing::Keyring::parse(&secrecy::SecretString::from(raw.to_owned())).unwrap(),
        )
    }

    const K1: &str = "k1:0123456789abcdef0123456789abcdef-one";
    const K0: &str = "k0:0123456789abcdef0123456789abcdef-old";

    async fn send_signed(q: &MemoryQueue, body: &str, attributes: BTreeMap<String, String>) {
        q.send_batch(&[OutgoingMessage {
            body: body.to_owned(),
            attributes,
            ..OutgoingMessage::default()
        }])
        .await
        .unwrap();
    }

    fn replay_rows(audit: &FakeAudit) -> Vec<AuditEntry> {
        lock(&audit.rows)
            .iter()
            .filter(|r| r.action == "replay")
            .cloned()
            .collect()
    }

    /// The tester's endless replay (issue 5): the consumer dead-letters every
    /// replay again under a new message id. Here the replay's target *is* the
    /// DLQ, so each copy is back at once: the pass must still end, having
    /// replayed and audited each message once and left the copies.
    #[tokio::test]
    async fn a_replay_pass_ends_although_every_replay_is_dead_lettered_again() {
        let f = fixture(5, quick());
        for e in ["E1", "E2", "E3"] {
            f.engine.script(e, &[Outcome::Forbidden]);
        }
        send(
            &f.queue,
            &[
                body("E1", "2020-01-01"),
                body("E2", "2020-01-01"),
                body("E3", "2020-01-01"),
            ],
        )
        .await;
        for _ in 0..3 {
            f.consumer.handle(receive_one(&f.queue).await).await;
        }
        let options = ReplayOptions {
            actor: "tester".into(),
            ..ReplayOptions::default()
        };
        // On its own thread: an endless pass over an in-memory queue never
        // yields, so a timeout in this runtime could never fire.
        let (dlq, audit) = (f.dlq.clone(), f.audit.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let report =
                runtime.block_on(replay_dead_letters(&dlq, &dlq, audit.as_ref(), &options));
            let _ = tx.send(report);
        });
        let report = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("replay-dlq must end while replays are dead-lettered again")
            .unwrap();
        assert_eq!((report.items.len(), report.replayed()), (3, 3));
        assert_eq!(report.left_for_next_run, 3, "{report:?}");
        assert_eq!(replay_rows(&f.audit).len(), 3, "each message audited once");
        // The three copies stay, visible again for the next run.
        assert_eq!(f.dlq.receive(10, Duration::ZERO).await.unwrap().len(), 3);
    }

    /// Two copies of one message already on the DLQ (same body, same
    /// signature; other attributes differ): one pass replays the content once.
    #[tokio::test]
    async fn a_pass_replays_the_same_content_once() {
        let f = fixture(5, quick());
        let ring = keyring(K1);
        let b = body("E1", "2020-01-01");
        let mut first = ring.sign(&b);
        first.insert(attr::REASON.into(), "forbidden".into());
        let mut second = first.clone();
        second.insert(attr::REASON.into(), "failed".into());
        second.insert(attr::SOURCE_MESSAGE_ID.into(), "another".into());
        send_signed(&f.dlq, &b, first).await;
        send_signed(&f.dlq, &b, second).await;
        let options = ReplayOptions {
            actor: "tester".into(),
            signing: crate::signing::MessageAuth::Hmac(ring),
            ..ReplayOptions::default()
        };
        let report = replay_dead_letters(&f.dlq, &f.queue, f.audit.as_ref(), &options)
            .await
            .unwrap();
        assert_eq!((report.replayed(), report.left_for_next_run), (1, 1));
        assert_eq!((f.queue.len(), f.dlq.len()), (1, 1));
        assert_eq!(replay_rows(&f.audit).len(), 1);
    }

    #[test]
    fn the_content_key_is_body_and_signature_only() {
        let message = |body: &str, attrs: &[(&str, &str)]| ReceivedMessage {
            message_id: uuid::Uuid::new_v4().to_string(),
            receipt_handle: "r".into(),
            body: body.into(),
            receive_count: 1,
            attributes: attrs
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            sent_at: None,
        };
        let signed = [(attr::SIGNATURE_KEY_ID, "k1"), (attr::SIGNATURE, "ab")];
        let a = message("{}", &signed);
        let mut b = message("{}", &signed);
        b.attributes.insert(attr::REASON.into(), "failed".into());
        b.attributes.insert("traceparent".into(), "00-x".into());
        assert_eq!(
            content_key(&a),
            content_key(&b),
            "a re-dead-letter keeps its key"
        );
        assert_ne!(content_key(&a), content_key(&message("{}", &[])));
        assert_ne!(content_key(&a), content_key(&message("{ }", &signed)));
        let other = [(attr::SIGNATURE_KEY_ID, "k1a"), (attr::SIGNATURE, "b")];
        assert_ne!(content_key(&a), content_key(&message("{}", &other)));
    }

    /// Issue 6: a message that fails verification is never sent back, held or
    /// judged superseded (the releaser would sign a held body afresh: a
    /// laundered forgery); it stays on the DLQ as evidence, audited once. One
    /// whose key the replaying process now holds (a rotation fixed) is replayed
    /// with its original signature.
    #[tokio::test]
    async fn replay_keeps_messages_whose_signature_still_fails_and_never_holds_them() {
        let (clock, mut options) = at_clock("2026-03-01T00:00:00Z");
        options.signing = crate::signing::MessageAuth::Hmac(keyring(K1));
        let f = fixture(5, options);
        let (k1, k0) = (keyring(K1), keyring(K0));
        let good = body("E1", "2026-02-01");
        // Dated after the replay's clock: without the check it would be held.
        let future = body("E2", "2026-02-01");
        let altered = body("E3", "2026-01-01");
        let rotated = body("E4", "2026-01-01");
        let forbidden = body("E5", "2026-01-01");
        f.engine.script("E5", &[Outcome::Forbidden]);
        send_signed(&f.queue, &future, BTreeMap::new()).await;
        send_signed(&f.queue, &altered, k1.sign(&good)).await;
        send_signed(&f.queue, &rotated, k0.sign(&rotated)).await;
        send_signed(&f.queue, &forbidden, k1.sign(&forbidden)).await;
        for _ in 0..4 {
            f.consumer.handle(receive_one(&f.queue).await).await;
        }
        let reasons: Vec<String> = f
            .dlq
            .snapshot()
            .iter()
            .map(|(_, a)| a[attr::REASON].clone())
            .collect();
        assert_eq!(
            reasons,
            [
                "bad_signature",
                "bad_signature",
                "bad_signature",
                "forbidden"
            ]
        );
        let before = lock(&f.audit.rows).len();

        clock.set(t("2026-01-15T00:00:00Z"));
        let replay = ReplayOptions {
            actor: "tester".into(),
            clock: clock.clock(),
            signing: crate::signing::MessageAuth::Hmac(keyring(&format!("{K1},{K0}"))),
            ..ReplayOptions::default()
        };
        let report = replay_dead_letters(&f.dlq, &f.queue, f.audit.as_ref(), &replay)
            .await
            .unwrap();
        let by_id: HashMap<_, _> = report
            .items
            .iter()
            .map(|i| (i.external_id.clone().unwrap(), i.clone()))
            .collect();
        assert_eq!(by_id.len(), 4, "{report:?}");
        for e in ["E2", "E3"] {
            let item = &by_id[e];
            assert!(!item.replayed && item.held_until.is_none(), "{item:?}");
            let why = item.skipped.as_deref().unwrap_or_default();
            assert!(
                why.contains("bad_signature") && why.contains("kept in the dead-letter queue"),
                "{why}"
            );
        }
        assert!(
            by_id["E2"]
                .skipped
                .as_deref()
                .is_some_and(|s| s.contains("not signed"))
        );
        assert!(
            by_id["E3"]
                .skipped
                .as_deref()
                .is_some_and(|s| s.contains("does not match"))
        );
        assert!(by_id["E4"].replayed && by_id["E5"].replayed);
        assert!(
            lock(&f.audit.holds).is_empty(),
            "a forgery must never be held"
        );
        // Only the two authentic ones went back, with their own signatures.
        let sent = f.queue.snapshot();
        assert_eq!(sent.len(), 2);
        for (b, a) in &sent {
            assert!(keyring(&format!("{K1},{K0}")).verify(b, a).is_ok());
        }
        assert_eq!(
            sent.iter()
                .filter(|(_, a)| a[attr::SIGNATURE_KEY_ID] == "k0")
                .count(),
            1
        );
        // The two forgeries stay on the DLQ, visible for inspection.
        let left: Vec<String> = f
            .dlq
            .receive(10, Duration::ZERO)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.body)
            .collect();
        assert_eq!(left.len(), 2);
        assert!(left.contains(&future) && left.contains(&altered));
        // One audit row each: two `invalid` skips (no idempotency key: the body
        // is not trusted), two `retrying` replays.
        let rows: Vec<AuditEntry> = lock(&f.audit.rows)[before..].to_vec();
        assert_eq!(rows.len(), 4, "{rows:?}");
        assert!(
            rows.iter()
                .all(|r| r.action == "replay" && r.actor.as_deref() == Some("tester"))
        );
        let invalid: Vec<_> = rows
            .iter()
            .filter(|r| r.outcome == Outcome::Invalid)
            .collect();
        assert_eq!(invalid.len(), 2);
        assert!(
            invalid
                .iter()
                .all(|r| r.idempotency_key.is_none() && r.manifest.is_none())
        );
        assert_eq!(
            rows.iter()
                .filter(|r| r.outcome == Outcome::Retrying)
                .count(),
            2
        );
    }

    #[tokio::test]
    async fn replay_refuses_a_reason_the_consumer_never_writes() {
        let f = fixture(5, quick());
        send(&f.dlq, &[body("E1", "2020-01-01")]).await;
        let options = ReplayOptions {
            reason: Some("not_a_reason".into()),
            ..ReplayOptions::default()
        };
        let err = replay_dead_letters(&f.dlq, &f.queue, f.audit.as_ref(), &options)
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, ReplayError::Reason { .. }), "{text}");
        assert!(
            text.contains("bad_signature")
                && text.contains("forbidden")
                && text.contains("unknown"),
            "{text}"
        );
        // Refused before touching the queue: the message is still visible.
        assert_eq!(f.dlq.receive(10, Duration::ZERO).await.unwrap().len(), 1);
        let reasons = dead_letter_reasons();
        assert_eq!(
            reasons,
            [
                "ambiguous",
                "identity_mismatch",
                "invalid",
                "forbidden",
                "failed",
                "bad_signature",
                "unknown"
            ]
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let b = |n| backoff(Duration::from_secs(4), Duration::from_secs(60), n);
        assert!((2..=4).contains(&b(1).as_secs()));
        assert!((16..=32).contains(&b(4).as_secs()));
        assert!((30..=60).contains(&b(30).as_secs()));
    }
}
