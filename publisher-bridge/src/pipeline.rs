//! From one received Redis event to one stored JetStream message: maps the event
//! ([`crate::mapping`]), skips a pub/sub copy of an event this bridge already took within
//! [`COPY_WINDOW`] (the backend publishes one event on several channels: each extra copy would
//! cost a publish for JetStream to refuse), takes an in-flight slot (bounding memory and
//! backpressuring the sources), builds
//! the headers (the trace context of the event's publish span among them) and enqueues the
//! publish in arrival order, keeping it in [`InFlight`] under its reply token. One task,
//! [`Pipeline::confirm`], reads the acknowledgements: it records the metrics and hands a stream
//! entry's id to the Redis acker, hands whatever was refused or not acknowledged within the
//! publish timeout to a retrying task, and ends once the sources have stopped and nothing is in
//! flight. The payload bytes are never re-serialised. It does not read Redis.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::{HeaderMap, Message, Subscriber};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Span;
use wire::dedup::Dedup;
use wire::headers;
use wire::subject::{dlq_subject, EventSubject};

use crate::mapping::{self, DlqReason, Via};
use crate::metrics::{Metrics, Source};
use crate::retry::LogLimiter;
use crate::sink::ack::{self, Refused, Stored};
use crate::sink::inflight::InFlight;
use crate::sink::jetstream::{token_of, Outgoing, Publisher};

/// Header stating that a dead letter's payload was cut, with the original length in bytes.
pub const DLQ_TRUNCATED: &str = "Dlq-Truncated-From";
/// Room left for headers when sizing a dead letter against the stream's message limit.
const HEADER_ROOM: usize = 4096;
/// How long this bridge remembers the events it took, to skip their further pub/sub copies
/// (remembered between one and two windows). The copies of one event arrive within
/// milliseconds; JetStream's own duplicate window still covers anything later.
pub const COPY_WINDOW: Duration = Duration::from_secs(2);
/// How often [`Pipeline::confirm`] looks for publishes older than the publish timeout.
const SWEEP: Duration = Duration::from_millis(100);

/// Where an event was read.
#[derive(Debug, Clone)]
pub enum Origin {
    PubSub { channel: String },
    Stream { key: Arc<str>, id: String },
}

impl Origin {
    /// The `Bridge-Source` header value.
    pub fn header(&self) -> String {
        match self {
            Origin::PubSub { channel } => format!("pubsub:{channel}"),
            Origin::Stream { key, id } => format!("stream:{key}:{id}"),
        }
    }
}

/// One event as read from Redis.
#[derive(Debug)]
pub struct Incoming {
    pub payload: Bytes,
    pub origin: Origin,
    /// Set by the source when it already knows the event is refused (a stream entry without data).
    pub refused: Option<DlqReason>,
    pub received: Instant,
    pub received_us: u64,
    /// The event's receive span, started now (`Span::none()` without trace export).
    pub span: Span,
}

impl Incoming {
    pub fn new(payload: Bytes, origin: Origin) -> Incoming {
        let received_us = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0);
        let span = crate::traces::receive(&origin);
        Incoming { payload, origin, refused: None, received: Instant::now(), received_us, span }
    }
}

pub struct Pipeline {
    publisher: Arc<Publisher>,
    metrics: Arc<Metrics>,
    permits: Arc<Semaphore>,
    tracker: TaskTracker,
    dlq_payload_limit: usize,
    /// Digests of the valid events taken recently, from either source.
    taken: Mutex<Dedup>,
    in_flight: Mutex<InFlight<Pending>>,
    /// How long a publish waits for its acknowledgement before it is retried.
    publish_timeout: Duration,
}

/// A publish waiting for its acknowledgement, with everything needed to finish it.
struct Pending {
    out: Outgoing,
    /// The publish span, ended when this is dropped.
    publish: Span,
    refused: Option<DlqReason>,
    received: Instant,
    /// The acker and the stream entry id to acknowledge in Redis once stored.
    xack: Option<(mpsc::Sender<String>, String)>,
    _slot: Slot,
}

