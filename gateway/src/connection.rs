//! One task per accepted WebSocket: a `biased` select over the close control (drain, slow
//! consumer, admin), the outbound queue, bytes the dispatcher could not write at once, the next
//! client frame and a housekeeping timer (heartbeat and token re-checks). Events for an idle
//! socket do not pass through here: the dispatcher writes them itself (see `outlet`). The select
//! does the I/O; when to wake, what a wake-up is due
//! for and whether a frame is over the rate limit are decided by `timing`. It ends with a
//! [`Closing`] sent to the client, or because the client left; either way one audit line and the
//! connection's span record how. Admission happens before in `handshake`.

pub(crate) mod handshake;
pub mod protocol;
mod replay;
pub mod resume;
mod timing;
pub(crate) mod upgrade;

use crate::app::App;
use crate::auth::{Diner, Endpoint, Identity};
use crate::close::{CloseReason, Closing};
use crate::registry::{Outbound, Registration};
use crate::subscriptions::Lease;
use futures_util::{FutureExt, SinkExt, StreamExt};
use protocol::Inbound;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use timing::{Due, Timing};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// A client's WebSocket: tungstenite over the socket the connection's outlet also writes to.
pub(crate) type WebSocket = tokio_tungstenite::WebSocketStream<crate::outlet::Transport>;

/// Events written per flush when the queue has several waiting.
const WRITE_BATCH: usize = 64;
/// How long a closing socket waits for the client's close frame.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// An admitted connection, ready to run once the upgrade completes.
pub(crate) struct Session {
    pub app: Arc<App>,
    pub identity: Identity,
    /// The diner's token, re-verified on each re-check.
    pub table_token: Option<Box<str>>,
    pub registration: Registration,
    pub lease: Lease,
    /// Staff: the token watched for revocations pushed by Redis (closes through the control);
    /// held for the session's life, unwatched when dropped.
    pub _watch: Option<crate::auth::push::Watch>,
    /// Counts the session among those a shutdown waits for.
    pub _task: tokio_util::task::task_tracker::TaskTrackerToken,
}

/// How a session ended.
enum End {
    Server(Closing),
    /// The client's close frame: code and reason, if it gave them.
    ClientClosed(Option<(u16, Utf8Bytes)>),
    Broken,
}

impl Session {
    fn endpoint(&self) -> Endpoint {
        self.registration.conn.endpoint
    }

    /// The session's task, on the upgraded connection. An `async` block made after the socket,
    /// rather than an `async fn`: the arguments of an `async fn` are moved into its state once
    /// more on its first poll, and kept for its whole life (a second copy of the session and
    /// the socket, or the upgraded connection beside the socket made of it, in every
    /// connection's task). The session comes boxed: the upgrade task keeps the callback's copy
    /// of it beside this future's, and two pointers are smaller than two sessions.
    #[allow(clippy::manual_async_fn, reason = "an async fn would store its arguments twice")]
    pub fn run(
        mut self: Box<Self>,
        upgraded: hyper::upgrade::Upgraded,
    ) -> impl std::future::Future<Output = ()> + Send {
        let config = upgrade::config(&self.app.config.limits);
        let mut socket = upgrade::open(upgraded, Some(&self.registration.conn), config);
        async move {
            let endpoint = self.endpoint().as_str();
            self.app.metrics.connection_opened(endpoint);
            crate::audit::opened(&self.registration.conn);
            let started = Instant::now();
            // Boxed: the replay's JetStream reads are a large state that every connection's task
            // would otherwise carry for its whole life (replays are rare and short).
            let end = match Box::pin(self.replay(&mut socket)).await {
                // Boxed too: inline, the loop's state was laid out beside copies of the session
                // and the socket, and the task of every idle connection was 1.4 KiB larger.
                Ok(()) => Box::pin(self.serve(&mut socket)).await,
                Err(end) => end,
            };
            // From here on only this task writes, the close frame last.
            self.registration.conn.outlet.retire();
            let (label, code, reason, by) = match &end {
                End::Server(closing) => {
                    Box::pin(close_with(&mut socket, closing.code(), closing.reason())).await;
                    (closing.label(), closing.code(), closing.reason(), "server")
                }
                End::ClientClosed(Some((code, reason))) => ("client_closed", *code, reason.as_str(), "client"),
                // 1005: no status code in the client's close frame; 1006: no close frame at all.
                End::ClientClosed(None) => ("client_closed", 1005, "", "client"),
                End::Broken => ("connection_lost", 1006, "", "lost"),
            };
            self.app.metrics.connection_closed(endpoint, label);
            crate::audit::closed(&self.registration.conn, started.elapsed(), code, reason, by);
            let conn = &self.registration.conn;
            crate::traces::connection(conn.endpoint, Some(conn.audience.tenant_id()), &conn.info, code, reason, by);
            conn.outlet.detach();
            drop(self.lease);
        }
    }

