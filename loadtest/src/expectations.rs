//! The routing model of protocol section 6, kept independent of the gateway's code: who should
//! receive each event among the connections a run opened, and the exact accounting of what
//! clients actually received against that (missing, duplicate, misrouted, per event × connection).
//! Pure: workers call [`tally`] with their connection records and the publish log.

use crate::events::{EventSpec, Generator};
use crate::population::{Kind, Member, Population};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::ops::Range;

/// Whether `member` receives `event` (loadtest waiters have no sector assignments).
pub fn receives(member: &Member, event: &EventSpec) -> bool {
    if member.tenant_id != event.tenant_id {
        return false;
    }
    let class = event.class();
    if member.kind == Kind::Diner {
        return class.session && event.session_id == member.session_id;
    }
    if event.branch_id == 0 {
        return member.kind.admin_view();
    }
    if !member.branch_ids.contains(&event.branch_id) {
        return false;
    }
    match member.kind {
        Kind::Admin | Kind::Manager => true,
        Kind::Kitchen => class.kitchen,
        Kind::Waiter => !class.admin_only && (class.branch_wide_waiter || event.sector_id.is_none()),
        Kind::Diner => unreachable!("handled above"),
    }
}

/// Candidate lookup over a range of slots, so that finding recipients costs the audience size.
pub struct Index {
    members: Vec<Member>,
    first: u64,
    by_branch: HashMap<u64, Vec<u32>>,
    admins_by_tenant: HashMap<u64, Vec<u32>>,
    by_session: HashMap<u64, Vec<u32>>,
}

impl Index {
    pub fn build(pop: &Population, slots: Range<u64>) -> Index {
        let members: Vec<Member> = slots.clone().map(|s| pop.member(s)).collect();
        let mut index = Index {
            members,
            first: slots.start,
            by_branch: HashMap::new(),
            admins_by_tenant: HashMap::new(),
            by_session: HashMap::new(),
        };
        for (i, m) in index.members.iter().enumerate() {
            let i = i as u32;
            if let Some(session) = m.session_id {
                index.by_session.entry(session).or_default().push(i);
                continue;
            }
            for b in &m.branch_ids {
                index.by_branch.entry(*b).or_default().push(i);
            }
            if m.kind.admin_view() {
                index.admins_by_tenant.entry(m.tenant_id).or_default().push(i);
            }
        }
        index
    }

    pub fn member(&self, slot: u64) -> &Member {
        &self.members[(slot - self.first) as usize]
    }

    /// Slots (absolute) that should receive `event`.
    pub fn recipients<'a>(&'a self, event: &'a EventSpec) -> impl Iterator<Item = u64> + 'a {
        let staff = if event.branch_id == 0 {
            self.admins_by_tenant.get(&event.tenant_id)
        } else {
            self.by_branch.get(&event.branch_id)
        };
        let diners = event.session_id.filter(|_| event.class().session).and_then(|s| self.by_session.get(&s));
        staff
            .into_iter()
            .chain(diners)
            .flatten()
            .filter(move |i| receives(&self.members[**i as usize], event))
            .map(move |i| self.first + *i as u64)
    }
}

/// How a connection opened, which decides what it owes for the time before it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Opened {
    /// Without the resume parameter: after a server-side close the slot stays owed the gap.
    #[default]
    Plain,
    /// With `resume=live` (the slot had no cursor yet): nothing before it can be replayed, so
    /// nothing before it is owed to it.
    Live,
    /// With `resume=<cursor>`: the gateway replays what the slot missed since its previous
    /// connection, so the gap is owed, whoever closed that connection.
    Resumed,
}

/// One WebSocket connection of one slot, from its `101` to its end.
#[derive(Debug, Clone, Default)]
pub struct Incarnation {
    pub slot: u64,
    /// Unix µs when the `101` arrived (the gateway registers the connection before sending it).
    pub connected_us: u64,
    /// Unix µs when the client decided to close it (churn); `None` when it was open at the end
    /// of the run or the server closed it (`server_closed`).
    pub closing_us: Option<u64>,
    /// The connection ended without the client asking: the slot stays "supposed to be
    /// connected", so events during the gap before its reconnection count as missing.
    pub server_closed: bool,
    pub opened: Opened,
    /// Unix µs when the connection ended (the client saw the server's end, or its own close was
    /// done).
    pub ended_us: u64,
    /// `(sent_us, received_us)` of the first event published after a gateway kill the parent
    /// announced (the failover scenario) that this connection received.
    pub first_after_kill: Option<(u64, u64)>,
    /// Event ids received, in arrival order.
    pub received: Vec<u32>,
}

