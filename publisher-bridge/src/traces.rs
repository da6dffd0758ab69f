//! The spans the bridge exports over OTLP (set-up: `wire::otel`), one trace per event:
//! `bridge.receive`, the root, from the moment Redis handed the event over until its publish is
//! enqueued (waiting for an in-flight slot included), and its child `bridge.publish`, from the
//! enqueue to JetStream's acknowledgement (retries included). The publish span's W3C context
//! goes into the message's headers, so the gateway's routing span becomes its child. Every
//! constructor returns `Span::none()` when export is off.

use tracing::field::Empty;
use tracing::Span;
use wire::otel::TARGET;

/// The receive span of an event just read from Redis: `source` is `pubsub` or `stream`,
/// `destination` the channel or stream key, `entry_id` the stream entry's id.
pub fn receive(source: &'static str, destination: &str, entry_id: Option<&str>) -> Span {
    if !wire::otel::enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: TARGET,
        parent: None,
        "bridge.receive",
        otel.kind = "consumer",
        messaging.system = "redis",
        messaging.destination.name = destination,
        source,
        redis.stream.entry_id = Empty,
        outcome = Empty,
        reason = Empty,
    );
    if let Some(id) = entry_id {
        span.record("redis.stream.entry_id", id);
    }
    span
}

/// The publish span, a child of `receive`.
pub fn publish(receive: &Span, subject: &str) -> Span {
    if receive.is_disabled() {
        return Span::none();
    }
    tracing::info_span!(
        target: TARGET,
        parent: receive,
        "bridge.publish",
        otel.kind = "producer",
        messaging.system = "nats",
        messaging.destination.name = subject,
        jetstream.stream = Empty,
        jetstream.sequence = Empty,
        jetstream.duplicate = Empty,
    )
}

/// Records on `receive` whether the event was published or dead-lettered, and why.
pub fn mapped(receive: &Span, dead_letter: Option<&'static str>) {
    if receive.is_disabled() {
        return;
    }
    match dead_letter {
        None => receive.record("outcome", "published"),
        Some(reason) => receive.record("outcome", "dead_lettered").record("reason", reason),
    };
}

/// Records JetStream's acknowledgement on the publish span.
pub fn stored(publish: &Span, stream: &str, sequence: u64, duplicate: bool) {
    if !publish.is_disabled() {
        publish
            .record("jetstream.stream", stream)
            .record("jetstream.sequence", sequence)
            .record("jetstream.duplicate", duplicate);
    }
}
