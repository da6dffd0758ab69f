//! Reading the `EVENTS` stream's history for one tenant: an ordered consumer (ephemeral, no
//! acknowledgements, recreated by the client library on a gap) on the one filter subject
//! `events.<tenant>.>`, starting at a sequence or at a time, and read up to the tenant's newest
//! event when it was opened, as the stream's leader knows it. Never up to what the consumer says
//! is pending: nats-server places an R1 consumer on any replica of the stream, and a follower
//! that lags the leader counts (and delivers) only what it has applied, so a read bounded by its
//! count ends before events the leader had already stored and re-published live. Callers keep what a connection receives with [`Stored::scope`] and the routing
//! rule, as live dispatch does. Never several filter subjects: nats-server 2.15.1 skips part of
//! the history of a consumer with several filters and a start time (one filter's messages before
//! another filter's first match), and one filter per tenant costs the server least. Resume, reconnect recovery and the
//! catch-up endpoints read through here; none of them ever writes to the stream. The consumer is
//! deleted when the read ends: the server would otherwise keep it for 30 s of inactivity, and a
//! burst of resuming clients (a replica's death) would pass the stream's consumer limit.

use crate::routing::EventScope;
use async_nats::jetstream::{self, consumer::pull::OrderedConfig, consumer::DeliverPolicy};
use bytes::Bytes;
use futures_util::StreamExt;
use std::time::Duration;
use wire::subject::EventSubject;

const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("the events stream is not available: {0}")]
    Stream(String),
    #[error("cannot read the events stream: {0}")]
    Read(String),
    #[error("the events stream did not answer within {TIMEOUT:?}")]
    Timeout,
}

/// Where a read starts.
#[derive(Debug, Clone, Copy)]
pub enum Start {
    /// The first message after this stream sequence.
    After(u64),
    /// The first message at or after this stream sequence (a resume reads the cursor's own event
    /// first, to check it is the one the client saw).
    At(u64),
    /// The first message stored at or after this time.
    Since(time::OffsetDateTime),
}

/// One stored event.
#[derive(Debug, Clone)]
pub struct Stored {
    pub sequence: u64,
    pub subject: String,
    pub payload: Bytes,
    /// When the bridge received it (its `Bridge-Received-At` header).
    pub received_us: Option<u64>,
    /// When the stream stored it, unix nanoseconds (the resume cursor's epoch).
    pub stored_ns: Option<u64>,
}

impl Stored {
    /// Its routing scope, when it is a valid event of the tenant its subject names: the same
    /// checks and fields as live dispatch ([`crate::dispatch`]).
    pub fn scope(&self) -> Option<EventScope> {
        let subject = EventSubject::parse(&self.subject)?;
        let envelope = wire::envelope::parse(&self.payload).ok().filter(|e| e.tenant_id == subject.tenant_id)?;
        Some(EventScope::of(&subject, &envelope))
    }
}

/// An open read: what it will yield, and the oldest sequence the stream still holds.
pub struct Reader {
    /// About how many messages the read yields: the consumer's count when opened, which a
    /// lagging replica may give short. For limits and reports, never to end the read.
    pub pending: u64,
    /// The sequence of the tenant's newest event when the read was opened (0: none). The read
    /// ends once it yielded it (or a later one, if the stream dropped it meanwhile).
    pub newest: u64,
    /// The stream's first sequence when opened; anything older is gone.
    pub first_sequence: u64,
    /// The stream's last sequence when opened.
    pub last_sequence: u64,
    messages: Option<jetstream::consumer::pull::Ordered>,
    /// The stream and the consumer's name, to delete it when the read ends.
    consumer: Option<(jetstream::stream::Stream, String)>,
    /// Whether the newest event (or a later one) was yielded.
    done: bool,
    /// What the read asked for. The client library recreates an ordered consumer that failed
    /// before its first message (for example "no responders" while a new consumer's interest
    /// propagates through a cluster) from the start of the stream: older messages are skipped.
    from_sequence: u64,
    from_time: Option<time::OffsetDateTime>,
}

/// Opens a read of `tenant_id`'s stored events from `start`.
pub async fn open(js: &jetstream::Context, tenant_id: u64, start: Start) -> Result<Reader, HistoryError> {
    tokio::time::timeout(TIMEOUT, open_inner(js, tenant_id, start)).await.map_err(|_| HistoryError::Timeout)?
}

async fn open_inner(js: &jetstream::Context, tenant_id: u64, start: Start) -> Result<Reader, HistoryError> {
    let stream = js.get_stream(wire::subject::EVENTS_STREAM).await.map_err(|e| HistoryError::Stream(e.to_string()))?;
    let state = stream.cached_info().state.clone();
    let newest = newest_of(js, tenant_id).await?;
    let (from_sequence, from_time) = match start {
        Start::After(sequence) => (sequence + 1, None),
        Start::At(sequence) => (sequence, None),
        Start::Since(time) => (0, Some(time)),
    };
    let mut reader = Reader {
        pending: 0,
        newest: newest.map_or(0, |n| n.sequence),
        first_sequence: state.first_sequence,
        last_sequence: state.last_sequence,
        messages: None,
        consumer: None,
        done: true,
        from_sequence,
        from_time,
    };
    let deliver_policy = match (start, newest) {
        (_, None) => return Ok(reader),
        (Start::After(_) | Start::At(_), Some(newest)) if from_sequence > newest.sequence => return Ok(reader),
        // Stream order is time order: nothing of the tenant was stored since.
        (Start::Since(start_time), Some(newest)) if newest.stored < start_time => return Ok(reader),
        (Start::After(_) | Start::At(_), _) => {
            DeliverPolicy::ByStartSequence { start_sequence: from_sequence.max(state.first_sequence) }
        }
        (Start::Since(start_time), _) => DeliverPolicy::ByStartTime { start_time },
    };
    let config = OrderedConfig {
        filter_subject: wire::subject::events_tenant_filter(tenant_id),
        deliver_policy,
        ..Default::default()
    };
    let consumer = stream.create_consumer(config).await.map_err(|e| HistoryError::Read(e.to_string()))?;
    reader.pending = consumer.cached_info().num_pending;
    reader.consumer = Some((stream, consumer.cached_info().name.clone()));
    reader.messages = Some(consumer.messages().await.map_err(|e| HistoryError::Read(e.to_string()))?);
    reader.done = false;
    Ok(reader)
}

