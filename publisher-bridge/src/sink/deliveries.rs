//! The publishes awaiting their acknowledgement and everything that finishes them: the
//! in-flight table ([`InFlight`], keyed by reply token), the one task that reads the
//! acknowledgements ([`Deliveries::confirm`]: metrics, the Redis acker's entry ids, the stall
//! clock), and a retrying task for each publish refused or not acknowledged within the publish
//! timeout, which turns one refused for good into a `publish_refused` dead letter. What is
//! published and why is the pipeline's business; this module only sees [`Delivery`]s.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::{HeaderMap, Message, Subscriber};
use futures_util::StreamExt;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Span;
use wire::headers;
use wire::subject::dlq_subject;
use wire::throttle::Throttle;

use crate::budget::Charge;
use crate::health::Health;
use crate::mapping::DlqReason;
use crate::metrics::Metrics;
use crate::sink::ack::{self, Refused, Stored};
use crate::sink::inflight::InFlight;
use crate::sink::jetstream::{token_of, Outcome, Outgoing, Publisher};

/// Header stating that a dead letter's payload was cut, with the original length in bytes.
pub const DLQ_TRUNCATED: &str = "Dlq-Truncated-From";
/// Header of a `publish_refused` dead letter: why JetStream refused the original publish
/// (`<reason>: <JetStream's words>`, escaped, at most [`crate::header::MAX_VALUE`] bytes).
pub const DLQ_ERROR: &str = "Dlq-Error";
/// Header of a `publish_refused` dead letter: the subject the event was refused on.
pub const DLQ_ORIGINAL_SUBJECT: &str = "Dlq-Original-Subject";
/// Room left for headers when sizing a dead letter against the stream's message limit.
pub const HEADER_ROOM: usize = 4096;
/// How often [`Deliveries::confirm`] looks for publishes older than the publish timeout.
const SWEEP: Duration = Duration::from_millis(100);

/// A publish waiting for its acknowledgement, with everything needed to finish it.
pub struct Delivery {
    pub out: Outgoing,
    /// The publish span, ended when this is dropped.
    pub publish: Span,
    /// Why the event goes to the dead-letter stream, if it does.
    pub refused: Option<DlqReason>,
    pub received: Instant,
    /// The acker and the stream entry id to acknowledge in Redis once stored.
    pub xack: Option<(mpsc::Sender<String>, String)>,
    /// The stream reads' budget held by the entry, released when this is dropped.
    _charge: Option<Charge>,
    _slot: Slot,
}

/// An in-flight slot: frees the permit and lowers the gauge when dropped.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Slot {
    pub fn new(permit: OwnedSemaphorePermit, metrics: Arc<Metrics>) -> Slot {
        Slot { _permit: permit, metrics }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics.in_flight.dec();
    }
}

impl Delivery {
    /// What [`Deliveries::send`] publishes, with the guards held until it is finished.
    pub fn new(
        out: Outgoing,
        publish: Span,
        refused: Option<DlqReason>,
        received: Instant,
        xack: Option<(mpsc::Sender<String>, String)>,
        charge: Option<Charge>,
        slot: Slot,
    ) -> Delivery {
        Delivery { out, publish, refused, received, xack, _charge: charge, _slot: slot }
    }

