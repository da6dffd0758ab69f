//! One connection slot: connect (bound to a 127.0.0.x source address, with the `Origin` header and
//! a freshly minted token), receive and time events, ping to stay alive, close on request
//! (churn) or at the end, and reconnect with backoff when the server ends the connection (to the
//! next gateway URL, so a dead replica's clients move to a live one). With resume on, it opens
//! with `resume=live`, keeps the last cursor it received and comes back with it. It returns every
//! connection it held as an [`Incarnation`]; accounting is not its business.

use crate::backoff::{self, Backoff};
use crate::expectations::{Incarnation, Opened};
use crate::population::Member;
use crate::resume;
use crate::stats::Stats;
use crate::tokens::{self, Secrets};
use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use wire::clock::now_micros;

/// How long a closing client keeps reading for the server's close.
pub const CLOSE_WAIT: Duration = Duration::from_secs(2);

pub type Socket = WebSocketStream<TcpStream>;

/// How a member's connection is opened.
pub struct Dialer {
    /// Base URL (`ws://host:port`) and resolved address of each gateway.
    pub gateways: Vec<(String, SocketAddr)>,
    pub origin: Option<String>,
    /// Source addresses 127.0.0.1..=127.0.0.N for loopback gateways (0: the kernel's choice).
    pub source_ips: u32,
    pub secrets: Secrets,
}

/// What every slot of a worker shares.
pub struct Ctx {
    pub run: u64,
    pub dialer: Dialer,
    pub connect_timeout: Duration,
    pub ping_interval: Duration,
    pub connect_permits: Semaphore,
    pub finish: CancellationToken,
    pub stats: Stats,
    /// Open with `resume=live`, reconnect with `resume=<last cursor>`.
    pub resume: bool,
    pub backoff: backoff::Policy,
    /// Unix µs of the gateway kill the parent announced, 0 before (see [`Incarnation`]).
    pub kill_us: AtomicU64,
}

/// Why a connection ended.
enum End {
    Finish,
    Recycled,
    ServerClosed,
}

/// Holds `member`'s slot connected until `ctx.finish`; `on_first` runs after the first attempt.
pub async fn run_slot(
    ctx: Arc<Ctx>,
    member: Member,
    recycle: Arc<Notify>,
    on_first: impl FnOnce(bool),
) -> Vec<Incarnation> {
    let mut held = Vec::new();
    let mut on_first = Some(on_first);
    let mut backoff = Backoff::new(ctx.backoff, member.slot);
    let gateways = ctx.dialer.gateways.len();
    let mut gateway = (member.slot % gateways as u64) as usize;
    let mut cursor: Option<u64> = None;
    while !ctx.finish.is_cancelled() {
        let query = if ctx.resume { resume::param(cursor) } else { String::new() };
        let attempt = async {
            let _permit = ctx.connect_permits.acquire().await.expect("semaphore open");
            if on_first.is_some() {
                ctx.stats.first_attempt_started(now_micros());
            }
            let started = Instant::now();
            let connecting = ctx.dialer.connect(&member, gateway, &query);
            let result =
                tokio::time::timeout(ctx.connect_timeout, connecting).await.unwrap_or_else(|_| Err("timeout".into()));
            (result, started.elapsed())
        };
        let (result, took) = tokio::select! {
            biased;
            _ = ctx.finish.cancelled() => break,
            r = attempt => r,
        };
        if let Some(first) = on_first.take() {
            first(result.is_ok());
        }
        let ws = match result {
            Ok(ws) => ws,
            Err(reason) => {
                ctx.stats.failure(reason);
                gateway = (gateway + 1) % gateways;
                if !pause(&ctx, &mut backoff).await {
                    break;
                }
                continue;
            }
        };
        backoff.opened();
        ctx.stats.connects.fetch_add(1, Relaxed);
        ctx.stats.handshake.record(member.slot, took.as_micros() as u64);
        let opened = match (ctx.resume, cursor) {
            (false, _) => Opened::Plain,
            (true, None) => Opened::Live,
            (true, Some(_)) => Opened::Resumed,
        };
        if opened == Opened::Resumed {
            ctx.stats.resumed.fetch_add(1, Relaxed);
        }
        let (incarnation, end) = session(&ctx, member.slot, ws, &recycle, opened, &mut cursor).await;
        held.push(incarnation);
        match end {
            End::Finish => break,
            End::Recycled => backoff.recycled(),
            End::ServerClosed => {
                gateway = (gateway + 1) % gateways;
                if !pause(&ctx, &mut backoff).await {
                    break;
                }
            }
        }
    }
    held
}

