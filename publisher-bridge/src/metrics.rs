//! The bridge's Prometheus series (`bridge_*`) and their registry. Every label set is bounded:
//! sources, dead-letter reasons and Redis connections are fixed enums. It does not serve HTTP
//! (see [`crate::http`]).

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::mapping::DlqReason;

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Source {
    Pubsub,
    Stream,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Pubsub => "pubsub",
            Source::Stream => "stream",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum RedisConn {
    Pubsub,
    Stream,
}

impl RedisConn {
    pub fn as_str(self) -> &'static str {
        match self {
            RedisConn::Pubsub => "pubsub",
            RedisConn::Stream => "stream",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnLabel {
    pub connection: &'static str,
}

const LATENCY_BUCKETS: [f64; 16] =
    [0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0];

/// The `reason` label values of `bridge_events_dropped_total`: why JetStream refused a publish for
/// good (`sink::ack::Refused::permanent`; also the start of a `publish_refused` dead letter's
/// `Dlq-Error` header), or `other`.
pub const DROPPED_REASONS: [&str; 7] = [
    "message_too_large",
    "header_too_large",
    "expected_mismatch",
    "bad_request",
    "stream_sealed",
    "max_payload",
    "other",
];

pub struct Metrics {
    pub registry: Registry,
    /// What the HTTP listener refused or timed out.
    pub http: wire::http_server::HttpCounters,
    received: Family<SourceLabel, Counter>,
    /// The two `received` series, held so the hot path skips the family's lock and hash.
    received_by: [Counter; 2],
    pub published: Counter,
    pub duplicates: Counter,
    pub copies_skipped: Counter,
    dead_lettered: Family<ReasonLabel, Counter>,
    dropped: Family<ReasonLabel, Counter>,
    pub retries: Counter,
    pub conflicts: Counter,
    pub latency: Histogram,
    pub in_flight: Gauge,
    redis_connected: Family<ConnLabel, Gauge>,
    pub nats_connected: Gauge,
    pub stream_acked: Counter,
    pub stream_claimed: Counter,
    pub stream_pending: Gauge<u64, AtomicU64>,
    pub stream_read_bytes: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut m = Metrics {
            http: wire::http_server::HttpCounters::default(),
            registry: Registry::default(),
            received: Family::default(),
            received_by: Default::default(),
            published: Counter::default(),
            duplicates: Counter::default(),
            copies_skipped: Counter::default(),
            dead_lettered: Family::default(),
            dropped: Family::default(),
            retries: Counter::default(),
            conflicts: Counter::default(),
            // 1-2-5 steps from 100 µs to 5 s, so the 5 ms target is a bucket bound.
            latency: Histogram::new(LATENCY_BUCKETS),
            in_flight: Gauge::default(),
            redis_connected: Family::default(),
            nats_connected: Gauge::default(),
            stream_acked: Counter::default(),
            stream_claimed: Counter::default(),
            stream_pending: Gauge::default(),
            stream_read_bytes: Gauge::default(),
        };
        // Pre-create every label value so dashboards see zeros rather than missing series.
        for source in [Source::Pubsub, Source::Stream] {
            m.received_by[source as usize] = m.received.get_or_create(&SourceLabel { source: source.as_str() }).clone();
        }
        for reason in DlqReason::all() {
            let _ = m.dead_lettered.get_or_create(&ReasonLabel { reason: reason.as_str() });
        }
        for reason in DROPPED_REASONS {
            let _ = m.dropped.get_or_create(&ReasonLabel { reason });
        }
        for connection in [RedisConn::Pubsub, RedisConn::Stream] {
            let _ = m.redis_connected.get_or_create(&ConnLabel { connection: connection.as_str() });
        }
        m.register()
    }

    fn register(mut self) -> Metrics {
        let r = &mut self.registry;
        r.register("bridge_received", "Events read from Redis, by source", self.received.clone());
        r.register(
            "bridge_http_refused_unfinished",
            "HTTP connections closed at accept: BRIDGE_HTTP_MAX_UNFINISHED were waiting for their request head",
            self.http.refused_unfinished.clone(),
        );
        r.register(
            "bridge_http_header_timeouts",
            "HTTP connections closed without a complete request head within BRIDGE_HTTP_HEADER_TIMEOUT",
            self.http.header_timeouts.clone(),
        );
        r.register("bridge_published", "Events newly stored in the EVENTS stream", self.published.clone());
        r.register(
            "bridge_duplicates",
            "Copies of an event not stored again: extra pub/sub copies this bridge skipped, and publishes JetStream acknowledged as duplicates",
            self.duplicates.clone(),
        );
        r.register(
            "bridge_pubsub_copies_skipped",
            "Pub/sub copies of an event this bridge took within the last seconds, skipped without a publish",
            self.copies_skipped.clone(),
        );
        r.register("bridge_dead_lettered", "Events stored in EVENTS_DLQ, by reason", self.dead_lettered.clone());
        r.register(
            "bridge_events_dropped",
            "Events given up on: JetStream refused even their dead letter for good, by refusal",
            self.dropped.clone(),
        );
        r.register(
            "bridge_publish_retries",
            "JetStream publishes retried after an error or timeout",
            self.retries.clone(),
        );
        r.register(
            "bridge_publish_conflicts",
            "Publishes retried because JetStream was still storing the same event from another publisher (another bridge replica)",
            self.conflicts.clone(),
        );
        r.register(
            "bridge_publish_latency_seconds",
            "From receipt from Redis to JetStream acknowledgement",
            self.latency.clone(),
        );
        r.register("bridge_in_flight", "Publishes waiting for a JetStream acknowledgement", self.in_flight.clone());
        r.register(
            "bridge_redis_connected",
            "1 when the Redis connection is up, by connection",
            self.redis_connected.clone(),
        );
        r.register("bridge_nats_connected", "1 when the NATS connection is up", self.nats_connected.clone());
        r.register(
            "bridge_stream_acked",
            "Redis stream entries acknowledged (XACK) after JetStream stored them",
            self.stream_acked.clone(),
        );
        r.register(
            "bridge_stream_claimed",
            "Redis stream entries taken over from idle consumers (XAUTOCLAIM)",
            self.stream_claimed.clone(),
        );
        r.register(
            "bridge_stream_pending",
            "Entries pending in the bridge's Redis consumer group (sampled)",
            self.stream_pending.clone(),
        );
        r.register(
            "bridge_stream_read_bytes",
            "Bytes of stream entries read and not yet finished, sampled at each read (bounded by BRIDGE_READ_MAX_BYTES)",
            self.stream_read_bytes.clone(),
        );
        self
    }

    pub fn received(&self, source: Source) {
        self.received_by[source as usize].inc();
    }

    pub fn dead_lettered(&self, reason: DlqReason) {
        self.dead_lettered.get_or_create(&ReasonLabel { reason: reason.as_str() }).inc();
    }

    pub fn dropped(&self, reason: &'static str) {
        self.dropped.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub fn set_redis_connected(&self, connection: RedisConn, up: bool) {
        self.redis_connected.get_or_create(&ConnLabel { connection: connection.as_str() }).set(up as i64);
    }

    pub fn observe_latency(&self, latency: Duration) {
        self.latency.observe(latency.as_secs_f64());
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8192);
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_every_series_with_zeros() {
        let m = Metrics::new();
        m.received(Source::Stream);
        m.dead_lettered(DlqReason::BadChannel);
        let text = m.encode();
        for needle in [
            "bridge_received_total{source=\"stream\"} 1",
            "bridge_received_total{source=\"pubsub\"} 0",
            "bridge_dead_lettered_total{reason=\"bad_channel\"} 1",
            "bridge_dead_lettered_total{reason=\"too_large\"} 0",
            "bridge_dead_lettered_total{reason=\"publish_refused\"} 0",
            "bridge_events_dropped_total{reason=\"message_too_large\"} 0",
            "bridge_published_total 0",
            "bridge_duplicates_total 0",
            "bridge_publish_retries_total 0",
            "bridge_publish_latency_seconds_bucket",
            "bridge_in_flight 0",
            "bridge_redis_connected{connection=\"pubsub\"} 0",
            "bridge_nats_connected 0",
        ] {
            assert!(text.contains(needle), "{needle} missing:\n{text}");
        }
    }

    /// Every series this registry exposes has a row in README's metrics table ("Observe").
    #[test]
    fn readme_documents_every_series() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).expect("README.md");
        let text = Metrics::default().encode();
        assert!(text.matches("# TYPE ").count() >= 10, "{text}");
        let missing = testkit::undocumented_series(&text, &readme);
        assert!(missing.is_empty(), "README's metrics table lacks {missing:?}");
    }
}
