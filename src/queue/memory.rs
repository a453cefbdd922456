//! An in-process queue with SQS's delivery semantics — at-least-once delivery,
//! visibility timeouts, per-receive receipt handles (only the latest one is
//! honoured), `ApproximateReceiveCount`, per-message delays and an optional
//! redrive to a dead-letter queue after `maxReceiveCount` receives — so the
//! embedded `deprovision run` uses the same consumer code as the ECS service.
//!
//! It holds messages in memory only: nothing survives the process, which is
//! acceptable for `run` because the audit store, not the queue, is the record of
//! what was done. Time is tokio's, so tests may pause it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::{EntryFailure, OutgoingMessage, Queue, QueueError, QueueSettings, ReceivedMessage};

/// A cloneable handle to one in-process queue.
#[derive(Clone)]
pub struct MemoryQueue {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MemoryQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryQueue")
            .field("name", &self.inner.name)
            .field("len", &self.len())
            .finish()
    }
}

struct Inner {
    name: String,
    settings: QueueSettings,
    dead_letter: Option<MemoryQueue>,
    state: Mutex<State>,
    /// Woken on every send, visibility change and delete.
    changed: Notify,
}

#[derive(Default)]
struct State {
    next_seq: u64,
    /// By send order, so receives are roughly FIFO like a quiet SQS queue.
    messages: BTreeMap<u64, Stored>,
    /// Current receipt handle → message sequence number.
    receipts: HashMap<String, u64>,
}

struct Stored {
    id: String,
    body: String,
    attributes: BTreeMap<String, String>,
    receive_count: u32,
    visible_at: Instant,
    receipt: Option<String>,
    /// Wall-clock send time, reported like SQS's `SentTimestamp`.
    sent_at: chrono::DateTime<chrono::Utc>,
}

impl MemoryQueue {
    /// A queue with the given visibility timeout and no redrive policy.
    pub fn new(name: impl Into<String>, visibility_timeout: Duration) -> Self {
        Self::build(name.into(), visibility_timeout, None)
    }

    /// A queue whose messages move to `dead_letter` when received more than
    /// `max_receive_count` times (SQS redrive policy semantics).
    pub fn with_dead_letter(
        name: impl Into<String>,
        visibility_timeout: Duration,
        dead_letter: MemoryQueue,
        max_receive_count: u32,
    ) -> Self {
        Self::build(
            name.into(),
            visibility_timeout,
            Some((dead_letter, max_receive_count.max(1))),
        )
    }

