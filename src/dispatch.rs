//! The dispatcher: turns a new manifest into one [`TerminationMessage`] per
//! termination on the terminations queue. Owns reading S3 event notifications from
//! the manifest-events queue (direct, or wrapped in SNS or EventBridge envelopes;
//! keys decoded as S3 encodes them), fetching the object (pinned to the version
//! or ETag first read), validating the whole manifest before anything is enqueued
//! (two streaming passes, so memory stays bounded), fanning out with
//! SendMessageBatch (ten per call, several calls in flight, only failed entries
//! retried), and auditing the manifest (counts) and each rejected record. An
//! event is deleted only when every record is enqueued or rejected.
//!
//! It never deprovisions anyone and never deletes termination messages (only
//! `consume` does); duplicates across deliveries are harmless because the consumer
//! checks each idempotency key against the audit.

use std::io::{self, Read};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use chrono_tz::Tz;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, error, info, warn};

use crate::audit::{AuditEntry, HeldManifest, ManifestHoldState, ManifestOrigin};
use crate::breaker::{self, Breaker, Gate};
use crate::clock::Clock;
use crate::consume::{AuditSink, DEFAULT_MAX_FUTURE_DAYS, too_far_ahead};
use crate::domain::{EffectiveAt, Outcome, RecordAction, TerminationRecord};
use crate::manifest::{self, Entry, Format, ManifestError, Summary};
use crate::queue::{MAX_BATCH, OutgoingMessage, Queue, TerminationMessage, attr, truncate};
use crate::signing::MessageAuth;

/// An S3 client from the SDK configuration. With a custom endpoint
/// (`AWS_ENDPOINT_URL`, e.g. moto) buckets are addressed by path, since such
/// endpoints do not serve virtual-hosted bucket names.
pub fn s3_client(config: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
    let builder =
        aws_sdk_s3::config::Builder::from(config).force_path_style(config.endpoint_url().is_some());
    aws_sdk_s3::Client::from_conf(builder.build())
}

/// Where a manifest is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestSource {
    /// A local file (the embedded `run`).
    Local(PathBuf),
    /// An S3 object.
    S3(ObjectRef),
}

/// An S3 object named by an event or a command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    /// The bucket.
    pub bucket: String,
    /// The object key, decoded (as stored in S3, not as an event encodes it).
    pub key: String,
    /// The version the event names, when the bucket is versioned.
    pub version_id: Option<String>,
}

impl ManifestSource {
    /// `s3://bucket/key` (the key taken literally, not percent-decoded) or a local
    /// path. Errors when an `s3://` URL lacks a bucket or key.
    pub fn parse(arg: &str) -> Result<Self, DispatchError> {
        match arg.strip_prefix("s3://") {
            Some(rest) => match rest.split_once('/') {
                Some((bucket, key)) if !bucket.is_empty() && !key.is_empty() => {
                    Ok(Self::S3(ObjectRef {
                        bucket: bucket.to_owned(),
                        key: key.to_owned(),
                        version_id: None,
                    }))
                }
                _ => Err(DispatchError::Source(format!(
                    "{arg:?} is not s3://bucket/key"
                ))),
            },
            None => Ok(Self::Local(PathBuf::from(arg))),
        }
    }

    fn name(&self) -> String {
        match self {
            Self::Local(p) => p.display().to_string(),
            Self::S3(o) => format!("s3://{}/{}", o.bucket, o.key),
        }
    }

    fn hint(&self) -> Option<Format> {
        match self {
            Self::Local(p) => Format::from_extension(&p.to_string_lossy()),
            Self::S3(o) => Format::from_extension(&o.key),
        }
    }
}

/// Why a manifest or event could not be dispatched. All but [`Self::Event`] are
/// worth retrying (the event stays on its queue); a manifest rejected as a whole
/// is not an error but a [`DispatchReport`] with `rejected_file` set.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// The command-line source cannot be used.
    #[error("invalid manifest source: {0}")]
    Source(String),
    /// An `s3://` source without an S3 client configured.
    #[error("{0} is in S3 but no S3 client is configured")]
    NoS3(String),
    /// GetObject failed.
    #[error("cannot fetch {object}: {detail}")]
    Fetch {
        /// `s3://bucket/key`.
        object: String,
        /// The SDK's error with its context.
        detail: String,
    },
    /// Reading the bytes failed (network or file).
    #[error("cannot read manifest {manifest}: {source}")]
    Io {
        /// The manifest.
        manifest: String,
        /// The cause.
        source: io::Error,
    },
    /// The second pass read a different manifest than the first.
    #[error(
        "manifest {manifest} changed between validation and dispatch (first read {}, second read {})",
        counts_text(first),
        counts_text(second)
    )]
    Changed {
        /// The manifest.
        manifest: String,
        /// Counts of the first pass.
        first: Box<Summary>,
        /// Counts of the second pass.
        second: Box<Summary>,
    },
    /// Some messages could not be enqueued even after retries.
    #[error("{failed} termination messages from {manifest} could not be enqueued: {detail}")]
    Enqueue {
        /// The manifest.
        manifest: String,
        /// How many entries still failed.
        failed: usize,
        /// The last failure.
        detail: String,
    },
    /// An audit row could not be written.
    #[error("cannot audit manifest {manifest}: {detail}")]
    Audit {
        /// The manifest.
        manifest: String,
        /// The store's error.
        detail: String,
    },
    /// The event body is not an S3 event notification in any envelope we know.
    #[error("not an S3 event notification: {0}")]
    Event(String),
    /// A blocking parser task failed to run.
    #[error("manifest reader task failed: {0}")]
    Task(String),
    /// An approved manifest's bytes are not the ones that were held.
    #[error(
        "manifest {manifest} is not the content that was held (SHA-256 {found}, held {expected}); nothing was enqueued"
    )]
    ContentChanged {
        /// The manifest.
        manifest: String,
        /// The held content's SHA-256.
        expected: String,
        /// What was read now.
        found: String,
    },
    /// A read pinned to an ETag found a different object (S3 412
    /// PreconditionFailed): the manifest was overwritten in the meantime.
    #[error(
        "manifest {manifest} was overwritten since it was read (ETag {etag} no longer matches); nothing was enqueued"
    )]
    Overwritten {
        /// The manifest.
        manifest: String,
        /// The ETag it was pinned to.
        etag: String,
    },
    /// An approval names content an operator already rejected
    /// (`deprovision reject`); nothing was enqueued.
    #[error(
        "manifest {manifest} ({manifest_id}) was rejected by {} at {}; it is never dispatched, not even with an approval; nothing was enqueued",
        by.as_deref().unwrap_or("unknown"),
        at.map_or_else(|| "an unknown time".to_owned(), |t| t.to_rfc3339())
    )]
    Rejected {
        /// The manifest.
        manifest: String,
        /// Its `MANIFEST_ID`.
        manifest_id: String,
        /// Who rejected it.
        by: Option<String>,
        /// When.
        at: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// The mass-deactivation breaker could not decide (e.g. the active-user
    /// count failed); nothing was enqueued.
    #[error("manifest {manifest}: the mass-deactivation breaker could not decide: {detail}")]
    Breaker {
        /// The manifest.
        manifest: String,
        /// Why.
        detail: String,
    },
}

