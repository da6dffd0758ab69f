//! Storing events straight into the EVENTS stream the way the bridge does (`loadtest bridge
//! --path direct`), without Redis and without the bridge: the subject the bridge maps the event
//! to (`events.<tenant>.<branch>.<role>`, from the body), the headers it sets (`Nats-Msg-Id`, the
//! hex SHA-256 of the payload; `Bridge-Source`; `Bridge-Received-Us`) and asynchronous
//! acknowledgements with at most [`WINDOW`] in flight, as the bridge's publisher. What it measures
//! is nats-server's own ceiling for storing bridge-shaped messages on this machine, the number
//! the bridge's throughput is compared to.

use crate::events::EventSpec;
use async_nats::jetstream::context::{Context, PublishError};
use async_nats::jetstream::publish::PublishAck;
use async_nats::HeaderMap;
use futures_util::stream::{FuturesUnordered, StreamExt};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use wire::clock::now_micros;
use wire::headers;
use wire::msg_id::Digest;
use wire::subject::{EventSubject, Role};

/// Publishes awaiting their acknowledgement, at most: the bridge's default
/// `BRIDGE_MAX_IN_FLIGHT`.
pub const WINDOW: usize = 1024;
/// How long an acknowledgement may take before the event counts as failed.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

type Ack = Pin<Box<dyn Future<Output = (u32, Result<PublishAck, PublishError>)> + Send>>;

pub struct JetStreamSink {
    js: Context,
    /// The Redis stream key the bridge would have read the events from (for `Bridge-Source`).
    stream_key: String,
    acks: FuturesUnordered<Ack>,
    /// Events that were not stored, with why.
    failed: Vec<(u32, String)>,
}

/// One message as the bridge would publish it.
pub struct Outgoing {
    pub subject: String,
    pub headers: HeaderMap,
}

/// The subject and headers the bridge gives `event` read from stream `stream_key` at
/// `received_us` (its entry id made up from that time and the event id).
pub fn outgoing(event: &EventSpec, text: &str, stream_key: &str, received_us: u64) -> Outgoing {
    let subject = EventSubject {
        tenant_id: event.tenant_id,
        branch_id: event.branch_id,
        role: Role::of(event.class(), event.branch_id),
    }
    .events();
    let mut h = HeaderMap::new();
    h.insert(headers::SOURCE, format!("stream:{stream_key}:{}-{}", received_us / 1000, event.id));
    h.insert(headers::RECEIVED_AT, received_us.to_string());
    h.insert(headers::MSG_ID, Digest::of(text.as_bytes()).msg_id());
    Outgoing { subject, headers: h }
}

impl JetStreamSink {
    /// A JetStream publisher on its own connection (the bridge has its own too, apart from the
    /// `live.>` subscriber's).
    pub async fn connect(url: &str, stream_key: &str) -> anyhow::Result<JetStreamSink> {
        let client = crate::nats::connect(url, async_nats::ConnectOptions::new()).await?;
        // The window is kept here; the context's own limit only must not be the tighter one.
        let js = async_nats::jetstream::context::ContextBuilder::new()
            .timeout(ACK_TIMEOUT)
            .max_ack_inflight(2 * WINDOW)
            .build(client);
        Ok(JetStreamSink { js, stream_key: stream_key.to_string(), acks: FuturesUnordered::new(), failed: Vec::new() })
    }

    /// Publishes each event of `batch`, first waiting for acknowledgements while [`WINDOW`] are
    /// outstanding. A failure is recorded against its event, not returned: the others go on.
    pub async fn send(&mut self, batch: &[(EventSpec, String)]) {
        for (event, text) in batch {
            while self.acks.len() >= WINDOW {
                self.settle_one().await;
            }
            let out = outgoing(event, text, &self.stream_key, now_micros());
            let payload = bytes::Bytes::copy_from_slice(text.as_bytes());
            match self.js.publish_with_headers(out.subject, out.headers, payload).await {
                Ok(ack) => {
                    let id = event.id;
                    self.acks.push(Box::pin(async move { (id, ack.await) }));
                }
                Err(error) => self.failed.push((event.id, format!("JetStream publish: {error}"))),
            }
        }
    }

    /// Waits for every outstanding acknowledgement; the events that were not stored, with why
    /// (a duplicate acknowledgement means JetStream did not store it again).
    pub async fn finish(&mut self) -> Vec<(u32, String)> {
        while !self.acks.is_empty() {
            self.settle_one().await;
        }
        std::mem::take(&mut self.failed)
    }

    async fn settle_one(&mut self) {
        match self.acks.next().await {
            Some((id, Err(error))) => self.failed.push((id, format!("JetStream acknowledgement: {error}"))),
            Some((id, Ok(ack))) if ack.duplicate => self
                .failed
                .push((id, format!("JetStream: duplicate of sequence {} (same payload stored before)", ack.sequence))),
            Some((_, Ok(_))) | None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{render, Generator, Traffic};
    use crate::population::{Mix, Population, PopulationParams};

    #[test]
    fn messages_look_like_the_bridges() {
        let pop = Population::new(PopulationParams {
            connections: 200,
            tenants: 2,
            branches: 3,
            mix: Mix::default(),
            diners_per_session: 4,
        })
        .unwrap();
        let g = Generator::new(Traffic::Steady, pop, 7);
        for id in 0..200 {
            let event = g.event(id);
            let text = render(&event, 42, 1_700_000_000_123_456, 400);
            let out = outgoing(&event, &text, "events:critical", 1_700_000_000_999_999);
            // The subject the bridge derives from the body, whatever channel carried it.
            let env = wire::envelope::parse(text.as_bytes()).expect("valid envelope");
            let branch = env.branch_id.expect("loadtest events name their branch");
            let role = Role::of(wire::event_types::TypeClass::of(&env.event_type), branch);
            assert_eq!(out.subject, EventSubject { tenant_id: env.tenant_id, branch_id: branch, role }.events());
            assert!(
                out.subject.starts_with(&format!("events.{}.{}.", event.tenant_id, event.branch_id)),
                "{}",
                out.subject
            );
            let header = |name: &str| out.headers.get(name).map(|v| v.as_str().to_string());
            let msg_id = header(headers::MSG_ID).expect("Nats-Msg-Id");
            assert_eq!(msg_id, Digest::of(text.as_bytes()).msg_id());
            assert!(msg_id.len() == 64 && msg_id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
            assert_eq!(header(headers::SOURCE), Some(format!("stream:events:critical:1700000000999-{id}")));
            assert_eq!(header(headers::RECEIVED_AT).as_deref(), Some("1700000000999999"));
        }
    }
}
