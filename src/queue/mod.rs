//! The queue seam: what the dispatcher and the consumer need from a message queue
//! (receive with long polling, batched send and delete with per-entry results,
//! visibility changes), implemented by Amazon SQS ([`SqsQueue`]) and by an
//! in-process queue with the same visibility and redrive semantics for the
//! embedded `deprovision run` and for tests ([`MemoryQueue`]); plus the versioned
//! [`TerminationMessage`] carried on it.
//!
//! This module moves bytes: it never decides what a message means, never deletes
//! a message on its own initiative (only `consume` and `dispatch` ask it to), and
//! knows nothing about SCIM or the audit store.

use std::collections::BTreeMap;
use std::time::Duration;

pub mod memory;
pub mod message;
pub mod sqs;

pub use memory::MemoryQueue;
pub use message::{MESSAGE_VERSION, MessageError, TerminationMessage};
pub use sqs::SqsQueue;

/// Most entries SQS accepts in one batch call (SendMessageBatch,
/// DeleteMessageBatch, ReceiveMessage `MaxNumberOfMessages`).
pub const MAX_BATCH: usize = 10;

/// Longest SQS long poll (`WaitTimeSeconds`), and the consumer's default.
pub const MAX_WAIT: Duration = Duration::from_secs(20);

/// Longest visibility timeout SQS allows (12 hours).
pub const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 60 * 60);

/// Longest per-message delay SQS allows (`DelaySeconds`, 15 minutes).
pub const MAX_DELAY: Duration = Duration::from_secs(15 * 60);

/// Message attribute names this project sets (SQS String attributes). SQS allows
/// letters, digits, `-`, `_` and `.` in names.
pub mod attr {
    /// Why a message was dead-lettered: an outcome name (`forbidden`, `failed`,
    /// `invalid`, …).
    pub const REASON: &str = "deprovision.reason";
    /// The human-readable detail behind [`REASON`] (truncated to 1,000 characters).
    pub const DETAIL: &str = "deprovision.detail";
    /// The terminations-queue message id the dead-lettered copy came from.
    pub const SOURCE_MESSAGE_ID: &str = "deprovision.source-message-id";
    /// How many times it had been received when it was dead-lettered.
    pub const RECEIVE_COUNT: &str = "deprovision.receive-count";
    /// Set by `replay-dlq` on a message moved back: the termination may be
    /// attempted again even though its last outcome was a dead-lettering one.
    pub const REPLAYED: &str = "deprovision.replayed";
    /// The id of the key that signed the body (`MESSAGE_SIGNING_KEYS`), see
    /// [`crate::signing`].
    pub const SIGNATURE_KEY_ID: &str = "deprovision.signature-key-id";
    /// Lowercase hex HMAC-SHA256 of the exact body bytes under that key.
    pub const SIGNATURE: &str = "deprovision.signature";
    /// Set by the hold releaser on a future-dated termination it re-sends when
    /// due (the instant, RFC 3339).
    pub const RELEASED: &str = "deprovision.released";
}

/// One received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// The queue's id for the message (stable across receives).
    pub message_id: String,
    /// The handle for this receive; changes on every receive, and only the latest
    /// one is guaranteed to delete or change visibility.
    pub receipt_handle: String,
    /// The body.
    pub body: String,
    /// How many times it has been received, this time included
    /// (`ApproximateReceiveCount`).
    pub receive_count: u32,
    /// String message attributes.
    pub attributes: BTreeMap<String, String>,
    /// When the queue accepted the message (SQS `SentTimestamp`), for the
    /// queue-lag metric; `None` when the queue did not say.
    pub sent_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// One message to send.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OutgoingMessage {
    /// The body.
    pub body: String,
    /// String message attributes (see [`attr`]).
    pub attributes: BTreeMap<String, String>,
    /// Delay before it becomes visible (SQS: at most [`MAX_DELAY`]).
    pub delay: Duration,
}

/// One failed entry of a batch call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryFailure {
    /// Position of the entry in the slice that was passed.
    pub index: usize,
    /// The service's error code (e.g. `ReceiptHandleIsInvalid`).
    pub code: String,
    /// The service's message.
    pub message: String,
    /// True when the request itself was wrong (retrying it unchanged is futile).
    pub sender_fault: bool,
}

/// What the consumer needs to know about a queue, read once when connecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSettings {
    /// The queue's default visibility timeout.
    pub visibility_timeout: Duration,
    /// The redrive policy's `maxReceiveCount`, when the queue has one: the
    /// receive after this many moves the message to the dead-letter queue.
    pub max_receive_count: Option<u32>,
}

/// A queue operation failed as a whole (per-entry failures of batch calls are
/// [`EntryFailure`]s instead).
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The queue service refused or could not be reached.
    #[error("{operation} on queue {queue} failed: {detail}")]
    Service {
        /// The API operation, e.g. `ReceiveMessage`.
        operation: &'static str,
        /// The queue URL or name.
        queue: String,
        /// The service's error with its context chain.
        detail: String,
    },
    /// The receipt handle is not the current one for any in-flight message.
    #[error("{operation} on queue {queue}: receipt handle is not current")]
    StaleReceipt {
        /// The API operation.
        operation: &'static str,
        /// The queue.
        queue: String,
    },
    /// The queue's attributes cannot be used (e.g. a redrive policy that is not
    /// JSON).
    #[error("queue {queue} is misconfigured: {detail}")]
    Config {
        /// The queue.
        queue: String,
        /// What is wrong.
        detail: String,
    },
}

/// A message queue as the pipeline uses it. Implementations: [`SqsQueue`],
/// [`MemoryQueue`]. Batch methods take at most [`MAX_BATCH`] entries.
pub trait Queue: Send + Sync + 'static {
    /// A name for logs (the queue URL for SQS).
    fn name(&self) -> &str;

    /// The queue's visibility timeout and redrive limit.
    fn settings(&self) -> QueueSettings;

    /// Receives up to `max` (1..=10) messages, waiting up to `wait` (≤ 20 s) for
    /// the first. Returns an empty vector when none arrived. Dropping the future
    /// abandons the poll.
    fn receive(
        &self,
        max: u32,
        wait: Duration,
    ) -> impl Future<Output = Result<Vec<ReceivedMessage>, QueueError>> + Send;

    /// Sends up to ten messages; returns the entries that failed (by index).
    fn send_batch(
        &self,
        messages: &[OutgoingMessage],
    ) -> impl Future<Output = Result<Vec<EntryFailure>, QueueError>> + Send;

    /// Deletes up to ten messages by receipt handle; returns the entries that
    /// failed (by index).
    fn delete_batch(
        &self,
        receipt_handles: &[String],
    ) -> impl Future<Output = Result<Vec<EntryFailure>, QueueError>> + Send;

    /// Makes a received message invisible for `timeout` from now (0: visible
    /// again at once).
    fn change_visibility(
        &self,
        receipt_handle: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;
}

/// Truncates `text` to at most `max` characters on a character boundary, for
/// attribute values and log fields.
pub fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}