    async fn serve(&mut self, socket: &mut WebSocket) -> End {
        let write_timeout = self.app.config.limits.write_timeout;
        let mut timing = Timing::new(Instant::now(), self.timing_settings());
        let conn = self.registration.conn.clone();
        // Made once, not per wake-up: each would register with the close control's token and
        // the timer wheel again (a lock and a timer entry per delivered event).
        let closed = conn.control.closed();
        let wake = tokio::time::sleep_until(timing.wake_at());
        let handed_back = conn.outlet.handed_back();
        tokio::pin!(closed, wake, handed_back);
        // Everything before is written: the dispatcher may write the next events itself.
        conn.outlet.go_direct();
        loop {
            if wake.deadline() != timing.wake_at() {
                wake.as_mut().reset(timing.wake_at());
            }
            tokio::select! {
                biased;
                reason = &mut closed => return End::Server(reason),
                event = conn.outlet.recv() => {
                    if let Err(end) = Box::pin(self.write_events(socket, Some(event), &mut VecDeque::new(), write_timeout)).await {
                        return end;
                    }
                    conn.outlet.go_direct();
                }
                // A frame the socket took only part of, left by the dispatcher (or a reply).
                () = &mut handed_back => {
                    if let Err(end) = Box::pin(self.write_events(socket, None, &mut VecDeque::new(), write_timeout)).await {
                        return end;
                    }
                    conn.outlet.go_direct();
                }
                frame = socket.next() => match frame {
                    Some(Ok(Message::Text(text))) => {
                        if let Err(reason) = timing.on_text(Instant::now()) {
                            return End::Server(reason.into());
                        }
                        if let Some(reply) = Box::pin(self.answer(&text)).await {
                            if !Box::pin(send(socket, Message::Text(reply), write_timeout)).await {
                                return End::Broken;
                            }
                        }
                    }
                    Some(Ok(Message::Binary(_))) => return End::Server(CloseReason::BINARY_FRAME.into()),
                    // Not produced when reading.
                    Some(Ok(Message::Frame(_))) => {}
                    Some(Ok(Message::Close(frame))) => {
                        // tungstenite's reply is the last frame written.
                        conn.outlet.retire();
                        Box::pin(answer_close(socket)).await;
                        return End::ClientClosed(frame.map(|f| (f.code.into(), f.reason)));
                    }
                    None => return End::ClientClosed(None),
                    // Not liveness, but counted against the rate limit (see `Timing`).
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {
                        if let Err(reason) = timing.on_control_frame(Instant::now()) {
                            return End::Server(reason.into());
                        }
                    }
                    Some(Err(error)) => return read_failed(&error),
                },
                () = &mut wake => {
                    let now = Instant::now();
                    match timing.on_wake(now) {
                        Due::Nothing => {}
                        Due::Close(reason) => return End::Server(reason.into()),
                        Due::Recheck => {
                            if let Some(reason) = Box::pin(self.recheck()).await {
                                return End::Server(reason.into());
                            }
                            timing.rechecked(now);
                        }
                    }
                }
            }
        }
    }

    /// The heartbeat, re-check interval (staff and diners differ) and rate limit this connection
    /// runs with.
    fn timing_settings(&self) -> timing::Settings {
        let (limits, auth) = (&self.app.config.limits, &self.app.config.auth);
        let recheck_every = match self.identity {
            Identity::Staff(_) => auth.staff_recheck_interval,
            Identity::Diner(_) => auth.diner_recheck_interval,
        };
        timing::Settings {
            heartbeat_timeout: limits.heartbeat_timeout,
            recheck_every,
            rate_limit: limits.message_rate_limit,
            rate_window: limits.message_rate_window,
        }
    }