/// The accounting of a set of slots. All counts are per event × connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// Deliveries the routing rules call for while the slot was meant to be connected.
    pub expected: u64,
    /// Expected deliveries that arrived (first copy).
    pub delivered: u64,
    pub missing: u64,
    /// Extra copies of an event on one connection lifetime.
    pub duplicates: u64,
    /// Events received that the routing rules say this connection must never get.
    pub misrouted: u64,
    /// Events for this connection that arrived although published just before its connect or
    /// within the grace before a deliberate close (allowed either way).
    pub outside_window: u64,
    /// A few `event id → slot` examples of missing deliveries, for debugging.
    pub missing_examples: Vec<String>,
    pub misrouted_examples: Vec<String>,
}

impl Tally {
    pub fn add(&mut self, other: &Tally) {
        self.expected += other.expected;
        self.delivered += other.delivered;
        self.missing += other.missing;
        self.duplicates += other.duplicates;
        self.misrouted += other.misrouted;
        self.outside_window += other.outside_window;
        for (mine, theirs) in [
            (&mut self.missing_examples, &other.missing_examples),
            (&mut self.misrouted_examples, &other.misrouted_examples),
        ] {
            mine.extend(theirs.iter().take(EXAMPLES.saturating_sub(mine.len())).cloned());
        }
    }
}

const EXAMPLES: usize = 10;

/// Consecutive incarnations of a slot joined across server-side closes (without resume) and
/// resumed reconnects: the client meant to be connected, or to be caught up, from `start_us` to
/// `end_us` (`None`: to the end of the run).
struct Lifetime {
    start_us: u64,
    end_us: Option<u64>,
    received: Vec<u32>,
}

fn lifetimes(mut incarnations: Vec<Incarnation>) -> Vec<Lifetime> {
    incarnations.sort_by_key(|i| i.connected_us);
    let mut out: Vec<Lifetime> = Vec::new();
    // When the previous incarnation ended without the client asking: the server's end.
    let mut server_end: Option<u64> = None;
    for inc in incarnations {
        let joins = match inc.opened {
            Opened::Plain => server_end.is_some(),
            Opened::Live => false,
            Opened::Resumed => !out.is_empty(),
        };
        match out.last_mut() {
            Some(last) if joins => {
                last.received.extend(inc.received);
                last.end_us = inc.closing_us;
            }
            last => {
                // A slot that comes back live after the server ended its connection was owed
                // nothing after that end.
                if let (Some(last), Some(end)) = (last, server_end) {
                    last.end_us = Some(end);
                }
                out.push(Lifetime { start_us: inc.connected_us, end_us: inc.closing_us, received: inc.received });
            }
        }
        server_end = inc.server_closed.then_some(inc.ended_us);
    }
    out
}

