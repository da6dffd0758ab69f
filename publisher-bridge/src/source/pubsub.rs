//! The Redis pub/sub source: pattern-subscribes to the contract's channels and submits every
//! message to the pipeline in arrival order. Pub/sub is at-most-once up to the bridge (Redis keeps
//! nothing for an absent subscriber), so this source reconnects and resubscribes by itself with
//! capped, jittered backoff that resets after a healthy period, and pings the server to notice a
//! dead connection that never closed. Only the very first connect, at start, fails the process.
//!
//! Backpressure: while every in-flight slot is taken, this source stops reading; redis-rs keeps
//! what arrives meanwhile in its own (unbounded) buffer, and Redis itself disconnects a
//! subscriber whose output buffer passes `client-output-buffer-limit pubsub`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use redis::RedisResult;
use tokio_util::sync::CancellationToken;

use crate::health::{Dependency, Health};
use crate::mapping::PATTERNS;
use crate::pipeline::{Incoming, Origin, Pipeline};
use crate::retry::{Backoff, LogLimiter};

const PING_EVERY: Duration = Duration::from_secs(10);
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// A subscribed pub/sub connection.
pub struct Subscribed {
    sink: PubSubSink,
    stream: PubSubStream,
}

/// Connects and pattern-subscribes within `timeout`.
pub async fn subscribe(client: &redis::Client, timeout: Duration) -> RedisResult<Subscribed> {
    let connect = async {
        let (mut sink, stream) = client.get_async_pubsub().await?.split();
        sink.psubscribe(&PATTERNS[..]).await?;
        Ok(Subscribed { sink, stream })
    };
    tokio::time::timeout(timeout, connect)
        .await
        .unwrap_or_else(|_| Err(redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, "Redis pub/sub connect timed out"))))
}

pub struct PubSubSource {
    pub client: redis::Client,
    pub connect_timeout: Duration,
    pub pipeline: Arc<Pipeline>,
    pub health: Arc<Health>,
}

impl PubSubSource {
    /// Reads from `first` (made at start), then from new connections, until `stop` fires.
    pub async fn run(self, first: Subscribed, stop: CancellationToken) {
        let mut conn = Some(first);
        let mut backoff = Backoff::reconnect();
        let warn = LogLimiter::new(Duration::from_secs(5));
        loop {
            let subscribed = match conn.take() {
                Some(c) => c,
                None => match subscribe(&self.client, self.connect_timeout).await {
                    Ok(c) => {
                        tracing::info!("Redis pub/sub reconnected and resubscribed");
                        c
                    }
                    Err(error) => {
                        if let Some(held_back) = warn.allow() {
                            tracing::warn!(%error, held_back, "Redis pub/sub connect failed; retrying");
                        }
                        tokio::select! {
                            biased;
                            _ = stop.cancelled() => break,
                            _ = tokio::time::sleep(backoff.next_delay()) => continue,
                        }
                    }
                },
            };
            self.health.set(Dependency::RedisPubsub, true);
            let since = Instant::now();
            let stopped = self.read(subscribed, &stop).await;
            self.health.set(Dependency::RedisPubsub, false);
            if stopped {
                break;
            }
            if let Some(held_back) = warn.allow() {
                tracing::warn!(held_back, "Redis pub/sub connection lost; reconnecting");
            }
            backoff.healthy(since);
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
        tracing::info!("pub/sub reader stopped");
    }

    /// Reads one connection until it fails (`false`) or `stop` fires (`true`).
    async fn read(&self, subscribed: Subscribed, stop: &CancellationToken) -> bool {
        let Subscribed { mut sink, mut stream } = subscribed;
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return true,
                _ = ping.tick() => {
                    let pong = tokio::time::timeout(PING_TIMEOUT, sink.ping::<redis::Value>()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        return false;
                    }
                }
                msg = stream.next() => {
                    let Some(msg) = msg else { return false };
                    let channel = msg.get_channel_name().to_string();
                    let event = Incoming::new(Bytes::copy_from_slice(msg.get_payload_bytes()), Origin::PubSub { channel });
                    // A shutdown while waiting for an in-flight slot drops this message: pub/sub
                    // is at-most-once, and the stream path keeps such entries pending instead.
                    tokio::select! {
                        biased;
                        _ = stop.cancelled() => return true,
                        _ = self.pipeline.submit(event, None) => {}
                    }
                }
            }
        }
    }
}