/// Sleeps the next backoff unless the run finishes first; `false` when it did.
async fn pause(ctx: &Ctx, backoff: &mut Backoff) -> bool {
    tokio::select! {
        _ = ctx.finish.cancelled() => false,
        _ = tokio::time::sleep(backoff.next_delay()) => true,
    }
}

/// The address of a `ws://host:port` URL.
pub async fn resolve(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url.strip_prefix("ws://").with_context(|| format!("{url}: only ws:// URLs are supported"))?;
    let host_port = rest.split('/').next().unwrap_or(rest);
    let host_port = if host_port.contains(':') { host_port.to_string() } else { format!("{host_port}:80") };
    let mut addrs = tokio::net::lookup_host(&host_port).await.with_context(|| format!("resolve {host_port}"))?;
    addrs.find(|a| a.is_ipv4()).with_context(|| format!("{host_port} has no IPv4 address"))
}

/// The source address of the `index`-th loopback connection spread over `source_ips`
/// addresses: 127.0.0.1..=127.0.0.N in turn (N at most 250); `None` for 0, the kernel chooses.
/// The clients and the floor's reader (`floor.rs`) both follow it.
pub fn source_ip(index: u64, source_ips: u32) -> Option<Ipv4Addr> {
    (source_ips > 0).then(|| Ipv4Addr::new(127, 0, 0, 1 + (index % u64::from(source_ips.min(250))) as u8))
}

impl Dialer {
    /// Opens `member`'s connection to `self.gateways[gateway]`; `query` (`&resume=...` or
    /// empty) follows the token.
    pub async fn connect(&self, member: &Member, gateway: usize, query: &str) -> Result<Socket, String> {
        let (base, addr) = &self.gateways[gateway];
        let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {}", e.kind()))?;
        if let Some(ip) = source_ip(member.slot, self.source_ips).filter(|_| addr.ip().is_loopback()) {
            socket.bind(SocketAddr::from((ip, 0))).map_err(|e| format!("bind {ip}: {}", e.kind()))?;
        }
        let stream = socket.connect(*addr).await.map_err(|e| format!("tcp: {}", e.kind()))?;
        let _ = stream.set_nodelay(true);
        let url = format!("{base}{}{query}", tokens::connect_path(member, &self.secrets));
        let mut request = url.into_client_request().map_err(|e| format!("request: {e}"))?;
        if let Some(origin) = &self.origin {
            let value = HeaderValue::from_str(origin).map_err(|_| "bad origin".to_string())?;
            request.headers_mut().insert("Origin", value);
        }
        let config =
            WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0).max_write_buffer_size(1 << 20);
        let (ws, _response) =
            tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await.map_err(|e| match e {
                WsError::Http(response) => format!("http {}", response.status().as_u16()),
                other => format!("handshake: {}", short(&other.to_string())),
            })?;
        Ok(ws)
    }
}

pub fn short(text: &str) -> String {
    text.chars().take(60).collect()
}

