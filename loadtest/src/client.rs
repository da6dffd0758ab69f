//! One connection slot: connect (bound to a 127.0.0.x source address, with the `Origin` header and
//! a freshly minted token), receive and time events, ping to stay alive, close on request
//! (churn) or at the end, and reconnect with backoff when the server ends the connection. It
//! returns every connection it held as an [`Incarnation`]; accounting is not its business.

use crate::events::parse_marker;
use crate::expectations::Incarnation;
use crate::population::Member;
use crate::stats::Stats;
use crate::tokens::{self, Secrets};
use futures_util::{SinkExt, StreamExt};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
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
use wire::tokens::now_micros;

/// How long a closing client keeps reading for the server's close.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What every slot of a worker shares.
pub struct Ctx {
    pub run: u64,
    /// Base URL (`ws://host:port`) and resolved address of each gateway.
    pub gateways: Vec<(String, SocketAddr)>,
    pub origin: Option<String>,
    pub source_ips: u32,
    pub connect_timeout: Duration,
    pub ping_interval: Duration,
    pub secrets: Secrets,
    pub connect_permits: Semaphore,
    pub finish: CancellationToken,
    pub stats: Stats,
}

/// Why a connection ended.
enum End {
    Finish,
    Recycled,
    ServerClosed,
}

/// Holds `member`'s slot connected until `ctx.finish`; `on_first` runs after the first attempt.
pub async fn run_slot(ctx: Arc<Ctx>, member: Member, recycle: Arc<Notify>, on_first: impl FnOnce(bool)) -> Vec<Incarnation> {
    let mut held = Vec::new();
    let mut on_first = Some(on_first);
    let mut backoff = BACKOFF_MIN;
    while !ctx.finish.is_cancelled() {
        let attempt = async {
            let _permit = ctx.connect_permits.acquire().await.expect("semaphore open");
            if on_first.is_some() {
                ctx.stats.first_attempt_started(now_micros());
            }
            let started = Instant::now();
            let result = tokio::time::timeout(ctx.connect_timeout, connect(&ctx, &member)).await.unwrap_or_else(|_| Err("timeout".into()));
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
                if !pause(&ctx, &mut backoff).await {
                    break;
                }
                continue;
            }
        };
        ctx.stats.connects.fetch_add(1, Relaxed);
        ctx.stats.handshake.record(member.slot, took.as_micros() as u64);
        let (incarnation, end) = session(&ctx, member.slot, ws, &recycle).await;
        held.push(incarnation);
        match end {
            End::Finish => break,
            End::Recycled => backoff = BACKOFF_MIN,
            End::ServerClosed => {
                if !pause(&ctx, &mut backoff).await {
                    break;
                }
            }
        }
    }
    held
}

/// Sleeps `backoff` (doubling it) unless the run finishes first; `false` when it did.
async fn pause(ctx: &Ctx, backoff: &mut Duration) -> bool {
    let wait = *backoff;
    *backoff = (*backoff * 2).min(BACKOFF_MAX);
    tokio::select! {
        _ = ctx.finish.cancelled() => false,
        _ = tokio::time::sleep(wait) => true,
    }
}

async fn connect(ctx: &Ctx, member: &Member) -> Result<WebSocketStream<TcpStream>, String> {
    let (base, addr) = &ctx.gateways[(member.slot % ctx.gateways.len() as u64) as usize];
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {}", e.kind()))?;
    if ctx.source_ips > 0 && addr.ip().is_loopback() {
        let ip = Ipv4Addr::new(127, 0, 0, 1 + (member.slot % ctx.source_ips as u64) as u8);
        socket.bind(SocketAddr::from((ip, 0))).map_err(|e| format!("bind {ip}: {}", e.kind()))?;
    }
    let stream = socket.connect(*addr).await.map_err(|e| format!("tcp: {}", e.kind()))?;
    let _ = stream.set_nodelay(true);
    let url = format!("{base}{}", tokens::connect_path(member, &ctx.secrets));
    let mut request = url.into_client_request().map_err(|e| format!("request: {e}"))?;
    if let Some(origin) = &ctx.origin {
        let value = HeaderValue::from_str(origin).map_err(|_| "bad origin".to_string())?;
        request.headers_mut().insert("Origin", value);
    }
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0).max_write_buffer_size(1 << 20);
    let (ws, _response) = tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await.map_err(|e| match e {
        WsError::Http(response) => format!("http {}", response.status().as_u16()),
        other => format!("handshake: {}", short(&other.to_string())),
    })?;
    Ok(ws)
}

fn short(text: &str) -> String {
    text.chars().take(60).collect()
}

/// Reads one open connection until the run finishes, the slot is recycled or the server ends it.
async fn session(ctx: &Ctx, slot: u64, ws: WebSocketStream<TcpStream>, recycle: &Notify) -> (Incarnation, End) {
    let mut me = Incarnation { slot, connected_us: now_micros(), ..Incarnation::default() };
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
                Some(Ok(Message::Text(text))) => on_text(ctx, &mut me, text.as_str()),
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
                        on_text(ctx, &mut me, text.as_str());
                    }
                }
            };
            let _ = tokio::time::timeout(CLOSE_WAIT, drain).await;
        }
    }
    (me, end)
}

fn on_text(ctx: &Ctx, me: &mut Incarnation, text: &str) {
    match parse_marker(text) {
        Some((run, id, sent_us)) if run == ctx.run => {
            ctx.stats.received.fetch_add(1, Relaxed);
            ctx.stats.latency.record(me.slot, now_micros().saturating_sub(sent_us));
            me.received.push(id);
        }
        _ => {
            ctx.stats.foreign.fetch_add(1, Relaxed);
        }
    }
}
