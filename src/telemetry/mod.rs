//! Telemetry: log lines on standard error (human or JSON), OpenTelemetry traces and
//! metrics exported over OTLP/HTTP when the standard `OTEL_*` variables ask for it
//! (and not otherwise), the metrics facade the rest of the crate records through
//! ([`metrics()`]), the Prometheus text rendering of those metrics and the
//! `/healthz` + `/metrics` router ([`health_router`]), W3C trace-context
//! propagation through queue message attributes ([`inject_into`],
//! [`set_parent_from`]), and the pipeline's spans with the measurements taken
//! when they close ([`dispatch_span`], [`termination_span`],
//! [`scim_request_span`], [`rate_limit_span`]), which `dispatch`, `consume`,
//! `scim` and `limit` open so that one manifest's work is one trace.
//!
//! Owns no business logic and never formats secrets: secret types redact
//! themselves, and the OTLP headers (which may carry a collector's API key) are read
//! by the exporter and never logged. Besides `RUST_LOG`, the only environment it
//! reads is OpenTelemetry's own standard variables, which the OpenTelemetry
//! specification ("Environment Variable Specification") has every SDK honour;
//! everything else reaches it through arguments.

mod health;
mod instrument;
mod metrics;
mod propagation;

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::PeriodicReader;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

pub use health::{HealthError, health_router, health_router_with, probe_health};
pub use instrument::{
    TerminationEnd, dispatch_span, finish_rate_limit, finish_scim_request, finish_termination,
    finish_token_request, observe_received, rate_limit_span, scim_request_span, termination_span,
    token_request_span,
};
pub use metrics::{Metrics, QueueKind, ScimResource, metrics};
pub use propagation::{
    extract_context, inject_context, inject_context_from, inject_into, set_parent, set_parent_from,
};

/// The instrumentation scope and default `service.name`.
const SERVICE: &str = "deprovision";

/// How log lines are written to standard error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line, with span fields (for CloudWatch and collectors).
    Json,
}

/// Telemetry that could not be set up or flushed, naming the signal and why.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter for a signal could not be built (e.g. an invalid endpoint
    /// URL in `OTEL_EXPORTER_OTLP_*ENDPOINT`).
    #[error("cannot build the OTLP {signal} exporter: {source}")]
    Exporter {
        /// `traces` or `metrics`.
        signal: &'static str,
        /// The exporter's reason.
        source: opentelemetry_otlp::ExporterBuildError,
    },
    /// The Prometheus reader could not be registered with its registry.
    #[error("cannot set up the Prometheus exposition: {0}")]
    PrometheusSetup(opentelemetry_sdk::error::OTelSdkError),
    /// The metrics could not be encoded as Prometheus text.
    #[error("cannot render metrics as Prometheus text: {0}")]
    PrometheusRender(prometheus::Error),
    /// Flushing or shutting down a signal's pipeline failed (e.g. the collector
    /// did not answer); the data not yet exported is lost.
    #[error("cannot flush OpenTelemetry {signal}: {source}")]
    Flush {
        /// `traces` or `metrics`.
        signal: &'static str,
        /// The SDK's reason.
        source: opentelemetry_sdk::error::OTelSdkError,
    },
}

/// Which signals go to an OTLP/HTTP collector, and where. Built from the standard
/// `OTEL_*` variables by [`OtlpExport::from_env`] (OpenTelemetry "Environment
/// Variable Specification" and "OTLP Exporter Configuration"); both signals are off
/// when no endpoint variable is set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OtlpExport {
    /// Export spans (BatchSpanProcessor, protobuf over HTTP).
    pub traces: bool,
    /// Export metrics (PeriodicReader, protobuf over HTTP, cumulative).
    pub metrics: bool,
    /// Full traces URL (`…/v1/traces`); `None` lets the exporter resolve
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub traces_endpoint: Option<String>,
    /// Full metrics URL (`…/v1/metrics`); `None` as for traces.
    pub metrics_endpoint: Option<String>,
    /// Time between metric exports; `None` is `OTEL_METRIC_EXPORT_INTERVAL`
    /// (milliseconds), else 60 s.
    pub metrics_interval: Option<Duration>,
    /// Settings that were present but not honoured, with why; logged by [`init`]
    /// once logging works.
    pub warnings: Vec<String>,
}

