//! From one received Redis event to one stored JetStream message: maps the event
//! ([`crate::mapping`]), skips a pub/sub copy of an event this bridge already took within
//! [`COPY_WINDOW`] (the backend publishes one event on several channels: each extra copy would
//! cost a publish for JetStream to refuse), takes an in-flight slot (bounding memory and
//! backpressuring the sources), builds the headers (the trace context of the event's publish
//! span among them) and hands the publish, in arrival order, to the sink's [`Deliveries`], which
//! sees it acknowledged, retried or dead-lettered. The payload bytes are never re-serialised. It
//! reads no Redis and no acknowledgement.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use bytes::Bytes;
use tokio::sync::{mpsc, Semaphore};
use tracing::Span;
use wire::dedup::Dedup;
use wire::headers;
use wire::subject::{dlq_subject, EventSubject};

use crate::budget::Charge;
use crate::health::Health;
use crate::mapping::{self, Channel, DlqReason, Via};
use crate::metrics::{Metrics, Source};
use crate::sink::deliveries::{Deliveries, Delivery, Slot, DLQ_TRUNCATED};
use crate::sink::jetstream::Outgoing;

/// How long this bridge remembers the events it took, to skip their further pub/sub copies
/// (remembered between one and two windows). The copies of one event arrive within
/// milliseconds; JetStream's own duplicate window still covers anything later.
pub const COPY_WINDOW: Duration = Duration::from_secs(2);
/// Where an event was read.
#[derive(Debug, Clone)]
pub enum Origin {
    /// A contract channel.
    PubSub(Channel),
    /// A channel the patterns matched but the contract does not know ([`Channel::parse`]): its
    /// name escaped and cut for the header ([`crate::header::escape`]).
    BadChannel(Box<str>),
    Stream {
        key: Arc<str>,
        id: String,
    },
}

impl Origin {
    /// The origin of a pub/sub message on the channel whose name is `len` bytes long, of which
    /// the reader kept `head`.
    pub fn pubsub(head: &[u8], len: usize) -> Origin {
        match (head.len() < len, Channel::parse(head)) {
            (false, Some(channel)) => Origin::PubSub(channel),
            _ => Origin::BadChannel(crate::header::escape(head, len, crate::header::MAX_VALUE).into()),
        }
    }

    /// The `Bridge-Source` header value: `pubsub:<channel>` or `stream:<key>:<entry id>`, only
    /// ever visible ASCII.
    pub fn header(&self) -> String {
        match self {
            Origin::PubSub(channel) => format!("pubsub:{channel}"),
            Origin::BadChannel(escaped) => format!("pubsub:{escaped}"),
            Origin::Stream { key, id } => {
                let source = format!("stream:{key}:{id}");
                if crate::header::is_safe(source.as_bytes()) && source.len() <= 2 * crate::header::MAX_VALUE {
                    source
                } else {
                    crate::header::escape(source.as_bytes(), source.len(), 2 * crate::header::MAX_VALUE)
                }
            }
        }
    }
}

/// One event as read from Redis.
#[derive(Debug)]
pub struct Incoming {
    pub payload: Bytes,
    pub origin: Origin,
    /// Set by the source when it already knows the event is refused (a stream entry without
    /// data, a bad channel, a payload cut by the reader).
    pub refused: Option<DlqReason>,
    /// The payload's real length when the reader kept only its head.
    pub cut_from: Option<usize>,
    /// The stream reads' budget held by this entry, released when its publish is finished.
    pub charge: Option<Charge>,
    pub received: Instant,
    pub received_us: u64,
    /// The event's receive span, started now (`Span::none()` without trace export).
    pub span: Span,
}

impl Incoming {
    pub fn new(payload: Bytes, origin: Origin) -> Incoming {
        let received_us = wire::clock::now_micros();
        let span = match &origin {
            _ if !wire::otel::enabled() => Span::none(),
            Origin::PubSub(channel) => crate::traces::receive("pubsub", &channel.to_string(), None),
            Origin::BadChannel(escaped) => crate::traces::receive("pubsub", escaped, None),
            Origin::Stream { key, id } => crate::traces::receive("stream", key, Some(id)),
        };
        let refused = matches!(origin, Origin::BadChannel(_)).then_some(DlqReason::BadChannel);
        Incoming { payload, origin, refused, cut_from: None, charge: None, received: Instant::now(), received_us, span }
    }

    /// An event `len` bytes long of which the reader kept `head`: a cut one is `too_large`
    /// (unless already refused for its channel) and keeps its head for the dead letter.
    pub fn read(head: Bytes, len: usize, origin: Origin) -> Incoming {
        let cut = (head.len() < len).then_some(len);
        let mut event = Incoming::new(head, origin);
        if cut.is_some() {
            event.cut_from = cut;
            event.refused = event.refused.or(Some(DlqReason::Invalid(wire::envelope::Reject::TooLarge)));
        }
        event
    }
}

