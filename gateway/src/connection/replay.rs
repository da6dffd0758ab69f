//! The replay half of resume: before a resuming connection enters its main loop, the stream is
//! checked to still hold the event the client's cursor names (same sequence, same epoch, same
//! tenant), then the events of its tenant stored after it are read from JetStream, filtered by
//! the same routing rule as live delivery, and written with their cursors. Live events arriving
//! meanwhile are taken off the queue as they come: those the replay covers are dropped, the
//! others held (bounded) and written after. Whatever stops the replay from being complete is one
//! `RESUME_GAP` frame, after which every live event is written: a gap never skips live events.

use super::resume::{self, Mark, Request};
use super::{send, End, Session, WebSocket};
use crate::history::{self, Reader, Start};
use crate::registry::Outbound;
use crate::routing;
use std::collections::VecDeque;
use tokio_tungstenite::tungstenite::Message;

/// Why a replay cannot be complete: the `reason` of the gap signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gap {
    /// Older than what the stream still holds.
    Expired,
    /// Beyond the stream's last sequence: another incarnation of the stream, or a made-up cursor.
    BeyondEnd,
    /// The stream holds no event of this tenant with that sequence and epoch: it was deleted and
    /// created again, or restored, since the cursor was handed out.
    EpochMismatch,
    TooMany,
    Unavailable,
}

impl Gap {
    fn reason(self) -> &'static str {
        match self {
            Gap::Expired => "history_expired",
            Gap::BeyondEnd => "cursor_beyond_end",
            Gap::EpochMismatch => "epoch_mismatch",
            Gap::TooMany => "too_many_events",
            Gap::Unavailable => "history_unavailable",
        }
    }
}

/// The gap, if any, that the range of the stream shows before anything is read.
fn range_gap(cursor: u64, first: u64, last: u64) -> Option<Gap> {
    if cursor > last {
        Some(Gap::BeyondEnd)
    } else if cursor == 0 {
        // Everything the stream holds: complete unless it no longer starts at 1.
        (first > 1 && last > 0).then_some(Gap::Expired)
    } else if cursor < first {
        // The cursor's own event is gone: the replay cannot be checked, nor known complete.
        Some(Gap::Expired)
    } else {
        None
    }
}

impl Session {
    /// Replays what the cursor asks for; `Err` ends the session.
    pub(super) async fn replay(&mut self, socket: &mut WebSocket) -> Result<(), End> {
        let Some(state) = self.registration.conn.outlet.resume() else { return Ok(()) };
        let timeout = self.app.config.limits.write_timeout;
        let (cursor, epoch) = match state.request {
            Request::Live => return Ok(()),
            Request::Invalid => return gap_signal(socket, None, None, "invalid_cursor", timeout).await,
            Request::After { cursor, epoch } => (cursor, epoch),
        };
        tracing::debug!(cursor, epoch, "resume: replay requested");
        let tenant_id = self.registration.conn.audience.tenant_id();
        let js = async_nats::jetstream::new(self.app.nats.clone());
        // The cursor's own event is read first, to check it.
        let start = if cursor == 0 { Start::After(0) } else { Start::At(cursor) };
        let mut reader = match history::open(&js, tenant_id, start).await {
            Ok(reader) => reader,
            Err(error) => {
                tracing::warn!(%error, tenant_id, "resume: history unavailable");
                return gap_signal(socket, Some(cursor), None, Gap::Unavailable.reason(), timeout).await;
            }
        };
        tracing::debug!(
            cursor,
            pending = reader.pending,
            first = reader.first_sequence,
            last = reader.last_sequence,
            newest = reader.newest,
            "resume: history opened"
        );
        // The highest sequence read and the latest time the stream stored what was read (`None`
        // once an event came without its time).
        let mut read: Option<(u64, u64)> = None;
        let mut timed = true;
        let mut note_read = |stored: &history::Stored| {
            let (sequence, ns) = read.unwrap_or((0, 0));
            timed &= stored.stored_ns.is_some();
            read = Some((sequence.max(stored.sequence), ns.max(stored.stored_ns.unwrap_or(0))));
        };
        let checked = match range_gap(cursor, reader.first_sequence, reader.last_sequence) {
            Some(gap) => Err(gap),
            None if cursor == 0 => Ok(()),
            None => check_cursor(&mut reader, cursor, epoch).await.map(|own| note_read(&own)),
        };
        let to_replay = reader.pending.saturating_sub(u64::from(cursor > 0));
        let checked =
            checked.and_then(
                |()| {
                    if to_replay > self.app.config.resume_max_events {
                        Err(Gap::TooMany)
                    } else {
                        Ok(())
                    }
                },
            );
        if let Err(gap) = checked {
            if gap != Gap::Unavailable {
                tracing::debug!(tenant_id, cursor, epoch, reason = gap.reason(), "resume: gap");
            }
            return gap_signal(socket, Some(cursor), Some(reader.first_sequence), gap.reason(), timeout).await;
        }
        // The reader yields every event of the tenant up to its newest when opened (after this
        // connection was registered): a live copy of any of them is dropped as it comes.
        let mut floor = cursor.max(reader.newest);
        let held_limit = self.app.config.limits.send_queue_size * 4;
        let mut held = VecDeque::new();
        let mut replayed = 0u64;
        loop {
            // Live events are taken off the queue while the replay waits for the stream and while
            // it waits for the client to take a replayed event, so a burst published just before
            // the reconnect cannot fill it (a full queue would cut the client off as too slow).
            // Those the replay covers are dropped at once.
            let outlet = &self.registration.conn.outlet;
            let item = tokio::select! {
                biased;
                live = outlet.recv() => {
                    hold(live, floor, &mut held, held_limit)?;
                    continue;
                }
                item = reader.next() => item,
            };
            let Some(item) = item else { break };
            let stored = match item {
                Ok(stored) => stored,
                Err(error) => {
                    tracing::warn!(%error, tenant_id, "resume: replay interrupted");
                    let signal = resume::gap(Some(cursor), Some(reader.first_sequence), Gap::Unavailable.reason());
                    if !send(socket, Message::Text(signal.into()), timeout).await {
                        return Err(End::Broken);
                    }
                    break;
                }
            };
            // The newest event may have left the stream meanwhile and a later one end the read:
            // the floor follows every replayed sequence so live copies are skipped at the seam.
            floor = floor.max(stored.sequence);
            note_read(&stored);
            if !self.receives(&stored) {
                continue;
            }
            let text =
                resume::with_cursor(&String::from_utf8_lossy(&stored.payload), stored.sequence, stored.stored_ns);
            let sending = send(socket, Message::Text(text.into()), timeout);
            tokio::pin!(sending);
            let sent = loop {
                tokio::select! {
                    biased;
                    sent = &mut sending => break sent,
                    live = outlet.recv() => hold(live, floor, &mut held, held_limit)?,
                }
            };
            if !sent {
                return Err(End::Broken);
            }
            replayed += 1;
        }
        tracing::debug!(tenant_id, cursor, replayed, floor, "resume: replay done");
        self.registration.conn.outlet.set_mark(Mark::after_replay(floor, read.filter(|_| timed)));
        while let Some(live) = held.pop_front() {
            self.write_events(socket, Some(live), &mut held, timeout).await?;
        }
        Ok(())
    }