/// An in-flight slot: frees the permit and lowers the gauge when dropped.
struct Slot {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics.in_flight.dec();
    }
}

impl Pending {
    /// Records what JetStream did with it and hands a stream entry to the Redis acker.
    async fn stored(self, stored: Stored, metrics: &Metrics) {
        crate::traces::stored(&self.publish, &stored);
        if stored.duplicate {
            metrics.duplicates.inc();
        } else if let Some(reason) = self.refused {
            metrics.dead_lettered(reason);
        } else {
            metrics.published.inc();
        }
        metrics.observe_latency(self.received.elapsed());
        if let Some((ack, id)) = self.xack {
            // The acker only stops after every sender is gone, so this cannot fail except at
            // the very end of a timed-out shutdown.
            let _ = ack.send(id).await;
        }
    }
}

impl Pipeline {
    /// `dlq_max_msg_size` is the smaller of the DLQ stream's and the server's message limits.
    pub fn new(
        publisher: Arc<Publisher>,
        metrics: Arc<Metrics>,
        max_in_flight: usize,
        publish_timeout: Duration,
        tracker: TaskTracker,
        dlq_max_msg_size: usize,
    ) -> Pipeline {
        Pipeline {
            publisher,
            metrics,
            permits: Arc::new(Semaphore::new(max_in_flight)),
            tracker,
            dlq_payload_limit: dlq_max_msg_size.saturating_sub(HEADER_ROOM).max(1024),
            taken: Mutex::new(Dedup::new(COPY_WINDOW, Instant::now())),
            in_flight: Mutex::new(InFlight::default()),
            publish_timeout,
        }
    }

    /// Takes the event; returns once its publish is enqueued (waiting first for an in-flight slot)
    /// or the event was found to be a copy. When JetStream has stored it, a stream entry's id is
    /// sent to `ack`.
    pub async fn submit(&self, mut event: Incoming, ack: Option<mpsc::Sender<String>>) {
        let (source, via) = match &event.origin {
            Origin::PubSub { channel } => (Source::Pubsub, Via::Channel(channel)),
            Origin::Stream { .. } => (Source::Stream, Via::Stream),
        };
        self.metrics.received(source);
        let routed = match event.refused {
            Some(reason) => Err(reason),
            None => mapping::route(via, &event.payload),
        };
        let digest = mapping::Digest::of(&event.payload);
        // Only valid events: a text refused for a channel-dependent reason may be valid on
        // another channel. Stream entries are always published (their XACK waits for it).
        if routed.is_ok() {
            let first = self.taken.lock().expect("copy window lock").first_sighting(digest.short(), Instant::now());
            if !first && source == Source::Pubsub {
                self.metrics.duplicates.inc();
                self.metrics.copies_skipped.inc();
                crate::traces::mapped(&event.span, None);
                return;
            }
        }
        let permit = self.permits.clone().acquire_owned().await.expect("the in-flight semaphore is never closed");
        self.metrics.in_flight.inc();
        let slot = Slot { _permit: permit, metrics: self.metrics.clone() };
        let receive = std::mem::replace(&mut event.span, Span::none());
        let refused = routed.as_ref().err().copied();
        let (out, publish) = self.outgoing(&event, routed, &digest, &receive);
        let xack = match (ack, event.origin) {
            (Some(ack), Origin::Stream { id, .. }) => Some((ack, id)),
            _ => None,
        };
        // The copy kept in flight for a retry; `out` itself goes to the connection.
        let pending = Pending { out: out.clone(), publish, refused, received: event.received, xack, _slot: slot };
        let token = self.in_flight.lock().expect("in-flight lock").push(Instant::now(), pending);
        if let Err(error) = self.publisher.send(out, token).await {
            // Only when the connection is closed for good (at the very end of a shutdown): the
            // publish stays in flight and is retried when it times out.
            tracing::debug!(%error, "publish not sent");
        }
        drop(receive);
    }