/// What one manifest came to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DispatchReport {
    /// The manifest (bucket `local` for files; version = S3 version id, else
    /// ETag).
    pub origin: ManifestOrigin,
    /// Record counts (zero when rejected whole).
    pub summary: Summary,
    /// Messages enqueued (= `summary.valid`).
    pub enqueued: u64,
    /// Why the whole file was rejected, when it was (nothing was enqueued).
    pub rejected_file: Option<String>,
    /// The records rejected on their own, in file order: the first
    /// [`MAX_LISTED_REJECTED`] (`summary.rejected` counts all of them; every one
    /// is in the audit).
    pub rejected_records: Vec<RejectedRecord>,
    /// SHA-256 of the manifest's bytes as read (64 lowercase hex digits), so a
    /// plan or summary names exactly the file it is about.
    pub sha256: Option<String>,
    /// `MANIFEST_ID`: the first 16 hex digits of the content's SHA-256 (absent
    /// when the file could not be read as a whole).
    pub manifest_id: Option<String>,
    /// Why the mass-deactivation breaker held it, when it did (nothing was
    /// enqueued; `deprovision approve MANIFEST_ID` releases it).
    pub held: Option<String>,
    /// True when the hold is an operator's rejection of this content: no
    /// approval releases it (only corrected content, a new manifest, proceeds).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub held_rejected: bool,
    /// Distinct valid terminations the first pass counted (rehires excluded):
    /// the number the mass-deactivation breaker judges.
    pub terminations: u64,
}

/// An operator's approval of a held manifest: dispatch bypassing the breaker,
/// only if the content is what was held.
#[derive(Debug, Clone, Default)]
pub struct Approved {
    /// The held content's SHA-256 (64 hex digits); `None` approves whatever is
    /// read (`run --approve`, where the operator names the file).
    pub sha256: Option<String>,
    /// The S3 version the hold read.
    pub version_id: Option<String>,
    /// The ETag the hold read (used as `If-Match` when there is no version).
    pub etag: Option<String>,
    /// Who approves, when the dispatch itself records the approval
    /// (`run --approve`): the `approve` audit row is appended and the hold (if
    /// any) marked approved before anything is enqueued. `None` when the
    /// caller records it (`deprovision approve`).
    pub by: Option<String>,
}

/// Most rejected records a [`DispatchReport`] lists, so that its memory stays
/// bounded whatever the manifest holds.
pub const MAX_LISTED_REJECTED: usize = 1000;

/// One record rejected on its own (manifest reader's verdict).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RejectedRecord {
    /// Zero-based record index.
    pub index: u64,
    /// One-based line on which the record starts.
    pub line: u64,
    /// The raw externalId when one could be read.
    #[serde(rename = "externalId")]
    pub external_id: Option<String>,
    /// Why it was rejected.
    pub reason: String,
}

/// Dispatcher settings.
#[derive(Debug, Clone)]
pub struct DispatchOptions {
    /// The zone in which date-only terminations are read (`HR_TIMEZONE`).
    pub hr_timezone: Tz,
    /// Which moment of a date-only day takes effect.
    pub effective_at: EffectiveAt,
    /// SendMessageBatch calls in flight at once.
    pub send_concurrency: usize,
    /// Attempts per batch entry before the dispatch fails.
    pub send_attempts: u32,
    /// Pause before retrying failed entries (doubles per attempt).
    pub send_retry_base: Duration,
    /// A dry run: rejected records and the manifest are audited as `dry_run`
    /// (saying what would have been recorded), never as `invalid`/`scheduled`.
    pub dry_run: bool,
    /// How each message is signed (`MESSAGE_SIGNING_KEYS`).
    pub signing: MessageAuth,
    /// The mass-deactivation breaker, when on.
    pub breaker: Option<Arc<Breaker>>,
    /// Terminations effective more than this many days ahead are rejected as
    /// `invalid` (`MAX_FUTURE_DAYS`), audited, and not enqueued.
    pub max_future_days: u32,
    /// "Now", for the `MAX_FUTURE_DAYS` check.
    pub clock: Clock,
    /// Mark every message as a replay ([`attr::REPLAYED`]), so that a
    /// termination an earlier run left dead-lettered (failed, forbidden,
    /// ambiguous, …) is attempted again (`run --retry-failed`); finished ones are
    /// still skipped. Off by default.
    pub retry_dead_lettered: bool,
    /// The command that approves a held manifest, named in the held log line
    /// and audit row; `None`: `deprovision approve MANIFEST_ID`. `run` sets its
    /// own `deprovision run MANIFEST --approve` (`approve` cannot re-read a
    /// local file, nor feed run's in-process queue).
    pub approve_command: Option<String>,
}

impl Default for DispatchOptions {
    fn default() -> Self {
        Self {
            hr_timezone: chrono_tz::UTC,
            effective_at: EffectiveAt::StartOfDay,
            send_concurrency: 4,
            send_attempts: 5,
            send_retry_base: Duration::from_millis(200),
            dry_run: false,
            signing: MessageAuth::Off,
            breaker: None,
            max_future_days: DEFAULT_MAX_FUTURE_DAYS,
            clock: Clock::system(),
            retry_dead_lettered: false,
            approve_command: None,
        }
    }
}

/// The audit row of a record refused for `MAX_FUTURE_DAYS` (outcome `invalid`,
/// with its effective time). Like other rejected records it carries no
/// idempotency key: the same termination sent again once within the limit must
/// not look already finished to the consumer.
fn too_far_entry(
    message: &TerminationMessage,
    position: &manifest::Position,
    reason: &str,
    attempt: u32,
) -> AuditEntry {
    AuditEntry {
        external_id: Some(message.record.external_id.as_str().to_owned()),
        user_id: message
            .record
            .user_id
            .as_ref()
            .map(|u| u.as_str().to_owned()),
        action: "deactivate".into(),
        status_code: None,
        success: false,
        error_message: Some(format!("{position}: {reason}")),
        outcome: Outcome::Invalid,
        credential: None,
        groups_removed: Vec::new(),
        attempt,
        sqs_message_id: None,
        manifest: Some(message.origin.clone()),
        effective_at: Some(message.effective_at),
        correlation_ids: Vec::new(),
        duration_ms: None,
        idempotency_key: None,
        actor: None,
    }
}

/// Fans manifests out onto a terminations queue.
pub struct Dispatcher<Q: Queue, A: AuditSink> {
    s3: Option<aws_sdk_s3::Client>,
    queue: Q,
    audit: Arc<A>,
    options: DispatchOptions,
}

/// What an event on the manifest-events queue came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventOutcome {
    /// Each created object was dispatched (or rejected whole, and audited).
    Dispatched(Vec<DispatchReport>),
    /// `s3:TestEvent`, sent when a notification is configured.
    Test,
    /// An event that is not about a new object (e.g. `ObjectRemoved`).
    Ignored(String),
}

/// An event notification, unwrapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParsedEvent {
    /// Objects created.
    Created(Vec<ObjectRef>),
    /// `s3:TestEvent`.
    Test,
    /// Something else, with its event name.
    Other(String),
}

/// Parses an event body: an S3 event notification (`{"Records":[…]}`,
/// AWS S3 User Guide "Event message structure"), `s3:TestEvent`, either wrapped in
/// an SNS notification (`{"Type":"Notification","Message":"…"}`), or an
/// EventBridge `Object Created` event (`{"source":"aws.s3","detail":{…}}`). Keys in
/// S3 notifications are URL-encoded with `+` for space; EventBridge keys are
/// not encoded. Errors: [`DispatchError::Event`].
pub fn parse_event(body: &str) -> Result<ParsedEvent, DispatchError> {
    let v: serde_json::Value = serde_json::from_str(body)
        .map_err(|e| DispatchError::Event(format!("body is not JSON: {e}")))?;
    parse_event_value(&v, 0)
}

