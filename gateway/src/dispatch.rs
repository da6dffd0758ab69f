//! From one NATS message to connections: checks the subject and the envelope again (the
//! gateway trusts no publisher), drops what the de-duplication window has seen, and fans out to
//! the tenant's connections (see `outlet`). Payload bytes go to clients exactly as published.

use crate::metrics::{Metrics, ReasonLabel};
use crate::registry::{QueuedEvent, Registry};
use crate::routing::EventScope;
use bytes::Bytes;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tungstenite::Utf8Bytes;
use wire::dedup::Dedup;
use wire::envelope;
use wire::subject::EventSubject;

/// What the headers of a message tell: when the bridge received it, its stream sequence and
/// when the stream stored it (unix nanoseconds).
#[derive(Debug, Clone, Copy, Default)]
pub struct Meta {
    pub received_us: Option<u64>,
    pub sequence: Option<u64>,
    pub stored_ns: Option<u64>,
}

/// What became of one message (tests and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Delivered(u64),
    Duplicate,
    Invalid(&'static str),
}

impl Outcome {
    /// The `outcome` of the routing span.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Delivered(_) => "delivered",
            Outcome::Duplicate => "duplicate",
            Outcome::Invalid(_) => "invalid",
        }
    }

    /// Why an event was refused.
    pub fn reason(self) -> Option<&'static str> {
        match self {
            Outcome::Invalid(reason) => Some(reason),
            _ => None,
        }
    }
}

pub struct Dispatcher {
    registry: Arc<Registry>,
    dedup: Mutex<Dedup>,
    metrics: Arc<Metrics>,
}

impl Dispatcher {
    pub fn new(registry: Arc<Registry>, dedup_window: Duration, metrics: Arc<Metrics>) -> Dispatcher {
        Dispatcher { registry, dedup: Mutex::new(Dedup::new(dedup_window, Instant::now())), metrics }
    }

    /// [`Dispatcher::dispatch`] inside the event's routing span (a child of the trace context in
    /// `headers`, when traces are exported).
    pub fn dispatch_traced(
        &self,
        tenant_id: u64,
        subject: &str,
        payload: Bytes,
        meta: Meta,
        headers: Option<&async_nats::HeaderMap>,
    ) -> Outcome {
        let span = crate::traces::route(subject, tenant_id, headers, meta.sequence);
        let outcome = span.in_scope(|| self.dispatch(tenant_id, subject, payload, meta));
        crate::traces::routed(&span, outcome.label(), outcome.reason());
        outcome
    }

    /// Handles a message received on the subscription of `tenant_id`.
    pub fn dispatch(&self, tenant_id: u64, subject: &str, payload: Bytes, meta: Meta) -> Outcome {
        self.metrics.event_processed();
        let outcome = self.route(tenant_id, subject, payload, meta);
        match outcome {
            Outcome::Invalid(reason) => {
                self.metrics.invalid_event(reason);
                if let Some(held_back) = crate::telemetry::BAD_EVENTS.allow_with_count() {
                    tracing::warn!(subject, reason, held_back, "event refused");
                }
            }
            Outcome::Duplicate => {
                self.metrics.events_duplicate.inc();
                self.metrics.event_dropped("duplicate");
            }
            Outcome::Delivered(0) => {
                self.metrics.events_unrouted.inc();
            }
            Outcome::Delivered(n) => {
                self.metrics.deliveries.inc_by(n);
            }
        }
        outcome
    }