    /// Writes `first`, then whatever else waits (the replay's `held` events before the queue's,
    /// which are newer), then flushes once, the outlet's unwritten bytes first. A write blocked
    /// by a client that stopped reading still yields to the close control (a full queue, a
    /// drain, an admin).
    async fn write_events(
        &mut self,
        socket: &mut WebSocket,
        first: Option<Outbound>,
        held: &mut VecDeque<Outbound>,
        timeout: Duration,
    ) -> Result<(), End> {
        let conn = &self.registration.conn;
        // When the bridge received each written event (0: unknown), for the latency histogram.
        let mut received = [0u64; WRITE_BATCH];
        let mut count = 0;
        let written = {
            let write = async {
                let mut next = first;
                while let Some(event) = next.take() {
                    // A connection asked to close writes nothing more: when an event was dropped
                    // for it (a full queue), anything taken after that is newer, and a resuming
                    // client's cursor would pass the dropped event.
                    if conn.control.is_closing() {
                        break;
                    }
                    if let Some(text) = text_for(&conn.outlet, &event) {
                        received[count] = event.received_us.unwrap_or(0);
                        count += 1;
                        socket.feed(Message::Text(text)).await?;
                    }
                    if count < WRITE_BATCH {
                        next = next_in_order(held, &conn.outlet);
                    }
                }
                socket.flush().await
            };
            let mut write = std::pin::pin!(write);
            // A socket with room takes the batch at once: the timeout's timer and the close
            // control's waiter are set up only for a write that has to wait.
            match write.as_mut().now_or_never() {
                Some(written) => Ok(written),
                None => tokio::select! {
                    biased;
                    reason = conn.control.closed() => return Err(End::Server(reason)),
                    written = tokio::time::timeout(timeout, write) => written,
                },
            }
        };
        if !matches!(written, Ok(Ok(()))) {
            return Err(End::Broken);
        }
        if conn.control.is_closing() {
            return Err(End::Server(conn.control.closed().await));
        }
        let now_us = wire::clock::now_micros();
        for received in received[..count].iter().filter(|us| **us > 0) {
            self.app.metrics.delivery_latency_seconds.observe(now_us.saturating_sub(*received) as f64 / 1e6);
        }
        Ok(())
    }

    /// The reply to a client text frame, if any. The rare database path is boxed so that its
    /// state does not enlarge every idle connection's task.
    async fn answer(&self, text: &str) -> Option<Utf8Bytes> {
        let kind = protocol::classify(text);
        let on_waiter = self.endpoint() == Endpoint::Waiter;
        let label = match kind {
            Inbound::Ping => "ping",
            Inbound::RefreshSectors if on_waiter => "refresh_sectors",
            _ => "other",
        };
        self.app.metrics.client_messages.get_or_create(&crate::metrics::KindLabel { kind: label }).inc();
        match (kind, &self.identity) {
            (Inbound::Ping, _) => Some(Utf8Bytes::from_static(protocol::PONG)),
            (Inbound::RefreshSectors, Identity::Staff(staff)) if on_waiter => {
                let sectors = Box::pin(self.app.sectors.fresh(staff.tenant_id, staff.user_id)).await;
                self.registration.conn.set_sectors(sectors.clone());
                Some(protocol::sectors_updated(&sectors).into())
            }
            _ => {
                tracing::debug!(len = text.len(), "ignored client message");
                None
            }
        }
    }

    /// Re-validates the token; `Some` closes the connection.
    async fn recheck(&self) -> Option<CloseReason> {
        let now = crate::auth::unix_now();
        match &self.identity {
            Identity::Staff(staff) => {
                if staff.exp <= now || self.app.is_revoked(staff).await {
                    return Some(CloseReason::TOKEN_REVOKED);
                }
                if self.registration.conn.audience.is_pure_waiter() {
                    let sectors = self.app.sectors.get(staff.tenant_id, staff.user_id).await;
                    self.registration.conn.set_sectors(sectors);
                }
                None
            }
            Identity::Diner(diner) => {
                recheck_diner(&self.app, diner, self.table_token.as_deref().unwrap_or_default(), now)
            }
        }
    }
}

/// The next event to write without waiting: the replay's held live events first, in order, then
/// the queue. Never a queued event before a held one: a resuming connection's mark would move
/// past the held events, and they would be skipped as copies of what it already has.
fn next_in_order(held: &mut VecDeque<Outbound>, outlet: &crate::outlet::Outlet) -> Option<Outbound> {
    held.pop_front().or_else(|| outlet.try_recv())
}

/// What the task writes for an event: as published, or for a resuming client with its cursor,
/// or nothing when the replay already covered it.
fn text_for(outlet: &crate::outlet::Outlet, event: &crate::registry::QueuedEvent) -> Option<Utf8Bytes> {
    match outlet.admit(event)? {
        crate::outlet::Form::Plain => Some(event.payload.clone()),
        crate::outlet::Form::WithCursor => event.with_cursor(),
    }
}