    fn build(name: String, visibility: Duration, redrive: Option<(MemoryQueue, u32)>) -> Self {
        let (dead_letter, max_receive_count) = match redrive {
            Some((q, n)) => (Some(q), Some(n)),
            None => (None, None),
        };
        Self {
            inner: Arc::new(Inner {
                name,
                settings: QueueSettings {
                    visibility_timeout: visibility,
                    max_receive_count,
                },
                dead_letter,
                state: Mutex::new(State::default()),
                changed: Notify::new(),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the map half-updated in a
        // way that matters more than losing the queue; keep serving.
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Messages held, visible or not.
    pub fn len(&self) -> usize {
        self.state().messages.len()
    }

    /// True when the queue holds no message at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until the queue holds no message (every one deleted or moved).
    pub async fn wait_empty(&self) {
        loop {
            let notified = self.inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_empty() {
                return;
            }
            notified.await;
        }
    }

    /// Bodies and attributes of every message held, in send order, without
    /// receiving them (for summaries and tests).
    pub fn snapshot(&self) -> Vec<(String, BTreeMap<String, String>)> {
        self.state()
            .messages
            .values()
            .map(|m| (m.body.clone(), m.attributes.clone()))
            .collect()
    }

    fn push(&self, message: &OutgoingMessage) {
        let mut state = self.state();
        let seq = state.next_seq;
        state.next_seq += 1;
        state.messages.insert(
            seq,
            Stored {
                id: uuid::Uuid::new_v4().to_string(),
                body: message.body.clone(),
                attributes: message.attributes.clone(),
                receive_count: 0,
                visible_at: Instant::now() + message.delay,
                receipt: None,
                sent_at: chrono::Utc::now(),
            },
        );
        drop(state);
        self.inner.changed.notify_waiters();
    }

    /// One non-blocking receive attempt; also returns when the next hidden
    /// message becomes visible.
    fn try_receive(&self, max: usize) -> (Vec<ReceivedMessage>, Option<Instant>) {
        let now = Instant::now();
        let mut state = self.state();
        let mut out = Vec::new();
        let mut redriven = Vec::new();
        let mut next_visible: Option<Instant> = None;
        let State {
            messages, receipts, ..
        } = &mut *state;
        for (&seq, m) in messages.iter_mut() {
            if m.visible_at > now {
                next_visible = Some(next_visible.map_or(m.visible_at, |t| t.min(m.visible_at)));
                continue;
            }
            if out.len() >= max {
                break;
            }
            if let (Some(limit), Some(_)) = (
                self.inner.settings.max_receive_count,
                &self.inner.dead_letter,
            ) && m.receive_count >= limit
            {
                redriven.push(seq);
                continue;
            }
            if let Some(old) = m.receipt.take() {
                receipts.remove(&old);
            }
            let receipt = uuid::Uuid::new_v4().to_string();
            receipts.insert(receipt.clone(), seq);
            m.receipt = Some(receipt.clone());
            m.receive_count += 1;
            m.visible_at = now + self.inner.settings.visibility_timeout;
            out.push(ReceivedMessage {
                message_id: m.id.clone(),
                receipt_handle: receipt,
                body: m.body.clone(),
                receive_count: m.receive_count,
                attributes: m.attributes.clone(),
                sent_at: Some(m.sent_at),
            });
        }
        let moved: Vec<Stored> = redriven
            .into_iter()
            .filter_map(|seq| messages.remove(&seq))
            .collect();
        for m in &moved {
            if let Some(r) = &m.receipt {
                receipts.remove(r);
            }
        }
        drop(state);
        if let (Some(dlq), false) = (&self.inner.dead_letter, moved.is_empty()) {
            for m in moved {
                // SQS keeps the body and attributes when it redrives.
                dlq.push(&OutgoingMessage {
                    body: m.body,
                    attributes: m.attributes,
                    delay: Duration::ZERO,
                });
            }
            // Only on a real change: waking our own long poll would spin it.
            self.inner.changed.notify_waiters();
        }
        (out, next_visible)
    }

    fn with_receipt<T>(
        &self,
        operation: &'static str,
        receipt: &str,
        f: impl FnOnce(&mut State, u64) -> T,
    ) -> Result<T, QueueError> {
        let mut state = self.state();
        let Some(&seq) = state.receipts.get(receipt) else {
            return Err(QueueError::StaleReceipt {
                operation,
                queue: self.inner.name.clone(),
            });
        };
        let out = f(&mut state, seq);
        drop(state);
        self.inner.changed.notify_waiters();
        Ok(out)
    }
}

impl Queue for MemoryQueue {
    fn name(&self) -> &str {
        &self.inner.name
    }

    fn settings(&self) -> QueueSettings {
        self.inner.settings
    }

    async fn receive(&self, max: u32, wait: Duration) -> Result<Vec<ReceivedMessage>, QueueError> {
        let max = (max as usize).clamp(1, super::MAX_BATCH);
        let deadline = Instant::now() + wait;
        loop {
            let notified = self.inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (got, next_visible) = self.try_receive(max);
            if !got.is_empty() {
                return Ok(got);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let until = next_visible.map_or(deadline, |t| t.min(deadline));
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(until) => {}
            }
        }
    }

    async fn send_batch(
        &self,
        messages: &[OutgoingMessage],
    ) -> Result<Vec<EntryFailure>, QueueError> {
        for m in messages {
            self.push(m);
        }
        Ok(Vec::new())
    }

    async fn delete_batch(
        &self,
        receipt_handles: &[String],
    ) -> Result<Vec<EntryFailure>, QueueError> {
        let mut failures = Vec::new();
        for (index, receipt) in receipt_handles.iter().enumerate() {
            let deleted = self.with_receipt("DeleteMessage", receipt, |state, seq| {
                state.receipts.remove(receipt);
                state.messages.remove(&seq);
            });
            if let Err(e) = deleted {
                failures.push(EntryFailure {
                    index,
                    code: "ReceiptHandleIsInvalid".into(),
                    message: e.to_string(),
                    sender_fault: true,
                });
            }
        }
        Ok(failures)
    }

    async fn change_visibility(
        &self,
        receipt_handle: &str,
        timeout: Duration,
    ) -> Result<(), QueueError> {
        self.with_receipt("ChangeMessageVisibility", receipt_handle, |state, seq| {
            if let Some(m) = state.messages.get_mut(&seq) {
                m.visible_at = Instant::now() + timeout;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(body: &str) -> OutgoingMessage {
        OutgoingMessage {
            body: body.into(),
            ..OutgoingMessage::default()
        }
    }

    // Real time, but no test depends on how long anything takes: hidden messages
    // are made visible again explicitly (visibility 0), never by waiting.
    const LONG: Duration = Duration::from_secs(600);

    #[tokio::test]
    async fn visibility_receipts_and_redrive() {
        let dlq = MemoryQueue::new("dlq", LONG);
        let q = MemoryQueue::with_dead_letter("q", LONG, dlq.clone(), 2);
        q.send_batch(&[msg("a")]).await.unwrap();

        let first = q.receive(10, Duration::ZERO).await.unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].receive_count, 1);
        assert!(q.receive(10, Duration::ZERO).await.unwrap().is_empty());

        q.change_visibility(&first[0].receipt_handle, Duration::ZERO)
            .await
            .unwrap();
        let second = q.receive(10, Duration::from_secs(20)).await.unwrap();
        assert_eq!(second[0].receive_count, 2);
        assert_eq!(second[0].message_id, first[0].message_id);

        // Only the latest receipt is honoured.
        let stale = q
            .delete_batch(&[first[0].receipt_handle.clone()])
            .await
            .unwrap();
        assert_eq!(stale.len(), 1);
        assert!(
            q.change_visibility(&first[0].receipt_handle, Duration::ZERO)
                .await
                .is_err()
        );

        // Released, then received a third time: redriven to the DLQ instead.
        q.change_visibility(&second[0].receipt_handle, Duration::ZERO)
            .await
            .unwrap();
        assert!(q.receive(10, Duration::ZERO).await.unwrap().is_empty());
        assert!(q.is_empty());
        assert_eq!(dlq.snapshot()[0].0, "a");
    }

    #[tokio::test]
    async fn long_poll_wakes_on_send_and_delete_empties() {
        let q = MemoryQueue::new("q", LONG);
        let poll = tokio::spawn({
            let q = q.clone();
            async move { q.receive(1, Duration::from_secs(600)).await }
        });
        tokio::task::yield_now().await;
        q.send_batch(&[msg("x")]).await.unwrap();
        let got = poll.await.unwrap().unwrap();
        assert_eq!(got[0].body, "x");
        let failures = q
            .delete_batch(&[got[0].receipt_handle.clone()])
            .await
            .unwrap();
        assert!(failures.is_empty());
        q.wait_empty().await;
    }

    #[tokio::test]
    async fn delayed_messages_stay_hidden() {
        let q = MemoryQueue::new("q", LONG);
        q.send_batch(&[OutgoingMessage {
            body: "later".into(),
            delay: LONG,
            ..OutgoingMessage::default()
        }])
        .await
        .unwrap();
        assert!(q.receive(1, Duration::ZERO).await.unwrap().is_empty());
        assert_eq!(q.len(), 1);
    }

    /// Regression: with a dead-letter queue configured, every receive used to
    /// wake its own long poll, which then spun without yielding, so a task
    /// spawned on the same thread never ran to send the message being waited for.
    #[tokio::test]
    async fn long_poll_with_dead_letter_queue_yields_to_other_tasks() {
        let dlq = MemoryQueue::new("dlq", LONG);
        let q = MemoryQueue::with_dead_letter("q", LONG, dlq, 3);
        let sender = q.clone();
        tokio::spawn(async move { sender.send_batch(&[msg("hello")]).await });
        let got = q.receive(1, Duration::from_secs(30)).await.unwrap();
        assert_eq!(got.len(), 1);
    }
}
