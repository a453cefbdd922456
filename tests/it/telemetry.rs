//! Telemetry end to end: spans and metrics of an in-process run reach a small
//! OTLP/HTTP receiver (axum on port 0, protobuf decoded with the OpenTelemetry
//! proto types) with dispatch → consume → SCIM request in one trace; the health
//! router serves `/healthz` and the Prometheus text of every instrument; the
//! container's health probe tells a serving port from a closed one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use chrono::Utc;
use deprovision::domain::{Credential, Outcome};
use deprovision::telemetry::{
    self, OtlpExport, QueueKind, ScimResource, Telemetry, health_router_with, inject_context,
    probe_health, set_parent,
};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use tracing_subscriber::layer::SubscriberExt as _;

/// What the receiver got, as raw request bodies per signal.
#[derive(Clone, Default)]
pub struct Received {
    pub traces: Arc<Mutex<Vec<Bytes>>>,
    pub metrics: Arc<Mutex<Vec<Bytes>>>,
}

impl Received {
    pub fn spans(&self) -> Vec<(Span, HashMap<String, String>)> {
        let bodies = self.traces.lock().unwrap().clone();
        let mut spans = Vec::new();
        for body in bodies {
            let request = ExportTraceServiceRequest::decode(body).expect("OTLP traces protobuf");
            for resource_spans in request.resource_spans {
                let resource = attributes(
                    &resource_spans
                        .resource
                        .map(|r| r.attributes)
                        .unwrap_or_default(),
                );
                for scope in resource_spans.scope_spans {
                    for span in scope.spans {
                        spans.push((span, resource.clone()));
                    }
                }
            }
        }
        spans
    }

    pub fn metrics(&self) -> Vec<opentelemetry_proto::tonic::metrics::v1::Metric> {
        let bodies = self.metrics.lock().unwrap().clone();
        let mut metrics = Vec::new();
        for body in bodies {
            let request = ExportMetricsServiceRequest::decode(body).expect("OTLP metrics protobuf");
            for resource in request.resource_metrics {
                for scope in resource.scope_metrics {
                    metrics.extend(scope.metrics);
                }
            }
        }
        metrics
    }
}