/// Diners: the token verified again; expired closes, another session than the one admitted
/// closes with `Session mismatch`.
fn recheck_diner(app: &App, admitted: &Diner, token: &str, now: i64) -> Option<CloseReason> {
    match app.auth.verify_table(token, now) {
        Ok(diner) if diner.session_id == admitted.session_id && diner.tenant_id == admitted.tenant_id => None,
        Ok(_) => Some(CloseReason::SESSION_MISMATCH),
        Err(crate::auth::AuthError::Expired) => Some(CloseReason::TOKEN_EXPIRED),
        Err(_) => Some(CloseReason::AUTH_FAILED),
    }
}

async fn send(socket: &mut WebSocket, message: Message, timeout: Duration) -> bool {
    matches!(tokio::time::timeout(timeout, socket.send(message)).await, Ok(Ok(())))
}

/// Sends the close frame, then waits briefly for the client's so the close is clean.
pub(crate) async fn close(socket: &mut WebSocket, reason: CloseReason) {
    close_with(socket, reason.code, reason.reason).await
}

/// [`close`] with any code and reason (at most 123 bytes, see [`Closing::operator`]).
pub(crate) async fn close_with(socket: &mut WebSocket, code: u16, reason: &str) {
    let frame = CloseFrame { code: code.into(), reason: Utf8Bytes::from(reason) };
    if !send(socket, Message::Close(Some(frame)), CLOSE_LINGER).await {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_LINGER, async {
        while let Some(Ok(message)) = socket.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// Answers a client's close frame: tungstenite queued the same code as the reply; this read
/// writes it and then sees the end of the stream (bounded by [`CLOSE_LINGER`]). The server then
/// drops the TCP connection, as RFC 6455 section 7.1.1 asks of servers.
async fn answer_close(socket: &mut WebSocket) {
    let _ = tokio::time::timeout(CLOSE_LINGER, async { while let Some(Ok(_)) = socket.next().await {} }).await;
}

/// How a failed read ends the session: a message over the size limit (1009), a frame that
/// breaks the protocol (1002), text that is not UTF-8 (1007), or a lost connection.
fn read_failed(error: &tungstenite::Error) -> End {
    match error {
        tungstenite::Error::Capacity(_) => End::Server(CloseReason::MESSAGE_TOO_LARGE.into()),
        tungstenite::Error::Utf8(_) => End::Server(CloseReason::INVALID_UTF8.into()),
        tungstenite::Error::Protocol(p) if !lost(p) => End::Server(CloseReason::PROTOCOL_ERROR.into()),
        _ => End::Broken,
    }
}

/// Protocol "errors" that only mean the peer went away without a close handshake.
fn lost(error: &tungstenite::error::ProtocolError) -> bool {
    use tungstenite::error::ProtocolError::*;
    matches!(error, ResetWithoutClosingHandshake | SendAfterClosing | ReceivedAfterClosing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::QueuedEvent;
    use resume::{Mark, Request, Resume};

    fn event(sequence: u64) -> Outbound {
        Arc::new(QueuedEvent::new(
            Utf8Bytes::from(format!("{{\"n\":{sequence}}}")),
            None,
            Some(sequence),
            Some(1_000 + sequence),
        ))
    }

    #[test]
    fn held_events_are_written_before_newer_queued_ones_and_none_is_skipped() {
        // After a replay up to 9: live events 10 and 11 were held while it ran, 12 and 13 queued
        // since. The mark must not pass 10 and 11 before they are written.
        let outlet = crate::outlet::Outlet::new(8);
        outlet.set_resume(Some(Resume { request: Request::Live, mark: Some(Mark { sequence: 9, stored_ns: 1_009 }) }));
        let control = crate::registry::Control::default();
        for sequence in [12, 13] {
            assert_eq!(outlet.offer(&event(sequence), &control), crate::outlet::Offer::Queued);
        }
        let mut held: VecDeque<Outbound> = [event(10), event(11)].into();
        let first = held.pop_front().unwrap();
        let mut written = Vec::new();
        let mut next = Some(first);
        while let Some(event) = next.take() {
            if text_for(&outlet, &event).is_some() {
                written.push(event.sequence.unwrap());
            }
            next = next_in_order(&mut held, &outlet);
        }
        assert_eq!(written, [10, 11, 12, 13]);
    }
}
