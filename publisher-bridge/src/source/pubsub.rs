//! The Redis pub/sub source: pattern-subscribes to the contract's channels and submits every
//! message to the pipeline in arrival order. Pub/sub is at-most-once up to the bridge (Redis keeps
//! nothing for an absent subscriber), so this source reconnects and resubscribes by itself with
//! capped, jittered backoff that resets after a healthy period, and pings the server to notice a
//! dead connection that never closed. Only the very first connect, at start, fails the process.
//!
//! It speaks the protocol itself ([`crate::source::resp`], [`crate::source::conn`]): messages are
//! decoded in place, the payload a slice of the read buffer. Bounded: a payload or channel name
//! longer than [`BULK_CAP`] is kept as its head (the event is `too_large`, the channel
//! `bad_channel`) and the rest discarded as it arrives, so one message costs at most
//! [`BULK_CAP`] bytes and the pub/sub path at most `BRIDGE_MAX_IN_FLIGHT` of them. A channel
//! name is parsed here, once ([`Origin::pubsub`]).
//!
//! Backpressure: while every in-flight slot is taken, this source stops reading; what arrives
//! meanwhile waits in the socket and then in Redis's output buffer for this client, and Redis
//! disconnects a subscriber whose buffer passes `client-output-buffer-limit pubsub` (default
//! 32 MB, or 8 MB for 60 s): a burst larger than that, faster than the bridge stores it, loses
//! the excess (README, "Delivery guarantees").

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::health::{Dependency, Health};
use crate::mapping::PATTERNS;
use crate::pipeline::{Incoming, Origin, Pipeline};
use crate::source::conn::{Conn, Target};
use crate::source::resp::Push;
use crate::source::BULK_CAP;
use wire::backoff::Backoff;
use wire::throttle::Throttle;

/// A quiet connection is pinged after this long...
const PING_EVERY: Duration = Duration::from_secs(10);
/// ...and given up when nothing at all arrived this long after the ping.
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection in subscribed mode.
pub struct Subscribed {
    conn: Conn,
}

/// Connects, authenticates when the URL carries credentials, and pattern-subscribes to the
/// contract's channels, all within `timeout`.
pub async fn subscribe(target: &Target, timeout: Duration) -> std::io::Result<Subscribed> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut conn = Conn::open(target, BULK_CAP, timeout).await?;
    let subscribe = async {
        let mut args: Vec<&[u8]> = vec![b"PSUBSCRIBE"];
        args.extend(PATTERNS.iter().map(|p| p.as_bytes()));
        conn.send(&args).await?;
        let mut confirmed = 0;
        while confirmed < PATTERNS.len() {
            match conn.next_frame().await?.into_push() {
                Push::Subscribed(_) => confirmed += 1,
                Push::Error(e) => return Err(std::io::Error::other(format!("Redis refused PSUBSCRIBE: {e}"))),
                _ => {}
            }
        }
        Ok(())
    };
    tokio::time::timeout_at(deadline, subscribe).await.unwrap_or_else(|_| {
        Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "Redis pub/sub connect timed out"))
    })?;
    Ok(Subscribed { conn })
}

pub struct PubSubSource {
    pub target: Target,
    pub connect_timeout: Duration,
    pub pipeline: Arc<Pipeline>,
    pub health: Arc<Health>,
}

impl PubSubSource {
    /// Reads from `first` (made at start), then from new connections, until `stop` fires.
    pub async fn run(self, first: Subscribed, stop: CancellationToken) {
        let mut conn = Some(first);
        let mut backoff = Backoff::reconnect();
        let warn = Throttle::every(Duration::from_secs(5));
        loop {
            let subscribed = match conn.take() {
                Some(c) => c,
                None => match subscribe(&self.target, self.connect_timeout).await {
                    Ok(c) => {
                        tracing::info!("Redis pub/sub reconnected and resubscribed");
                        c
                    }
                    Err(error) => {
                        if let Some(held_back) = warn.allow_with_count() {
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
            if let Some(held_back) = warn.allow_with_count() {
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
    async fn read(&self, sub: Subscribed, stop: &CancellationToken) -> bool {
        let mut sub = sub.conn;
        let mut awaiting_pong = false;
        loop {
            // Everything already read first; the pipeline's backpressure pauses reading here.
            loop {
                let frame = match sub.decode() {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(error) => {
                        tracing::warn!(%error, "Redis pub/sub connection sent something unreadable; reconnecting");
                        return false;
                    }
                };
                match frame.into_push() {
                    Push::Message { channel, payload } => {
                        let event =
                            Incoming::read(payload.head, payload.len, Origin::pubsub(&channel.head, channel.len));
                        // A shutdown while waiting for an in-flight slot drops this message:
                        // pub/sub is at-most-once, and the stream path keeps such entries pending.
                        tokio::select! {
                            biased;
                            _ = stop.cancelled() => return true,
                            _ = self.pipeline.submit(event, None) => {}
                        }
                    }
                    Push::Error(error) => {
                        tracing::warn!(%error, "Redis reported an error on the pub/sub connection; reconnecting");
                        return false;
                    }
                    Push::Pong | Push::Subscribed(_) | Push::Other => {}
                }
            }
            // Time spent waiting for bytes only: a busy pipeline does not look like a dead server.
            let quiet = if awaiting_pong { PING_TIMEOUT } else { PING_EVERY };
            tokio::select! {
                biased;
                _ = stop.cancelled() => return true,
                read = sub.fill() => {
                    if read.is_err() {
                        return false;
                    }
                    awaiting_pong = false;
                }
                _ = tokio::time::sleep(quiet) => {
                    if awaiting_pong || sub.write_all(b"*1\r\n$4\r\nPING\r\n").await.is_err() {
                        return false;
                    }
                    awaiting_pong = true;
                }
            }
        }
    }
}
