//! Which tenants this replica listens to on NATS. The first connection of a tenant subscribes to
//! `live.<tenant>.>` and is admitted once the server confirmed the subscription with a real
//! round trip ([`recovery::round_trip`]); what the stream stored after that confirmation and
//! before the first live message is re-read, as after a reconnect. The subscription outlives
//! the tenant's last connection by a delay, so a reconnecting client does not churn it. Never a
//! wildcard over all tenants. Each subscription's task hands messages to the dispatcher, inside
//! the event's routing span when traces are exported. After the NATS connection comes back, a
//! task first dispatches what it missed meanwhile from the stream ([`crate::recovery`]), then
//! reads live messages again.

use crate::dispatch::{Dispatcher, Meta};
use crate::metrics::Metrics;
use crate::recovery::{self, Link, Position};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use wire::subject::live_tenant_filter;

/// How long a handshake waits for the server to confirm a new subscription.
const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// A confirmation later than this may come after a handshake stopped waiting for it: the seam
/// is then re-read by time from the subscription's start instead of from the confirmation.
const CONFIRMED_IN_TIME: Duration = Duration::from_secs(4);

struct Slot {
    holders: usize,
    /// Bumped each time `holders` drops to zero; a delayed unsubscribe only runs if it still matches.
    idle_epoch: u64,
    ready: watch::Receiver<bool>,
    stop: CancellationToken,
}

pub struct Subscriptions {
    client: async_nats::Client,
    dispatcher: Arc<Dispatcher>,
    delay: Duration,
    slots: Mutex<HashMap<u64, Slot>>,
    metrics: Arc<Metrics>,
    link: Link,
}

/// Keeps a tenant subscribed; dropping the last lease schedules the unsubscribe.
pub struct Lease {
    subscriptions: Arc<Subscriptions>,
    tenant_id: u64,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.subscriptions.release(self.tenant_id);
    }
}

impl Subscriptions {
    /// `link` is fed by the NATS client's event callback.
    pub fn new(
        client: async_nats::Client,
        link: Link,
        dispatcher: Arc<Dispatcher>,
        delay: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Subscriptions { client, dispatcher, delay, slots: Mutex::default(), metrics, link }
    }

    /// Holds `tenant_id` subscribed, subscribing first if needed.
    pub async fn acquire(self: &Arc<Self>, tenant_id: u64) -> Lease {
        let mut ready = {
            let mut slots = self.slots.lock().expect("subscriptions lock");
            let slot = slots.entry(tenant_id).or_insert_with(|| self.start(tenant_id));
            slot.holders += 1;
            slot.ready.clone()
        };
        let lease = Lease { subscriptions: self.clone(), tenant_id };
        if tokio::time::timeout(READY_TIMEOUT, ready.wait_for(|ready| *ready)).await.is_err() {
            tracing::warn!(tenant_id, "NATS has not confirmed the tenant subscription yet: events flow once it has");
        }
        lease
    }

    /// Tenants currently subscribed.
    pub fn tenants(&self) -> Vec<u64> {
        let mut tenants: Vec<u64> = self.slots.lock().expect("subscriptions lock").keys().copied().collect();
        tenants.sort_unstable();
        tenants
    }

    fn start(self: &Arc<Self>, tenant_id: u64) -> Slot {
        let (ready_tx, ready) = watch::channel(false);
        let stop = CancellationToken::new();
        self.metrics.nats_subscriptions.inc();
        tokio::spawn(self.clone().listen(tenant_id, ready_tx, stop.clone()));
        Slot { holders: 0, idle_epoch: 0, ready, stop }
    }

    fn release(self: &Arc<Self>, tenant_id: u64) {
        let mut slots = self.slots.lock().expect("subscriptions lock");
        let Some(slot) = slots.get_mut(&tenant_id) else { return };
        slot.holders -= 1;
        if slot.holders > 0 {
            return;
        }
        slot.idle_epoch += 1;
        let epoch = slot.idle_epoch;
        let this = self.clone();
        let delayed = async move {
            tokio::time::sleep(this.delay).await;
            let mut slots = this.slots.lock().expect("subscriptions lock");
            if slots.get(&tenant_id).is_some_and(|s| s.holders == 0 && s.idle_epoch == epoch) {
                let slot = slots.remove(&tenant_id).expect("checked above");
                slot.stop.cancel();
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(delayed)),
            Err(_) => {
                if let Some(slot) = slots.remove(&tenant_id) {
                    slot.stop.cancel();
                }
            }
        }
    }

