//! The replay half of resume: before a resuming connection enters its main loop, the events of
//! its tenant stored after the client's cursor are read from JetStream, filtered by the same
//! routing rule as live delivery, and written with their cursors. Live events arriving
//! meanwhile are taken off the queue as they come: those the replay covers are dropped, the
//! others held (bounded) and written after.

use super::resume::{self, Request};
use super::{send, End, Session};
use crate::history::{self, Start};
use crate::routing::{self, EventScope};
use axum::extract::ws::{Message, WebSocket};
use std::collections::VecDeque;
use wire::event_types::TypeClass;

impl Session {
    /// Replays what the cursor asks for; `Err` ends the session.
    pub(super) async fn replay(&mut self, socket: &mut WebSocket) -> Result<(), End> {
        let Some(mut state) = self.resume else { return Ok(()) };
        let timeout = self.app.config.limits.write_timeout;
        let after = match state.request {
            Request::Live => return Ok(()),
            Request::Invalid => {
                let signal = resume::gap(None, None, "invalid_cursor");
                return if send(socket, Message::Text(signal.into()), timeout).await {
                    Ok(())
                } else {
                    Err(End::Broken)
                };
            }
            Request::After(after) => after,
        };
        tracing::debug!(after, "resume: replay requested");
        let conn = self.registration.conn.clone();
        let tenant_id = conn.audience.tenant_id();
        let js = async_nats::jetstream::new(self.app.nats.clone());
        let mut reader =
            match history::open(&js, vec![wire::subject::events_tenant_filter(tenant_id)], Start::After(after)).await {
                Ok(reader) => reader,
                Err(error) => {
                    tracing::warn!(%error, tenant_id, "resume: history unavailable");
                    let signal = resume::gap(Some(after), None, "history_unavailable");
                    return if send(socket, Message::Text(signal.into()), timeout).await {
                        Ok(())
                    } else {
                        Err(End::Broken)
                    };
                }
            };
        tracing::debug!(
            after,
            pending = reader.pending,
            first = reader.first_sequence,
            last = reader.last_sequence,
            "resume: history opened"
        );
        state.floor = after.max(reader.last_sequence);
        let expired = after + 1 < reader.first_sequence && after < reader.last_sequence;
        let too_many = reader.pending > self.app.config.resume_max_events;
        if expired || too_many {
            let reason = if expired { "history_expired" } else { "too_many_events" };
            let signal = resume::gap(Some(after), Some(reader.first_sequence), reason);
            self.resume = Some(state);
            return if send(socket, Message::Text(signal.into()), timeout).await { Ok(()) } else { Err(End::Broken) };
        }
        let held_limit = self.app.config.limits.send_queue_size * 4;
        let mut held = VecDeque::new();
        let mut replayed = 0u64;
        loop {
            // Live events are taken off the queue while the replay waits for the stream, so a
            // burst published just before the reconnect cannot fill it (a full queue would cut
            // the client off as too slow). Those the replay covers are dropped at once.
            let item = tokio::select! {
                biased;
                live = self.queue.recv() => {
                    match live {
                        Some(live) if live.sequence.is_some_and(|s| s <= state.floor) => {}
                        Some(live) if held.len() < held_limit => held.push_back(live),
                        _ => return Err(End::Server(super::protocol::CloseReason::SLOW_CONSUMER.into())),
                    }
                    continue;
                }
                item = reader.next() => item,
            };
            let Some(item) = item else { break };
            let stored = match item {
                Ok(stored) => stored,
                Err(error) => {
                    tracing::warn!(%error, tenant_id, "resume: replay interrupted");
                    let signal = resume::gap(Some(after), Some(reader.first_sequence), "history_unavailable");
                    if !send(socket, Message::Text(signal.into()), timeout).await {
                        return Err(End::Broken);
                    }
                    break;
                }
            };
            // The consumer may deliver events stored after `last_sequence` was read; the floor
            // follows every replayed sequence so live copies of them are skipped at the seam.
            state.floor = state.floor.max(stored.sequence);
            let Some(text) = self.routed(&stored) else { continue };
            if !send(socket, Message::Text(resume::with_cursor(&text, stored.sequence).into()), timeout).await {
                return Err(End::Broken);
            }
            replayed += 1;
        }
        tracing::debug!(tenant_id, after, replayed, floor = state.floor, "resume: replay done");
        self.resume = Some(state);
        while let Some(live) = held.pop_front() {
            self.write_events(socket, live, timeout).await?;
        }
        Ok(())
    }

    /// The stored event's text if this connection receives it live.
    fn routed(&self, stored: &history::Stored) -> Option<String> {
        let subject = wire::subject::EventSubject::parse(&stored.subject)?;
        let envelope = wire::envelope::parse(&stored.payload).ok()?;
        let conn = &self.registration.conn;
        let scope = EventScope {
            tenant_id: envelope.tenant_id,
            branch_id: envelope.branch_id.unwrap_or(subject.branch_id),
            class: TypeClass::of(&envelope.event_type),
            sector_id: envelope.sector_id,
            session_id: envelope.session_id,
        };
        routing::receives(&conn.audience, &conn.sectors(), &scope)
            .then(|| String::from_utf8_lossy(&stored.payload).into_owned())
    }
}