/// A stored event's place, as the stream's leader reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Newest {
    sequence: u64,
    stored: time::OffsetDateTime,
}

/// The tenant's newest stored event, asked of the stream's leader (`STREAM.MSG.GET`; a direct
/// get may be answered by a lagging replica).
async fn newest_of(js: &jetstream::Context, tenant_id: u64) -> Result<Option<Newest>, HistoryError> {
    let subject = format!("STREAM.MSG.GET.{}", wire::subject::EVENTS_STREAM);
    let request = serde_json::json!({ "last_by_subj": wire::subject::events_tenant_filter(tenant_id) });
    let answer: serde_json::Value =
        js.request(subject, &request).await.map_err(|e| HistoryError::Read(e.to_string()))?;
    parse_newest(&answer).map_err(HistoryError::Read)
}

/// Reads a `STREAM.MSG.GET` answer: the message's sequence and time, `None` for "no message
/// found" (JetStream error 10037).
fn parse_newest(answer: &serde_json::Value) -> Result<Option<Newest>, String> {
    const NO_MESSAGE_FOUND: u64 = 10037;
    if let Some(error) = answer.get("error") {
        if error.get("err_code").and_then(serde_json::Value::as_u64) == Some(NO_MESSAGE_FOUND) {
            return Ok(None);
        }
        return Err(format!("the stream's leader refused to name the newest event: {error}"));
    }
    let message = answer.get("message").ok_or("a message-get answer without a message")?;
    let sequence =
        message.get("seq").and_then(serde_json::Value::as_u64).ok_or("a stored message without its sequence")?;
    let stored = message
        .get("time")
        .and_then(serde_json::Value::as_str)
        .and_then(|t| time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok())
        .ok_or("a stored message without a readable time")?;
    Ok(Some(Newest { sequence, stored }))
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.messages = None;
        let Some((stream, name)) = self.consumer.take() else { return };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(error) = stream.delete_consumer(&name).await {
                    tracing::debug!(%error, consumer = name, "could not delete a history consumer; the server drops it after 30 s idle");
                }
            });
        }
    }
}

impl Reader {
    /// Whether everything up to the tenant's newest event was yielded.
    pub fn finished(&self) -> bool {
        self.done
    }

    /// The next stored event, oldest first; `None` once the tenant's newest event when the read
    /// was opened was yielded.
    pub async fn next(&mut self) -> Option<Result<Stored, HistoryError>> {
        if self.done {
            self.messages = None;
            return None;
        }
        let messages = self.messages.as_mut()?;
        let (message, sequence, stored_ns) = loop {
            let message = match tokio::time::timeout(TIMEOUT, messages.next()).await {
                Err(_) => return Some(Err(HistoryError::Timeout)),
                Ok(None) => return Some(Err(HistoryError::Read("the consumer ended before the newest event".into()))),
                Ok(Some(Err(e))) => return Some(Err(HistoryError::Read(e.to_string()))),
                Ok(Some(Ok(m))) => m,
            };
            let info = match message.info() {
                Ok(info) => info,
                Err(e) => return Some(Err(HistoryError::Read(e.to_string()))),
            };
            if info.stream_sequence < self.from_sequence || self.from_time.is_some_and(|t| info.published < t) {
                continue;
            }
            self.done = info.stream_sequence >= self.newest;
            let stored_ns = u64::try_from(info.published.unix_timestamp_nanos()).ok();
            break (message.clone(), info.stream_sequence, stored_ns);
        };
        let received_us = message
            .headers
            .as_ref()
            .and_then(|h| h.get(wire::headers::RECEIVED_AT))
            .and_then(|v| v.as_str().parse().ok());
        Some(Ok(Stored {
            sequence,
            subject: message.subject.to_string(),
            payload: message.payload.clone(),
            received_us,
            stored_ns,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_newest, Newest};
    use serde_json::json;

    #[test]
    fn reads_the_leaders_answer_about_the_newest_event() {
        let found = json!({
            "type": "io.nats.jetstream.api.v1.stream_msg_get_response",
            "message": {"subject": "events.7.3.waiters", "seq": 255, "time": "2026-12-02T13:11:15.123456789Z", "data": "e30="}
        });
        let stored = time::OffsetDateTime::from_unix_timestamp_nanos(1_796_217_075_123_456_789).unwrap();
        assert_eq!(parse_newest(&found), Ok(Some(Newest { sequence: 255, stored })));
        let none = json!({"type": "io.nats.jetstream.api.v1.stream_msg_get_response",
            "error": {"code": 404, "err_code": 10037, "description": "no message found"}});
        assert_eq!(parse_newest(&none), Ok(None), "a tenant without events");
        let refused = json!({"error": {"code": 503, "err_code": 10008, "description": "JetStream system temporarily unavailable"}});
        assert!(parse_newest(&refused).unwrap_err().contains("temporarily unavailable"));
        assert!(parse_newest(&json!({"message": {"seq": 3}})).is_err(), "no time");
        assert!(parse_newest(&json!({"message": {"time": "2026-12-02T13:11:15Z"}})).is_err(), "no sequence");
        assert!(parse_newest(&json!({})).is_err());
    }
}
