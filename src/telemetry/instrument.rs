//! The spans the pipeline opens and the measurements taken when they close, in
//! one place so that their names and fields stay the same wherever they are
//! opened: one span per dispatched manifest, per termination (continuing the
//! dispatcher's trace from the message attributes), per SCIM HTTP request, per
//! OAuth token request and per rate-limiter wait.
//!
//! Field names follow OpenTelemetry's semantic conventions where one exists
//! (`http.request.method`, `http.response.status_code`, `messaging.message.id`)
//! and `otel.kind` / `otel.status_code` are tracing-opentelemetry's special
//! fields. Never given a URL with a query, a header, a token or a secret: the
//! SCIM span carries a route template, not the request URL.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tracing::field::Empty;

use super::metrics::{QueueKind, ScimResource, metrics};
use crate::domain::{Credential, Outcome};

/// The span of one dispatched manifest (`dispatch`), a trace root: S3 event
/// notifications carry no trace context. `manifest` is the source's name
/// (`s3://bucket/key` or a path); `enqueued` and `rejected` are recorded at the
/// end. Its context travels with every message it sends ([`super::inject_into`]).
pub fn dispatch_span(manifest: &str, attempt: u32) -> tracing::Span {
    tracing::info_span!(
        "dispatch",
        otel.kind = "producer",
        manifest,
        attempt,
        enqueued = Empty,
        rejected = Empty,
    )
}

/// The span of one received termination message (`termination`), a child of
/// the dispatcher's span when `attributes` carry W3C Trace Context. `attempt` is
/// the queue's receive count; `sent_at` (SQS `SentTimestamp`) gives the
/// terminations queue's lag. `external_id`, `idempotency_key`, `outcome` and
/// `reason` are recorded as they become known, the rest by
/// [`finish_termination`].
pub fn termination_span(
    message_id: &str,
    attempt: u32,
    attributes: &BTreeMap<String, String>,
    sent_at: Option<DateTime<Utc>>,
) -> tracing::Span {
    observe_received(QueueKind::Terminations, sent_at);
    let span = tracing::info_span!(
        "termination",
        otel.kind = "consumer",
        otel.status_code = Empty,
        message_id,
        attempt,
        external_id = Empty,
        idempotency_key = Empty,
        outcome = Empty,
        reason = Empty,
    );
    super::set_parent_from(&span, attributes);
    span
}

/// What one received termination message came to: the fields of its final
/// log line and the outcome its counter counts.
#[derive(Debug, Clone, Copy)]
pub struct TerminationEnd<'a> {
    /// The queue's message id.
    pub message_id: &'a str,
    /// The queue's receive count.
    pub attempt: u32,
    /// The record's externalId, when the body told it.
    pub external_id: Option<&'a str>,
    /// The termination's idempotency key, when the body was valid.
    pub idempotency_key: Option<&'a str>,
    /// The outcome to count in `deprovision.terminations`; `None` when nothing
    /// new happened (a redelivery of finished work, a failed queue call).
    pub counted: Option<Outcome>,
    /// `Some(reason code)` when the message was refused before it was trusted
    /// (e.g. `bad_signature`): it is counted in `deprovision.messages.rejected`
    /// under that reason instead of as a termination.
    pub rejected: Option<&'static str>,
    /// The outcome to show (for a redelivery, the earlier one); `None` shows
    /// `none`.
    pub shown: Option<Outcome>,
    /// What the consumer did with the message (`done`, `dead_lettered`, …).
    pub step: &'static str,
    /// Why it was returned to the queue or could not finish, when it was.
    pub reason: Option<&'a str>,
    /// True when it was dead-lettered or its queue call failed: an error on
    /// the span, a warning in the log.
    pub failed: bool,
}

