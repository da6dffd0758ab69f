//! Re-reading what a tenant subscription missed while the NATS connection was down. Core NATS
//! keeps nothing for a subscriber that is not connected: every event re-published on
//! `live.<tenant>.>` between the loss of the connection and the resubscription on the next one
//! would be lost for every client of this replica, resume-capable or not. So after each
//! reconnect a tenant's listener reads those events from the `EVENTS` stream, from just after the
//! last sequence it dispatched (or from shortly before the disconnect when it had dispatched
//! none), and dispatches them through the normal path before any live message; the live copies
//! of what it re-read are then skipped by sequence (see [`crate::subscriptions`]).
//!
//! In a cluster the resubscription reaches the node that re-publishes (the stream leader) a
//! little after the node the replica reconnected to has confirmed it, so the first live message
//! after a reconnect marks the seam: the listener re-reads everything stored before it. A tenant
//! with no live traffic is re-read once [`SETTLE`] has passed. A failed read is retried until
//! [`GIVE_UP`]; live messages wait in the subscription's buffer meanwhile.
//!
//! A reconnect is noticed through the client's connect counter, which the client library bumps
//! before it resubscribes: a live message read after the bump was received on the new connection.

use crate::dispatch::{Dispatcher, Meta, Outcome};
use crate::history::{self, HistoryError, Start};
use crate::metrics::Metrics;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// How far before the disconnect a listener that had dispatched nothing yet starts reading.
const BEFORE_DISCONNECT: Duration = Duration::from_secs(2);
/// How long the new connection may take to confirm the resubscriptions.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long after a reconnect a tenant without live traffic is re-read.
pub const SETTLE: Duration = Duration::from_secs(1);
/// How long a failing re-read is retried before the listener carries on without it.
const GIVE_UP: Duration = Duration::from_secs(30);

/// The state of the NATS connection as the listeners need it, fed by the client's event callback.
#[derive(Clone)]
pub struct Link {
    /// The time of the last disconnect; changed on every disconnect and every connect.
    tx: watch::Sender<Option<SystemTime>>,
}

impl Default for Link {
    fn default() -> Self {
        Link { tx: watch::channel(None).0 }
    }
}

impl Link {
    pub fn disconnected(&self) {
        self.tx.send_replace(Some(SystemTime::now()));
    }

    pub fn connected(&self) {
        self.tx.send_modify(|_| ());
    }

    /// Wakes on every change from now on.
    pub fn watch(&self) -> watch::Receiver<Option<SystemTime>> {
        self.tx.subscribe()
    }
}

/// What one listener knows about its place in the stream.
pub struct Position {
    /// The client's connect count when the listener last checked.
    connects: u64,
    /// The highest stream sequence dispatched.
    pub last: Option<u64>,
    /// Live messages at or below this sequence were dispatched by a recovery: skip them. Cleared
    /// by the first live message above it, so a stream that starts again at sequence 1 (deleted
    /// and created anew) is not ignored.
    floor: Option<u64>,
}

impl Position {
    pub fn new(client: &async_nats::Client) -> Position {
        Position { connects: connects(client), last: None, floor: None }
    }

    /// Whether the client connected again since the last call.
    pub fn reconnected(&mut self, client: &async_nats::Client) -> bool {
        let now = connects(client);
        std::mem::replace(&mut self.connects, now) != now
    }

    /// Whether a live message with this sequence is new; records it.
    pub fn admit(&mut self, sequence: Option<u64>) -> bool {
        let Some(sequence) = sequence else { return true };
        if let Some(floor) = self.floor {
            if sequence <= floor {
                return false;
            }
            self.floor = None;
        }
        self.last = Some(sequence);
        true
    }
}

fn connects(client: &async_nats::Client) -> u64 {
    client.statistics().connects.load(Ordering::Relaxed)
}

/// One re-read after a reconnect: every stored event of `tenant_id` after the last one dispatched
/// and before `until` (the sequence of the first live message after the reconnect; `None`: up to
/// the stream's end).
pub struct Recovery<'a> {
    pub dispatcher: &'a Dispatcher,
    pub metrics: &'a Metrics,
    pub tenant_id: u64,
    pub until: Option<u64>,
    /// Where a listener that had dispatched nothing starts (shortly before this).
    pub disconnected_at: Option<SystemTime>,
}