/// Reads one open connection until the run finishes, the slot is recycled or the server ends it,
/// keeping `cursor` at the last one received.
async fn session(
    ctx: &Ctx,
    slot: u64,
    ws: Socket,
    recycle: &Notify,
    opened: Opened,
    cursor: &mut Option<u64>,
) -> (Incarnation, End) {
    let mut me = Incarnation { slot, connected_us: now_micros(), opened, ..Incarnation::default() };
    ctx.stats.open.fetch_add(1, Relaxed);
    let (mut sink, mut stream) = ws.split();
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ctx.ping_interval, ctx.ping_interval);
    let recycled = recycle.notified();
    tokio::pin!(recycled);
    recycled.as_mut().enable();
    let end = loop {
        tokio::select! {
            biased;
            _ = ctx.finish.cancelled() => break End::Finish,
            _ = &mut recycled => {
                me.closing_us = Some(now_micros());
                break End::Recycled;
            }
            frame = stream.next() => match frame {
                Some(Ok(Message::Text(text))) => on_text(ctx, &mut me, cursor, text.as_str()),
                Some(Ok(Message::Close(frame))) => {
                    ctx.stats.close_code(frame.map_or_else(|| "no code".to_string(), |f| format!("{} {}", u16::from(f.code), short(&f.reason))));
                    me.server_closed = true;
                    break End::ServerClosed;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    ctx.stats.close_code(format!("error: {}", short(&e.to_string())));
                    me.server_closed = true;
                    break End::ServerClosed;
                }
                None => {
                    ctx.stats.close_code("eof".into());
                    me.server_closed = true;
                    break End::ServerClosed;
                }
            },
            _ = ping.tick() => {
                if sink.send(Message::Text("ping".into())).await.is_err() {
                    me.server_closed = true;
                    break End::ServerClosed;
                }
            }
        }
    };
    ctx.stats.open.fetch_sub(1, Relaxed);
    match end {
        End::ServerClosed => {
            ctx.stats.server_closes.fetch_add(1, Relaxed);
        }
        End::Recycled | End::Finish => {
            if matches!(end, End::Recycled) {
                ctx.stats.recycles.fetch_add(1, Relaxed);
            }
            // Close politely and keep reading what was already on its way.
            let _ = sink.send(Message::Close(None)).await;
            let drain = async {
                while let Some(Ok(frame)) = stream.next().await {
                    if let Message::Text(text) = frame {
                        on_text(ctx, &mut me, cursor, text.as_str());
                    }
                }
            };
            let _ = tokio::time::timeout(CLOSE_WAIT, drain).await;
        }
    }
    me.ended_us = now_micros();
    (me, end)
}

fn on_text(ctx: &Ctx, me: &mut Incarnation, cursor: &mut Option<u64>, text: &str) {
    let frame = resume::read(text);
    if frame.cursor.is_some() {
        *cursor = frame.cursor;
    }
    match (frame.marker, frame.gap) {
        (Some((run, id, sent_us)), _) if run == ctx.run => {
            let now = now_micros();
            ctx.stats.received.fetch_add(1, Relaxed);
            ctx.stats.latency.record(me.slot, now.saturating_sub(sent_us));
            me.received.push(id);
            let kill_us = ctx.kill_us.load(Relaxed);
            if kill_us != 0 && sent_us >= kill_us && me.first_after_kill.is_none() {
                me.first_after_kill = Some((sent_us, now));
            }
        }
        (_, Some(reason)) => ctx.stats.resume_gap(reason),
        _ => {
            ctx.stats.foreign.fetch_add(1, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_take_the_source_addresses_in_turn() {
        assert_eq!(source_ip(0, 0), None);
        assert_eq!(source_ip(0, 16), Some(Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(source_ip(17, 16), Some(Ipv4Addr::new(127, 0, 0, 2)));
        assert_eq!(source_ip(15, 16), Some(Ipv4Addr::new(127, 0, 0, 16)));
        assert_eq!(source_ip(250, 1000), Some(Ipv4Addr::new(127, 0, 0, 1)), "at most 250 addresses");
    }
}
