//! W3C Trace Context (`traceparent`, `tracestate`) carried in queue message
//! attributes, so that dispatch, consume and the SCIM requests of one termination
//! share one trace. The carrier is a plain map: the queue code turns it into SQS
//! string message attributes and back. Knows nothing about queues.

use std::collections::{BTreeMap, HashMap};

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The current span's trace context as W3C Trace Context entries
/// (`traceparent`, and `tracestate` when set), to send with a message. Empty when
/// spans are not exported (no OpenTelemetry layer) or the span is disabled.
pub fn inject_context() -> HashMap<String, String> {
    inject_context_from(&tracing::Span::current())
}

/// [`inject_context`] for a given span.
pub fn inject_context_from(span: &tracing::Span) -> HashMap<String, String> {
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier
}

/// The remote parent context in a received message's entries (W3C Trace Context,
/// `traceparent` version 00). Missing or malformed entries give an empty context,
/// so a message from an older or untraced sender starts a new trace.
pub fn extract_context(carrier: &HashMap<String, String>) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(carrier)
}

/// Makes `span` a child of the trace in `carrier`. Call it right after creating
/// the span, before entering it. Does nothing when `carrier` holds no valid
/// context or spans are not exported.
pub fn set_parent(span: &tracing::Span, carrier: &HashMap<String, String>) {
    use opentelemetry::trace::TraceContextExt as _;
    let parent = extract_context(carrier);
    if !parent.span().span_context().is_valid() {
        return;
    }
    if let Err(e) = span.set_parent(parent) {
        // Only a span created without the OpenTelemetry layer, or already
        // started, gets here; the trace is broken, the work is not.
        tracing::debug!(error = %e, "trace context not attached");
    }
}

/// A queue message's string attributes as a W3C Trace Context carrier.
struct Attributes<'a>(&'a mut BTreeMap<String, String>);

impl Injector for Attributes<'_> {
    fn set(&mut self, key: &str, value: String) {
        // The propagator writes an empty `tracestate` when there is none; SQS
        // refuses empty attribute values, and each attribute counts against
        // SQS's ten per message.
        if !value.is_empty() {
            self.0.insert(key.to_owned(), value);
        }
    }
}

/// A received message's string attributes, read as a carrier.
struct Received<'a>(&'a BTreeMap<String, String>);

impl Extractor for Received<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// Adds `span`'s trace context (`traceparent`, and `tracestate` when set) to a
/// message's attributes, keeping every other attribute (signatures, reasons).
/// Adds nothing when spans are not exported.
pub fn inject_into(span: &tracing::Span, attributes: &mut BTreeMap<String, String>) {
    TraceContextPropagator::new().inject_context(&span.context(), &mut Attributes(attributes));
}

/// [`set_parent`] from a received message's attributes: makes `span` a child of
/// the sender's span. Missing or malformed entries leave `span` a root.
pub fn set_parent_from(span: &tracing::Span, attributes: &BTreeMap<String, String>) {
    use opentelemetry::trace::TraceContextExt as _;
    let parent = TraceContextPropagator::new().extract(&Received(attributes));
    if !parent.span().span_context().is_valid() {
        return;
    }
    if let Err(e) = span.set_parent(parent) {
        tracing::debug!(error = %e, "trace context not attached");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::layer::SubscriberExt as _;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn with_otel<T>(f: impl FnOnce() -> T) -> T {
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, f)
    }

    #[test]
    fn without_the_layer_nothing_is_injected() {
        let span = tracing::info_span!("dispatch");
        let _entered = span.enter();
        assert!(inject_context().is_empty());
    }

    #[test]
    fn a_child_of_an_extracted_parent_injects_the_same_trace() {
        let carrier = HashMap::from([("traceparent".to_owned(), PARENT.to_owned())]);
        let injected = with_otel(|| {
            let span = tracing::info_span!("consume");
            set_parent(&span, &carrier);
            let _entered = span.enter();
            inject_context()
        });
        let traceparent = &injected["traceparent"];
        assert!(
            traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{traceparent}"
        );
        // A new span id: the consumer's own span, not the sender's.
        assert!(!traceparent.contains("00f067aa0ba902b7"), "{traceparent}");
    }

    #[test]
    fn message_attributes_carry_the_trace_beside_other_attributes() {
        let mut attributes =
            BTreeMap::from([("deprovision.signature".to_owned(), "sig".to_owned())]);
        let (sender, receiver) = with_otel(|| {
            let dispatch = tracing::info_span!("dispatch");
            inject_into(&dispatch, &mut attributes);
            let sender = dispatch.context().span().span_context().clone();
            let termination = tracing::info_span!("termination");
            set_parent_from(&termination, &attributes);
            let _entered = termination.enter();
            (sender, inject_context())
        });
        assert_eq!(attributes["deprovision.signature"], "sig");
        assert!(!attributes.contains_key("tracestate"), "{attributes:?}");
        let traceparent = &attributes["traceparent"];
        assert_eq!(
            traceparent,
            &format!("00-{}-{}-01", sender.trace_id(), sender.span_id())
        );
        assert!(
            receiver["traceparent"].starts_with(&format!("00-{}-", sender.trace_id())),
            "{receiver:?}"
        );
    }

    #[test]
    fn malformed_entries_give_an_empty_context() {
        for bad in [
            "",
            "garbage",
            "00-zz-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let carrier = HashMap::from([("traceparent".to_owned(), bad.to_owned())]);
            let cx = extract_context(&carrier);
            assert!(!cx.span().span_context().is_valid(), "{bad:?}");
        }
        let cx = extract_context(&HashMap::from([(
            "traceparent".to_owned(),
            PARENT.to_owned(),
        )]));
        assert!(cx.span().span_context().is_remote());
    }
}