impl Recovery<'_> {
    /// Dispatches what was missed, retrying a failing read until [`GIVE_UP`]; returns how many
    /// events it dispatched, or the last error once it gave up.
    pub async fn run(&self, client: &async_nats::Client, position: &mut Position) -> Result<u64, HistoryError> {
        let tenant_id = self.tenant_id;
        // The resubscription was written before this PING.
        if !matches!(tokio::time::timeout(FLUSH_TIMEOUT, client.flush()).await, Ok(Ok(()))) {
            tracing::warn!(tenant_id, "NATS did not confirm the resubscription in time; re-reading the stream anyway");
        }
        let js = async_nats::jetstream::new(client.clone());
        let give_up = tokio::time::Instant::now() + GIVE_UP;
        let mut recovered = 0;
        let mut attempt = 0;
        let result = loop {
            match self.read(&js, position, &mut recovered).await {
                Ok(()) => break Ok(recovered),
                Err(error) if tokio::time::Instant::now() >= give_up => break Err(error),
                Err(error) => {
                    attempt += 1;
                    tracing::debug!(tenant_id, attempt, %error, "re-reading the stream after a reconnect failed; retrying");
                    tokio::time::sleep(wire::natsconn::reconnect_delay(attempt + 1)).await;
                }
            }
        };
        position.floor = position.last;
        self.metrics.nats_recovered_events.inc_by(recovered);
        result
    }

    /// One attempt: dispatches from just after `position.last`, advancing it.
    async fn read(
        &self,
        js: &async_nats::jetstream::Context,
        position: &mut Position,
        recovered: &mut u64,
    ) -> Result<(), HistoryError> {
        let tenant_id = self.tenant_id;
        let start = match (position.last, self.disconnected_at) {
            (Some(last), _) => Start::After(last),
            (None, Some(at)) => Start::Since((at - BEFORE_DISCONNECT).into()),
            (None, None) => return Ok(()),
        };
        if let (Start::After(last), Some(until)) = (start, self.until) {
            if last + 1 >= until {
                return Ok(());
            }
        }
        let mut reader = history::open(js, vec![wire::subject::events_tenant_filter(tenant_id)], start).await?;
        if let Start::After(last) = start {
            if last + 1 < reader.first_sequence && last < reader.last_sequence {
                self.metrics.nats_recovery_incomplete.inc();
                tracing::warn!(
                    tenant_id,
                    last,
                    first = reader.first_sequence,
                    "events missed during the NATS reconnect are no longer in the stream"
                );
            }
        }
        while let Some(stored) = reader.next().await {
            let stored = stored?;
            if self.until.is_some_and(|until| stored.sequence >= until) {
                break;
            }
            if position.last.is_some_and(|last| stored.sequence <= last) {
                continue;
            }
            position.last = Some(stored.sequence);
            let meta = Meta { received_us: stored.received_us, sequence: Some(stored.sequence) };
            if self.dispatcher.dispatch_traced(tenant_id, &stored.subject, stored.payload, meta, None)
                != Outcome::Duplicate
            {
                *recovered += 1;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn position() -> Position {
        Position { connects: 1, last: None, floor: None }
    }

    #[test]
    fn live_messages_raise_the_last_sequence() {
        let mut p = position();
        assert!(p.admit(Some(5)));
        assert!(p.admit(None));
        assert!(p.admit(Some(7)));
        assert_eq!(p.last, Some(7));
    }

    #[test]
    fn the_floor_skips_re_read_copies_once() {
        let mut p = position();
        p.last = Some(10);
        p.floor = Some(10);
        assert!(!p.admit(Some(9)));
        assert!(!p.admit(Some(10)));
        assert!(p.admit(Some(11)));
        // Past the floor, a stream that started again is followed.
        assert!(p.admit(Some(1)));
        assert_eq!(p.last, Some(1));
    }
}