/// Compares what the index's slots received with what they should have. `sent_us[id]` is the publish time
/// of event `id` (0: its publish failed, so nothing is expected and a copy is not misrouted);
/// deliveries published within `grace_us` before a deliberate close are not expected.
pub fn tally(gen: &Generator, index: &Index, incarnations: Vec<Incarnation>, sent_us: &[u64], grace_us: u64) -> Tally {
    let first = index.first;
    let mut expected: Vec<Vec<u32>> = vec![Vec::new(); index.members.len()];
    for (id, sent) in sent_us.iter().enumerate() {
        if *sent == 0 {
            continue;
        }
        let event = gen.event(id as u32);
        for slot in index.recipients(&event) {
            expected[(slot - first) as usize].push(id as u32);
        }
    }
    let mut by_slot: Vec<Vec<Incarnation>> = vec![Vec::new(); expected.len()];
    for inc in incarnations {
        by_slot[(inc.slot - first) as usize].push(inc);
    }
    let mut t = Tally::default();
    for (offset, (incs, wanted)) in by_slot.into_iter().zip(&expected).enumerate() {
        let slot = first + offset as u64;
        for mut life in lifetimes(incs) {
            let in_window = |id: u32| {
                let sent = sent_us[id as usize];
                sent >= life.start_us && life.end_us.is_none_or(|end| sent.saturating_add(grace_us) <= end)
            };
            let copies = life.received.len() as u64;
            life.received.sort_unstable();
            life.received.dedup();
            t.duplicates += copies - life.received.len() as u64;
            for id in &life.received {
                let published = sent_us.get(*id as usize).copied().unwrap_or(0);
                if wanted.binary_search(id).is_err() {
                    if published != 0 {
                        t.misrouted += 1;
                        if t.misrouted_examples.len() < EXAMPLES {
                            t.misrouted_examples
                                .push(format!("event {id} -> slot {slot} ({:?})", index.member(slot).kind));
                        }
                    }
                } else if !in_window(*id) {
                    t.outside_window += 1;
                }
            }
            for id in wanted.iter().copied().filter(|id| in_window(*id)) {
                t.expected += 1;
                if life.received.binary_search(&id).is_ok() {
                    t.delivered += 1;
                } else {
                    t.missing += 1;
                    if t.missing_examples.len() < EXAMPLES {
                        t.missing_examples.push(format!("event {id} -> slot {slot} ({:?})", index.member(slot).kind));
                    }
                }
            }
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Channel, Traffic};
    use crate::population::{Mix, PopulationParams, SESSION_BASE};

    fn pop(n: u64) -> Population {
        Population::new(PopulationParams {
            connections: n,
            tenants: 2,
            branches: 2,
            mix: Mix::default(),
            diners_per_session: 3,
        })
        .unwrap()
    }

    fn ev(ty: &'static str, tenant: u64, branch: u64, sector: Option<u64>, session: Option<u64>) -> EventSpec {
        EventSpec {
            id: 0,
            event_type: ty,
            tenant_id: tenant,
            branch_id: branch,
            sector_id: sector,
            session_id: session,
            channels: vec![Channel::BranchAdmin(branch)],
            stream: false,
        }
    }

    fn find(p: &Population, kind: Kind) -> Member {
        (0..p.len()).map(|s| p.member(s)).find(|m| m.kind == kind).unwrap()
    }

    /// The contract's matrix (protocol section 6), one row per event shape.
    #[test]
    fn matrix_follows_the_contract() {
        let p = pop(200);
        let diner = find(&p, Kind::Diner);
        let (t, b, s) = (diner.tenant_id, diner.branch_id, diner.session_id);
        let m = |kind| {
            let mut m = find(&p, kind);
            m.tenant_id = t;
            m.branch_ids = vec![b];
            m
        };
        let (admin, manager, waiter, kitchen) = (m(Kind::Admin), m(Kind::Manager), m(Kind::Waiter), m(Kind::Kitchen));
        // (type, sector, session) -> [admin, manager, waiter (no sectors), kitchen, diner of the session]
        type Row = (&'static str, Option<u64>, Option<u64>, [bool; 5]);
        let rows: &[Row] = &[
            ("ROUND_SUBMITTED", None, None, [true, true, true, true, false]),
            ("ROUND_SUBMITTED", Some(5), None, [true, true, false, true, false]),
            ("ROUND_READY", Some(5), s, [true, true, false, true, true]),
            ("CART_SYNC", None, s, [true, true, true, false, true]),
            ("ENTITY_UPDATED", None, s, [true, true, false, false, false]),
            ("ROUND_PENDING", Some(6), None, [true, true, true, false, false]),
            ("TABLE_SESSION_STARTED", Some(6), s, [true, true, true, false, true]),
            ("SERVICE_CALL_CREATED", Some(5), s, [true, true, false, false, false]),
            ("SOMETHING_NEW", None, None, [true, true, true, false, false]),
        ];
        for (ty, sector, session, want) in rows {
            let e = ev(ty, t, b, *sector, *session);
            let got = [&admin, &manager, &waiter, &kitchen, &diner].map(|m| receives(m, &e));
            assert_eq!(&got, want, "{ty} sector {sector:?} session {session:?}");
        }
        let wide = ev("ROUND_READY", t, 0, None, s);
        assert_eq!(
            [&admin, &manager, &waiter, &kitchen, &diner].map(|m| receives(m, &wide)),
            [true, true, false, false, true]
        );
        let other_tenant = ev("ROUND_SUBMITTED", t + 1, b, None, s);
        assert!([&admin, &manager, &waiter, &kitchen, &diner].iter().all(|m| !receives(m, &other_tenant)));
        let mut other_branch_admin = admin.clone();
        other_branch_admin.branch_ids = vec![b + 1];
        assert!(!receives(&other_branch_admin, &ev("ENTITY_UPDATED", t, b, None, None)));
        assert!(receives(&other_branch_admin, &ev("ENTITY_UPDATED", t, 0, None, None)));
    }

    #[test]
    fn the_index_finds_exactly_the_brute_force_recipients() {
        let p = pop(500);
        for traffic in [Traffic::Probe, Traffic::Fanout, Traffic::Steady] {
            let g = Generator::new(traffic, p.clone(), 3);
            let index = Index::build(&p, 100..400);
            for id in 0..200 {
                let e = g.event(id);
                let mut fast: Vec<u64> = index.recipients(&e).collect();
                fast.sort_unstable();
                let slow: Vec<u64> = (100..400).filter(|s| receives(&p.member(*s), &e)).collect();
                assert_eq!(fast, slow, "{e:?}");
            }
        }
    }

    fn inc(slot: u64, connected: u64, closing: Option<u64>, server_closed: bool, received: &[u32]) -> Incarnation {
        Incarnation {
            slot,
            connected_us: connected,
            closing_us: closing,
            server_closed,
            received: received.to_vec(),
            ..Incarnation::default()
        }
    }

    fn resumed(inc: Incarnation) -> Incarnation {
        Incarnation { opened: Opened::Resumed, ..inc }
    }

    fn live(inc: Incarnation) -> Incarnation {
        Incarnation { opened: Opened::Live, ..inc }
    }

    /// A population of two tenant admins and events that all reach the first one.
    fn admin_setup() -> (Generator, Index, Vec<u64>) {
        let p = Population::new(PopulationParams {
            connections: 2,
            tenants: 2,
            branches: 1,
            mix: Mix::parse("admin=1").unwrap(),
            diners_per_session: 1,
        })
        .unwrap();
        let g = Generator::new(Traffic::Probe, p.clone(), 1);
        let index = Index::build(&p, 0..2);
        // Probe events 0 and 1 are ROUND_SUBMITTED to the branch of tenant 1000, then 1001.
        assert_eq!(g.event(0).tenant_id, p.member(0).tenant_id);
        (g, index, vec![100, 200, 300, 400])
    }

    #[test]
    fn exact_counts_of_missing_duplicate_and_misrouted() {
        let (g, index, sent) = admin_setup();
        // Slot 0 should get events 0 and 2, slot 1 events 1 and 3.
        let t = tally(
            &g,
            &index,
            vec![inc(0, 50, None, false, &[0, 0, 1]), inc(1, 50, None, false, &[1, 3, 3, 3])],
            &sent,
            0,
        );
        assert_eq!((t.expected, t.delivered, t.missing, t.duplicates, t.misrouted), (4, 3, 1, 3, 1));
        assert_eq!(t.missing_examples, vec!["event 2 -> slot 0 (Admin)".to_string()]);
    }

    #[test]
    fn churn_windows_and_server_closes() {
        let (g, index, sent) = admin_setup();
        // Deliberate close at 250 with 20 µs grace: event 0 (sent at 100) is owed, event 2
        // (sent at 300) is not owed to either incarnation, so receiving it is tolerated.
        let t = tally(&g, &index, vec![inc(0, 50, Some(250), false, &[0]), inc(0, 350, None, false, &[2])], &sent, 20);
        assert_eq!((t.expected, t.delivered, t.missing, t.outside_window), (1, 1, 0, 1));
        // A server-side close at 250 keeps the slot owed event 2 (sent at 300, during the gap).
        let t = tally(&g, &index, vec![inc(0, 50, None, true, &[0]), inc(0, 350, None, false, &[])], &sent, 20);
        assert_eq!((t.expected, t.delivered, t.missing), (2, 1, 1));
        // Within the grace before a deliberate close: not expected, allowed.
        let t = tally(&g, &index, vec![inc(0, 50, Some(310), false, &[0])], &sent, 20);
        assert_eq!((t.expected, t.missing), (1, 0));
    }

    #[test]
    fn a_resumed_connection_owes_the_gap_exactly_once() {
        let (g, index, sent) = admin_setup();
        // Slot 0 closed itself at 250 and came back at 350 with its cursor: event 2 (sent at
        // 300, during the gap) is owed now, replayed on the new connection.
        let t = tally(
            &g,
            &index,
            vec![inc(0, 50, Some(250), false, &[0]), resumed(inc(0, 350, None, false, &[2]))],
            &sent,
            20,
        );
        assert_eq!((t.expected, t.delivered, t.missing, t.outside_window), (2, 2, 0, 0));
        let t = tally(
            &g,
            &index,
            vec![inc(0, 50, Some(250), false, &[0]), resumed(inc(0, 350, None, false, &[]))],
            &sent,
            20,
        );
        assert_eq!((t.expected, t.missing), (2, 1), "a replay that left it out misses it");
        // The seam must not repeat what the first connection already had.
        let t = tally(
            &g,
            &index,
            vec![inc(0, 50, None, true, &[0]), resumed(inc(0, 350, None, false, &[0, 2]))],
            &sent,
            20,
        );
        assert_eq!((t.delivered, t.duplicates), (2, 1));
        // Without a cursor (nothing received before the close) the gap stays tolerated.
        let t = tally(
            &g,
            &index,
            vec![live(inc(0, 50, Some(250), false, &[0])), live(inc(0, 350, None, false, &[2]))],
            &sent,
            20,
        );
        assert_eq!((t.expected, t.outside_window), (1, 1));
    }

    #[test]
    fn a_slot_back_live_after_a_server_close_owes_nothing_of_the_gap() {
        let (g, index, sent) = admin_setup();
        // The server ended the first connection at 250 (seen by the client then); the slot had
        // no cursor and came back at 350 with resume=live: event 2 (sent at 300) cannot be
        // replayed, so it is owed to neither connection; event 0 stays owed to the first.
        let first = Incarnation { ended_us: 250, ..live(inc(0, 50, None, true, &[])) };
        let t = tally(&g, &index, vec![first.clone(), live(inc(0, 350, None, false, &[]))], &sent, 20);
        assert_eq!((t.expected, t.missing), (1, 1), "{t:?}");
        assert_eq!(t.missing_examples, vec!["event 0 -> slot 0 (Admin)".to_string()]);
        // Without resume the same gap is owed: a server-side drop is a loss.
        let plain = Incarnation { opened: Opened::Plain, ..first };
        let t = tally(&g, &index, vec![plain, inc(0, 350, None, false, &[])], &sent, 20);
        assert_eq!((t.expected, t.missing), (2, 2));
    }

    #[test]
    fn failed_publishes_expect_nothing() {
        let (g, index, _) = admin_setup();
        let t =
            tally(&g, &index, vec![inc(0, 50, None, false, &[2]), inc(1, 50, None, false, &[])], &[100, 0, 0, 0], 0);
        assert_eq!((t.expected, t.delivered, t.missing, t.misrouted), (1, 0, 1, 0));
    }

    #[test]
    fn diners_are_indexed_by_session() {
        let p = pop(300);
        let index = Index::build(&p, 0..300);
        let e = ev("CART_SYNC", 1000, 0, None, Some(SESSION_BASE));
        let diners: Vec<u64> = index.recipients(&e).filter(|s| p.member(*s).kind == Kind::Diner).collect();
        assert_eq!(diners.len(), 3);
    }
}
