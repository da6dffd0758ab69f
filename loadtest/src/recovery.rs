//! What a gateway's death did to a worker's slots (the failover scenario): every connection
//! open at the kill that the server ended after it belonged to the dead replica; for each, how
//! long until its slot had a new connection, and until it was receiving live events again.
//! Pure, over the worker's [`Incarnation`]s.
//!
//! "Receiving live events again" is observed through the first event published after the kill
//! that the slot received on a new connection (replayed or live). A waiter or a cook receives an
//! event every few seconds only, so the raw time to that event ([`Recovery::first_event`]) also
//! counts seconds in which nothing was published for the slot. [`Recovery::live_again`] leaves
//! them out: the time to the new connection, plus how late that first event arrived after it was
//! published or the connection opened, whichever came later. When the event was published
//! before the reconnection (it came in the replay) both are the same.

use crate::expectations::{Incarnation, Opened};
use crate::hist::{self, Buckets};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recovery {
    /// Connections open at the kill that the server ended after it.
    pub killed: u64,
    /// Of those, slots that had received no cursor yet, so they came back with `resume=live`
    /// (nothing can be replayed for them, and their gap is not owed).
    pub without_cursor: u64,
    /// Kill to the slot's next open connection, µs.
    pub reconnected: Buckets,
    /// Kill to receiving live events again (see the module), µs.
    pub live_again: Buckets,
    /// Kill to the first event published after the kill that the slot received on a new
    /// connection, µs.
    pub first_event: Buckets,
    /// Killed slots without a new connection at the end of the run.
    pub not_reconnected: u64,
    /// Killed slots that reconnected but received no event published after the kill (none was
    /// routed to them, or it is missing).
    pub not_live_again: u64,
}

pub fn measure(incarnations: &[Incarnation], kill_us: u64) -> Recovery {
    let mut by_slot: BTreeMap<u64, Vec<&Incarnation>> = BTreeMap::new();
    for inc in incarnations {
        by_slot.entry(inc.slot).or_default().push(inc);
    }
    let (mut reconnected, mut live_again, mut first_event) = (hist::new(), hist::new(), hist::new());
    let mut r = Recovery::default();
    for incs in by_slot.values_mut() {
        incs.sort_by_key(|i| i.connected_us);
        for (i, inc) in incs.iter().enumerate() {
            if !(inc.server_closed && inc.connected_us < kill_us && inc.ended_us >= kill_us) {
                continue;
            }
            r.killed += 1;
            let later = &incs[i + 1..];
            let Some(next) = later.first() else {
                r.not_reconnected += 1;
                continue;
            };
            let _ = reconnected.record(next.connected_us.saturating_sub(kill_us).max(1));
            r.without_cursor += u64::from(next.opened != Opened::Resumed);
            match later.iter().find_map(|l| l.first_after_kill.map(|(sent, got)| (l.connected_us, sent, got))) {
                Some((opened, sent_us, got_us)) => {
                    let _ = first_event.record(got_us.saturating_sub(kill_us).max(1));
                    let late = got_us.saturating_sub(sent_us.max(opened));
                    let _ = live_again.record((opened.saturating_sub(kill_us) + late).max(1));
                }
                None => r.not_live_again += 1,
            }
        }
    }
    r.reconnected = hist::buckets(&reconnected);
    r.live_again = hist::buckets(&live_again);
    r.first_event = hist::buckets(&first_event);
    r
}

impl Recovery {
    pub fn add(&mut self, other: &Recovery) {
        self.killed += other.killed;
        self.without_cursor += other.without_cursor;
        self.not_reconnected += other.not_reconnected;
        self.not_live_again += other.not_live_again;
        self.reconnected.extend_from_slice(&other.reconnected);
        self.live_again.extend_from_slice(&other.live_again);
        self.first_event.extend_from_slice(&other.first_event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KILL: u64 = 10_000_000;
    const MS: u64 = 1_000;

    fn inc(
        slot: u64,
        connected_us: u64,
        ended_us: u64,
        server_closed: bool,
        opened: Opened,
        first_after_kill: Option<(u64, u64)>,
    ) -> Incarnation {
        Incarnation { slot, connected_us, ended_us, server_closed, opened, first_after_kill, ..Incarnation::default() }
    }

    fn histogram(buckets: &Buckets) -> hdrhistogram::Histogram<u64> {
        let mut h = hist::new();
        hist::merge(&mut h, buckets);
        h
    }

    #[test]
    fn only_connections_the_kill_ended_count_and_each_is_timed_from_the_kill() {
        use Opened::{Live, Resumed};
        let incs = vec![
            // Slot 1: on the dead replica, back after 1.2 s; an event published 0.5 s after the
            // kill came in the replay 0.1 s later: live again after 1.3 s.
            inc(1, MS, KILL + 5 * MS, true, Live, None),
            inc(1, KILL + 1_200 * MS, 0, false, Resumed, Some((KILL + 500 * MS, KILL + 1_300 * MS))),
            // Slot 2: on a surviving replica; it saw post-kill events but was never cut off.
            inc(2, MS, 0, false, Live, Some((KILL + MS, KILL + 2 * MS))),
            // Slot 3: closed by the server before the kill (another cause), reconnected.
            inc(3, MS, KILL - 1_000 * MS, true, Live, None),
            inc(3, KILL - 500 * MS, 0, false, Resumed, Some((KILL, KILL + MS))),
            // Slot 4: killed, back on a connection the server ended too, then for good without
            // a cursor; its first event was published 4 s after the kill and took 5 ms: live
            // again after 2.9 s + 5 ms, although that event came only after 4.005 s.
            inc(4, 2 * MS, KILL + MS, true, Live, None),
            inc(4, KILL + 2_500 * MS, KILL + 2_600 * MS, true, Live, None),
            inc(4, KILL + 2_900 * MS, 0, false, Live, Some((KILL + 4_000 * MS, KILL + 4_005 * MS))),
            // Slot 5: killed, never back. Slot 6: killed, back, no post-kill event for it.
            inc(5, MS, KILL + 9 * MS, true, Live, None),
            inc(6, MS, KILL + 9 * MS, true, Live, None),
            inc(6, KILL + 900 * MS, 0, false, Resumed, None),
        ];
        let r = measure(&incs, KILL);
        assert_eq!((r.killed, r.not_reconnected, r.not_live_again, r.without_cursor), (4, 1, 1, 1));
        let live = histogram(&r.live_again);
        assert_eq!(live.len(), 2);
        assert!(
            live.equivalent(live.min(), 1_300 * MS) && live.equivalent(live.max(), 2_905 * MS),
            "{:?}",
            r.live_again
        );
        let first = histogram(&r.first_event);
        assert!(
            first.equivalent(first.min(), 1_300 * MS) && first.equivalent(first.max(), 4_005 * MS),
            "{:?}",
            r.first_event
        );
        let back = histogram(&r.reconnected);
        assert_eq!(back.len(), 3);
        assert!(back.equivalent(back.min(), 900 * MS) && back.equivalent(back.max(), 2_500 * MS));
        let mut sum = Recovery::default();
        sum.add(&r);
        sum.add(&r);
        assert_eq!((sum.killed, sum.reconnected.len()), (8, 2 * r.reconnected.len()));
    }
}