/// Closes a termination's span: records `outcome` (and `reason`) on it, counts
/// the outcome (or, for a rejected message, the rejection), and writes the termination's one final log line, `termination
/// finished`, inside the span (so a JSON line also carries the span's fields,
/// the dead-letter reason among them).
pub fn finish_termination(span: &tracing::Span, end: &TerminationEnd<'_>) {
    match (end.rejected, end.counted) {
        (Some(reason), _) => metrics().record_message_rejected(reason),
        (None, Some(outcome)) => metrics().record_outcome(outcome),
        (None, None) => {}
    }
    let shown = end.shown.map_or("none", Outcome::as_str);
    span.record("outcome", shown);
    if let Some(reason) = end.reason {
        // As long as a dead letter's detail attribute, no longer.
        let reason: String = reason.chars().take(1000).collect();
        span.record("reason", reason);
    }
    if end.failed {
        span.record("otel.status_code", "ERROR");
    }
    span.in_scope(|| {
        macro_rules! line {
            ($level:ident) => {
                tracing::$level!(
                    message_id = end.message_id,
                    external_id = end.external_id,
                    idempotency_key = end.idempotency_key,
                    attempt = end.attempt,
                    outcome = shown,
                    step = end.step,
                    reason = end.reason,
                    "termination finished"
                )
            };
        }
        if end.failed {
            line!(warn);
        } else {
            line!(info);
        }
    });
}

/// The span of one SCIM HTTP request (`scim.request`; every attempt of a
/// retried request is its own span). `route` is the request's template, e.g.
/// `PATCH /Users/{id}`; status and `ININ-Correlation-Id` are recorded by
/// [`finish_scim_request`].
pub fn scim_request_span(
    method: &reqwest::Method,
    route: &'static str,
    credential: Credential,
    attempt: u32,
) -> tracing::Span {
    tracing::info_span!(
        "scim.request",
        otel.kind = "client",
        otel.status_code = Empty,
        http.request.method = method.as_str(),
        http.route = route,
        credential = credential.as_str(),
        attempt,
        http.response.status_code = Empty,
        correlation_id = Empty,
    )
}

/// Closes the measurements of one SCIM HTTP request: records `status` (`None`:
/// no response, e.g. a timeout) and the correlation id on `span`, its latency in
/// the SCIM latency histogram, and a 429 in the throttled counter.
pub fn finish_scim_request(
    span: &tracing::Span,
    method: &reqwest::Method,
    resource: ScimResource,
    credential: Credential,
    status: Option<u16>,
    correlation_id: Option<&str>,
    elapsed: Duration,
) {
    match status {
        Some(code) => {
            span.record("http.response.status_code", code);
            // OpenTelemetry HTTP client convention: 4xx and 5xx are errors.
            if code >= 400 {
                span.record("otel.status_code", "ERROR");
            }
        }
        None => {
            span.record("otel.status_code", "ERROR");
        }
    }
    if let Some(id) = correlation_id {
        span.record("correlation_id", id);
    }
    let m = metrics();
    m.record_scim_request(method, resource, status, elapsed);
    if status == Some(429) {
        m.record_throttled(credential);
    }
}

/// The span of one OAuth token request (`oauth.token`) of the client
/// `client_id` (not a secret); the status is recorded by [`finish_token_request`].
pub fn token_request_span(client_id: &str) -> tracing::Span {
    tracing::info_span!(
        "oauth.token",
        otel.kind = "client",
        otel.status_code = Empty,
        client_id,
        http.response.status_code = Empty,
    )
}

/// Records a token request's status (`None`: no response) on its span.
pub fn finish_token_request(span: &tracing::Span, status: Option<u16>) {
    match status {
        Some(code) => {
            span.record("http.response.status_code", code);
            if code >= 400 {
                span.record("otel.status_code", "ERROR");
            }
        }
        None => {
            span.record("otel.status_code", "ERROR");
        }
    }
}

/// The span of one wait for the shared rate limiter (`rate_limit.wait`).
pub fn rate_limit_span() -> tracing::Span {
    tracing::info_span!("rate_limit.wait", waited_ms = Empty)
}

/// Records how long a request waited for the limiter, on `span` and in the
/// rate-limiter wait histogram.
pub fn finish_rate_limit(span: &tracing::Span, waited: Duration) {
    span.record(
        "waited_ms",
        u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
    );
    metrics().record_rate_limit_wait(waited);
}

/// Records the queue lag of a message received from `queue`: now minus the
/// time the queue accepted it (SQS `SentTimestamp`). Nothing when the queue did
/// not say; a send time in the future (clock skew) counts as zero.
pub fn observe_received(queue: QueueKind, sent_at: Option<DateTime<Utc>>) {
    if let Some(sent_at) = sent_at {
        let lag = (Utc::now() - sent_at).to_std().unwrap_or_default();
        metrics().record_queue_lag(queue, lag);
    }
}
