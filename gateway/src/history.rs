//! Reading the `EVENTS` stream's history for one tenant: an ordered consumer (ephemeral, no
//! acknowledgements, recreated by the client library on a gap) on the one filter subject
//! `events.<tenant>.>`, starting at a sequence or at a time, bounded to what was pending when it
//! was opened. Callers keep what a connection receives with [`Stored::scope`] and the routing
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
    /// Messages matching the filters between the start and the stream's end when opened.
    pub pending: u64,
    /// The stream's first sequence when opened; anything older is gone.
    pub first_sequence: u64,
    /// The stream's last sequence when opened.
    pub last_sequence: u64,
    messages: Option<jetstream::consumer::pull::Ordered>,
    /// The stream and the consumer's name, to delete it when the read ends.
    consumer: Option<(jetstream::stream::Stream, String)>,
    read: u64,
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
    let (from_sequence, from_time) = match start {
        Start::After(sequence) => (sequence + 1, None),
        Start::At(sequence) => (sequence, None),
        Start::Since(time) => (0, Some(time)),
    };
    let deliver_policy = match start {
        Start::After(_) | Start::At(_) if from_sequence > state.last_sequence => {
            return Ok(Reader {
                pending: 0,
                first_sequence: state.first_sequence,
                last_sequence: state.last_sequence,
                messages: None,
                consumer: None,
                read: 0,
                from_sequence: 0,
                from_time: None,
            });
        }
        Start::After(_) | Start::At(_) => {
            DeliverPolicy::ByStartSequence { start_sequence: from_sequence.max(state.first_sequence) }
        }
        Start::Since(start_time) => DeliverPolicy::ByStartTime { start_time },
    };
    let config = OrderedConfig {
        filter_subject: wire::subject::events_tenant_filter(tenant_id),
        deliver_policy,
        ..Default::default()
    };
    let consumer = stream.create_consumer(config).await.map_err(|e| HistoryError::Read(e.to_string()))?;
    let pending = consumer.cached_info().num_pending;
    let name = consumer.cached_info().name.clone();
    let mut reader = Reader {
        pending,
        first_sequence: state.first_sequence,
        last_sequence: state.last_sequence,
        messages: None,
        consumer: Some((stream, name)),
        read: 0,
        from_sequence,
        from_time,
    };
    if pending > 0 {
        reader.messages = Some(consumer.messages().await.map_err(|e| HistoryError::Read(e.to_string()))?);
    }
    Ok(reader)
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
    /// The next stored event, oldest first; `None` once everything pending at open was read.
    pub async fn next(&mut self) -> Option<Result<Stored, HistoryError>> {
        if self.read >= self.pending {
            self.messages = None;
            return None;
        }
        let messages = self.messages.as_mut()?;
        let (message, sequence, stored_ns) = loop {
            let message = match tokio::time::timeout(TIMEOUT, messages.next()).await {
                Err(_) => return Some(Err(HistoryError::Timeout)),
                Ok(None) => return None,
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
            self.read += 1;
            if info.pending == 0 {
                self.read = self.pending;
            }
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