fn parse_event_value(v: &serde_json::Value, depth: u8) -> Result<ParsedEvent, DispatchError> {
    let bad = |why: &str| DispatchError::Event(why.to_owned());
    if depth > 3 {
        return Err(bad("envelopes nested too deeply"));
    }
    if v["Type"] == "Notification"
        && let Some(inner) = v["Message"].as_str()
    {
        let inner: serde_json::Value = serde_json::from_str(inner)
            .map_err(|e| DispatchError::Event(format!("SNS Message is not JSON: {e}")))?;
        return parse_event_value(&inner, depth + 1);
    }
    if v["Event"] == "s3:TestEvent" {
        return Ok(ParsedEvent::Test);
    }
    if v["source"] == "aws.s3" && v["detail"].is_object() {
        let detail_type = v["detail-type"].as_str().unwrap_or_default();
        if detail_type != "Object Created" {
            return Ok(ParsedEvent::Other(detail_type.to_owned()));
        }
        let d = &v["detail"];
        let bucket = d["bucket"]["name"]
            .as_str()
            .ok_or_else(|| bad("EventBridge detail has no bucket.name"))?;
        let key = d["object"]["key"]
            .as_str()
            .ok_or_else(|| bad("EventBridge detail has no object.key"))?;
        return Ok(ParsedEvent::Created(vec![ObjectRef {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            version_id: d["object"]["version-id"].as_str().map(str::to_owned),
        }]));
    }
    let Some(records) = v["Records"].as_array() else {
        return Err(bad("no Records, Event, SNS Message or EventBridge detail"));
    };
    let mut created = Vec::new();
    let mut other = Vec::new();
    for r in records {
        let name = r["eventName"].as_str().unwrap_or_default();
        if !name.starts_with("ObjectCreated:") {
            other.push(name.to_owned());
            continue;
        }
        let bucket = r["s3"]["bucket"]["name"]
            .as_str()
            .ok_or_else(|| bad("record has no s3.bucket.name"))?;
        let raw_key = r["s3"]["object"]["key"]
            .as_str()
            .ok_or_else(|| bad("record has no s3.object.key"))?;
        created.push(ObjectRef {
            bucket: bucket.to_owned(),
            key: decode_event_key(raw_key)?,
            version_id: r["s3"]["object"]["versionId"].as_str().map(str::to_owned),
        });
    }
    if created.is_empty() {
        return Ok(ParsedEvent::Other(other.join(",")));
    }
    Ok(ParsedEvent::Created(created))
}

/// Decodes a key as S3 event notifications encode it: form encoding, so `+` is a
/// space and everything else is percent-encoded UTF-8.
pub fn decode_event_key(raw: &str) -> Result<String, DispatchError> {
    let spaced = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .map(|k| k.into_owned())
        .map_err(|e| {
            DispatchError::Event(format!("object key {raw:?} is not UTF-8 once decoded: {e}"))
        })
}

/// Feeds S3 body chunks to a blocking parser: bounded (a few chunks), so a slow
/// parser slows the download instead of buffering the object.
struct ChunkReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}

/// What the first GET returned, to pin the second to the same bytes.
#[derive(Debug, Clone, Default)]
struct Pin {
    version_id: Option<String>,
    etag: Option<String>,
}

impl<Q: Queue, A: AuditSink> Dispatcher<Q, A> {
    /// A dispatcher onto `queue`, auditing into `audit`. `s3` is needed only for
    /// `s3://` sources and events.
    pub fn new(
        s3: Option<aws_sdk_s3::Client>,
        queue: Q,
        audit: Arc<A>,
        options: DispatchOptions,
    ) -> Self {
        Self {
            s3,
            queue,
            audit,
            options,
        }
    }

    /// Handles one manifest-events message body. A test event or a non-creation
    /// event needs nothing; each created object is dispatched in turn. Errors
    /// mean the event must stay on its queue to be retried.
    pub async fn handle_event(
        &self,
        body: &str,
        attempt: u32,
    ) -> Result<EventOutcome, DispatchError> {
        match parse_event(body)? {
            ParsedEvent::Test => Ok(EventOutcome::Test),
            ParsedEvent::Other(name) => Ok(EventOutcome::Ignored(name)),
            ParsedEvent::Created(objects) => {
                let mut reports = Vec::with_capacity(objects.len());
                for object in objects {
                    reports.push(self.dispatch(&ManifestSource::S3(object), attempt).await?);
                }
                Ok(EventOutcome::Dispatched(reports))
            }
        }
    }

    /// Dispatches one manifest: validates it whole, then enqueues every valid,
    /// distinct termination and audits every rejected record and the manifest.
    /// A manifest rejected whole is audited and reported (`rejected_file`), not
    /// an error. `attempt` is recorded in the audit rows. Runs in one `dispatch`
    /// span whose trace context every message carries in its attributes.
    pub async fn dispatch(
        &self,
        source: &ManifestSource,
        attempt: u32,
    ) -> Result<DispatchReport, DispatchError> {
        self.fan_out(source, attempt, true, None).await
    }

    /// `dispatch --dry-run`: reads and validates the manifest exactly as
    /// [`Dispatcher::dispatch`] does and reports what would be enqueued
    /// (`summary.valid`) and what is rejected, but enqueues nothing
    /// (`enqueued` = 0) and holds nothing (the breaker is not consulted). The
    /// manifest and each rejected record are audited as `dry_run`. Errors: as
    /// [`Dispatcher::dispatch`].
    pub async fn plan(&self, source: &ManifestSource) -> Result<DispatchReport, DispatchError> {
        self.fan_out(source, 1, false, None).await
    }

    /// Dispatches a manifest an operator approved, bypassing the breaker: the
    /// first read is pinned to `approved`'s version (or ETag), and nothing is
    /// enqueued unless the content's SHA-256 equals `approved.sha256` (when
    /// given), nor when the breaker (if configured) records this content as
    /// rejected. With `approved.by` the approval is audited before the first
    /// message is enqueued; if that fails nothing is. Errors: as
    /// [`Dispatcher::dispatch`], [`DispatchError::ContentChanged`],
    /// [`DispatchError::Rejected`].
    pub async fn dispatch_approved(
        &self,
        source: &ManifestSource,
        attempt: u32,
        approved: &Approved,
    ) -> Result<DispatchReport, DispatchError> {
        self.fan_out(source, attempt, true, Some(approved)).await
    }

    async fn fan_out(
        &self,
        source: &ManifestSource,
        attempt: u32,
        enqueue: bool,
        approved: Option<&Approved>,
    ) -> Result<DispatchReport, DispatchError> {
        let span = crate::telemetry::dispatch_span(&source.name(), attempt);
        let result = self
            .fan_out_in(source, attempt, enqueue, approved, &span)
            .instrument(span.clone())
            .await;
        if let Ok(report) = &result {
            span.record("enqueued", report.enqueued);
            span.record("rejected", report.summary.rejected);
        }
        result
    }

