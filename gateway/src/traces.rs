//! The spans the gateway exports over OTLP (set-up: `wire::otel`). Per event: `gateway.route`, a
//! child of the bridge's publish span whose W3C context JetStream's RePublish carried in the
//! message headers (validation, de-duplication, recipients; it follows the parent's sampling
//! decision), and its child `gateway.fan_out` (writing to every idle recipient's socket and
//! queueing for the others, with their counts).
//! Per connection: `gateway.connection`, from admission to close, a root of its own, so that no
//! event ever hangs under a long-lived connection, and built when the connection ends, so that
//! an idle connection holds no span. Without export every function here returns at once
//! (`Span::none()` for the per-event spans), so the hot paths pay nothing then.

use crate::auth::Endpoint;
use crate::registry::ConnInfo;
use std::time::{Duration, UNIX_EPOCH};
use tracing::field::Empty;
use tracing::Span;
use wire::otel::{KeyValue, SpanKind, TARGET};

/// The routing span of one NATS message, parented by the `traceparent` in `headers`.
pub fn route(subject: &str, tenant_id: u64, headers: Option<&async_nats::HeaderMap>, sequence: Option<u64>) -> Span {
    if !wire::otel::enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: TARGET,
        parent: None,
        "gateway.route",
        otel.kind = "consumer",
        messaging.system = "nats",
        messaging.destination.name = subject,
        tenant_id,
        jetstream.sequence = Empty,
        outcome = Empty,
        reason = Empty,
    );
    if let Some(sequence) = sequence {
        span.record("jetstream.sequence", sequence);
    }
    wire::otel::propagation::set_parent(&span, headers);
    span
}

/// Records what became of the event on its routing span.
pub fn routed(span: &Span, outcome: &'static str, reason: Option<&'static str>) {
    if span.is_disabled() {
        return;
    }
    span.record("outcome", outcome);
    if let Some(reason) = reason {
        span.record("reason", reason);
    }
}

/// The fan-out span, a child of the routing span entered around it.
pub fn fan_out() -> Span {
    if !wire::otel::enabled() {
        return Span::none();
    }
    tracing::info_span!(target: TARGET, "gateway.fan_out", recipients = Empty, written = Empty, queue_full = Empty)
}

/// Exports one connection's span once it ended: from the start of its admission to its close,
/// with the close code, reason and who closed (`server`, `client`, `lost`, or `refused` at
/// admission, without a tenant). It is built after the fact, so an open connection holds no span.
pub fn connection(
    endpoint: Endpoint,
    tenant_id: Option<u64>,
    info: &ConnInfo,
    code: u16,
    reason: &str,
    by: &'static str,
) {
    if !wire::otel::enabled() {
        return;
    }
    let start = UNIX_EPOCH + Duration::from_millis(info.connected_at_ms);
    let mut attributes = vec![
        KeyValue::new("endpoint", endpoint.as_str()),
        KeyValue::new("resume", info.resume),
        KeyValue::new("close.code", i64::from(code)),
        KeyValue::new("close.reason", reason.to_string()),
        KeyValue::new("close.by", by),
    ];
    if let Some(tenant_id) = tenant_id {
        attributes.push(KeyValue::new("tenant_id", tenant_id as i64));
    }
    wire::otel::finished_span("gateway.connection", SpanKind::Server, start, attributes);
}