    /// Whether this connection receives the stored event live.
    fn receives(&self, stored: &history::Stored) -> bool {
        let conn = &self.registration.conn;
        stored.scope().is_some_and(|scope| routing::receives(&conn.audience, &conn.sectors(), &scope))
    }
}

/// A live event that came during the replay: dropped when the replay covers it (at or below
/// `floor`), held to be written after it otherwise. More than `limit` held ends the session as
/// too slow.
fn hold(live: Outbound, floor: u64, held: &mut VecDeque<Outbound>, limit: usize) -> Result<(), End> {
    if live.sequence.is_some_and(|s| s <= floor) {
        Ok(())
    } else if held.len() < limit {
        held.push_back(live);
        Ok(())
    } else {
        Err(End::Server(crate::close::CloseReason::SLOW_CONSUMER.into()))
    }
}

/// Reads the cursor's own event: it must be there, with the epoch the client holds (when it
/// sent one). Without an epoch (the earlier cursor format) an event of this tenant at that
/// sequence is all that can be checked.
async fn check_cursor(reader: &mut Reader, cursor: u64, epoch: Option<u64>) -> Result<history::Stored, Gap> {
    match reader.next().await {
        Some(Ok(stored)) if stored.sequence == cursor && epoch.is_none_or(|e| stored.stored_ns == Some(e)) => {
            Ok(stored)
        }
        Some(Ok(_)) | None => Err(Gap::EpochMismatch),
        Some(Err(error)) => {
            tracing::warn!(%error, "resume: history unavailable");
            Err(Gap::Unavailable)
        }
    }
}

/// Writes a gap signal; the session goes on live with every event (no mark yet).
async fn gap_signal(
    socket: &mut WebSocket,
    after: Option<u64>,
    oldest: Option<u64>,
    reason: &str,
    timeout: std::time::Duration,
) -> Result<(), End> {
    let signal = resume::gap(after, oldest, reason);
    if send(socket, Message::Text(signal.into()), timeout).await {
        Ok(())
    } else {
        Err(End::Broken)
    }
}

#[cfg(test)]
mod tests {
    use super::{range_gap, Gap};

    #[test]
    fn the_range_of_the_stream_decides_first() {
        // Stream holding 10..=20.
        assert_eq!(range_gap(21, 10, 20), Some(Gap::BeyondEnd), "beyond the end: another stream");
        assert_eq!(range_gap(25, 1, 0), Some(Gap::BeyondEnd), "an empty, re-created stream");
        assert_eq!(range_gap(9, 10, 20), Some(Gap::Expired), "the cursor's event is gone");
        assert_eq!(range_gap(3, 10, 20), Some(Gap::Expired));
        assert_eq!(range_gap(10, 10, 20), None);
        assert_eq!(range_gap(20, 10, 20), None, "the last event: checked, nothing to replay");
        assert_eq!(range_gap(0, 1, 20), None, "everything");
        assert_eq!(range_gap(0, 10, 20), Some(Gap::Expired), "everything, but the start is gone");
        assert_eq!(range_gap(0, 1, 0), None, "everything of an empty stream");
    }
}
