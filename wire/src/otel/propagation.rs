//! W3C trace context (`traceparent`, `tracestate`) in NATS message headers: the bridge writes the
//! context of its publish span ([`inject`]); JetStream's RePublish copies the headers onto
//! `live.*`; the gateway makes its routing span a child of it ([`set_parent`]), and the parent's
//! sampling decision carries over. Without export ([`super::enabled`] false) both do nothing.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct Writer<'a>(&'a mut async_nats::HeaderMap);

impl Injector for Writer<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value);
    }
}

struct Reader<'a>(&'a async_nats::HeaderMap);

impl Extractor for Reader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_ref()).collect()
    }
}

/// Writes the context of `span` into `headers` (nothing when the span is disabled).
pub fn inject(span: &tracing::Span, headers: &mut async_nats::HeaderMap) {
    if !super::enabled() || span.is_disabled() {
        return;
    }
    TraceContextPropagator::new().inject_context(&span.context(), &mut Writer(headers));
}

/// Makes the context in `headers`, if any, the parent of `span` (call before the span's first
/// child is created).
pub fn set_parent(span: &tracing::Span, headers: Option<&async_nats::HeaderMap>) {
    let Some(headers) = headers else { return };
    if !super::enabled() || span.is_disabled() || headers.get(crate::headers::TRACEPARENT).is_none() {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&Reader(headers));
    let _ = span.set_parent(parent);
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};

    #[test]
    fn context_round_trips_through_nats_headers() {
        let context = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::from_key_value([("vendor", "x")]).unwrap(),
        );
        let mut headers = async_nats::HeaderMap::new();
        let cx = opentelemetry::Context::new().with_remote_span_context(context.clone());
        TraceContextPropagator::new().inject_context(&cx, &mut Writer(&mut headers));
        assert_eq!(
            headers.get(crate::headers::TRACEPARENT).unwrap().as_str(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert_eq!(headers.get(crate::headers::TRACESTATE).unwrap().as_str(), "vendor=x");
        let back = TraceContextPropagator::new().extract(&Reader(&headers));
        assert_eq!(back.span().span_context(), &context);
    }
}