    async fn fan_out_in(
        &self,
        source: &ManifestSource,
        attempt: u32,
        enqueue: bool,
        approved: Option<&Approved>,
        span: &tracing::Span,
    ) -> Result<DispatchReport, DispatchError> {
        let dry_run = self.options.dry_run || !enqueue;
        // Attributes every message of this dispatch carries: the trace context,
        // and the replay mark of `run --retry-failed`.
        let mut common = std::collections::BTreeMap::new();
        crate::telemetry::inject_into(span, &mut common);
        if self.options.retry_dead_lettered {
            common.insert(
                attr::REPLAYED.to_owned(),
                self.options.clock.now().to_rfc3339(),
            );
        }
        let name = source.name();
        let hint = source.hint();
        let first_pin = approved
            .filter(|a| a.version_id.is_some() || a.etag.is_some())
            .map(|a| Pin {
                version_id: a.version_id.clone(),
                etag: a.etag.clone(),
            });
        let (reader, pin) = self.open(source, first_pin.as_ref()).await?;
        let first = tokio::task::spawn_blocking(move || breaker::count_and_hash(reader, hint))
            .await
            .map_err(|e| DispatchError::Task(e.to_string()))?;
        let origin = self.origin(source, &pin);
        let (first, terminations, sha256, rehires) = match first {
            Ok(counted) => (
                counted.summary,
                counted.terminations,
                counted.sha256,
                counted.rehires,
            ),
            Err(ManifestError::Io(source)) => {
                return Err(DispatchError::Io {
                    manifest: name,
                    source,
                });
            }
            Err(e) => {
                let reason = e.reason();
                warn!(
                    manifest = name,
                    reason, "manifest rejected as a whole; nothing enqueued"
                );
                let report = DispatchReport {
                    origin,
                    summary: Summary::default(),
                    enqueued: 0,
                    rejected_file: Some(reason),
                    rejected_records: Vec::new(),
                    sha256: None,
                    manifest_id: None,
                    held: None,
                    held_rejected: false,
                    terminations: 0,
                };
                self.audit_manifest(&report, attempt, dry_run).await?;
                return Ok(report);
            }
        };
        let manifest_id = breaker::manifest_id(&sha256);
        info!(manifest = name, manifest_id, ?first, "manifest validated");
        if rehires.overflow > 0 {
            warn!(
                manifest = name,
                remembered = rehires.people(),
                not_remembered = rehires.overflow,
                "more people rehired than one manifest's rehire index holds; for the rest, \
                 a termination handled before its rehire is not withdrawn by it"
            );
        }
        match approved {
            Some(a) => {
                if let Some(expected) = &a.sha256
                    && *expected != sha256
                {
                    return Err(DispatchError::ContentChanged {
                        manifest: name,
                        expected: expected.clone(),
                        found: sha256,
                    });
                }
                self.admit_approved(
                    &name,
                    &origin,
                    &manifest_id,
                    a,
                    (&first, terminations),
                    dry_run,
                    attempt,
                )
                .await?;
                info!(
                    manifest = name,
                    manifest_id, "approved manifest; the breaker is bypassed"
                );
            }
            // A plan shows what would be enqueued; the breaker holds real runs.
            None if dry_run => {}
            None => {
                if let Some(report) = self
                    .breaker_gate(&name, &origin, &pin, &sha256, &first, terminations, attempt)
                    .await?
                {
                    return Ok(report);
                }
            }
        }

        let (reader, _) = self.open(source, Some(&pin)).await?;
        let (tx, mut rx) = mpsc::channel::<Entry>(1024);
        let expected = usize::try_from(first.valid).unwrap_or(0);
        let parser = tokio::task::spawn_blocking(move || {
            manifest::read_sized(reader, hint, expected, |entry| {
                match tx.blocking_send(entry) {
                    Ok(()) => ControlFlow::Continue(()),
                    Err(_) => ControlFlow::Break(()),
                }
            })
        });

        let mut in_flight = FuturesUnordered::new();
        let mut batch: Vec<OutgoingMessage> = Vec::with_capacity(MAX_BATCH);
        let mut enqueued = 0u64;
        let mut rejected_records = Vec::new();
        let mut too_far = 0u64;
        let mut failure: Option<DispatchError> = None;
        while let Some(entry) = rx.recv().await {
            match entry {
                Entry::Valid { .. } if !enqueue => {}
                Entry::Valid {
                    position, record, ..
                } => {
                    let mut at = origin.clone();
                    at.index = Some(position.index);
                    let mut message = TerminationMessage::new(
                        record,
                        at,
                        self.options.hr_timezone,
                        self.options.effective_at,
                    );
                    message.rehired_in_manifest = rehires.withdrawing(
                        position.index,
                        &message.record,
                        message.effective_at,
                        self.options.hr_timezone,
                        self.options.effective_at,
                    );
                    let far = (message.record.action == RecordAction::Terminate)
                        .then(|| {
                            too_far_ahead(
                                message.effective_at,
                                self.options.clock.now(),
                                self.options.max_future_days,
                            )
                        })
                        .flatten();
                    if let Some(reason) = far {
                        too_far += 1;
                        if rejected_records.len() < MAX_LISTED_REJECTED {
                            rejected_records.push(RejectedRecord {
                                index: position.index,
                                line: position.line,
                                external_id: Some(message.record.external_id.as_str().to_owned()),
                                reason: reason.clone(),
                            });
                        }
                        warn!(manifest = name, %position, reason, "record rejected");
                        if let Err(e) = self
                            .audit
                            .append(&{
                                let mut entry =
                                    too_far_entry(&message, &position, &reason, attempt);
                                if dry_run {
                                    entry.outcome = Outcome::DryRun;
                                    entry.error_message =
                                        Some(format!("dry run: would reject {position}: {reason}"));
                                }
                                entry
                            })
                            .await
                        {
                            failure = Some(DispatchError::Audit {
                                manifest: name.clone(),
                                detail: e.to_string(),
                            });
                            break;
                        }
                        continue;
                    }
                    let body = message.encode();
                    batch.push(OutgoingMessage {
                        attributes: {
                            let mut attributes = self.options.signing.sign(&body);
                            attributes.extend(common.clone());
                            attributes
                        },
                        body,
                        ..OutgoingMessage::default()
                    });
                    if batch.len() == MAX_BATCH {
                        in_flight.push(self.send_with_retry(std::mem::take(&mut batch), &name));
                    }
                }
                Entry::Rejected {
                    position,
                    external_id,
                    reason,
                    ..
                } => {
                    let mut at = origin.clone();
                    at.index = Some(position.index);
                    let external_id = external_id
                        .map(|e| truncate(e.trim(), 256))
                        .filter(|e| !e.is_empty());
                    if rejected_records.len() < MAX_LISTED_REJECTED {
                        rejected_records.push(RejectedRecord {
                            index: position.index,
                            line: position.line,
                            external_id: external_id.clone(),
                            reason: reason.to_string(),
                        });
                    }
                    let entry = AuditEntry {
                        external_id,
                        user_id: None,
                        action: "deactivate".into(),
                        status_code: None,
                        success: false,
                        error_message: Some(if dry_run {
                            format!("dry run: would reject {position}: {reason}")
                        } else {
                            format!("{position}: {reason}")
                        }),
                        outcome: if dry_run {
                            Outcome::DryRun
                        } else {
                            Outcome::Invalid
                        },
                        credential: None,
                        groups_removed: Vec::new(),
                        attempt,
                        sqs_message_id: None,
                        manifest: Some(at),
                        effective_at: None,
                        correlation_ids: Vec::new(),
                        duration_ms: None,
                        idempotency_key: None,
                        actor: None,
                    };
                    info!(manifest = name, %position, %reason, "record rejected");
                    if let Err(e) = self.audit.append(&entry).await {
                        failure = Some(DispatchError::Audit {
                            manifest: name.clone(),
                            detail: e.to_string(),
                        });
                        break;
                    }
                }
                Entry::Duplicate { .. } => {}
            }
            while in_flight.len() >= self.options.send_concurrency.max(1) {
                match in_flight.next().await {
                    Some(Ok(n)) => enqueued += n,
                    Some(Err(e)) => {
                        failure = Some(e);
                        break;
                    }
                    None => break,
                }
            }
            if failure.is_some() {
                break;
            }
        }
        // Stop the parser (if we broke out early) before waiting for it.
        drop(rx);
        if failure.is_none() && !batch.is_empty() {
            in_flight.push(self.send_with_retry(std::mem::take(&mut batch), &name));
        }
        while let Some(result) = in_flight.next().await {
            match result {
                Ok(n) => enqueued += n,
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        drop(in_flight);
        let second = parser
            .await
            .map_err(|e| DispatchError::Task(e.to_string()))?;
        if let Some(e) = failure {
            return Err(e);
        }
        let second = match second {
            Ok(s) => s,
            Err(ManifestError::Io(source)) => {
                return Err(DispatchError::Io {
                    manifest: name,
                    source,
                });
            }
            Err(_) => {
                return Err(DispatchError::Changed {
                    manifest: name,
                    first: Box::new(first),
                    second: Box::new(Summary::default()),
                });
            }
        };
        // validate() does not collapse duplicates; the record count must match.
        if second.records != first.records || second.format != first.format {
            return Err(DispatchError::Changed {
                manifest: name,
                first: Box::new(first),
                second: Box::new(second),
            });
        }
        // Records refused for MAX_FUTURE_DAYS are rejected records, not
        // terminations: the summary still reconciles.
        let mut second = second;
        second.valid = second.valid.saturating_sub(too_far);
        second.rejected += too_far;
        let report = DispatchReport {
            origin,
            summary: second,
            enqueued,
            rejected_file: None,
            rejected_records,
            sha256: Some(sha256),
            manifest_id: Some(manifest_id),
            held: None,
            held_rejected: false,
            terminations,
        };
        self.audit_manifest(&report, attempt, dry_run).await?;
        info!(
            manifest = name,
            records = second.records,
            enqueued,
            rejected = second.rejected,
            duplicates = second.duplicates,
            "manifest dispatched"
        );
        Ok(report)
    }

    /// Every valid, distinct record of a manifest, in order (for seeding the
    /// sandbox simulator). Holds them all in memory: not for production sizes.
    /// Errors: as [`Dispatcher::dispatch`]; a manifest unusable as a whole is
    /// [`DispatchError::Source`] with the reason.
    pub async fn records(
        &self,
        source: &ManifestSource,
    ) -> Result<Vec<TerminationRecord>, DispatchError> {
        let hint = source.hint();
        let name = source.name();
        let (reader, _) = self.open(source, None).await?;
        let read = tokio::task::spawn_blocking(move || {
            let mut records = Vec::new();
            let result = manifest::read(reader, hint, |entry| {
                if let Entry::Valid { record, .. } = entry {
                    records.push(record);
                }
                ControlFlow::Continue(())
            });
            result.map(|_| records)
        })
        .await
        .map_err(|e| DispatchError::Task(e.to_string()))?;
        match read {
            Ok(records) => Ok(records),
            Err(ManifestError::Io(source)) => Err(DispatchError::Io {
                manifest: name,
                source,
            }),
            Err(e) => Err(DispatchError::Source(format!("{name}: {e}"))),
        }
    }

    /// Runs the dispatcher on the manifest-events queue until `shutdown`: each
    /// event is handled with its visibility extended, then deleted, or left for
    /// redelivery (after a backoff) when it failed.
    pub async fn run_events<E: Queue>(&self, events: &E, shutdown: CancellationToken) {
        info!(queue = events.name(), "dispatcher started");
        let mut failures = 0u32;
        loop {
            let received = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                r = events.receive(MAX_BATCH as u32, crate::queue::MAX_WAIT) => r,
            };
            let messages = match received {
                Ok(m) => {
                    failures = 0;
                    m
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let delay = Duration::from_secs(1u64 << failures.min(5));
                    warn!(error = %e, "receiving manifest events failed");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(delay) => continue,
                    }
                }
            };
            for message in messages {
                crate::telemetry::observe_received(
                    crate::telemetry::QueueKind::ManifestEvents,
                    message.sent_at,
                );
                if shutdown.is_cancelled() {
                    let _ = events
                        .change_visibility(&message.receipt_handle, Duration::ZERO)
                        .await;
                    continue;
                }
                let outcome = {
                    let work = self.handle_event(&message.body, message.receive_count);
                    let keep = keep_visible(events, &message.receipt_handle);
                    tokio::select! {
                        biased;
                        r = work => r,
                        never = keep => match never {},
                    }
                };
                match outcome {
                    Ok(outcome) => {
                        match &outcome {
                            EventOutcome::Test => {
                                info!(message_id = %message.message_id, "s3:TestEvent received; deleting")
                            }
                            EventOutcome::Ignored(name) => {
                                info!(message_id = %message.message_id, event = name, "not an object-created event; deleting")
                            }
                            EventOutcome::Dispatched(r) => {
                                info!(message_id = %message.message_id, manifests = r.len(), "event dispatched; deleting")
                            }
                        }
                        match events
                            .delete_batch(std::slice::from_ref(&message.receipt_handle))
                            .await
                        {
                            Ok(f) if f.is_empty() => {}
                            Ok(f) => {
                                warn!(failure = ?f, "could not delete the event; it will be redelivered")
                            }
                            Err(e) => {
                                warn!(error = %e, "could not delete the event; it will be redelivered")
                            }
                        }
                    }
                    Err(e) => {
                        let delay = Duration::from_secs(
                            5u64.saturating_mul(1 << message.receive_count.min(8)),
                        );
                        error!(message_id = %message.message_id, error = %e, retry_in_s = delay.as_secs(), "event not dispatched; it stays on the queue");
                        let _ = events
                            .change_visibility(&message.receipt_handle, delay)
                            .await;
                    }
                }
            }
        }
        info!("dispatcher stopped");
    }

