//! Names of the NATS message headers the bridge writes and the gateway reads.
//!
//! Reading a standard `Nats-*` header with async-nats needs its constant
//! (`async_nats::header::NATS_SEQUENCE`): `HeaderMap::get` with a `&str` builds a custom header
//! name that never equals the standard one the parser produced.

/// JetStream de-duplication key: hex digest of the exact payload bytes.
pub const MSG_ID: &str = "Nats-Msg-Id";
/// Stream sequence of a re-published message (set by JetStream RePublish).
pub const SEQUENCE: &str = "Nats-Sequence";
/// Where the bridge read the event: `pubsub:<channel>` or `stream:<key>:<entry id>`.
pub const SOURCE: &str = "Bridge-Source";
/// Unix time in microseconds at which the bridge received the event from Redis.
pub const RECEIVED_AT: &str = "Bridge-Received-Us";
/// Why an event was dead-lettered (an [`crate::envelope::Reject`] reason).
pub const DLQ_REASON: &str = "Dlq-Reason";
/// RFC 3339 time at which the event was dead-lettered.
pub const DLQ_AT: &str = "Dlq-At";
/// W3C trace context of the bridge's publish span (see `otel::propagation`).
pub const TRACEPARENT: &str = "traceparent";
/// W3C vendor trace state, carried with [`TRACEPARENT`].
pub const TRACESTATE: &str = "tracestate";
