//! The Redis pub/sub source: pattern-subscribes to the contract's channels and submits every
//! message to the pipeline in arrival order. Pub/sub is at-most-once up to the bridge (Redis keeps
//! nothing for an absent subscriber), so this source reconnects and resubscribes by itself with
//! capped, jittered backoff that resets after a healthy period, and pings the server to notice a
//! dead connection that never closed. Only the very first connect, at start, fails the process.
//!
//! It speaks the protocol itself ([`crate::source::resp`]): messages are decoded in place, the
//! payload a slice of the read buffer.
//!
//! Backpressure: while every in-flight slot is taken, this source stops reading; what arrives
//! meanwhile waits in the socket and then in Redis's output buffer for this client, and Redis
//! disconnects a subscriber whose buffer passes `client-output-buffer-limit pubsub` (default
//! 32 MB, or 8 MB for 60 s): a burst larger than that, faster than the bridge stores it, loses
//! the excess (README, "Delivery guarantees").

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_util::sync::CancellationToken;

use crate::health::{Dependency, Health};
use crate::mapping::PATTERNS;
use crate::pipeline::{Incoming, Origin, Pipeline};
use crate::retry::{Backoff, LogLimiter};
use crate::source::resp::{self, Frame, Push};

/// A quiet connection is pinged after this long...
const PING_EVERY: Duration = Duration::from_secs(10);
/// ...and given up when nothing at all arrived this long after the ping.
const PING_TIMEOUT: Duration = Duration::from_secs(5);
const READ_CHUNK: usize = 64 * 1024;

/// Where the pub/sub connection goes, from `REDIS_URL`.
#[derive(Debug, Clone)]
pub struct Target {
    addr: Addr,
    username: Option<String>,
    password: Option<String>,
}

#[derive(Debug, Clone)]
enum Addr {
    Tcp(String, u16),
    Unix(PathBuf),
}

impl Target {
    pub fn of(client: &redis::Client) -> std::io::Result<Target> {
        let info = client.get_connection_info();
        let addr = match info.addr() {
            redis::ConnectionAddr::Tcp(host, port) => Addr::Tcp(host.clone(), *port),
            redis::ConnectionAddr::Unix(path) => Addr::Unix(path.clone()),
            _ => return Err(std::io::Error::other("TLS connections to Redis (rediss://) are not supported")),
        };
        let settings = info.redis_settings();
        Ok(Target {
            addr,
            username: settings.username().map(str::to_owned),
            password: settings.password().map(str::to_owned),
        })
    }
}

enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    async fn open(addr: &Addr) -> std::io::Result<Conn> {
        Ok(match addr {
            Addr::Tcp(host, port) => {
                let stream = TcpStream::connect((host.as_str(), *port)).await?;
                stream.set_nodelay(true)?;
                Conn::Tcp(stream)
            }
            Addr::Unix(path) => Conn::Unix(UnixStream::connect(path).await?),
        })
    }

    /// Cancel-safe: nothing is read when the future is dropped before it completes.
    async fn read_buf(&mut self, buf: &mut BytesMut) -> std::io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read_buf(buf).await,
            Conn::Unix(s) => s.read_buf(buf).await,
        }
    }

    async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Conn::Tcp(s) => s.write_all(bytes).await,
            Conn::Unix(s) => s.write_all(bytes).await,
        }
    }
}

/// A connection in subscribed mode, with what it read but not yet decoded.
pub struct Subscribed {
    conn: Conn,
    buf: BytesMut,
}

impl Subscribed {
    /// Reads more bytes into the buffer; an error when the connection ended.
    async fn fill(&mut self) -> std::io::Result<()> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        match self.conn.read_buf(&mut self.buf).await? {
            0 => Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "Redis closed the pub/sub connection")),
            _ => Ok(()),
        }
    }

    fn decode(&mut self) -> std::io::Result<Option<Frame>> {
        resp::parse(&mut self.buf).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    async fn next_frame(&mut self) -> std::io::Result<Frame> {
        loop {
            if let Some(frame) = self.decode()? {
                return Ok(frame);
            }
            self.fill().await?;
        }
    }
}

/// Connects, authenticates when the URL carries credentials, and pattern-subscribes to the
/// contract's channels, all within `timeout`.
pub async fn subscribe(target: &Target, timeout: Duration) -> std::io::Result<Subscribed> {
    let connect = async {
        let mut sub = Subscribed { conn: Conn::open(&target.addr).await?, buf: BytesMut::with_capacity(READ_CHUNK) };
        let mut out = BytesMut::new();
        if let Some(password) = &target.password {
            match &target.username {
                Some(user) => resp::encode(&mut out, &[b"AUTH", user.as_bytes(), password.as_bytes()]),
                None => resp::encode(&mut out, &[b"AUTH", password.as_bytes()]),
            }
        }
        let mut args: Vec<&[u8]> = vec![b"PSUBSCRIBE"];
        args.extend(PATTERNS.iter().map(|p| p.as_bytes()));
        resp::encode(&mut out, &args);
        sub.conn.write_all(&out).await?;
        if target.password.is_some() {
            if let Frame::Error(e) = sub.next_frame().await? {
                return Err(std::io::Error::other(format!("Redis refused AUTH: {}", String::from_utf8_lossy(&e))));
            }
        }
        let mut confirmed = 0;
        while confirmed < PATTERNS.len() {
            match sub.next_frame().await?.into_push() {
                Push::Subscribed(_) => confirmed += 1,
                Push::Error(e) => return Err(std::io::Error::other(format!("Redis refused PSUBSCRIBE: {e}"))),
                _ => {}
            }
        }
        Ok(sub)
    };
    tokio::time::timeout(timeout, connect)
        .await
        .unwrap_or_else(|_| Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "Redis pub/sub connect timed out")))
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
        let warn = LogLimiter::new(Duration::from_secs(5));
        loop {
            let subscribed = match conn.take() {
                Some(c) => c,
                None => match subscribe(&self.target, self.connect_timeout).await {
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
    async fn read(&self, mut sub: Subscribed, stop: &CancellationToken) -> bool {
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
                        let channel = String::from_utf8_lossy(&channel).into_owned();
                        let event = Incoming::new(payload, Origin::PubSub { channel });
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
                    if awaiting_pong || sub.conn.write_all(b"*1\r\n$4\r\nPING\r\n").await.is_err() {
                        return false;
                    }
                    awaiting_pong = true;
                }
            }
        }
    }
}