    fn origin(&self, source: &ManifestSource, pin: &Pin) -> ManifestOrigin {
        match source {
            ManifestSource::Local(path) => ManifestOrigin {
                bucket: "local".into(),
                key: path.display().to_string(),
                version: None,
                index: None,
            },
            ManifestSource::S3(o) => ManifestOrigin {
                bucket: o.bucket.clone(),
                key: o.key.clone(),
                version: pin.version_id.clone().or_else(|| pin.etag.clone()),
                index: None,
            },
        }
    }

    /// Opens the manifest for one streaming pass. For S3 the second pass is pinned
    /// to the first one's version id, else its ETag (If-Match), so both passes read
    /// the same bytes.
    async fn open(
        &self,
        source: &ManifestSource,
        pin: Option<&Pin>,
    ) -> Result<(Box<dyn Read + Send>, Pin), DispatchError> {
        match source {
            ManifestSource::Local(path) => {
                let file = open_local(path).map_err(|source| DispatchError::Io {
                    manifest: path.display().to_string(),
                    source,
                })?;
                Ok((Box::new(file), Pin::default()))
            }
            ManifestSource::S3(o) => {
                let object = format!("s3://{}/{}", o.bucket, o.key);
                let s3 = self
                    .s3
                    .as_ref()
                    .ok_or_else(|| DispatchError::NoS3(object.clone()))?;
                let version = pin
                    .and_then(|p| p.version_id.clone())
                    .or_else(|| o.version_id.clone());
                let mut get = s3
                    .get_object()
                    .bucket(&o.bucket)
                    .key(&o.key)
                    .set_version_id(version);
                if let Some(p) = pin
                    && p.version_id.is_none()
                    && let Some(etag) = &p.etag
                {
                    get = get.if_match(format!("\"{etag}\""));
                }
                let out = get.send().await.map_err(|e| {
                    use aws_sdk_s3::error::ProvideErrorMetadata;
                    // A pinned read whose ETag no longer matches: the object was
                    // overwritten since it was first read.
                    if let Some(etag) = pin.and_then(|p| p.etag.clone())
                        && e.code() == Some("PreconditionFailed")
                    {
                        return DispatchError::Overwritten {
                            manifest: object.clone(),
                            etag,
                        };
                    }
                    DispatchError::Fetch {
                        object: object.clone(),
                        detail: crate::queue::sqs::aws_error_text(&e),
                    }
                })?;
                let got = Pin {
                    version_id: out.version_id().filter(|v| *v != "null").map(str::to_owned),
                    etag: out.e_tag().map(|e| e.trim_matches('"').to_owned()),
                };
                let mut body = out.body;
                let (tx, rx) = mpsc::channel(4);
                tokio::spawn(async move {
                    while let Some(chunk) = body.next().await {
                        let chunk = chunk.map_err(io::Error::other);
                        let stop = chunk.is_err();
                        if tx.send(chunk).await.is_err() || stop {
                            break;
                        }
                    }
                });
                Ok((
                    Box::new(ChunkReader {
                        rx,
                        current: Bytes::new(),
                    }),
                    got,
                ))
            }
        }
    }