    /// Reads the acknowledgements of [`Pipeline::submit`]'s publishes from `acks` until
    /// `sources_stopped` has fired and nothing is left in flight, or `abandon` fires.
    pub async fn confirm(
        self: Arc<Self>,
        mut acks: Subscriber,
        sources_stopped: CancellationToken,
        abandon: CancellationToken,
    ) {
        let mut sweep = tokio::time::interval(SWEEP);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let late = LogLimiter::new(Duration::from_secs(30));
        loop {
            tokio::select! {
                biased;
                _ = abandon.cancelled() => return,
                reply = acks.next() => match reply {
                    Some(reply) => self.acknowledged(reply, &late).await,
                    None => {
                        tracing::warn!("the acknowledgement subscription ended; the remaining publishes are retried");
                        self.expire(Duration::ZERO);
                        return;
                    }
                },
                _ = sweep.tick() => {
                    self.expire(self.publish_timeout);
                    if sources_stopped.is_cancelled() && self.in_flight.lock().expect("in-flight lock").is_empty() {
                        return;
                    }
                }
            }
        }
    }

    async fn acknowledged(&self, reply: Message, late: &LogLimiter) {
        let Some(token) = token_of(&reply.subject) else { return };
        let Some(pending) = self.in_flight.lock().expect("in-flight lock").take(token) else {
            // Its publish timed out and is being retried already.
            if let Some(held_back) = late.allow() {
                tracing::debug!(token, held_back, "acknowledgement after the publish timeout");
            }
            return;
        };
        match ack::read(&reply) {
            Ok(stored) => pending.stored(stored, &self.metrics).await,
            Err(refused) => self.retry(pending, refused),
        }
    }

    /// Hands every publish older than `timeout` to a retrying task.
    fn expire(&self, timeout: Duration) {
        let expired = self.in_flight.lock().expect("in-flight lock").expired(Instant::now(), timeout);
        for pending in expired {
            self.retry(pending, Refused::TimedOut);
        }
    }

    fn retry(&self, pending: Pending, failure: Refused) {
        let publisher = self.publisher.clone();
        let metrics = self.metrics.clone();
        self.tracker.spawn(async move {
            if let Some(stored) = publisher.retry(&pending.out, failure).await {
                pending.stored(stored, &metrics).await;
            }
        });
    }

    /// The message to publish and the publish span (a child of `receive`) whose trace context
    /// the headers carry.
    fn outgoing(
        &self,
        event: &Incoming,
        routed: Result<EventSubject, DlqReason>,
        digest: &mapping::Digest,
        receive: &Span,
    ) -> (Outgoing, Span) {
        let mut h = HeaderMap::new();
        h.insert(headers::SOURCE, event.origin.header());
        h.insert(headers::RECEIVED_AT, event.received_us.to_string());
        let subject = match &routed {
            Ok(subject) => subject.events(),
            Err(reason) => dlq_subject(reason.as_str()),
        };
        crate::traces::mapped(receive, routed.as_ref().err().map(|r| r.as_str()));
        let publish = crate::traces::publish(receive, &subject);
        wire::otel::propagation::inject(&publish, &mut h);
        let subject = subject.into();
        match routed {
            Ok(_) => {
                h.insert(headers::MSG_ID, digest.msg_id());
                (Outgoing { subject, headers: h, payload: event.payload.clone() }, publish)
            }
            Err(reason) => {
                h.insert(headers::MSG_ID, mapping::dlq_msg_id(reason, digest));
                h.insert(headers::DLQ_REASON, reason.as_str());
                h.insert(headers::DLQ_AT, now_rfc3339());
                let mut payload = event.payload.clone();
                if payload.len() > self.dlq_payload_limit {
                    h.insert(DLQ_TRUNCATED, payload.len().to_string());
                    payload.truncate(self.dlq_payload_limit);
                }
                (Outgoing { subject, headers: h, payload }, publish)
            }
        }
    }
}

pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_header_names_channel_or_entry() {
        assert_eq!(Origin::PubSub { channel: "branch:1:admin".into() }.header(), "pubsub:branch:1:admin");
        assert_eq!(
            Origin::Stream { key: "events:critical".into(), id: "1-2".into() }.header(),
            "stream:events:critical:1-2"
        );
        assert!(now_rfc3339().ends_with('Z'));
    }
}
