//! The metrics facade: one typed method per thing worth counting, recorded through
//! OpenTelemetry instruments that feed both the Prometheus text rendering of
//! `/metrics` (always) and OTLP export (when configured). Callers pass domain
//! types, so label values stay few and known; nothing here knows how a termination
//! is carried out.
//!
//! | instrument (OpenTelemetry) | Prometheus name | unit | labels |
//! |---|---|---|---|
//! | `deprovision.terminations` | `deprovision_terminations_total` | terminations | `outcome` |
//! | `deprovision.messages.rejected` | `deprovision_messages_rejected_total` | messages | `reason` |
//! | `deprovision.scim.request.duration` | `deprovision_scim_request_duration_seconds` | s | `method`, `resource`, `status` |
//! | `deprovision.rate_limit.wait` | `deprovision_rate_limit_wait_seconds` | s | — |
//! | `deprovision.scim.throttled` | `deprovision_scim_throttled_total` | responses | `credential` |
//! | `deprovision.queue.lag` | `deprovision_queue_lag_seconds` | s | `queue` |
//! | `deprovision.deactivation.delay` | `deprovision_deactivation_delay_seconds` | s | — |

use std::fmt;
use std::sync::OnceLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, MeterProvider as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};

use super::{SERVICE, TelemetryError};
use crate::domain::{Credential, Outcome};

/// Bucket bounds, seconds: one SCIM request (milliseconds to the 30 s timeout).
const SCIM_LATENCY_BOUNDS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0,
];
/// Bucket bounds, seconds: waiting for the shared rate limiter (up to a minute's budget).
const RATE_LIMIT_WAIT_BOUNDS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0,
];
/// Bucket bounds, seconds: time in a queue (seconds to days).
const QUEUE_LAG_BOUNDS: [f64; 12] = [
    0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0, 345600.0,
];
/// Bucket bounds, seconds: effective termination to deactivation (seconds to a week).
const DEACTIVATION_DELAY_BOUNDS: [f64; 13] = [
    1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0, 86400.0, 172800.0,
    604800.0,
];

/// The SCIM resource a request addressed (RFC 7644 §3.2 resource endpoints).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScimResource {
    /// `/Users` (Genesys: `/api/v2/scim/v2/users`).
    Users,
    /// `/Groups` (Genesys: `/api/v2/scim/v2/groups`).
    Groups,
}

impl ScimResource {
    fn as_str(self) -> &'static str {
        match self {
            Self::Users => "users",
            Self::Groups => "groups",
        }
    }
}

/// The queue a message was received from (design.md, "Data flow").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueKind {
    /// S3 event notifications for new manifests.
    ManifestEvents,
    /// One message per termination.
    Terminations,
}

impl QueueKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::ManifestEvents => "manifest_events",
            Self::Terminations => "terminations",
        }
    }
}

/// The typed instruments, and the Prometheus registry that renders them. Cloning
/// is cheap and shares the instruments. Get the process-wide one with
/// [`metrics()`].
#[derive(Clone)]
pub struct Metrics {
    provider: SdkMeterProvider,
    registry: prometheus::Registry,
    terminations: Counter<u64>,
    messages_rejected: Counter<u64>,
    scim_request_duration: Histogram<f64>,
    rate_limit_wait: Histogram<f64>,
    scim_throttled: Counter<u64>,
    queue_lag: Histogram<f64>,
    deactivation_delay: Histogram<f64>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Builds the instruments on a meter provider that always has a Prometheus
    /// reader, plus `otlp` when given.
    ///
    /// Errors: [`TelemetryError::PrometheusSetup`] if the exposition cannot be set up.
    pub(super) fn build(
        resource: Resource,
        otlp: Option<PeriodicReader<opentelemetry_otlp::MetricExporter>>,
    ) -> Result<Self, TelemetryError> {
        let registry = prometheus::Registry::new();
        let prometheus = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .scope_info_enabled(false)
            .build()
            .map_err(TelemetryError::PrometheusSetup)?;
        let mut builder = SdkMeterProvider::builder()
            .with_resource(resource)
            .with_reader(prometheus);
        if let Some(reader) = otlp {
            builder = builder.with_reader(reader);
        }
        Ok(Self::on(builder.build(), registry))
    }

