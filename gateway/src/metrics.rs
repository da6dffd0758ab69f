//! Prometheus series of one gateway instance: the `gateway_*` series and the legacy
//! `wsgateway_*` ones existing dashboards read. Labels are bounded sets (endpoint names, close
//! and rejection labels, reject reasons); nothing is labelled per tenant or per user.

use crate::auth::Endpoint;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabel {
    pub endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloseLabel {
    pub endpoint: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub connections: Family<EndpointLabel, Gauge>,
    pub connections_opened: Family<EndpointLabel, Counter>,
    pub connections_closed: Family<CloseLabel, Counter>,
    pub handshake_rejections: Family<ReasonLabel, Counter>,
    pub events_received: Counter,
    pub events_duplicate: Counter,
    pub events_invalid: Family<ReasonLabel, Counter>,
    pub events_unrouted: Counter,
    pub deliveries: Counter,
    pub deliveries_queued: Counter,
    pub deliveries_dropped: Family<ReasonLabel, Counter>,
    pub fanout_seconds: Histogram,
    pub delivery_latency_seconds: Histogram,
    pub client_messages: Family<KindLabel, Counter>,
    pub revocation_checks: Family<ResultLabel, Counter>,
    pub revocation_push_active: Gauge,
    pub revocation_push_closed: Counter,
    pub sector_lookups: Family<ResultLabel, Counter>,
    pub nats_subscriptions: Gauge,
    pub nats_connected: Gauge,
    pub nats_slow_consumers: Counter,
    pub nats_recovered_events: Counter,
    pub nats_recovery_incomplete: Counter,
    pub draining: Gauge,
    /// Catch-up requests refused because their caller or the replica had every place taken.
    pub catchup_refused: Family<ReasonLabel, Counter>,
    /// What the public and admin listeners refused or timed out.
    pub http: wire::http_server::HttpCounters,
    legacy_connections: Gauge,
    legacy_rejected: Family<ReasonLabel, Counter>,
    legacy_processed: Counter,
    legacy_dropped: Family<ReasonLabel, Counter>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let latency = || Histogram::new(exponential_buckets(0.0001, 2.0, 18));
        Metrics {
            registry: Registry::default(),
            connections: Family::default(),
            connections_opened: Family::default(),
            connections_closed: Family::default(),
            handshake_rejections: Family::default(),
            events_received: Counter::default(),
            events_duplicate: Counter::default(),
            events_invalid: Family::default(),
            events_unrouted: Counter::default(),
            deliveries: Counter::default(),
            deliveries_queued: Counter::default(),
            deliveries_dropped: Family::default(),
            fanout_seconds: latency(),
            delivery_latency_seconds: latency(),
            client_messages: Family::default(),
            revocation_checks: Family::default(),
            revocation_push_active: Gauge::default(),
            revocation_push_closed: Counter::default(),
            sector_lookups: Family::default(),
            nats_subscriptions: Gauge::default(),
            nats_connected: Gauge::default(),
            nats_slow_consumers: Counter::default(),
            nats_recovered_events: Counter::default(),
            nats_recovery_incomplete: Counter::default(),
            draining: Gauge::default(),
            catchup_refused: Family::default(),
            http: wire::http_server::HttpCounters::default(),
            legacy_connections: Gauge::default(),
            legacy_rejected: Family::default(),
            legacy_processed: Counter::default(),
            legacy_dropped: Family::default(),
        }
    }

    /// Registers every series; called once, after which [`Metrics::encode`] renders them.
    pub fn registered(mut self) -> Metrics {
        let r = &mut self.registry;
        r.register("gateway_connections", "Open WebSocket connections", self.connections.clone());
        r.register("gateway_connections_opened", "Connections accepted", self.connections_opened.clone());
        r.register("gateway_connections_closed", "Connections ended, by close reason", self.connections_closed.clone());
        r.register(
            "gateway_handshake_rejections",
            "Connections refused at the handshake, by reason",
            self.handshake_rejections.clone(),
        );
        r.register("gateway_events_received", "Events received from NATS", self.events_received.clone());
        r.register(
            "gateway_events_duplicate",
            "Events dropped as already seen within the de-duplication window",
            self.events_duplicate.clone(),
        );
        r.register("gateway_events_invalid", "Events refused by validation, by reason", self.events_invalid.clone());
        r.register(
            "gateway_events_unrouted",
            "Valid events that no open connection receives",
            self.events_unrouted.clone(),
        );
        r.register("gateway_deliveries", "Events written or queued to a connection", self.deliveries.clone());
        r.register(
            "gateway_deliveries_queued",
            "Of those, queued for the connection's task: its socket was busy or could not take them at once",
            self.deliveries_queued.clone(),
        );
        r.register(
            "gateway_deliveries_dropped",
            "Events not delivered to a connection, by reason",
            self.deliveries_dropped.clone(),
        );
        r.register(
            "gateway_fanout_seconds",
            "Time to route one event to every connection",
            self.fanout_seconds.clone(),
        );
        r.register(
            "gateway_delivery_latency_seconds",
            "Bridge receive (Bridge-Received-Us) to socket write",
            self.delivery_latency_seconds.clone(),
        );
        r.register("gateway_client_messages", "Client text frames, by kind", self.client_messages.clone());
        r.register(
            "gateway_revocation_checks",
            "Revocation look-ups in Redis, by result",
            self.revocation_checks.clone(),
        );
        r.register(
            "gateway_revocation_push_active",
            "1 while Redis keyspace notifications of revocations are subscribed and enabled",
            self.revocation_push_active.clone(),
        );
        r.register(
            "gateway_revocation_push_closed",
            "Staff connections closed because a pushed revocation notification found their token revoked",
            self.revocation_push_closed.clone(),
        );
        r.register("gateway_sector_lookups", "Waiter sector look-ups, by result", self.sector_lookups.clone());
        r.register("gateway_nats_subscriptions", "Tenant subscriptions held on NATS", self.nats_subscriptions.clone());
        r.register("gateway_nats_connected", "1 while the NATS connection is up", self.nats_connected.clone());
        r.register(
            "gateway_nats_slow_consumers",
            "NATS slow-consumer events (messages dropped by the client)",
            self.nats_slow_consumers.clone(),
        );
        r.register(
            "gateway_nats_recovered_events",
            "Events missed during a NATS reconnect and dispatched from the stream afterwards",
            self.nats_recovered_events.clone(),
        );
        r.register(
            "gateway_nats_recovery_incomplete",
            "Reconnect recoveries that could not read everything missed (stream unavailable or expired)",
            self.nats_recovery_incomplete.clone(),
        );
        r.register("gateway_draining", "1 while the instance drains", self.draining.clone());
        r.register(
            "gateway_catchup_refused",
            "Catch-up requests refused: the caller (caller_busy) or the replica (replica_busy) had every place taken",
            self.catchup_refused.clone(),
        );
        r.register(
            "gateway_http_refused_unfinished",
            "HTTP connections closed at accept: GATEWAY_HTTP_MAX_UNFINISHED were waiting for their request head",
            self.http.refused_unfinished.clone(),
        );
        r.register(
            "gateway_http_header_timeouts",
            "HTTP connections closed without a complete request head within GATEWAY_HTTP_HEADER_TIMEOUT",
            self.http.header_timeouts.clone(),
        );
        r.register("wsgateway_connections", "Legacy: open connections", self.legacy_connections.clone());
        r.register(
            "wsgateway_connections_rejected",
            "Legacy: connections rejected, by reason",
            self.legacy_rejected.clone(),
        );
        r.register("wsgateway_events_processed", "Legacy: events processed", self.legacy_processed.clone());
        r.register("wsgateway_events_dropped", "Legacy: events dropped, by reason", self.legacy_dropped.clone());
        self
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }

    pub fn connection_opened(&self, endpoint: &'static str) {
        self.connections_opened.get_or_create(&EndpointLabel { endpoint }).inc();
    }

    pub fn connection_closed(&self, endpoint: &'static str, reason: &'static str) {
        self.connections_closed.get_or_create(&CloseLabel { endpoint, reason }).inc();
    }

    /// Sets the open-connection gauges (`gateway_connections`, `wsgateway_connections`) from
    /// the registry's counts, indexed by `Endpoint as usize`. Called right before each scrape,
    /// so the gauges agree with admission (a client is counted once its `101` is on the way)
    /// instead of trailing it by the session task's start.
    pub fn set_connections(&self, per_endpoint: [usize; 4]) {
        for endpoint in Endpoint::ALL {
            let open = per_endpoint[endpoint as usize];
            self.connections.get_or_create(&EndpointLabel { endpoint: endpoint.as_str() }).set(open as i64);
        }
        self.legacy_connections.set(per_endpoint.iter().sum::<usize>() as i64);
    }

    pub fn rejected(&self, reason: &'static str) {
        self.handshake_rejections.get_or_create(&ReasonLabel { reason }).inc();
        self.legacy_rejected.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub fn event_processed(&self) {
        self.events_received.inc();
        self.legacy_processed.inc();
    }

    pub fn event_dropped(&self, reason: &'static str) {
        self.legacy_dropped.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub fn invalid_event(&self, reason: &'static str) {
        self.events_invalid.get_or_create(&ReasonLabel { reason }).inc();
        self.event_dropped(reason);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new().registered()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_new_and_legacy_series() {
        let m = Metrics::default();
        m.set_connections([1, 0, 0, 0]);
        m.rejected("auth_failed");
        m.invalid_event("not_json");
        let text = m.encode();
        for series in [
            "gateway_connections{endpoint=\"waiter\"} 1",
            "wsgateway_connections 1",
            "wsgateway_connections_rejected_total{reason=\"auth_failed\"} 1",
            "gateway_events_invalid_total{reason=\"not_json\"} 1",
            "wsgateway_events_dropped_total{reason=\"not_json\"} 1",
        ] {
            assert!(text.contains(series), "{series} missing in\n{text}");
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
