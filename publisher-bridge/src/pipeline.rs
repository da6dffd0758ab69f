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
use std::time::{Duration, Instant};

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

use crate::health::Health;
use crate::mapping::{self, Channel, DlqReason, Via};
use crate::metrics::{Metrics, Source};
use crate::sink::ack::{self, Refused, Stored};
use crate::sink::inflight::InFlight;
use crate::sink::jetstream::{token_of, Outcome, Outgoing, Publisher};
use crate::source::budget::Charge;
use crate::source::resp::Blob;
use wire::throttle::Throttle;

/// Header stating that a dead letter's payload was cut, with the original length in bytes.
pub const DLQ_TRUNCATED: &str = "Dlq-Truncated-From";
/// Header of a `publish_refused` dead letter: why JetStream refused the original publish
/// (`<reason>: <JetStream's words>`, escaped, at most [`crate::header::MAX_VALUE`] bytes).
pub const DLQ_ERROR: &str = "Dlq-Error";
/// Header of a `publish_refused` dead letter: the subject the event was refused on.
pub const DLQ_ORIGINAL_SUBJECT: &str = "Dlq-Original-Subject";
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
    /// The origin of a pub/sub message on the channel named `name` (as the reader kept it).
    pub fn pubsub(name: &Blob) -> Origin {
        match (name.is_cut(), Channel::parse(&name.head)) {
            (false, Some(channel)) => Origin::PubSub(channel),
            _ => Origin::BadChannel(crate::header::escape(&name.head, name.len, crate::header::MAX_VALUE).into()),
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

    /// An event whose payload the reader may have cut: a cut one is `too_large` (unless already
    /// refused for its channel) and keeps its head for the dead letter.
    pub fn from_blob(payload: Blob, origin: Origin) -> Incoming {
        let cut = payload.is_cut().then_some(payload.len);
        let mut event = Incoming::new(payload.head, origin);
        if cut.is_some() {
            event.cut_from = cut;
            event.refused = event.refused.or(Some(DlqReason::Invalid(wire::envelope::Reject::TooLarge)));
        }
        event
    }
}

pub struct Pipeline {
    publisher: Arc<Publisher>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    permits: Arc<Semaphore>,
    tracker: TaskTracker,
    dlq_payload_limit: usize,
    /// Digests of the valid events taken recently, from either source.
    taken: Mutex<Dedup>,
    in_flight: Mutex<InFlight<Pending>>,
    /// How long a publish waits for its acknowledgement before it is retried.
    publish_timeout: Duration,
    /// Warnings about publishes refused for good.
    refusals: Throttle,
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
    _charge: Option<Charge>,
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
    async fn stored(self, stored: Stored, metrics: &Metrics, health: &Health) {
        crate::traces::stored(&self.publish, &stored);
        if stored.duplicate {
            metrics.duplicates.inc();
        } else if let Some(reason) = self.refused {
            metrics.dead_lettered(reason);
        } else {
            metrics.published.inc();
        }
        metrics.observe_latency(self.received.elapsed());
        self.finish(health).await;
    }

    /// Gives up on it: counted, and a stream entry acknowledged all the same (re-reading it
    /// could only be refused again).
    async fn dropped(self, reason: &'static str, metrics: &Metrics, health: &Health) {
        metrics.dropped(reason);
        self.finish(health).await;
    }

    async fn finish(self, health: &Health) {
        health.progressed();
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
        health: Arc<Health>,
        max_in_flight: usize,
        publish_timeout: Duration,
        tracker: TaskTracker,
        dlq_max_msg_size: usize,
    ) -> Pipeline {
        Pipeline {
            publisher,
            metrics,
            health,
            permits: Arc::new(Semaphore::new(max_in_flight)),
            tracker,
            dlq_payload_limit: dlq_max_msg_size.saturating_sub(HEADER_ROOM).max(1024),
            taken: Mutex::new(Dedup::new(COPY_WINDOW, Instant::now())),
            in_flight: Mutex::new(InFlight::default()),
            publish_timeout,
            refusals: Throttle::every(Duration::from_secs(5)),
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
        let slot = Slot { _permit: permit, metrics: self.metrics.clone() };
        let receive = std::mem::replace(&mut event.span, Span::none());
        let refused = routed.as_ref().err().copied();
        let (out, publish) = self.outgoing(&event, routed, &digest, &receive);
        let xack = match (ack, event.origin) {
            (Some(ack), Origin::Stream { id, .. }) => Some((ack, id)),
            _ => None,
        };
        // The copy kept in flight for a retry; `out` itself goes to the connection.
        let pending = Pending {
            out: out.clone(),
            publish,
            refused,
            received: event.received,
            xack,
            _charge: event.charge.take(),
            _slot: slot,
        };
        let token = self.in_flight.lock().expect("in-flight lock").push(Instant::now(), pending);
        if let Err(error) = self.publisher.send(out, token).await {
            if error.kind() == async_nats::client::PublishErrorKind::MaxPayloadExceeded {
                // Never sent: nats-server would have closed the connection over it.
                if let Some(pending) = self.in_flight.lock().expect("in-flight lock").take(token) {
                    self.retry(pending, Refused::MaxPayload);
                }
            } else {
                // Only when the connection is closed for good (at the very end of a shutdown):
                // the publish stays in flight and is retried when it times out.
                tracing::debug!(%error, "publish not sent");
            }
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
        let late = Throttle::every(Duration::from_secs(30));
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

    async fn acknowledged(self: &Arc<Self>, reply: Message, late: &Throttle) {
        let Some(token) = token_of(&reply.subject) else { return };
        let Some(pending) = self.in_flight.lock().expect("in-flight lock").take(token) else {
            // Its publish timed out and is being retried already.
            if let Some(held_back) = late.allow_with_count() {
                tracing::debug!(token, held_back, "acknowledgement after the publish timeout");
            }
            return;
        };
        match ack::read(&reply) {
            Ok(stored) => pending.stored(stored, &self.metrics, &self.health).await,
            Err(refused) => self.retry(pending, refused),
        }
    }

    /// Hands every publish older than `timeout` to a retrying task.
    fn expire(self: &Arc<Self>, timeout: Duration) {
        let expired = self.in_flight.lock().expect("in-flight lock").expired(Instant::now(), timeout);
        for pending in expired {
            self.retry(pending, Refused::TimedOut);
        }
    }

    /// Retries a failed publish in a task of its own until it is stored; one refused for good
    /// becomes a `publish_refused` dead letter, and a dead letter refused for good is dropped.
    fn retry(self: &Arc<Self>, mut pending: Pending, failure: Refused) {
        let this = self.clone();
        self.tracker.spawn(async move {
            let mut outcome = this.publisher.retry(&pending.out, failure).await;
            if let Outcome::Refused(why) = &outcome {
                if pending.refused.is_none() {
                    this.warn_refused(&pending.out, why, "storing it as a publish_refused dead letter");
                    pending.out = this.refused_dead_letter(&pending.out, why);
                    pending.refused = Some(DlqReason::PublishRefused);
                    outcome = this.publisher.publish(&pending.out).await;
                }
            }
            match outcome {
                Outcome::Stored(stored) => pending.stored(stored, &this.metrics, &this.health).await,
                Outcome::Refused(why) => {
                    this.warn_refused(&pending.out, &why, "dropping it");
                    let reason = why.permanent().unwrap_or("other");
                    pending.dropped(reason, &this.metrics, &this.health).await
                }
                Outcome::Abandoned => {}
            }
        });
    }

    fn warn_refused(&self, out: &Outgoing, why: &Refused, action: &str) {
        if let Some(held_back) = self.refusals.allow_with_count() {
            let source = out.headers.get(headers::SOURCE).map(|v| v.as_str().to_owned()).unwrap_or_default();
            tracing::warn!(subject = %out.subject, source, error = %why, held_back, "JetStream refused a publish for good; {action}");
        }
    }

    /// The dead letter of a publish JetStream refused for good: the original's source, receipt
    /// time and (possibly cut) payload on `dlq.publish_refused`, with the refusal and the
    /// original subject in headers.
    fn refused_dead_letter(&self, original: &Outgoing, why: &Refused) -> Outgoing {
        let reason = DlqReason::PublishRefused;
        let mut h = HeaderMap::new();
        let msg_id = original.headers.get(headers::MSG_ID).map(|v| v.as_str()).unwrap_or_default();
        h.insert(headers::MSG_ID, format!("{}:{msg_id}", reason.as_str()));
        for name in [headers::SOURCE, headers::RECEIVED_AT, headers::TRACEPARENT] {
            if let Some(value) = original.headers.get(name) {
                h.insert(name, value.as_str());
            }
        }
        h.insert(headers::DLQ_REASON, reason.as_str());
        h.insert(headers::DLQ_AT, now_rfc3339());
        let error = format!("{}: {why}", why.permanent().unwrap_or("other"));
        h.insert(DLQ_ERROR, crate::header::escape(error.as_bytes(), error.len(), crate::header::MAX_VALUE));
        let subject = original.subject.as_str();
        h.insert(
            DLQ_ORIGINAL_SUBJECT,
            crate::header::escape(subject.as_bytes(), subject.len(), crate::header::MAX_VALUE),
        );
        let limit = self.dlq_payload_limit.min(self.publisher.max_payload().saturating_sub(HEADER_ROOM));
        let mut payload = original.payload.clone();
        if payload.len() > limit {
            h.insert(DLQ_TRUNCATED, payload.len().to_string());
            payload.truncate(limit);
        }
        Outgoing { subject: dlq_subject(reason.as_str()).into(), headers: h, payload }
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
                if let Some(len) = event.cut_from {
                    h.insert(DLQ_TRUNCATED, len.to_string());
                }
                if payload.len() > self.dlq_payload_limit {
                    if event.cut_from.is_none() {
                        h.insert(DLQ_TRUNCATED, payload.len().to_string());
                    }
                    payload.truncate(self.dlq_payload_limit);
                }
                (Outgoing { subject, headers: h, payload }, publish)
            }
        }
    }
}

pub fn now_rfc3339() -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");
    time::OffsetDateTime::now_utc().format(&format).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_header_names_channel_or_entry() {
        let pubsub = |name: &[u8]| Origin::pubsub(&Blob::whole(Bytes::copy_from_slice(name))).header();
        assert_eq!(pubsub(b"branch:1:admin"), "pubsub:branch:1:admin");
        assert_eq!(
            Origin::Stream { key: "events:critical".into(), id: "1-2".into() }.header(),
            "stream:events:critical:1-2"
        );
        assert!(now_rfc3339().ends_with('Z'));
    }

    #[test]
    fn bad_channels_get_a_safe_bounded_source() {
        let pubsub = |name: &[u8]| Origin::pubsub(&Blob::whole(Bytes::copy_from_slice(name)));
        let injected = pubsub(b"branch:1:waiters\r\nX-Injected: yes");
        assert!(matches!(injected, Origin::BadChannel(_)));
        assert_eq!(injected.header(), "pubsub:branch:1:waiters\\x0d\\x0aX-Injected:\\x20yes");
        let huge = pubsub(&vec![b'x'; 65_536]).header();
        assert!(huge.len() <= 7 + crate::header::MAX_VALUE && huge.ends_with("...[65536B]"), "{huge}");
        // Cut by the reader: a prefix that parses is still refused.
        let cut = Origin::pubsub(&Blob { head: Bytes::from_static(b"session:1"), len: 2_000_000 });
        assert_eq!(cut.header(), "pubsub:session:1...[2000000B]");
        let incoming = Incoming::new(Bytes::new(), cut);
        assert_eq!(incoming.refused, Some(DlqReason::BadChannel));
        let weird = Origin::Stream { key: "events:critical".into(), id: "1-2\r\nX: y".into() }.header();
        assert!(crate::header::is_escaped(&weird), "{weird}");
    }

    #[test]
    fn cut_payloads_are_too_large() {
        let origin = Origin::pubsub(&Blob::whole(Bytes::from_static(b"branch:1:waiters")));
        let event = Incoming::from_blob(Blob { head: Bytes::from_static(b"{\"type\""), len: 70_000 }, origin);
        assert_eq!(event.refused.map(DlqReason::as_str), Some("too_large"));
        assert_eq!(event.cut_from, Some(70_000));
    }
}