    fn on(provider: SdkMeterProvider, registry: prometheus::Registry) -> Self {
        let meter = provider.meter(SERVICE);
        let seconds = |name: &'static str, description: &'static str, bounds: &[f64]| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(description)
                .with_boundaries(bounds.to_vec())
                .build()
        };
        Self {
            terminations: meter
                .u64_counter("deprovision.terminations")
                .with_unit("{termination}")
                .with_description("Terminations that reached an outcome, by outcome")
                .build(),
            messages_rejected: meter
                .u64_counter("deprovision.messages.rejected")
                .with_unit("{message}")
                .with_description(
                    "Queue messages refused before being trusted as terminations (e.g. bad_signature), by reason",
                )
                .build(),
            scim_request_duration: seconds(
                "deprovision.scim.request.duration",
                "Duration of SCIM HTTP requests, by method, resource and status",
                &SCIM_LATENCY_BOUNDS,
            ),
            rate_limit_wait: seconds(
                "deprovision.rate_limit.wait",
                "Time a SCIM request waited for the shared rate limiter",
                &RATE_LIMIT_WAIT_BOUNDS,
            ),
            scim_throttled: meter
                .u64_counter("deprovision.scim.throttled")
                .with_unit("{response}")
                .with_description("SCIM responses with status 429, by credential")
                .build(),
            queue_lag: seconds(
                "deprovision.queue.lag",
                "Time from a message being sent to its receipt, by queue",
                &QUEUE_LAG_BOUNDS,
            ),
            deactivation_delay: seconds(
                "deprovision.deactivation.delay",
                "Time from a termination's effective moment to the confirmed deactivation",
                &DEACTIVATION_DELAY_BOUNDS,
            ),
            provider,
            registry,
        }
    }

    /// Counts one termination that reached `outcome` (design.md, "Outcomes").
    pub fn record_outcome(&self, outcome: Outcome) {
        self.terminations
            .add(1, &[KeyValue::new("outcome", outcome.as_str())]);
    }

    /// Counts one queue message refused before anything in it was trusted, by
    /// `reason` (the dead-letter reason code, e.g. `bad_signature`). Such a
    /// message is not a termination: an unsigned or forged body says nothing
    /// reliable about anyone, so it is never counted in
    /// `deprovision_terminations_total`.
    pub fn record_message_rejected(&self, reason: &'static str) {
        self.messages_rejected
            .add(1, &[KeyValue::new("reason", reason)]);
    }

    /// Records one SCIM HTTP request: its method, the resource it addressed, the
    /// response status (`None` when no response came: timeout or connection
    /// error, labelled `error`) and how long it took.
    pub fn record_scim_request(
        &self,
        method: &reqwest::Method,
        resource: ScimResource,
        status: Option<u16>,
        elapsed: Duration,
    ) {
        let status = match status {
            Some(code) => KeyValue::new("status", i64::from(code)),
            None => KeyValue::new("status", "error"),
        };
        self.scim_request_duration.record(
            elapsed.as_secs_f64(),
            &[
                KeyValue::new("method", method_label(method)),
                KeyValue::new("resource", resource.as_str()),
                status,
            ],
        );
    }

    /// Records how long one request waited for the shared rate limiter.
    pub fn record_rate_limit_wait(&self, waited: Duration) {
        self.rate_limit_wait.record(waited.as_secs_f64(), &[]);
    }

    /// Counts one 429 response received with `credential`.
    pub fn record_throttled(&self, credential: Credential) {
        self.scim_throttled
            .add(1, &[KeyValue::new("credential", credential.as_str())]);
    }

    /// Records how long a message waited in `queue` before it was received (for
    /// SQS, now minus the `SentTimestamp` attribute).
    pub fn record_queue_lag(&self, queue: QueueKind, lag: Duration) {
        self.queue_lag
            .record(lag.as_secs_f64(), &[KeyValue::new("queue", queue.as_str())]);
    }

    /// Records the time from a termination's effective moment to its confirmed
    /// deactivation. A deactivation before the effective moment (which the
    /// safety rails forbid) is recorded as zero and logged at error level.
    pub fn record_deactivation_delay(
        &self,
        effective_at: DateTime<Utc>,
        deactivated_at: DateTime<Utc>,
    ) {
        let delay = deactivated_at - effective_at;
        let seconds = match delay.to_std() {
            Ok(delay) => delay.as_secs_f64(),
            Err(_) => {
                tracing::error!(
                    %effective_at, %deactivated_at,
                    "deactivation recorded before the termination's effective moment"
                );
                0.0
            }
        };
        self.deactivation_delay.record(seconds, &[]);
    }

    /// Every instrument in the Prometheus text exposition format, version 0.0.4
    /// (what `/metrics` serves; content type [`prometheus::TEXT_FORMAT`]).
    ///
    /// Errors: [`TelemetryError::PrometheusRender`] if encoding fails.
    pub fn render_prometheus(&self) -> Result<String, TelemetryError> {
        let families = self.registry.gather();
        let mut text = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&families, &mut text)
            .map_err(TelemetryError::PrometheusRender)?;
        Ok(text)
    }

    /// Exports what the OTLP reader holds and stops the meter provider.
    pub(super) fn shutdown(&self) -> Result<(), TelemetryError> {
        self.provider
            .shutdown()
            .map_err(|source| TelemetryError::Flush {
                signal: "metrics",
                source,
            })
    }

    /// Instruments that record nowhere: the last resort when even the Prometheus
    /// exposition cannot be set up.
    fn disabled() -> Self {
        Self::on(
            SdkMeterProvider::builder().build(),
            prometheus::Registry::new(),
        )
    }
}

