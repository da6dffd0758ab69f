//! The JetStream-native dead-letter path for durable consumers on EVENTS (for example an
//! operator's downstream processors; the gateway itself consumes no durable consumer: live
//! delivery is RePublish plus core subscriptions, replay uses ordered consumers). When such a
//! consumer gives up on a message after `MaxDeliver` attempts, or terminates it (`AckTerm`), the
//! server publishes an advisory carrying the stream sequence; this module fetches that message
//! from EVENTS and copies it into EVENTS_DLQ with reason `max_deliveries` or `terminated` and
//! headers naming the consumer and the sequence. Every replica handles every advisory; the
//! `Nats-Msg-Id` `advisory:<consumer>:<seq>` makes JetStream store the copy once. Advisories are
//! core NATS messages: one sent while no bridge is connected is not seen.

use std::sync::Arc;

use async_nats::HeaderMap;
use futures_util::StreamExt;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use wire::headers;
use wire::subject::{dlq_subject, EVENTS_STREAM};

use crate::header::now_rfc3339;
use crate::mapping::DlqReason;
use crate::metrics::Metrics;
use crate::sink::jetstream::{Outcome, Outgoing, Publisher};

pub const MAX_DELIVERIES_PREFIX: &str = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES";
pub const TERMINATED_PREFIX: &str = "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED";
/// Durable consumer that gave up on the message.
pub const DLQ_CONSUMER: &str = "Dlq-Consumer";
/// The message's sequence in EVENTS.
pub const DLQ_STREAM_SEQ: &str = "Dlq-Stream-Seq";
/// The message's subject in EVENTS.
pub const DLQ_SUBJECT: &str = "Dlq-Subject";
/// How many deliveries the consumer attempted.
pub const DLQ_DELIVERIES: &str = "Dlq-Deliveries";

#[derive(Debug, Deserialize, PartialEq, Eq)]
pub struct Advisory {
    pub stream: String,
    pub consumer: String,
    pub stream_seq: u64,
    #[serde(default)]
    pub deliveries: u64,
}

/// The reason and content of an advisory about EVENTS; `None` for anything else.
pub fn parse(subject: &str, payload: &[u8]) -> Option<(DlqReason, Advisory)> {
    let reason = if subject.starts_with(MAX_DELIVERIES_PREFIX) {
        DlqReason::MaxDeliveries
    } else if subject.starts_with(TERMINATED_PREFIX) {
        DlqReason::Terminated
    } else {
        return None;
    };
    let advisory: Advisory = serde_json::from_slice(payload).ok()?;
    (advisory.stream == EVENTS_STREAM).then_some((reason, advisory))
}

pub struct AdvisoryDlq {
    pub client: async_nats::Client,
    pub publisher: Arc<Publisher>,
    pub metrics: Arc<Metrics>,
}

impl AdvisoryDlq {
    /// Subscribes (before returning, so no advisory after start is missed) and spawns the copier.
    pub async fn start(
        self,
        stop: CancellationToken,
    ) -> Result<tokio::task::JoinHandle<()>, async_nats::SubscribeError> {
        let mut max = self.client.subscribe(format!("{MAX_DELIVERIES_PREFIX}.{EVENTS_STREAM}.*")).await?;
        let mut term = self.client.subscribe(format!("{TERMINATED_PREFIX}.{EVENTS_STREAM}.*")).await?;
        Ok(tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    biased;
                    _ = stop.cancelled() => break,
                    m = max.next() => m,
                    m = term.next() => m,
                };
                let Some(msg) = msg else { break };
                if let Some((reason, advisory)) = parse(&msg.subject, &msg.payload) {
                    tokio::select! {
                        biased;
                        _ = stop.cancelled() => break,
                        _ = self.copy(reason, &advisory) => {}
                    }
                }
            }
        }))
    }

    async fn copy(&self, reason: DlqReason, advisory: &Advisory) {
        let js = self.publisher.context();
        let original = match js.get_stream_no_info(EVENTS_STREAM).await {
            Ok(stream) => stream.get_raw_message(advisory.stream_seq).await,
            Err(error) => {
                tracing::warn!(%error, "cannot open stream EVENTS for a dead-letter advisory");
                return;
            }
        };
        let original = match original {
            Ok(m) => m,
            Err(error) => {
                tracing::warn!(%error, consumer = %advisory.consumer, seq = advisory.stream_seq, "message of a dead-letter advisory is gone from EVENTS");
                return;
            }
        };
        let mut h = HeaderMap::new();
        let consumer_id =
            crate::header::escape(advisory.consumer.as_bytes(), advisory.consumer.len(), crate::header::MAX_VALUE);
        h.insert(headers::MSG_ID, format!("advisory:{consumer_id}:{}", advisory.stream_seq));
        h.insert(headers::DLQ_REASON, reason.as_str());
        h.insert(headers::DLQ_AT, now_rfc3339());
        let consumer = &advisory.consumer;
        h.insert(DLQ_CONSUMER, crate::header::escape(consumer.as_bytes(), consumer.len(), crate::header::MAX_VALUE));
        h.insert(DLQ_STREAM_SEQ, advisory.stream_seq.to_string());
        h.insert(DLQ_SUBJECT, original.subject.as_str());
        h.insert(DLQ_DELIVERIES, advisory.deliveries.to_string());
        if let Some(source) = original.headers.get(headers::SOURCE) {
            h.insert(headers::SOURCE, source.as_str());
        }
        let out = Outgoing { subject: dlq_subject(reason.as_str()).into(), headers: h, payload: original.payload };
        match self.publisher.publish(&out).await {
            Outcome::Stored(ack) if !ack.duplicate => {
                self.metrics.dead_lettered(reason);
                tracing::info!(reason = reason.as_str(), consumer = %advisory.consumer, seq = advisory.stream_seq, "copied a message a durable consumer gave up on into EVENTS_DLQ");
            }
            Outcome::Refused(why) => {
                self.metrics.dropped(why.permanent().unwrap_or("other"));
                tracing::warn!(error = %why, consumer = %advisory.consumer, seq = advisory.stream_seq, "EVENTS_DLQ refused the copy of a dead-letter advisory's message; dropped");
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_advisories_about_events_only() {
        let body = br#"{"type":"io.nats.jetstream.advisory.v1.max_deliver","id":"x","timestamp":"2026-01-01T00:00:00Z","stream":"EVENTS","consumer":"proc","stream_seq":42,"deliveries":2}"#;
        let (reason, a) = parse("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.EVENTS.proc", body).unwrap();
        assert_eq!(reason, DlqReason::MaxDeliveries);
        assert_eq!(a, Advisory { stream: "EVENTS".into(), consumer: "proc".into(), stream_seq: 42, deliveries: 2 });
        let term =
            br#"{"stream":"EVENTS","consumer":"proc","consumer_seq":3,"stream_seq":7,"deliveries":1,"reason":""}"#;
        assert_eq!(
            parse("$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.EVENTS.proc", term).unwrap().0,
            DlqReason::Terminated
        );
        let other = br#"{"stream":"OTHER","consumer":"proc","stream_seq":7}"#;
        assert_eq!(parse("$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.OTHER.proc", other), None);
        assert_eq!(parse("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.EVENTS.proc", b"nope"), None);
    }
}