impl OtlpExport {
    /// No export at all.
    pub fn off() -> Self {
        Self::default()
    }

    /// Both signals to one collector, e.g. `http://127.0.0.1:4318`: spans to
    /// `<base>/v1/traces`, metrics to `<base>/v1/metrics` (OTLP/HTTP default paths).
    /// Overrides the environment; for tests and explicit configuration.
    pub fn to_collector(base: &str) -> Self {
        let base = base.trim_end_matches('/');
        Self {
            traces: true,
            metrics: true,
            traces_endpoint: Some(format!("{base}/v1/traces")),
            metrics_endpoint: Some(format!("{base}/v1/metrics")),
            ..Self::default()
        }
    }

    /// Reads the process environment (see [`OtlpExport::from_vars`]).
    pub fn from_env() -> Self {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// Decides from OpenTelemetry's standard variables, looked up by `get`:
    /// a signal is exported when `OTEL_EXPORTER_OTLP_ENDPOINT` or its
    /// signal-specific `…_TRACES_ENDPOINT` / `…_METRICS_ENDPOINT` is set, unless
    /// `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER` / `OTEL_METRICS_EXPORTER`
    /// names something other than `otlp`. Only the `http/protobuf` protocol is
    /// built in; another `OTEL_EXPORTER_OTLP_*PROTOCOL` adds a warning.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Self {
        let get = |name: &str| {
            get(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let mut export = Self::off();
        if get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return export;
        }
        let base = get("OTEL_EXPORTER_OTLP_ENDPOINT");
        for (signal, exporter_var, endpoint_var, protocol_var) in [
            (
                "traces",
                "OTEL_TRACES_EXPORTER",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            ),
            (
                "metrics",
                "OTEL_METRICS_EXPORTER",
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
            ),
        ] {
            if base.is_none() && get(endpoint_var).is_none() {
                continue;
            }
            let on = match get(exporter_var) {
                None => true,
                Some(v) if v.eq_ignore_ascii_case("otlp") => true,
                Some(v) if v.eq_ignore_ascii_case("none") => false,
                Some(v) => {
                    export.warnings.push(format!(
                        "{exporter_var}={v} is not supported (only otlp or none): {signal} are not exported"
                    ));
                    false
                }
            };
            if !on {
                continue;
            }
            if let Some(protocol) = get(protocol_var).or_else(|| get("OTEL_EXPORTER_OTLP_PROTOCOL"))
                && protocol != "http/protobuf"
            {
                export.warnings.push(format!(
                    "OTLP protocol {protocol} is not built in: {signal} are sent as http/protobuf"
                ));
            }
            match signal {
                "traces" => export.traces = true,
                _ => export.metrics = true,
            }
        }
        export
    }

    /// True when at least one signal is exported.
    pub fn any(&self) -> bool {
        self.traces || self.metrics
    }
}

/// The OpenTelemetry pipelines of one process: a tracer provider when spans are
/// exported, and the metrics (always rendered for Prometheus, also pushed over
/// OTLP when configured). Cheap to keep; [`Telemetry::shutdown`] flushes.
#[derive(Debug, Clone)]
pub struct Telemetry {
    tracer_provider: Option<SdkTracerProvider>,
    metrics: Metrics,
}

impl Telemetry {
    /// Builds the pipelines `export` asks for. The resource is the SDK's default
    /// (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`), with `service.name`
    /// `deprovision` when neither names one.
    ///
    /// Errors: [`TelemetryError::Exporter`] for an unusable endpoint.
    pub fn build(export: &OtlpExport) -> Result<Self, TelemetryError> {
        let resource = resource();
        let tracer_provider = if export.traces {
            let mut builder = opentelemetry_otlp::SpanExporter::builder().with_http();
            if let Some(endpoint) = &export.traces_endpoint {
                builder = builder.with_endpoint(endpoint.clone());
            }
            let exporter = builder.build().map_err(|source| TelemetryError::Exporter {
                signal: "traces",
                source,
            })?;
            // The batch processor exports from its own thread with the blocking
            // HTTP client, so it never blocks (or needs) the async runtime.
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource.clone())
                    .build(),
            )
        } else {
            None
        };
        let otlp_reader = if export.metrics {
            let mut builder = opentelemetry_otlp::MetricExporter::builder().with_http();
            if let Some(endpoint) = &export.metrics_endpoint {
                builder = builder.with_endpoint(endpoint.clone());
            }
            let exporter = builder.build().map_err(|source| TelemetryError::Exporter {
                signal: "metrics",
                source,
            })?;
            let mut reader = PeriodicReader::builder(exporter);
            if let Some(interval) = export.metrics_interval {
                reader = reader.with_interval(interval);
            }
            Some(reader.build())
        } else {
            None
        };
        let metrics = Metrics::build(resource, otlp_reader)?;
        Ok(Self {
            tracer_provider,
            metrics,
        })
    }

    /// The metrics facade of this pipeline.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// True when spans are exported.
    pub fn exports_traces(&self) -> bool {
        self.tracer_provider.is_some()
    }

    /// The `tracing` layer that turns spans into OpenTelemetry spans, or `None`
    /// when spans are not exported. The OpenTelemetry SDK's and HTTP clients' own
    /// events are kept out of it, so exporting never traces itself.
    pub fn otel_layer<S>(&self) -> Option<impl tracing_subscriber::Layer<S> + use<S>>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        let provider = self.tracer_provider.as_ref()?;
        let tracer = provider.tracer(SERVICE);
        Some(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                    let target = meta.target();
                    !["opentelemetry", "hyper", "reqwest", "h2", "tower"]
                        .iter()
                        .any(|prefix| target.starts_with(prefix))
                })),
        )
    }

    /// Exports what is buffered (spans, then metrics) and stops the pipelines.
    /// Blocks for up to a few seconds per signal while the collector answers: call
    /// it from a blocking context (e.g. `spawn_blocking`, or after the runtime
    /// ends). Both signals are attempted even if the first fails; the first error
    /// is returned.
    pub fn shutdown(&self) -> Result<(), TelemetryError> {
        let traces = match &self.tracer_provider {
            Some(provider) => provider.shutdown().map_err(|source| TelemetryError::Flush {
                signal: "traces",
                source,
            }),
            None => Ok(()),
        };
        let metrics = self.metrics.shutdown();
        traces.and(metrics)
    }
}