    fn route(&self, tenant_id: u64, subject: &str, payload: Bytes, meta: Meta) -> Outcome {
        let Some(subject) = EventSubject::parse(subject).filter(|s| s.tenant_id == tenant_id) else {
            return Outcome::Invalid("bad_subject");
        };
        let envelope = match envelope::parse(&payload) {
            Ok(e) => e,
            Err(reject) => return Outcome::Invalid(reject.reason()),
        };
        if envelope.tenant_id != tenant_id {
            return Outcome::Invalid("tenant_mismatch");
        }
        let Ok(text) = Utf8Bytes::try_from(payload) else {
            return Outcome::Invalid("not_utf8");
        };
        if !self.dedup.lock().expect("dedup lock").first_sighting(Dedup::digest(text.as_bytes()), Instant::now()) {
            return Outcome::Duplicate;
        }
        let scope = EventScope::of(&subject, &envelope);
        let Some(tenant) = self.registry.tenant(tenant_id) else {
            return Outcome::Delivered(0);
        };
        let started = Instant::now();
        let span = crate::traces::fan_out();
        let fanout = span.in_scope(|| {
            tenant.fan_out(&scope, &Arc::new(QueuedEvent::new(text, meta.received_us, meta.sequence, meta.stored_ns)))
        });
        self.metrics.fanout_seconds.observe(started.elapsed().as_secs_f64());
        self.metrics.deliveries_queued.inc_by(fanout.delivered - fanout.written);
        // The queued ones are observed by their connection's task, when written.
        if let Some(received) = meta.received_us.filter(|us| *us > 0 && fanout.written > 0) {
            let latency = wire::clock::now_micros().saturating_sub(received) as f64 / 1e6;
            for _ in 0..fanout.written {
                self.metrics.delivery_latency_seconds.observe(latency);
            }
        }
        if !span.is_disabled() {
            span.record("recipients", fanout.delivered)
                .record("written", fanout.written)
                .record("queue_full", fanout.queue_full);
        }
        if fanout.queue_full > 0 {
            self.metrics
                .deliveries_dropped
                .get_or_create(&ReasonLabel { reason: "queue_full" })
                .inc_by(fanout.queue_full);
            if let Some(held_back) = crate::telemetry::SLOW_CLIENTS.allow_with_count() {
                tracing::warn!(
                    tenant_id,
                    closed = fanout.queue_full,
                    held_back,
                    "outbound queue full: closing slow clients"
                );
            }
        }
        Outcome::Delivered(fanout.delivered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Endpoint;
    use crate::registry::{Capacity, ConnKey};
    use crate::routing::Audience;

    fn setup() -> (Dispatcher, Arc<Registry>) {
        let registry = Arc::new(Registry::new(Capacity { total: 100, per_user: 3, per_session: 12 }, 16));
        (Dispatcher::new(registry.clone(), Duration::from_secs(60), Arc::new(Metrics::default())), registry)
    }

    fn manager_on_waiter(registry: &Arc<Registry>) -> crate::registry::Registration {
        let audience =
            Audience::Staff { tenant_id: 3, branch_ids: vec![7].into(), endpoint: Endpoint::Waiter, admin_view: true };
        registry.admit(Endpoint::Waiter, audience, ConnKey::User { tenant_id: 3, user_id: 1 }, Arc::from([])).unwrap()
    }

    #[test]
    fn the_same_text_on_three_subjects_is_delivered_once() {
        let (d, registry) = setup();
        let reg = manager_on_waiter(&registry);
        let event =
            Bytes::from_static(br#"{"type":"ROUND_READY","tenant_id":3,"branch_id":7,"sector_id":2,"session_id":9}"#);
        assert_eq!(d.dispatch(3, "live.3.7.kitchen", event.clone(), Meta::default()), Outcome::Delivered(1));
        assert_eq!(d.dispatch(3, "live.3.7.waiters", event.clone(), Meta::default()), Outcome::Duplicate);
        assert_eq!(d.dispatch(3, "live.3.7.admin", event.clone(), Meta::default()), Outcome::Duplicate);
        assert_eq!(reg.conn.outlet.try_recv().unwrap().payload.as_bytes(), &event[..], "bytes unchanged");
        assert!(reg.conn.outlet.try_recv().is_none());
    }

    #[test]
    fn refuses_what_does_not_belong() {
        let (d, registry) = setup();
        let reg = manager_on_waiter(&registry);
        let other_tenant = Bytes::from_static(br#"{"type":"ROUND_READY","tenant_id":4,"branch_id":7}"#);
        assert_eq!(
            d.dispatch(3, "live.3.7.waiters", other_tenant, Meta::default()),
            Outcome::Invalid("tenant_mismatch")
        );
        let valid = Bytes::from_static(br#"{"type":"ROUND_READY","tenant_id":3,"branch_id":7}"#);
        assert_eq!(d.dispatch(3, "live.4.7.waiters", valid.clone(), Meta::default()), Outcome::Invalid("bad_subject"));
        assert_eq!(
            d.dispatch(3, "live.3.7.waiters", Bytes::from_static(b"[1]"), Meta::default()),
            Outcome::Invalid("not_object")
        );
        assert_eq!(
            d.dispatch(
                3,
                "live.3.7.waiters",
                Bytes::from_static(b"{\"type\":\"X\",\"tenant_id\":3,\"x\":\"\xff\"}"),
                Meta::default()
            ),
            Outcome::Invalid("not_json")
        );
        assert!(reg.conn.outlet.try_recv().is_none());
        assert_eq!(
            d.dispatch(3, "live.3.7.waiters", valid, Meta::default()),
            Outcome::Delivered(1),
            "the next valid event still flows"
        );
    }

    #[test]
    fn a_full_queue_is_counted_as_a_drop_and_closes_the_connection() {
        let registry = Arc::new(Registry::new(Capacity { total: 10, per_user: 3, per_session: 12 }, 1));
        let metrics = Arc::new(Metrics::default());
        let d = Dispatcher::new(registry.clone(), Duration::from_secs(60), metrics.clone());
        let reg = manager_on_waiter(&registry);
        let event = |n: u32| Bytes::from(format!(r#"{{"type":"ROUND_READY","tenant_id":3,"branch_id":7,"n":{n}}}"#));
        assert_eq!(d.dispatch(3, "live.3.7.waiters", event(1), Meta::default()), Outcome::Delivered(1));
        assert_eq!(
            d.dispatch(3, "live.3.7.waiters", event(2), Meta::default()),
            Outcome::Delivered(0),
            "the queue of one is full"
        );
        assert!(reg.conn.control.is_closing());
        assert!(
            metrics.encode().contains("gateway_deliveries_dropped_total{reason=\"queue_full\"} 1"),
            "{}",
            metrics.encode()
        );
    }

    #[test]
    fn a_missing_branch_comes_from_the_subject() {
        let (d, registry) = setup();
        let _reg = manager_on_waiter(&registry);
        let event = Bytes::from_static(br#"{"type":"ROUND_READY","tenant_id":3}"#);
        assert_eq!(d.dispatch(3, "live.3.7.waiters", event, Meta::default()), Outcome::Delivered(1));
    }
}