    /// Sends one batch, retrying only the entries that failed, with backoff.
    /// Returns how many were enqueued.
    async fn send_with_retry(
        &self,
        batch: Vec<OutgoingMessage>,
        manifest: &str,
    ) -> Result<u64, DispatchError> {
        let total = batch.len() as u64;
        let mut pending = batch;
        let mut last = String::new();
        for attempt in 1..=self.options.send_attempts.max(1) {
            match self.queue.send_batch(&pending).await {
                Ok(failures) if failures.is_empty() => return Ok(total),
                Ok(failures) => {
                    last = failures
                        .first()
                        .map(|f| format!("{}: {}", f.code, f.message))
                        .unwrap_or_default();
                    let failed: std::collections::HashSet<usize> =
                        failures.iter().map(|f| f.index).collect();
                    pending = pending
                        .into_iter()
                        .enumerate()
                        .filter(|(i, _)| failed.contains(i))
                        .map(|(_, m)| m)
                        .collect();
                }
                Err(e) => last = e.to_string(),
            }
            warn!(
                manifest,
                attempt,
                failed = pending.len(),
                error = last,
                "SendMessageBatch entries failed; retrying them"
            );
            tokio::time::sleep(
                self.options
                    .send_retry_base
                    .saturating_mul(1 << attempt.min(10)),
            )
            .await;
        }
        Err(DispatchError::Enqueue {
            manifest: manifest.to_owned(),
            failed: pending.len(),
            detail: last,
        })
    }

    /// An approved dispatch's checks before anything is enqueued: content an
    /// operator rejected is refused; an approval the dispatch records itself
    /// (`approved.by`) is audited, then its hold marked approved, when the
    /// breaker would have held the manifest.
    #[allow(clippy::too_many_arguments)]
    async fn admit_approved(
        &self,
        name: &str,
        origin: &ManifestOrigin,
        manifest_id: &str,
        approved: &Approved,
        (first, terminations): (&Summary, u64),
        dry_run: bool,
        attempt: u32,
    ) -> Result<(), DispatchError> {
        let breaker_err = |e: breaker::BreakerError| DispatchError::Breaker {
            manifest: name.to_owned(),
            detail: e.to_string(),
        };
        if let Some(b) = &self.options.breaker
            && let Some(h) = b.hold_of(manifest_id).await.map_err(breaker_err)?
            && h.state == ManifestHoldState::Rejected
        {
            error!(
                manifest = name,
                manifest_id, "approval refused: this content was rejected; nothing enqueued"
            );
            return Err(DispatchError::Rejected {
                manifest: name.to_owned(),
                manifest_id: manifest_id.to_owned(),
                by: h.decided_by,
                at: h.decided_at,
            });
        }
        let Some(by) = approved.by.as_deref().filter(|_| !dry_run) else {
            return Ok(());
        };
        // An approval is audited only when it overrides the breaker: a manifest
        // under the limits (or approved before) is dispatched like any other. If
        // the breaker cannot tell, the approval is recorded.
        if let Some(b) = &self.options.breaker
            && let Ok(preview) = b.preview(manifest_id, terminations).await
            && preview.hold.is_none()
        {
            info!(
                manifest = name,
                manifest_id, "--approve: under the breaker's limits, no approval recorded"
            );
            return Ok(());
        }
        let mut row = breaker::manifest_row(
            "approve",
            Outcome::Scheduled,
            true,
            format!(
                "manifest {manifest_id} approved by {by}: dispatched bypassing the mass-deactivation breaker, {} records to enqueue",
                first.valid
            ),
            origin.clone(),
            Some(by.to_owned()),
        );
        row.attempt = attempt;
        self.audit
            .append(&row)
            .await
            .map_err(|e| DispatchError::Audit {
                manifest: name.to_owned(),
                detail: e.to_string(),
            })?;
        if let Some(b) = &self.options.breaker {
            b.mark_approved(manifest_id, by)
                .await
                .map_err(breaker_err)?;
        }
        Ok(())
    }

    /// Asks the breaker (when on) whether this manifest may be dispatched. A hold
    /// is returned as the report (nothing enqueued), with a `held` audit row and
    /// an error-level log the first time it is held.
    #[allow(clippy::too_many_arguments)]
    async fn breaker_gate(
        &self,
        name: &str,
        origin: &ManifestOrigin,
        pin: &Pin,
        sha256: &str,
        first: &Summary,
        terminations: u64,
        attempt: u32,
    ) -> Result<Option<DispatchReport>, DispatchError> {
        let Some(b) = &self.options.breaker else {
            return Ok(None);
        };
        let manifest_id = breaker::manifest_id(sha256);
        let draft = HeldManifest {
            manifest_id: manifest_id.clone(),
            bucket: origin.bucket.clone(),
            key: origin.key.clone(),
            version_id: pin.version_id.clone(),
            etag: pin.etag.clone(),
            sha256: sha256.to_owned(),
            terminations,
            active_users: None,
            reason: String::new(),
            state: ManifestHoldState::Held,
            held_at: chrono::Utc::now(),
            decided_by: None,
            decided_at: None,
        };
        let gate = b.gate(&draft).await.map_err(|e| DispatchError::Breaker {
            manifest: name.to_owned(),
            detail: e.to_string(),
        })?;
        let Gate::Hold {
            reason,
            new,
            rejected,
        } = gate
        else {
            return Ok(None);
        };
        let approve = self
            .options
            .approve_command
            .clone()
            .unwrap_or_else(|| format!("deprovision approve {manifest_id}"));
        let how = if rejected {
            "an operator rejected this content: no approval releases it; send corrected \
             content as a new manifest"
                .to_owned()
        } else {
            format!("approve with `{approve}` or discard with `deprovision reject {manifest_id}`")
        };
        error!(
            manifest = name,
            manifest_id,
            terminations,
            reason,
            "mass-deactivation breaker: manifest held whole, nothing enqueued; {how}"
        );
        if new {
            let mut row = breaker::manifest_row(
                "manifest",
                Outcome::Held,
                false,
                format!(
                    "held by the mass-deactivation breaker as {manifest_id}: {reason}; nothing enqueued; {how}"
                ),
                origin.clone(),
                None,
            );
            row.attempt = attempt;
            self.audit
                .append(&row)
                .await
                .map_err(|e| DispatchError::Audit {
                    manifest: name.to_owned(),
                    detail: e.to_string(),
                })?;
        }
        Ok(Some(DispatchReport {
            origin: origin.clone(),
            summary: *first,
            enqueued: 0,
            rejected_file: None,
            rejected_records: Vec::new(),
            sha256: Some(sha256.to_owned()),
            manifest_id: Some(manifest_id),
            held: Some(reason),
            held_rejected: rejected,
            terminations,
        }))
    }

    async fn audit_manifest(
        &self,
        report: &DispatchReport,
        attempt: u32,
        dry_run: bool,
    ) -> Result<(), DispatchError> {
        let s = &report.summary;
        let (success, outcome, mut message) = match &report.rejected_file {
            Some(reason) => (
                false,
                Outcome::Invalid,
                format!("manifest rejected, nothing enqueued: {reason}"),
            ),
            // AuditEntry has no counts column; the counts are recorded as text.
            None => (
                true,
                Outcome::Scheduled,
                format!(
                    "format={} records={} valid={} rejected={} duplicates={} enqueued={}",
                    s.format.map_or("unknown", Format::as_str),
                    s.records,
                    s.valid,
                    s.rejected,
                    s.duplicates,
                    report.enqueued
                ),
            ),
        };
        if let Some(sha) = &report.sha256 {
            message.push_str(&format!(" sha256={sha}"));
        }
        let (success, outcome) = if dry_run {
            message = format!("dry run: {message}");
            (false, Outcome::DryRun)
        } else {
            (success, outcome)
        };
        let entry = AuditEntry {
            external_id: None,
            user_id: None,
            action: "manifest".into(),
            status_code: None,
            success,
            error_message: Some(message),
            outcome,
            credential: None,
            groups_removed: Vec::new(),
            attempt,
            sqs_message_id: None,
            manifest: Some(report.origin.clone()),
            effective_at: None,
            correlation_ids: Vec::new(),
            duration_ms: None,
            idempotency_key: None,
            actor: None,
        };
        self.audit
            .append(&entry)
            .await
            .map(|_| ())
            .map_err(|e| DispatchError::Audit {
                manifest: format!("{}/{}", report.origin.bucket, report.origin.key),
                detail: e.to_string(),
            })
    }
}