pub fn attributes(
    kvs: &[opentelemetry_proto::tonic::common::v1::KeyValue],
) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(Value::IntValue(i)) => i.to_string(),
                Some(Value::BoolValue(b)) => b.to_string(),
                Some(Value::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

/// An OTLP/HTTP receiver on port 0: `POST /v1/traces` and `/v1/metrics` keep
/// the protobuf body and answer 200 with an empty (success) response.
pub async fn start_receiver() -> (String, Received) {
    async fn keep(State(into): State<Arc<Mutex<Vec<Bytes>>>>, body: Bytes) -> Vec<u8> {
        into.lock().unwrap().push(body);
        Vec::new()
    }
    let received = Received::default();
    let app = Router::new()
        .route("/v1/traces", post(keep).with_state(received.traces.clone()))
        .route(
            "/v1/metrics",
            post(keep).with_state(received.metrics.clone()),
        );
    let addr = serve(app).await;
    (format!("http://{addr}"), received)
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Records one of every instrument.
fn record_each(metrics: &telemetry::Metrics) {
    metrics.record_outcome(Outcome::Deactivated);
    metrics.record_scim_request(
        &reqwest::Method::PATCH,
        ScimResource::Users,
        Some(200),
        Duration::from_millis(42),
    );
    metrics.record_rate_limit_wait(Duration::from_millis(5));
    metrics.record_throttled(Credential::Elevated);
    metrics.record_queue_lag(QueueKind::Terminations, Duration::from_secs(2));
    let now = Utc::now();
    metrics.record_deactivation_delay(now - chrono::Duration::minutes(3), now);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatch_consume_and_scim_spans_share_one_trace_and_metrics_arrive_over_otlp() {
    let (collector, received) = start_receiver().await;
    let telemetry = Telemetry::build(&OtlpExport::to_collector(&collector)).unwrap();
    assert!(telemetry.exports_traces());

    let subscriber = tracing_subscriber::registry().with(telemetry.otel_layer());
    tracing::subscriber::with_default(subscriber, || {
        // The dispatcher's span sends the context with the message...
        let attributes = {
            let dispatch = tracing::info_span!("dispatch", manifest = "manifests/a.json");
            let _entered = dispatch.enter();
            inject_context()
        };
        assert!(attributes.contains_key("traceparent"), "{attributes:?}");
        // ...and the consumer, in another task or process, continues the trace.
        let consume = tracing::info_span!("consume", external_id = "E-1001");
        set_parent(&consume, &attributes);
        let _entered = consume.enter();
        for _ in 0..2 {
            let request = tracing::info_span!("scim.request", method = "PATCH");
            let _entered = request.enter();
        }
    });
    record_each(telemetry.metrics());

    // Flushing blocks on the receiver's answers; the runtime keeps serving them.
    let flushing = telemetry.clone();
    tokio::task::spawn_blocking(move || flushing.shutdown())
        .await
        .unwrap()
        .unwrap();

    let spans = received.spans();
    let named = |name: &str| -> Vec<&Span> {
        spans
            .iter()
            .map(|(s, _)| s)
            .filter(|s| s.name == name)
            .collect()
    };
    let (dispatch, consume, requests) =
        (named("dispatch"), named("consume"), named("scim.request"));
    assert_eq!(
        (dispatch.len(), consume.len(), requests.len()),
        (1, 1, 2),
        "{spans:#?}"
    );
    let trace = &dispatch[0].trace_id;
    assert!(
        spans.iter().all(|(s, _)| &s.trace_id == trace),
        "{spans:#?}"
    );
    assert_eq!(consume[0].parent_span_id, dispatch[0].span_id);
    for request in requests {
        assert_eq!(request.parent_span_id, consume[0].span_id);
    }
    let consume_attrs = attributes(&consume[0].attributes);
    assert_eq!(consume_attrs["external_id"], "E-1001");
    assert_eq!(spans[0].1["service.name"], "deprovision");

    let metrics = received.metrics();
    let find = |name: &str| {
        metrics
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no {name} in {metrics:#?}"))
    };
    match &find("deprovision.terminations").data {
        Some(Data::Sum(sum)) => {
            let point = &sum.data_points[0];
            assert_eq!(attributes(&point.attributes)["outcome"], "deactivated");
            assert_eq!(
                point.value,
                Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(1))
            );
        }
        other => panic!("terminations is not a sum: {other:?}"),
    }
    for (name, unit) in [
        ("deprovision.scim.request.duration", "s"),
        ("deprovision.rate_limit.wait", "s"),
        ("deprovision.queue.lag", "s"),
        ("deprovision.deactivation.delay", "s"),
    ] {
        let metric = find(name);
        assert_eq!(metric.unit, unit, "{name}");
        match &metric.data {
            Some(Data::Histogram(h)) => assert_eq!(h.data_points[0].count, 1, "{name}"),
            other => panic!("{name} is not a histogram: {other:?}"),
        }
    }
    match &find("deprovision.scim.throttled").data {
        Some(Data::Sum(sum)) => {
            assert_eq!(
                attributes(&sum.data_points[0].attributes)["credential"],
                "elevated"
            )
        }
        other => panic!("throttled is not a sum: {other:?}"),
    }
}

#[tokio::test]
async fn nothing_is_exported_when_no_otel_variable_is_set() {
    let telemetry = Telemetry::build(&OtlpExport::from_vars(|_| None)).unwrap();
    assert!(!telemetry.exports_traces());
    assert!(
        telemetry
            .otel_layer::<tracing_subscriber::Registry>()
            .is_none()
    );
    // Metrics still render for /metrics.
    record_each(telemetry.metrics());
    assert!(
        telemetry
            .metrics()
            .render_prometheus()
            .unwrap()
            .contains("deprovision_terminations_total{outcome=\"deactivated\"} 1")
    );
}

#[tokio::test]
async fn metrics_endpoint_renders_every_instrument_and_healthz_answers() {
    let telemetry = Telemetry::build(&OtlpExport::off()).unwrap();
    record_each(telemetry.metrics());
    let addr = serve(health_router_with(telemetry.metrics().clone())).await;
    let client = reqwest::Client::new();

    let response = client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    for expected in [
        "# TYPE deprovision_terminations_total counter",
        "deprovision_terminations_total{outcome=\"deactivated\"} 1",
        "# TYPE deprovision_scim_request_duration_seconds histogram",
        "deprovision_scim_request_duration_seconds_count{method=\"PATCH\",resource=\"users\",status=\"200\"} 1",
        "# TYPE deprovision_rate_limit_wait_seconds histogram",
        "deprovision_scim_throttled_total{credential=\"elevated\"} 1",
        "deprovision_queue_lag_seconds_count{queue=\"terminations\"} 1",
        "deprovision_deactivation_delay_seconds_sum 180",
    ] {
        assert!(
            text.lines().any(|l| l == expected),
            "missing {expected:?} in:\n{text}"
        );
    }

    let health = client
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), "ok");
    probe_health(addr.port(), Duration::from_secs(5))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_health_probe_fails_on_a_closed_port() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let err = probe_health(closed, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("127.0.0.1:{closed}/healthz")),
        "{err}"
    );
}

#[tokio::test]
async fn the_process_wide_router_renders_the_process_wide_metrics() {
    telemetry::metrics().record_outcome(Outcome::NotFound);
    let addr = serve(telemetry::health_router()).await;
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("deprovision_terminations_total{outcome=\"not_found\"}"),
        "{text}"
    );
}