    /// Records what JetStream did with it and hands a stream entry to the Redis acker.
    async fn stored(self, stored: Stored, metrics: &Metrics, health: &Health) {
        crate::traces::stored(&self.publish, &stored.stream, stored.sequence, stored.duplicate);
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

pub struct Deliveries {
    publisher: Arc<Publisher>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    tracker: TaskTracker,
    in_flight: Mutex<InFlight<Delivery>>,
    /// How long a publish waits for its acknowledgement before it is retried.
    publish_timeout: Duration,
    /// The largest dead-letter payload (the DLQ stream's and the server's limits, less headers).
    dlq_payload_limit: usize,
    /// Warnings about publishes refused for good.
    refusals: Throttle,
}

impl Deliveries {
    /// `dlq_max_msg_size` is the smaller of the DLQ stream's and the server's message limits.
    pub fn new(
        publisher: Arc<Publisher>,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
        publish_timeout: Duration,
        tracker: TaskTracker,
        dlq_max_msg_size: usize,
    ) -> Deliveries {
        Deliveries {
            publisher,
            metrics,
            health,
            tracker,
            in_flight: Mutex::new(InFlight::default()),
            publish_timeout,
            dlq_payload_limit: dlq_max_msg_size.saturating_sub(HEADER_ROOM).max(1024),
            refusals: Throttle::every(Duration::from_secs(5)),
        }
    }

    /// The largest payload a dead letter may carry.
    pub fn dlq_payload_limit(&self) -> usize {
        self.dlq_payload_limit
    }

    /// Publishes `delivery` (in the order of the calls) and keeps it until its acknowledgement.
    pub async fn send(self: &Arc<Self>, delivery: Delivery) {
        // The copy kept in flight for a retry; `out` itself goes to the connection.
        let out = delivery.out.clone();
        let token = self.in_flight.lock().expect("in-flight lock").push(Instant::now(), delivery);
        if let Err(error) = self.publisher.send(out, token).await {
            if error.kind() == async_nats::client::PublishErrorKind::MaxPayloadExceeded {
                // Never sent: nats-server would have closed the connection over it.
                if let Some(delivery) = self.in_flight.lock().expect("in-flight lock").take(token) {
                    self.retry(delivery, Refused::MaxPayload);
                }
            } else {
                // Only when the connection is closed for good (at the very end of a shutdown):
                // the publish stays in flight and is retried when it times out.
                tracing::debug!(%error, "publish not sent");
            }
        }
    }

    /// Reads the acknowledgements of [`Deliveries::send`]'s publishes from `acks` until
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
        let Some(delivery) = self.in_flight.lock().expect("in-flight lock").take(token) else {
            // Its publish timed out and is being retried already.
            if let Some(held_back) = late.allow_with_count() {
                tracing::debug!(token, held_back, "acknowledgement after the publish timeout");
            }
            return;
        };
        match ack::read(&reply) {
            Ok(stored) => delivery.stored(stored, &self.metrics, &self.health).await,
            Err(refused) => self.retry(delivery, refused),
        }
    }

    /// Hands every publish older than `timeout` to a retrying task.
    fn expire(self: &Arc<Self>, timeout: Duration) {
        let expired = self.in_flight.lock().expect("in-flight lock").expired(Instant::now(), timeout);
        for delivery in expired {
            self.retry(delivery, Refused::TimedOut);
        }
    }

    /// Retries a failed publish in a task of its own until it is stored; one refused for good
    /// becomes a `publish_refused` dead letter, and a dead letter refused for good is dropped.
    fn retry(self: &Arc<Self>, mut delivery: Delivery, failure: Refused) {
        let this = self.clone();
        self.tracker.spawn(async move {
            let mut outcome = this.publisher.retry(&delivery.out, failure).await;
            if let Outcome::Refused(why) = &outcome {
                if delivery.refused.is_none() {
                    this.warn_refused(&delivery.out, why, "storing it as a publish_refused dead letter");
                    delivery.out = this.refused_dead_letter(&delivery.out, why);
                    delivery.refused = Some(DlqReason::PublishRefused);
                    outcome = this.publisher.publish(&delivery.out).await;
                }
            }
            match outcome {
                Outcome::Stored(stored) => delivery.stored(stored, &this.metrics, &this.health).await,
                Outcome::Refused(why) => {
                    this.warn_refused(&delivery.out, &why, "dropping it");
                    let reason = why.permanent().unwrap_or("other");
                    delivery.dropped(reason, &this.metrics, &this.health).await
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
        h.insert(headers::DLQ_AT, crate::header::now_rfc3339());
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
}
