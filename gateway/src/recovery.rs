//! Re-reading what a tenant subscription missed while the NATS connection was down, or before a
//! new subscription reached the server that re-publishes (the stream leader). Core NATS
//! keeps nothing for a subscriber that is not connected: every event re-published on
//! `live.<tenant>.>` between the loss of the connection and the resubscription on the next one
//! would be lost for every client of this replica, resume-capable or not. So after each
//! reconnect a tenant's listener reads those events from the `EVENTS` stream, from just after the
//! last sequence it dispatched (or from shortly before the disconnect when it had dispatched
//! none), and dispatches them through the normal path before any live message; the live copies
//! of what it re-read are then skipped by sequence (see [`crate::subscriptions`]).
//!
//! The node the replica is connected to has a (re)subscription once it answered a request
//! written after it ([`round_trip`]: `flush()` of async-nats only writes the socket). In a
//! cluster the subscription reaches the node that re-publishes (the stream leader) a little
//! later, so the first live message after a reconnect, or after a new subscription, marks the
//! seam: the listener re-reads everything stored before it (from the stream's last sequence at
//! the confirmation, for a new subscription). A tenant with no live traffic is also re-read once
//! [`SETTLE`] has passed; the seam stays open until a live message arrives. A failed read is
//! retried until [`GIVE_UP`]; live messages wait in the subscription's buffer meanwhile.
//!
//! A reconnect is noticed through the client's connect counter, which the client library bumps
//! before it resubscribes: a live message read after the bump was received on the new connection.
//!
//! A new leader of `EVENTS` opens a seam too. Only the leader re-publishes, when it applies a
//! message; a leader that dies after a message was committed but before it applied it leaves
//! the message to its followers, which store it without re-publishing. Every later message
//! comes from the new leader, so at its election advisory (`LEADER_ADVISORY`) each listener
//! re-reads what was stored between the last sequence it dispatched and the next live message,
//! as after a reconnect. The advisory is published before the new leader applies its first
//! message, and a listener takes a pending advisory before a pending live message. (Should a
//! listener still dispatch a live message of the new leader first, the re-read starts after it
//! and what the dead leader left unpublished is only in the stream: for catch-up and resume.)

use crate::dispatch::{Dispatcher, Meta, Outcome};
use crate::history::{self, HistoryError, Start};
use crate::metrics::Metrics;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// How far before the disconnect a listener that had dispatched nothing yet starts reading.
const BEFORE_DISCONNECT: Duration = Duration::from_secs(2);
/// How long one [`round_trip`] waits for the server's answer.
const ROUND_TRIP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long after a reconnect a tenant without live traffic is re-read.
pub const SETTLE: Duration = Duration::from_secs(1);
/// How long a failing re-read is retried before the listener carries on without it.
const GIVE_UP: Duration = Duration::from_secs(30);

/// The advisory a new leader of `EVENTS` publishes.
pub const LEADER_ADVISORY: &str = "$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.EVENTS";

/// The state of the NATS connection as the listeners need it, fed by the client's event callback
/// and the leader advisories.
#[derive(Clone)]
pub struct Link {
    /// The time of the last disconnect; changed on every disconnect and every connect.
    tx: watch::Sender<Option<SystemTime>>,
    /// How many leader elections of `EVENTS` this replica heard of.
    leaders: watch::Sender<u64>,
}