/// A pass's counts for people: "120 records (118 valid, 2 rejected, 0 duplicates)".
fn counts_text(s: &Summary) -> String {
    format!(
        "{} records ({} valid, {} rejected, {} duplicates)",
        s.records, s.valid, s.rejected, s.duplicates
    )
}

fn open_local(path: &Path) -> io::Result<std::fs::File> {
    std::fs::File::open(path)
}

/// Keeps an event hidden while its manifest is dispatched (large manifests take
/// longer than a visibility timeout).
async fn keep_visible<E: Queue>(events: &E, receipt: &str) -> std::convert::Infallible {
    let lease = events
        .settings()
        .visibility_timeout
        .max(Duration::from_secs(2));
    loop {
        tokio::time::sleep(lease / 2).await;
        if let Err(e) = events.change_visibility(receipt, lease).await {
            warn!(error = %e, "could not extend the event's visibility");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::IdempotencyKey;
    use crate::queue::MemoryQueue;
    use std::sync::Mutex;

    #[test]
    fn s3_notification_keys_are_form_decoded() {
        let body = r#"{"Records":[{"eventVersion":"2.1","eventSource":"aws:s3","eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"hr"},"object":{"key":"manifests/March+2026%2B%C3%A9.json","versionId":"v7"}}},{"eventName":"ObjectCreated:Copy","s3":{"bucket":{"name":"hr"},"object":{"key":"b.csv"}}}]}"#;
        assert_eq!(
            parse_event(body).unwrap(),
            ParsedEvent::Created(vec![
                ObjectRef {
                    bucket: "hr".into(),
                    key: "manifests/March 2026+é.json".into(),
                    version_id: Some("v7".into()),
                },
                ObjectRef {
                    bucket: "hr".into(),
                    key: "b.csv".into(),
                    version_id: None,
                },
            ])
        );
    }

    #[test]
    fn envelopes_test_events_and_other_events() {
        let inner = r#"{"Records":[{"eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"hr"},"object":{"key":"a+b.json"}}}]}"#;
        let sns = serde_json::json!({"Type": "Notification", "MessageId": "x", "Message": inner})
            .to_string();
        assert!(
            matches!(parse_event(&sns).unwrap(), ParsedEvent::Created(o) if o[0].key == "a b.json")
        );

        let eb = r#"{"version":"0","detail-type":"Object Created","source":"aws.s3","detail":{"bucket":{"name":"hr"},"object":{"key":"a+b c.json","version-id":"v1"}}}"#;
        assert_eq!(
            parse_event(eb).unwrap(),
            ParsedEvent::Created(vec![ObjectRef {
                bucket: "hr".into(),
                key: "a+b c.json".into(),
                version_id: Some("v1".into()),
            }])
        );
        let test = r#"{"Service":"Amazon S3","Event":"s3:TestEvent","Time":"2026-01-01T00:00:00Z","Bucket":"hr"}"#;
        assert_eq!(parse_event(test).unwrap(), ParsedEvent::Test);
        let sns_test = serde_json::json!({"Type": "Notification", "Message": test}).to_string();
        assert_eq!(parse_event(&sns_test).unwrap(), ParsedEvent::Test);
        let removed = r#"{"Records":[{"eventName":"ObjectRemoved:Delete","s3":{"bucket":{"name":"hr"},"object":{"key":"a"}}}]}"#;
        assert_eq!(
            parse_event(removed).unwrap(),
            ParsedEvent::Other("ObjectRemoved:Delete".into())
        );
        assert!(parse_event("{}").is_err());
        assert!(parse_event("nope").is_err());
        assert!(decode_event_key("%FF").is_err());
    }

    #[test]
    fn sources() {
        assert_eq!(
            ManifestSource::parse("s3://b/k/x y.json").unwrap(),
            ManifestSource::S3(ObjectRef {
                bucket: "b".into(),
                key: "k/x y.json".into(),
                version_id: None
            })
        );
        assert!(ManifestSource::parse("s3://b").is_err());
        assert!(ManifestSource::parse("s3:///k").is_err());
        assert_eq!(
            ManifestSource::parse("m.csv").unwrap(),
            ManifestSource::Local("m.csv".into())
        );
    }

    #[derive(Default)]
    struct Rows(Mutex<Vec<AuditEntry>>);

    #[derive(Debug, thiserror::Error)]
    #[error("never")]
    struct Never;

    impl AuditSink for Rows {
        type Error = Never;
        async fn append(&self, entry: &AuditEntry) -> Result<i64, Never> {
            let mut rows = self.0.lock().unwrap();
            rows.push(entry.clone());
            Ok(rows.len() as i64)
        }
        async fn latest_terminal_outcome(
            &self,
            _: &IdempotencyKey,
        ) -> Result<Option<Outcome>, Never> {
            Ok(None)
        }
    }

    fn manifest_file(content: &str, ext: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(ext).tempfile().unwrap();
        std::io::Write::write_all(&mut f, content.as_bytes()).unwrap();
        f
    }

    #[tokio::test]
    async fn local_manifest_fans_out_and_audits_rejections_and_counts() {
        let mut content = String::from("externalId,userId,terminationDate\n");
        for i in 0..23 {
            content.push_str(&format!("E{i},,2026-03-02\n"));
        }
        content.push_str("E1,,2026-03-02\n,,2026-03-02\nE99,,03/02/2026\n");
        let file = manifest_file(&content, ".csv");
        let queue = MemoryQueue::new("t", Duration::from_secs(600));
        let audit = Arc::new(Rows::default());
        let d = Dispatcher::new(
            None,
            queue.clone(),
            audit.clone(),
            DispatchOptions::default(),
        );
        let report = d
            .dispatch(&ManifestSource::Local(file.path().into()), 1)
            .await
            .unwrap();
        assert_eq!(
            (
                report.summary.records,
                report.summary.valid,
                report.summary.rejected,
                report.summary.duplicates
            ),
            (26, 23, 2, 1)
        );
        assert_eq!(report.enqueued, 23);
        assert_eq!(queue.len(), 23);
        let bodies = queue.snapshot();
        let first = TerminationMessage::decode(&bodies[0].0).unwrap();
        assert_eq!(first.origin.bucket, "local");
        assert_eq!(first.origin.index, Some(0));
        let rows = audit.0.lock().unwrap();
        let rejected: Vec<_> = rows
            .iter()
            .filter(|r| r.outcome == Outcome::Invalid)
            .collect();
        assert_eq!(rejected.len(), 2);
        assert_eq!(rejected[1].external_id.as_deref(), Some("E99"));
        assert!(
            rejected[1]
                .error_message
                .as_deref()
                .unwrap()
                .contains("line 27")
        );
        let manifest_row = rows.iter().find(|r| r.action == "manifest").unwrap();
        assert!(
            manifest_row
                .error_message
                .as_deref()
                .unwrap()
                .contains("records=26 valid=23 rejected=2 duplicates=1 enqueued=23")
        );
    }

    #[tokio::test]
    async fn every_message_is_signed_over_its_exact_body() {
        let ring = Arc::new(
            crate::signing::Keyring::parse(&secrecy::SecretString::from(
                "k2:0123456789abcdef0123456789abcdef-2,k1:0123456789abcdef0123456789abcdef-1",
            ))
            .unwrap(),
        );
        let file = manifest_file(
            "externalId,terminationDate\nE1,2026-03-02\nE2,2026-03-02\n",
            ".csv",
        );
        let queue = MemoryQueue::new("t", Duration::from_secs(600));
        let d = Dispatcher::new(
            None,
            queue.clone(),
            Arc::new(Rows::default()),
            DispatchOptions {
                signing: MessageAuth::Hmac(ring.clone()),
                ..DispatchOptions::default()
            },
        );
        let report = d
            .dispatch(&ManifestSource::Local(file.path().into()), 1)
            .await
            .unwrap();
        assert_eq!(report.enqueued, 2);
        assert_eq!(report.manifest_id.as_deref().map(str::len), Some(16));
        for (body, attrs) in queue.snapshot() {
            assert_eq!(ring.verify(&body, &attrs), Ok("k2".to_owned()));
            assert!(ring.verify(&body.replace("E", "X"), &attrs).is_err());
        }
    }

    #[tokio::test]
    async fn a_file_broken_as_a_whole_enqueues_nothing() {
        let file = manifest_file(
            "[{\"externalId\":\"E1\",\"terminationDate\":\"2026-03-02\"},\n{\"externalId\": \"E2\",,}]",
            ".json",
        );
        let queue = MemoryQueue::new("t", Duration::from_secs(600));
        let audit = Arc::new(Rows::default());
        let d = Dispatcher::new(
            None,
            queue.clone(),
            audit.clone(),
            DispatchOptions::default(),
        );
        let report = d
            .dispatch(&ManifestSource::Local(file.path().into()), 1)
            .await
            .unwrap();
        let reason = report.rejected_file.unwrap();
        assert!(reason.contains("line 2"), "{reason}");
        assert!(queue.is_empty());
        let rows = audit.0.lock().unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].action.as_str(), rows[0].outcome),
            ("manifest", Outcome::Invalid)
        );
    }

    async fn memory_store() -> crate::audit::AuditStore {
        let store = crate::audit::AuditStore::connect("sqlite::memory:")
            .await
            .unwrap();
        store.migrate().await.unwrap();
        store
    }

    fn breaker_of(store: &crate::audit::AuditStore, max: u64) -> Option<Arc<Breaker>> {
        Some(Arc::new(Breaker::new(
            breaker::Limits {
                max_per_manifest: max,
                max_share: 1.0,
            },
            None,
            store.clone(),
        )))
    }

    #[tokio::test]
    async fn an_approval_never_dispatches_rejected_content() {
        let file = manifest_file(
            "externalId,terminationDate\nE1,2026-03-02\nE2,2026-03-02\n",
            ".csv",
        );
        let source = ManifestSource::Local(file.path().into());
        let store = memory_store().await;
        let queue = MemoryQueue::new("t", Duration::from_secs(600));
        let d = Dispatcher::new(
            None,
            queue.clone(),
            Arc::new(store.clone()),
            DispatchOptions {
                breaker: breaker_of(&store, 1),
                ..DispatchOptions::default()
            },
        );
        let held = d.dispatch(&source, 1).await.unwrap();
        let id = held.manifest_id.clone().unwrap();
        assert!(held.held.is_some());
        breaker::reject(&store, &id, "carol").await.unwrap();
        for by in [Some("dave".to_owned()), None] {
            let err = d
                .dispatch_approved(
                    &source,
                    1,
                    &Approved {
                        by,
                        ..Approved::default()
                    },
                )
                .await
                .unwrap_err();
            assert!(
                matches!(&err, DispatchError::Rejected { manifest_id, by, at, .. }
                    if *manifest_id == id && by.as_deref() == Some("carol") && at.is_some()),
                "{err:?}"
            );
            let text = err.to_string();
            assert!(
                text.contains(&id) && text.contains("rejected by carol"),
                "{text}"
            );
        }
        assert_eq!(queue.len(), 0);
        let hold = store.held_manifest(&id).await.unwrap().unwrap();
        assert_eq!(hold.state, ManifestHoldState::Rejected);
    }

    /// Records the queue's length when each row is appended; fails `approve`
    /// rows when told to.
    struct Watching {
        queue: MemoryQueue,
        fail_approve: bool,
        rows: Mutex<Vec<(String, usize)>>,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("audit store down")]
    struct Down;

    impl AuditSink for Watching {
        type Error = Down;
        async fn append(&self, entry: &AuditEntry) -> Result<i64, Down> {
            if self.fail_approve && entry.action == "approve" {
                return Err(Down);
            }
            let mut rows = self.rows.lock().unwrap();
            rows.push((entry.action.clone(), self.queue.len()));
            Ok(rows.len() as i64)
        }
        async fn latest_terminal_outcome(
            &self,
            _: &IdempotencyKey,
        ) -> Result<Option<Outcome>, Down> {
            Ok(None)
        }
    }

    #[tokio::test]
    async fn a_run_approval_is_audited_before_anything_is_enqueued() {
        let file = manifest_file(
            "externalId,terminationDate\nE1,2026-03-02\nE2,2026-03-02\n",
            ".csv",
        );
        let source = ManifestSource::Local(file.path().into());
        let store = memory_store().await;
        // Held first, so the approval also decides the hold.
        let d = Dispatcher::new(
            None,
            MemoryQueue::new("t", Duration::from_secs(600)),
            Arc::new(store.clone()),
            DispatchOptions {
                breaker: breaker_of(&store, 1),
                ..DispatchOptions::default()
            },
        );
        let id = d.dispatch(&source, 1).await.unwrap().manifest_id.unwrap();
        let approved = Approved {
            by: Some("dave".into()),
            ..Approved::default()
        };
        for fail_approve in [true, false] {
            let queue = MemoryQueue::new("t", Duration::from_secs(600));
            let sink = Arc::new(Watching {
                queue: queue.clone(),
                fail_approve,
                rows: Mutex::new(Vec::new()),
            });
            let d = Dispatcher::new(
                None,
                queue.clone(),
                sink.clone(),
                DispatchOptions {
                    breaker: breaker_of(&store, 1),
                    ..DispatchOptions::default()
                },
            );
            let result = d.dispatch_approved(&source, 1, &approved).await;
            let hold = store.held_manifest(&id).await.unwrap().unwrap();
            if fail_approve {
                assert!(
                    matches!(result, Err(DispatchError::Audit { .. })),
                    "{result:?}"
                );
                assert_eq!(queue.len(), 0, "nothing enqueued without the approval row");
                assert_eq!(hold.state, ManifestHoldState::Held);
            } else {
                assert_eq!(result.unwrap().enqueued, 2);
                let rows = sink.rows.lock().unwrap();
                assert_eq!(rows[0], ("approve".to_owned(), 0), "{rows:?}");
                assert_eq!(hold.state, ManifestHoldState::Approved);
                assert_eq!(hold.decided_by.as_deref(), Some("dave"));
            }
        }
    }

    #[tokio::test]
    async fn rehires_do_not_trip_the_breaker() {
        let mut content = String::from("externalId,terminationDate,action\n");
        for i in 0..8 {
            let action = if i < 5 { "terminate" } else { "rehire" };
            content.push_str(&format!("E{i},2026-03-02,{action}\n"));
        }
        let file = manifest_file(&content, ".csv");
        let store = memory_store().await;
        let queue = MemoryQueue::new("t", Duration::from_secs(600));
        let d = Dispatcher::new(
            None,
            queue.clone(),
            Arc::new(store.clone()),
            DispatchOptions {
                breaker: breaker_of(&store, 5),
                ..DispatchOptions::default()
            },
        );
        let report = d
            .dispatch(&ManifestSource::Local(file.path().into()), 1)
            .await
            .unwrap();
        assert_eq!(report.held, None);
        assert_eq!(report.enqueued, 8);
        assert_eq!(queue.len(), 8);
    }
}