/// The SDK's default resource, named `deprovision` unless the environment names it.
fn resource() -> Resource {
    let detected = Resource::builder().build();
    let unnamed = detected
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .is_none_or(|name| name.as_str().starts_with("unknown_service"));
    if unnamed {
        Resource::builder().with_service_name(SERVICE).build()
    } else {
        detected
    }
}

/// Flushes and stops telemetry when dropped (or on [`TelemetryGuard::shutdown`]).
/// Keep it alive in `main` until the async runtime has finished, so the last
/// spans and metrics are exported.
#[derive(Debug)]
#[must_use = "dropping the guard flushes and stops telemetry at once"]
pub struct TelemetryGuard {
    telemetry: Option<Telemetry>,
}

impl TelemetryGuard {
    /// The pipelines this guard flushes.
    pub fn telemetry(&self) -> Option<&Telemetry> {
        self.telemetry.as_ref()
    }

    /// Flushes and stops now, reporting a failed export.
    pub fn shutdown(mut self) -> Result<(), TelemetryError> {
        match self.telemetry.take() {
            Some(telemetry) => telemetry.shutdown(),
            None => Ok(()),
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(telemetry) = self.telemetry.take()
            && let Err(e) = telemetry.shutdown()
        {
            // The subscriber may already be gone at exit; standard error is not.
            eprintln!("warning: {e}");
        }
    }
}

/// Installs the global subscriber and the OTLP export the `OTEL_*` variables ask
/// for (none when they are unset), and makes [`metrics()`] record into it.
/// Never fails: an unusable OTLP setting is logged as a warning and that export
/// stays off. Calling it twice is harmless (the second subscriber is ignored).
pub fn init(format: LogFormat) -> TelemetryGuard {
    init_with(format, OtlpExport::from_env())
}

/// [`init`] with an explicit export setting instead of the environment's.
pub fn init_with(format: LogFormat, export: OtlpExport) -> TelemetryGuard {
    let (telemetry, build_error) = match Telemetry::build(&export) {
        Ok(telemetry) => (Some(telemetry), None),
        Err(e) => (Telemetry::build(&OtlpExport::off()).ok(), Some(e)),
    };
    // `RUST_LOG` chooses what is logged, not what is traced: each log layer has
    // its own filter, and spans at `info` reach the exporter even when the log
    // level is `warn`.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let log = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
    }
    .with_filter(filter);
    let otel = telemetry
        .as_ref()
        .and_then(|t| t.otel_layer())
        .map(|layer| layer.with_filter(tracing_subscriber::filter::LevelFilter::INFO));
    let _ = tracing_subscriber::registry()
        .with(log)
        .with(otel)
        .try_init();