/// The label of a request method: the five SCIM uses (RFC 7644 §3), else `other`,
/// so a label value is never built per request nor unbounded.
fn method_label(method: &reqwest::Method) -> &'static str {
    match *method {
        reqwest::Method::GET => "GET",
        reqwest::Method::POST => "POST",
        reqwest::Method::PUT => "PUT",
        reqwest::Method::PATCH => "PATCH",
        reqwest::Method::DELETE => "DELETE",
        _ => "other",
    }
}

static GLOBAL: OnceLock<Metrics> = OnceLock::new();

/// Makes `metrics` the process-wide facade; false if [`metrics()`] already
/// created one (which then stays, without OTLP export).
pub(super) fn install(metrics: Metrics) -> bool {
    GLOBAL.set(metrics).is_ok()
}

/// The process-wide metrics facade: the one [`super::init`] built, or, when
/// `init` has not run (tests, library use), one that only `/metrics` renders.
pub fn metrics() -> &'static Metrics {
    GLOBAL.get_or_init(|| {
        Metrics::build(super::resource(), None).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "metrics are not recorded");
            Metrics::disabled()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh() -> Metrics {
        Metrics::build(Resource::builder_empty().build(), None).unwrap()
    }

    #[test]
    fn prometheus_text_names_every_instrument_with_its_unit() {
        let m = fresh();
        m.record_outcome(Outcome::Deactivated);
        m.record_outcome(Outcome::Deactivated);
        m.record_outcome(Outcome::NotFound);
        m.record_message_rejected("bad_signature");
        m.record_scim_request(
            &reqwest::Method::PATCH,
            ScimResource::Users,
            Some(200),
            Duration::from_millis(40),
        );
        m.record_scim_request(
            &reqwest::Method::GET,
            ScimResource::Groups,
            None,
            Duration::from_secs(30),
        );
        m.record_rate_limit_wait(Duration::from_millis(250));
        m.record_throttled(Credential::Primary);
        m.record_queue_lag(QueueKind::Terminations, Duration::from_secs(3));
        let now = Utc::now();
        m.record_deactivation_delay(now - chrono::Duration::seconds(90), now);
        let text = m.render_prometheus().unwrap();

        for line in [
            "# TYPE deprovision_terminations_total counter",
            "deprovision_terminations_total{outcome=\"deactivated\"} 2",
            "deprovision_terminations_total{outcome=\"not_found\"} 1",
            "# TYPE deprovision_messages_rejected_total counter",
            "deprovision_messages_rejected_total{reason=\"bad_signature\"} 1",
            "# TYPE deprovision_scim_request_duration_seconds histogram",
            "deprovision_scim_request_duration_seconds_bucket{method=\"PATCH\",resource=\"users\",status=\"200\",le=\"0.05\"} 1",
            "deprovision_scim_request_duration_seconds_bucket{method=\"PATCH\",resource=\"users\",status=\"200\",le=\"0.025\"} 0",
            "deprovision_scim_request_duration_seconds_count{method=\"GET\",resource=\"groups\",status=\"error\"} 1",
            "deprovision_rate_limit_wait_seconds_sum 0.25",
            "deprovision_scim_throttled_total{credential=\"primary\"} 1",
            "deprovision_queue_lag_seconds_count{queue=\"terminations\"} 1",
            "deprovision_deactivation_delay_seconds_bucket{le=\"60\"} 0",
            "deprovision_deactivation_delay_seconds_bucket{le=\"300\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
    }

    #[test]
    fn an_early_deactivation_is_recorded_as_zero() {
        let m = fresh();
        let now = Utc::now();
        m.record_deactivation_delay(now + chrono::Duration::hours(1), now);
        let text = m.render_prometheus().unwrap();
        assert!(
            text.contains("deprovision_deactivation_delay_seconds_sum 0\n"),
            "{text}"
        );
    }
}
