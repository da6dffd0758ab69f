//! Publishing to JetStream with asynchronous acknowledgements: [`Publisher::send`] enqueues a
//! publish in order (cheap, does not wait for the server), [`Publisher::confirm`] waits for its
//! acknowledgement and retries with capped, jittered backoff through errors and timeouts (no
//! responders during a stream leader election, a lost connection) until JetStream stores it or
//! the bridge gives up at the end of its shutdown budget. A "duplicate" acknowledgement is a
//! success; "duplicate message id is in process" (another replica is storing the same event) is
//! retried without a warning and counted on its own. It does not decide subjects or headers (see [`crate::pipeline`]).

use std::sync::Arc;

use async_nats::jetstream::context::{PublishAckFuture, PublishError, PublishErrorKind};
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::Context;
use async_nats::{HeaderMap, Subject};
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::retry::{Backoff, LogLimiter};

/// One message to store.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub subject: Subject,
    pub headers: HeaderMap,
    pub payload: Bytes,
}

/// The result of [`Publisher::send`], handed to [`Publisher::confirm`].
pub type Sent = Result<PublishAckFuture, PublishError>;

pub struct Publisher {
    js: Context,
    metrics: Arc<Metrics>,
    /// Fired when the shutdown budget is spent: stop retrying.
    abandon: CancellationToken,
    warn: LogLimiter,
}

impl Publisher {
    pub fn new(js: Context, metrics: Arc<Metrics>, abandon: CancellationToken) -> Publisher {
        Publisher { js, metrics, abandon, warn: LogLimiter::new(std::time::Duration::from_secs(5)) }
    }

    pub fn context(&self) -> &Context {
        &self.js
    }

    /// Enqueues the publish on the NATS connection; calls made in order are sent in order.
    pub async fn send(&self, out: &Outgoing) -> Sent {
        self.js.publish_with_headers(out.subject.clone(), out.headers.clone(), out.payload.clone()).await
    }

    /// Waits until JetStream stored `out` (or reports it a duplicate), retrying as long as it
    /// takes. `None` only when the shutdown budget ran out first.
    pub async fn confirm(&self, sent: Sent, out: &Outgoing) -> Option<PublishAck> {
        let mut backoff = Backoff::publish();
        let mut sent = sent;
        loop {
            let result = match sent {
                Ok(ack) => tokio::select! {
                    biased;
                    _ = self.abandon.cancelled() => return None,
                    r = ack => r,
                },
                Err(e) => Err(e),
            };
            match result {
                Ok(ack) => return Some(ack),
                Err(error) if in_process_elsewhere(&error) => {
                    // Another bridge replica is storing the same event right now: the retry is
                    // acknowledged as a duplicate once it has. Expected with two replicas.
                    self.metrics.conflicts.inc();
                }
                Err(error) => {
                    self.metrics.retries.inc();
                    if let Some(held_back) = self.warn.allow() {
                        tracing::warn!(subject = %out.subject, %error, held_back, "JetStream publish failed; retrying");
                    }
                }
            }
            tokio::select! {
                biased;
                _ = self.abandon.cancelled() => return None,
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
            sent = self.send(out).await;
        }
    }

    /// Publishes and waits (advisory copies and other low-rate paths).
    pub async fn publish(&self, out: &Outgoing) -> Option<PublishAck> {
        let sent = self.send(out).await;
        self.confirm(sent, out).await
    }
}

/// JetStream's 10158 "duplicate message id is in process": a publish with the same
/// `Nats-Msg-Id` is being stored right now.
fn in_process_elsewhere(error: &PublishError) -> bool {
    error.kind() == PublishErrorKind::Other
        && std::error::Error::source(error)
            .and_then(|source| source.downcast_ref::<async_nats::jetstream::Error>())
            .is_some_and(|e| e.error_code() == ErrorCode::STREAM_DUPLICATE_MESSAGE_CONFLICT)
}