    for warning in &export.warnings {
        tracing::warn!("{warning}");
    }
    if let Some(e) = build_error {
        tracing::warn!(error = %e, "OpenTelemetry export is off");
    }
    if let Some(t) = &telemetry {
        if !metrics::install(t.metrics().clone()) {
            tracing::warn!(
                "telemetry::metrics() was used before telemetry::init: metrics are not exported over OTLP"
            );
        }
        tracing::debug!(
            traces = export.traces,
            metrics = export.metrics,
            "OpenTelemetry export"
        );
    }
    TelemetryGuard { telemetry }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(vars: &[(&str, &str)]) -> OtlpExport {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        OtlpExport::from_vars(|name| vars.get(name).cloned())
    }

    #[test]
    fn export_is_off_without_an_endpoint_variable() {
        assert_eq!(from(&[]), OtlpExport::off());
        // A service name or sampler alone does not turn export on.
        let export = from(&[
            ("OTEL_SERVICE_NAME", "x"),
            ("OTEL_TRACES_SAMPLER", "always_on"),
        ]);
        assert!(!export.any(), "{export:?}");
        assert!(!from(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "  ")]).any());
    }

    #[test]
    fn the_common_endpoint_turns_both_signals_on() {
        let export = from(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")]);
        assert!(export.traces && export.metrics, "{export:?}");
        assert!(export.warnings.is_empty());
        // The exporter resolves the endpoint itself, signal paths included.
        assert_eq!(export.traces_endpoint, None);
    }

    #[test]
    fn signal_endpoints_and_exporter_choices_select_signals() {
        let export = from(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://c:4318/v1/traces",
        )]);
        assert!(export.traces && !export.metrics, "{export:?}");

        let export = from(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_METRICS_EXPORTER", "none"),
        ]);
        assert!(export.traces && !export.metrics, "{export:?}");

        let export = from(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_TRACES_EXPORTER", "zipkin"),
        ]);
        assert!(!export.traces && export.metrics, "{export:?}");
        assert!(export.warnings[0].contains("zipkin"), "{export:?}");
    }

    #[test]
    fn sdk_disabled_wins_and_other_protocols_are_reported() {
        let export = from(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_SDK_DISABLED", "TRUE"),
        ]);
        assert!(!export.any());

        let export = from(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ]);
        assert!(export.traces && export.metrics);
        assert_eq!(export.warnings.len(), 2, "{export:?}");
        assert!(export.warnings[0].contains("grpc"));
    }

    #[test]
    fn an_unusable_endpoint_is_an_error_naming_the_signal() {
        let export = OtlpExport {
            traces: true,
            traces_endpoint: Some("not a url".into()),
            ..OtlpExport::off()
        };
        let err = Telemetry::build(&export).unwrap_err();
        assert!(err.to_string().contains("traces"), "{err}");
    }
}