impl Default for Link {
    fn default() -> Self {
        Link { tx: watch::channel(None).0, leaders: watch::channel(0).0 }
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

    pub fn leader_elected(&self) {
        self.leaders.send_modify(|n| *n += 1);
    }

    /// Wakes on every leader election from now on.
    pub fn watch_leaders(&self) -> watch::Receiver<u64> {
        self.leaders.subscribe()
    }

    /// Follows `EVENTS`' leader advisories on `client` until it is closed.
    pub async fn follow_leaders(self, client: async_nats::Client) {
        use futures_util::StreamExt;
        let mut advisories = match client.subscribe(LEADER_ADVISORY).await {
            Ok(subscriber) => subscriber,
            Err(error) => {
                tracing::error!(%error, "cannot follow the leader advisories of the events stream");
                return;
            }
        };
        while advisories.next().await.is_some() {
            tracing::info!(
                "a new leader of the events stream was elected: re-reading what it may not have re-published"
            );
            self.leader_elected();
        }
    }
}

/// What one listener knows about its place in the stream.
pub struct Position {
    /// The client's connect count when the listener last checked.
    connects: u64,
    /// The highest stream sequence dispatched.
    pub last: Option<u64>,
    /// The highest sequence the last recovery dispatched, and the latest time the stream stored
    /// what it dispatched (unix ns): a live message at or below that sequence and stored no
    /// later is a copy of a re-read event, and skipped. Cleared by the first live message past
    /// it; a message stored later (a stream deleted and created anew, starting again at
    /// sequence 1) is never taken for a copy.
    floor: Option<(u64, u64)>,
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
    pub fn admit(&mut self, sequence: Option<u64>, stored_ns: Option<u64>) -> bool {
        let Some(sequence) = sequence else { return true };
        if let Some((floor, floor_ns)) = self.floor {
            if sequence <= floor && stored_ns.is_none_or(|ns| ns <= floor_ns) {
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

#[derive(Debug, thiserror::Error)]
pub enum RoundTripError {
    #[error("NATS did not answer within {ROUND_TRIP_TIMEOUT:?}")]
    Timeout,
    #[error("cannot send the request: {0}")]
    Request(String),
}

/// A real round trip on `client`'s connection: a request for the `EVENTS` stream's info, which
/// the server reads after every command the client wrote before it (a subscription included),
/// so any answer proves the server holds those subscriptions; "no responders" (no JetStream)
/// proves it too. Returns the stream's last sequence when the answer carries one.
pub async fn round_trip(client: &async_nats::Client) -> Result<Option<u64>, RoundTripError> {
    let subject = format!("$JS.API.STREAM.INFO.{}", wire::subject::EVENTS_STREAM);
    let answer = match tokio::time::timeout(ROUND_TRIP_TIMEOUT, client.request(subject, bytes::Bytes::new())).await {
        Err(_) => return Err(RoundTripError::Timeout),
        Ok(Ok(message)) => message,
        Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => return Ok(None),
        Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::TimedOut => return Err(RoundTripError::Timeout),
        Ok(Err(e)) => return Err(RoundTripError::Request(e.to_string())),
    };
    Ok(last_sequence(&answer.payload))
}

/// `state.last_seq` of a stream info answer (`None` for an error answer, such as no stream).
fn last_sequence(answer: &[u8]) -> Option<u64> {
    let info: serde_json::Value = serde_json::from_slice(answer).ok()?;
    info.get("error").is_none().then(|| info["state"]["last_seq"].as_u64()).flatten()
}

/// One re-read after a reconnect: every stored event of `tenant_id` after the last one dispatched
/// and before `until` (the sequence of the first live message after the reconnect; `None`: up to
/// the stream's end).
pub struct Recovery<'a> {
    pub dispatcher: &'a Dispatcher,
    pub metrics: &'a Metrics,
    pub tenant_id: u64,
    pub until: Option<u64>,
    /// Where a listener that had dispatched nothing starts (shortly before this): the last
    /// disconnect, or when a late-confirmed subscription started.
    pub since: Option<SystemTime>,
}

impl Recovery<'_> {
    /// Dispatches what was missed, retrying a failing read until [`GIVE_UP`]; returns how many
    /// events it dispatched, or the last error once it gave up.
    pub async fn run(&self, client: &async_nats::Client, position: &mut Position) -> Result<u64, HistoryError> {
        let tenant_id = self.tenant_id;
        // The resubscription was written before this request.
        if let Err(error) = round_trip(client).await {
            tracing::warn!(tenant_id, %error, "NATS did not confirm the resubscription; re-reading the stream anyway");
        }
        let js = async_nats::jetstream::new(client.clone());
        let give_up = tokio::time::Instant::now() + GIVE_UP;
        let mut recovered = 0;
        let mut backoff = wire::backoff::Backoff::reconnect();
        let mut floor = None;
        let result = loop {
            match self.read(&js, position, &mut recovered, &mut floor).await {
                Ok(()) => break Ok(recovered),
                Err(error) if tokio::time::Instant::now() >= give_up => break Err(error),
                Err(error) => {
                    let attempt = backoff.attempts() + 1;
                    tracing::debug!(tenant_id, attempt, %error, "re-reading the stream after a reconnect failed; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        };
        // Only what this recovery dispatched can arrive again live. (The position's last
        // sequence may belong to a stream since deleted: a floor there would silence the new
        // stream's first events.)
        position.floor = floor;
        self.metrics.nats_recovered_events.inc_by(recovered);
        result
    }

    /// One attempt: dispatches from just after `position.last`, advancing it and `floor` (the
    /// highest sequence dispatched, the latest time the stream stored what was dispatched).
    async fn read(
        &self,
        js: &async_nats::jetstream::Context,
        position: &mut Position,
        recovered: &mut u64,
        floor: &mut Option<(u64, u64)>,
    ) -> Result<(), HistoryError> {
        let tenant_id = self.tenant_id;
        let start = match (position.last, self.since) {
            (Some(last), _) => Start::After(last),
            (None, Some(at)) => Start::Since((at - BEFORE_DISCONNECT).into()),
            (None, None) => return Ok(()),
        };
        if let (Start::After(last), Some(until)) = (start, self.until) {
            if last + 1 >= until {
                return Ok(());
            }
        }
        let mut reader = history::open(js, tenant_id, start).await?;
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
            let (sequence, ns) = floor.unwrap_or((0, 0));
            *floor = Some((sequence.max(stored.sequence), ns.max(stored.stored_ns.unwrap_or(u64::MAX))));
            let meta =
                Meta { received_us: stored.received_us, sequence: Some(stored.sequence), stored_ns: stored.stored_ns };
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
        assert!(p.admit(Some(5), Some(1)));
        assert!(p.admit(None, None));
        assert!(p.admit(Some(7), Some(2)));
        assert_eq!(p.last, Some(7));
    }

    #[test]
    fn reads_the_last_sequence_of_a_stream_info_answer() {
        let info = br#"{"type":"io.nats.jetstream.api.v1.stream_info_response","config":{},"state":{"messages":3,"first_seq":5,"last_seq":7}}"#;
        assert_eq!(last_sequence(info), Some(7));
        let empty = br#"{"type":"io.nats.jetstream.api.v1.stream_info_response","state":{"messages":0,"first_seq":0,"last_seq":0}}"#;
        assert_eq!(last_sequence(empty), Some(0));
        let missing = br#"{"type":"io.nats.jetstream.api.v1.stream_info_response","error":{"code":404,"err_code":10059,"description":"stream not found"}}"#;
        assert_eq!(last_sequence(missing), None);
        assert_eq!(last_sequence(b"not json"), None);
    }

    #[test]
    fn the_floor_skips_re_read_copies_once() {
        let mut p = position();
        p.last = Some(10);
        p.floor = Some((10, 5_000));
        assert!(!p.admit(Some(9), Some(4_000)));
        assert!(!p.admit(Some(10), None));
        assert!(p.admit(Some(11), Some(5_100)));
        // Past the floor, a stream that started again is followed.
        assert!(p.admit(Some(1), Some(6_000)));
        assert_eq!(p.last, Some(1));
    }

    #[test]
    fn a_stream_created_again_under_the_floor_is_followed() {
        // Found by the model test: a new subscription confirmed at sequence 75, the stream
        // deleted and created again before its first live message; that message (sequence 2)
        // and every one up to 75 were skipped for every client of the replica.
        let mut p = position();
        p.last = Some(75);
        p.floor = Some((75, 5_000));
        assert!(p.admit(Some(2), Some(9_000)), "stored after everything re-read: a new stream");
        assert!(p.admit(Some(3), Some(9_100)));
        assert_eq!(p.last, Some(3));
    }
}