    async fn listen(self: Arc<Self>, tenant_id: u64, ready: watch::Sender<bool>, stop: CancellationToken) {
        let subject = live_tenant_filter(tenant_id);
        let mut link = self.link.watch();
        let mut leaders = self.link.watch_leaders();
        let mut position = Position::new(&self.client);
        let started = (tokio::time::Instant::now(), SystemTime::now());
        let mut backoff = wire::backoff::Backoff::reconnect();
        let mut subscriber = loop {
            match self.client.subscribe(subject.clone()).await {
                Ok(s) => break s,
                Err(error) => {
                    tracing::error!(tenant_id, %error, "cannot subscribe to {subject}; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => {
                            self.metrics.nats_subscriptions.dec();
                            return;
                        }
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                }
            }
        };
        // The server has the subscription once it answered a request written after it.
        let confirmed = loop {
            match recovery::round_trip(&self.client).await {
                Ok(last) => break last,
                Err(error) => {
                    tracing::warn!(tenant_id, %error, "NATS has not confirmed the subscription to {subject}; asking again");
                    tokio::select! {
                        _ = stop.cancelled() => {
                            let _ = subscriber.unsubscribe().await;
                            self.metrics.nats_subscriptions.dec();
                            return;
                        }
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                }
            }
        };
        tracing::debug!(tenant_id, last_sequence = confirmed, "subscribed to {subject}");
        // Until the first live message (or, without one, after `SETTLE`), what the stream stored
        // after the confirmation is re-read: a subscription reaches the node that re-publishes
        // after the one this replica talks to. Without a stream there is nothing to re-read.
        let mut seam = confirmed.is_some();
        let mut since = None;
        if started.0.elapsed() < CONFIRMED_IN_TIME {
            position.last = confirmed;
        } else {
            since = Some(started.1);
        }
        let _ = ready.send(true);
        let mut settle = seam.then(|| tokio::time::Instant::now() + recovery::SETTLE);
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                // The sender lives as long as the client.
                Ok(()) = link.changed() => {
                    if position.reconnected(&self.client) {
                        seam = true;
                        since = *link.borrow();
                        settle.get_or_insert_with(|| tokio::time::Instant::now() + recovery::SETTLE);
                    }
                }
                Ok(()) = leaders.changed() => {
                    seam = true;
                    // Nothing dispatched yet: whatever the stream stored since the subscription.
                    since = since.or(Some(started.1));
                    settle.get_or_insert_with(|| tokio::time::Instant::now() + recovery::SETTLE);
                }
                _ = tokio::time::sleep_until(settle.unwrap_or_else(tokio::time::Instant::now)), if settle.is_some() => {
                    settle = None;
                    self.recover(tenant_id, &mut position, None, since).await;
                }
                message = subscriber.next() => match message {
                    Some(m) => {
                        // Standard NATS headers must be looked up by the library's constants: a `&str`
                        // key is always treated as a custom header and never matches them.
                        let value = |h: Option<&async_nats::HeaderValue>| h.and_then(|v| v.as_str().parse().ok());
                        let headers = m.headers.as_ref();
                        let meta = Meta {
                            received_us: value(headers.and_then(|h| h.get(wire::headers::RECEIVED_AT))),
                            sequence: value(headers.and_then(|h| h.get(async_nats::header::NATS_SEQUENCE))),
                            stored_ns: headers
                                .and_then(|h| h.get(async_nats::header::NATS_TIME_STAMP))
                                .and_then(|v| stored_ns(v.as_str())),
                        };
                        // The first message read after a reconnect came on the new connection:
                        // what was stored before it goes out first.
                        if position.reconnected(&self.client) {
                            seam = true;
                            since = *link.borrow();
                        }
                        if std::mem::take(&mut seam) {
                            settle = None;
                            self.recover(tenant_id, &mut position, meta.sequence, since).await;
                        }
                        if !position.admit(meta.sequence, meta.stored_ns) {
                            continue;
                        }
                        self.dispatcher.dispatch_traced(tenant_id, m.subject.as_str(), m.payload, meta, headers);
                    }
                    None => break,
                },
            }
        }
        let _ = subscriber.unsubscribe().await;
        self.metrics.nats_subscriptions.dec();
        tracing::debug!(tenant_id, "unsubscribed from {subject}");
    }

    /// Re-reads what this tenant missed before `until` (see [`recovery::Recovery`]).
    async fn recover(&self, tenant_id: u64, position: &mut Position, until: Option<u64>, since: Option<SystemTime>) {
        let recovery =
            recovery::Recovery { dispatcher: &self.dispatcher, metrics: &self.metrics, tenant_id, until, since };
        match recovery.run(&self.client, position).await {
            Ok(0) => {}
            Ok(recovered) => tracing::info!(
                tenant_id,
                recovered,
                "dispatched from the stream the events a new subscription or a NATS reconnect missed"
            ),
            Err(error) => {
                self.metrics.nats_recovery_incomplete.inc();
                tracing::warn!(tenant_id, %error, "the events a new subscription or a NATS reconnect missed could not be read from the stream");
            }
        }
    }
}

/// Unix nanoseconds of a `Nats-Time-Stamp` header (RFC 3339, as JetStream's re-publish writes it).
fn stored_ns(header: &str) -> Option<u64> {
    let time = time::OffsetDateTime::parse(header, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(time.unix_timestamp_nanos()).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_stored_time_of_a_re_published_message() {
        assert_eq!(super::stored_ns("2026-12-02T10:38:07.475607371Z"), Some(1_796_207_887_475_607_371));
        assert_eq!(super::stored_ns("2026-12-02T10:38:07.4756Z"), Some(1_796_207_887_475_600_000));
        assert_eq!(super::stored_ns("yesterday"), None);
    }
}
