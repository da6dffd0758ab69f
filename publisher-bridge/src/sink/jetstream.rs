//! Publishing to JetStream. The pipeline's hot path sends each publish with a reply subject of its
//! own ([`Publisher::send`], the reply token of [`crate::sink::inflight::InFlight`]) and reads the
//! acknowledgements on one subscription ([`Publisher::acknowledgements`]); this costs one
//! message each way and no task, timer or channel per publish. Whatever was not acknowledged
//! (no responders during a stream leader election, a lost connection, a timeout, an error) goes
//! through [`Publisher::retry`], which republishes and waits, with capped, jittered backoff, until
//! JetStream stores it, refuses it for a reason no retry can change
//! ([`Refused::permanent`]: the caller dead-letters or drops it), or the bridge gives up at the
//! end of its shutdown budget. A "duplicate"
//! acknowledgement is a success; "duplicate message id is in process" (another replica is storing
//! the same event) is retried without a warning and counted on its own. It does not decide
//! subjects or headers (see [`crate::pipeline`]).

use std::fmt::Write;
use std::sync::Arc;

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::Context;
use async_nats::{Client, HeaderMap, Subject, Subscriber};
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::sink::ack::{Refused, Stored};
use wire::backoff::Backoff;
use wire::throttle::Throttle;

/// One message to store.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub subject: Subject,
    pub headers: HeaderMap,
    pub payload: Bytes,
}

/// How a publish ended.
#[derive(Debug)]
pub enum Outcome {
    Stored(Stored),
    /// Refused for good ([`Refused::permanent`]).
    Refused(Refused),
    /// The shutdown budget ran out first.
    Abandoned,
}

pub struct Publisher {
    js: Context,
    client: Client,
    /// `<inbox>.`: a reply subject is this followed by the publish's token.
    reply_prefix: String,
    metrics: Arc<Metrics>,
    /// Fired when the shutdown budget is spent: stop retrying.
    abandon: CancellationToken,
    warn: Throttle,
}

impl Publisher {
    pub fn new(js: Context, metrics: Arc<Metrics>, abandon: CancellationToken) -> Publisher {
        let client = js.client();
        let reply_prefix = format!("{}.", client.new_inbox());
        Publisher {
            js,
            client,
            reply_prefix,
            metrics,
            abandon,
            warn: Throttle::every(std::time::Duration::from_secs(5)),
        }
    }

    pub fn context(&self) -> &Context {
        &self.js
    }

    /// Subscribes to the acknowledgements of [`Publisher::send`]; each message's subject ends in
    /// the token it was sent with ([`token_of`]).
    pub async fn acknowledgements(&self) -> Result<Subscriber, async_nats::SubscribeError> {
        self.client.subscribe(format!("{}*", self.reply_prefix)).await
    }

    /// Enqueues the publish on the NATS connection, its acknowledgement to come on
    /// [`Publisher::acknowledgements`] with `token`. Calls made in order are sent in order. An
    /// error means the connection is closed for good; the caller's timeout retries it.
    pub async fn send(&self, out: Outgoing, token: u64) -> Result<(), async_nats::PublishError> {
        let mut reply = String::with_capacity(self.reply_prefix.len() + 20);
        reply.push_str(&self.reply_prefix);
        let _ = write!(reply, "{token}");
        self.client.publish_with_reply_and_headers(out.subject, reply, out.headers, out.payload).await
    }

    /// Republishes `out`, which failed with `failure`, and waits, as long as it takes, until
    /// JetStream stored it (or reports it a duplicate) or refused it for good.
    pub async fn retry(&self, out: &Outgoing, failure: Refused) -> Outcome {
        let mut backoff = Backoff::publish();
        let mut failure = failure;
        loop {
            if failure.permanent().is_some() {
                return Outcome::Refused(failure);
            }
            if failure.in_process_elsewhere() {
                // Another bridge replica is storing the same event right now: the retry is
                // acknowledged as a duplicate once it has. Expected with two replicas.
                self.metrics.conflicts.inc();
            } else {
                self.metrics.retries.inc();
                if let Some(held_back) = self.warn.allow_with_count() {
                    tracing::warn!(subject = %out.subject, error = %failure, held_back, "JetStream publish failed; retrying");
                }
            }
            tokio::select! {
                biased;
                _ = self.abandon.cancelled() => return Outcome::Abandoned,
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
            match self.attempt(out).await {
                None => return Outcome::Abandoned,
                Some(Ok(stored)) => return Outcome::Stored(stored),
                Some(Err(refused)) => failure = refused,
            }
        }
    }

    /// Publishes and waits, retrying what may pass later (dead letters, advisory copies and
    /// other low-rate paths).
    pub async fn publish(&self, out: &Outgoing) -> Outcome {
        match self.attempt(out).await {
            None => Outcome::Abandoned,
            Some(Ok(stored)) => Outcome::Stored(stored),
            Some(Err(failure)) => self.retry(out, failure).await,
        }
    }

    /// The largest message (payload and headers) the server takes on this connection.
    pub fn max_payload(&self) -> usize {
        self.client.server_info().max_payload
    }

    /// One request-reply publish through the JetStream context (with its own timeout); `None`
    /// when abandoned meanwhile.
    async fn attempt(&self, out: &Outgoing) -> Option<Result<Stored, Refused>> {
        let attempt = async {
            let ack =
                self.js.publish_with_headers(out.subject.clone(), out.headers.clone(), out.payload.clone()).await?;
            ack.await
        };
        tokio::select! {
            biased;
            _ = self.abandon.cancelled() => None,
            r = attempt => Some(r.map(Stored::from).map_err(|e| refused(&e))),
        }
    }
}

/// The token at the end of an acknowledgement's subject.
pub fn token_of(subject: &str) -> Option<u64> {
    subject.rsplit_once('.')?.1.parse().ok()
}

fn refused(error: &PublishError) -> Refused {
    let api = std::error::Error::source(error).and_then(|source| source.downcast_ref::<async_nats::jetstream::Error>());
    match (error.kind(), api) {
        (PublishErrorKind::TimedOut, _) => Refused::TimedOut,
        (PublishErrorKind::StreamNotFound, _) => Refused::NoResponders,
        (_, Some(e)) => Refused::Api {
            code: e.code() as u16,
            err_code: u16::try_from(e.error_code().0).unwrap_or(u16::MAX),
            description: e.to_string(),
        },
        _ => Refused::Other(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_come_from_the_last_subject_token() {
        assert_eq!(token_of("_INBOX.abc123.42"), Some(42));
        assert_eq!(token_of("_INBOX.abc123.0"), Some(0));
        assert_eq!(token_of("_INBOX.abc123.x"), None);
        assert_eq!(token_of("nodots"), None);
    }
}