pub struct Pipeline {
    deliveries: Arc<Deliveries>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    permits: Arc<Semaphore>,
    /// Digests of the valid events taken recently, from either source.
    taken: Mutex<Dedup>,
}

impl Pipeline {
    /// At most `max_in_flight` publishes wait for their acknowledgement at once.
    pub fn new(
        deliveries: Arc<Deliveries>,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
        max_in_flight: usize,
    ) -> Pipeline {
        Pipeline {
            deliveries,
            metrics,
            health,
            permits: Arc::new(Semaphore::new(max_in_flight)),
            taken: Mutex::new(Dedup::new(COPY_WINDOW, Instant::now())),
        }
    }

    /// Takes the event; returns once its publish is enqueued (waiting first for an in-flight slot)
    /// or the event was found to be a copy. When JetStream has stored it, a stream entry's id is
    /// sent to `ack`.
    pub async fn submit(self: &Arc<Self>, mut event: Incoming, ack: Option<mpsc::Sender<String>>) {
        let (source, via) = match &event.origin {
            Origin::PubSub(channel) => (Source::Pubsub, Via::Channel(*channel)),
            Origin::BadChannel(_) => (Source::Pubsub, Via::Stream),
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
        if self.metrics.in_flight.inc() == 0 {
            // Idle until now: the stall clock starts here, not at the last acknowledgement.
            self.health.progressed();
        }
        let slot = Slot::new(permit, self.metrics.clone());
        let receive = std::mem::replace(&mut event.span, Span::none());
        let refused = routed.as_ref().err().copied();
        let (out, publish) = self.outgoing(&event, routed, &digest, &receive);
        let xack = match (ack, event.origin) {
            (Some(ack), Origin::Stream { id, .. }) => Some((ack, id)),
            _ => None,
        };
        let delivery = Delivery::new(out, publish, refused, event.received, xack, event.charge.take(), slot);
        self.deliveries.send(delivery).await;
        drop(receive);
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
                h.insert(headers::DLQ_AT, crate::header::now_rfc3339());
                let mut payload = event.payload.clone();
                if let Some(len) = event.cut_from {
                    h.insert(DLQ_TRUNCATED, len.to_string());
                }
                let limit = self.deliveries.dlq_payload_limit();
                if payload.len() > limit {
                    if event.cut_from.is_none() {
                        h.insert(DLQ_TRUNCATED, payload.len().to_string());
                    }
                    payload.truncate(limit);
                }
                (Outgoing { subject, headers: h, payload }, publish)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_header_names_channel_or_entry() {
        let pubsub = |name: &[u8]| Origin::pubsub(name, name.len()).header();
        assert_eq!(pubsub(b"branch:1:admin"), "pubsub:branch:1:admin");
        assert_eq!(
            Origin::Stream { key: "events:critical".into(), id: "1-2".into() }.header(),
            "stream:events:critical:1-2"
        );
        assert!(crate::header::now_rfc3339().ends_with('Z'));
    }

    #[test]
    fn bad_channels_get_a_safe_bounded_source() {
        let pubsub = |name: &[u8]| Origin::pubsub(name, name.len());
        let injected = pubsub(b"branch:1:waiters\r\nX-Injected: yes");
        assert!(matches!(injected, Origin::BadChannel(_)));
        assert_eq!(injected.header(), "pubsub:branch:1:waiters\\x0d\\x0aX-Injected:\\x20yes");
        let huge = pubsub(&vec![b'x'; 65_536]).header();
        assert!(huge.len() <= 7 + crate::header::MAX_VALUE && huge.ends_with("...[65536B]"), "{huge}");
        // Cut by the reader: a prefix that parses is still refused.
        let cut = Origin::pubsub(b"session:1", 2_000_000);
        assert_eq!(cut.header(), "pubsub:session:1...[2000000B]");
        let incoming = Incoming::new(Bytes::new(), cut);
        assert_eq!(incoming.refused, Some(DlqReason::BadChannel));
        let weird = Origin::Stream { key: "events:critical".into(), id: "1-2\r\nX: y".into() }.header();
        assert!(crate::header::is_escaped(&weird), "{weird}");
    }

    #[test]
    fn cut_payloads_are_too_large() {
        let origin = Origin::pubsub(b"branch:1:waiters", 16);
        let event = Incoming::read(Bytes::from_static(b"{\"type\""), 70_000, origin);
        assert_eq!(event.refused.map(DlqReason::as_str), Some("too_large"));
        assert_eq!(event.cut_from, Some(70_000));
    }
}
