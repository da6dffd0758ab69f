//! Which events a run publishes: a pure function from an event id to its routing fields and the
//! Redis channels the backend would use for it, so the publisher and every worker regenerate the
//! same event from its id alone. Also the event text (with the loadtest marker first, so clients
//! find id and publish time without a JSON parser) and the marker's parser. No I/O.

use crate::population::{Population, SESSION_BASE};
use serde::{Deserialize, Serialize};
use wire::event_types::TypeClass;

/// Which event mix to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Traffic {
    /// One event per branch that reaches its kitchen, waiters and admins, then one session event
    /// per table session: every connection of the population receives at least one.
    Probe,
    /// Events with large audiences: whole-branch waiter, kitchen and admin events.
    Fanout,
    /// A realistic mix: cart, rounds, service calls, payments, admin and tenant-wide events.
    Steady,
}

/// A Redis pub/sub channel of protocol section 5.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    BranchWaiters(u64),
    BranchKitchen(u64),
    BranchAdmin(u64),
    SectorWaiters(u64),
    Session(u64),
    TenantAdmin(u64),
}

impl Channel {
    pub fn name(self) -> String {
        match self {
            Channel::BranchWaiters(b) => format!("branch:{b}:waiters"),
            Channel::BranchKitchen(b) => format!("branch:{b}:kitchen"),
            Channel::BranchAdmin(b) => format!("branch:{b}:admin"),
            Channel::SectorWaiters(s) => format!("sector:{s}:waiters"),
            Channel::Session(s) => format!("session:{s}"),
            Channel::TenantAdmin(t) => format!("tenant:{t}:admin"),
        }
    }
}

/// One event's routing fields and how it travels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSpec {
    pub id: u32,
    pub event_type: &'static str,
    pub tenant_id: u64,
    /// 0: tenant-wide.
    pub branch_id: u64,
    pub sector_id: Option<u64>,
    pub session_id: Option<u64>,
    /// The same text is PUBLISHed on each of these channels.
    pub channels: Vec<Channel>,
    /// The same text is also XADDed to `events:critical`.
    pub stream: bool,
}

impl EventSpec {
    pub fn class(&self) -> TypeClass {
        TypeClass::of(self.event_type)
    }

    /// How many copies of the text the publisher sends (channels plus the stream entry).
    pub fn copies(&self) -> usize {
        self.channels.len() + usize::from(self.stream)
    }
}

pub struct Generator {
    traffic: Traffic,
    pop: Population,
    seed: u64,
    branches: Vec<(u64, u64)>,
    sessions: u64,
}

impl Generator {
    pub fn new(traffic: Traffic, pop: Population, seed: u64) -> Generator {
        let branches = pop.all_branches();
        let sessions = pop.sessions();
        Generator { traffic, pop, seed, branches, sessions }
    }

    /// Events in one probe round (the idle scenario publishes exactly this many).
    pub fn probe_len(&self) -> u64 {
        self.branches.len() as u64 + self.sessions
    }

    pub fn event(&self, id: u32) -> EventSpec {
        let r = splitmix(self.seed ^ (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        match self.traffic {
            Traffic::Probe => self.probe(id),
            Traffic::Fanout => self.fanout(id, r),
            Traffic::Steady => self.steady(id, r),
        }
    }

    fn probe(&self, id: u32) -> EventSpec {
        let i = id as u64 % self.probe_len().max(1);
        if i < self.branches.len() as u64 || self.sessions == 0 {
            let (t, b) = self.branches[(i % self.branches.len() as u64) as usize];
            return spec(
                id,
                "ROUND_SUBMITTED",
                t,
                b,
                None,
                None,
                vec![Channel::BranchKitchen(b), Channel::BranchWaiters(b), Channel::BranchAdmin(b)],
                false,
            );
        }
        let group = i - self.branches.len() as u64;
        let (t, b) = self.pop.session_home(group);
        let s = SESSION_BASE + group;
        spec(id, "CART_SYNC", t, b, Some(sector(b, 1)), Some(s), vec![Channel::Session(s)], false)
    }

    fn fanout(&self, id: u32, r: u64) -> EventSpec {
        let (t, b) = self.branches[(r % self.branches.len() as u64) as usize];
        match (r >> 32) % 10 {
            0..=5 => spec(
                id,
                "ROUND_SUBMITTED",
                t,
                b,
                None,
                None,
                vec![Channel::BranchKitchen(b), Channel::BranchWaiters(b), Channel::BranchAdmin(b)],
                false,
            ),
            6..=8 => spec(
                id,
                "ROUND_PENDING",
                t,
                b,
                Some(sector(b, 1)),
                None,
                vec![Channel::BranchWaiters(b), Channel::BranchAdmin(b)],
                false,
            ),
            _ => spec(id, "PRODUCT_AVAILABILITY_CHANGED", t, 0, None, None, vec![Channel::TenantAdmin(t)], false),
        }
    }

    fn steady(&self, id: u32, r: u64) -> EventSpec {
        let (bt, bb) = self.branches[(r % self.branches.len() as u64) as usize];
        let pick = (r >> 24) % 100;
        // Session events need a session: without diners they fall back to branch events.
        let session = (self.sessions > 0).then(|| {
            let group = (r >> 40) % self.sessions;
            let (t, b) = self.pop.session_home(group);
            (t, b, SESSION_BASE + group)
        });
        let k = ((r >> 8) % 4) + 1;
        match (pick, session) {
            (0..=29, Some((t, b, s))) => {
                let ty =
                    ["CART_ITEM_ADDED", "CART_ITEM_UPDATED", "CART_ITEM_REMOVED", "CART_SYNC"][(r >> 16) as usize % 4];
                spec(
                    id,
                    ty,
                    t,
                    b,
                    Some(sector(b, k)),
                    Some(s),
                    vec![Channel::Session(s), Channel::BranchAdmin(b)],
                    false,
                )
            }
            (30..=49, Some((t, b, s))) => {
                let ty = ["ROUND_SUBMITTED", "ROUND_IN_KITCHEN", "ROUND_READY", "ROUND_SERVED"][(r >> 16) as usize % 4];
                let mut channels =
                    vec![Channel::BranchKitchen(b), Channel::SectorWaiters(sector(b, k)), Channel::BranchAdmin(b)];
                if TypeClass::of(ty).session {
                    channels.push(Channel::Session(s));
                }
                spec(id, ty, t, b, Some(sector(b, k)), Some(s), channels, false)
            }
            (50..=59, Some((t, b, s))) => {
                let ty = ["CHECK_REQUESTED", "PAYMENT_APPROVED", "CHECK_PAID"][(r >> 16) as usize % 3];
                spec(
                    id,
                    ty,
                    t,
                    b,
                    Some(sector(b, k)),
                    Some(s),
                    vec![Channel::Session(s), Channel::BranchAdmin(b)],
                    true,
                )
            }
            (60..=74, _) => spec(
                id,
                "ROUND_PENDING",
                bt,
                bb,
                Some(sector(bb, k)),
                None,
                vec![Channel::BranchWaiters(bb), Channel::BranchAdmin(bb)],
                false,
            ),
            (75..=84, _) => spec(
                id,
                "SERVICE_CALL_CREATED",
                bt,
                bb,
                None,
                None,
                vec![Channel::BranchWaiters(bb), Channel::BranchAdmin(bb)],
                (r >> 20) % 4 == 0,
            ),
            (85..=94, _) => spec(id, "ENTITY_UPDATED", bt, bb, None, None, vec![Channel::BranchAdmin(bb)], false),
            (95.., _) => {
                spec(id, "PRODUCT_AVAILABILITY_CHANGED", bt, 0, None, None, vec![Channel::TenantAdmin(bt)], false)
            }
            (_, None) => spec(
                id,
                "TICKET_READY",
                bt,
                bb,
                None,
                None,
                vec![Channel::BranchKitchen(bb), Channel::BranchWaiters(bb), Channel::BranchAdmin(bb)],
                false,
            ),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn spec(
    id: u32,
    event_type: &'static str,
    tenant_id: u64,
    branch_id: u64,
    sector_id: Option<u64>,
    session_id: Option<u64>,
    channels: Vec<Channel>,
    stream: bool,
) -> EventSpec {
    EventSpec { id, event_type, tenant_id, branch_id, sector_id, session_id, channels, stream }
}

/// Sector ids no loadtest waiter is assigned to (loadtest waiters have no assignments at all).
fn sector(branch_id: u64, k: u64) -> u64 {
    branch_id * 10 + k
}

/// One step of splitmix64: event ids to well-spread numbers.
pub fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The event's first key, which opens the marker.
const MARKER_KEY: &str = "\"entity\":{\"lt_run\":";

/// The event text as the backend would write it, with the loadtest marker first:
/// `{"entity":{"lt_run":R,"lt_id":N,"lt_sent_us":T,...},"type":...}`. `pad_to` grows the entity
/// with filler up to about that many bytes, for realistic payload sizes.
pub fn render(spec: &EventSpec, run: u64, sent_us: u64, pad_to: usize) -> String {
    let opt = |v: Option<u64>| v.map_or_else(|| "null".to_string(), |v| v.to_string());
    let table = spec.session_id.map(|s| s - SESSION_BASE + 1);
    let mut text = format!(
        "{{{MARKER_KEY}{run},\"lt_id\":{},\"lt_sent_us\":{sent_us}}},\"type\":\"{}\",\"tenant_id\":{},\"branch_id\":{},\"table_id\":{},\"session_id\":{},\"sector_id\":{},\"actor\":{{\"user_id\":1,\"role\":\"loadtest\"}},\"ts\":\"{}\",\"v\":1}}",
        spec.id,
        spec.event_type,
        spec.tenant_id,
        spec.branch_id,
        opt(table),
        opt(spec.session_id),
        opt(spec.sector_id),
        iso8601_micros(sent_us),
    );
    if text.len() + 12 < pad_to {
        let filler = "x".repeat(pad_to - text.len() - 12);
        let at = text.find("},\"type\"").expect("entity closes before type");
        text.insert_str(at, &format!(",\"pad\":\"{filler}\""));
    }
    text
}

/// `(run, id, sent_us)` of a loadtest event, `None` for anything else (a pong, a foreign event).
pub fn parse_marker(text: &str) -> Option<(u64, u32, u64)> {
    parse_marker_keys(text.strip_prefix('{')?)
}

/// The same from an event's keys: its text after the opening brace, or after the resume cursor
/// the gateway spliced in front of them (`{"_cursor":12,` + keys).
pub fn parse_marker_keys(keys: &str) -> Option<(u64, u32, u64)> {
    let rest = keys.strip_prefix(MARKER_KEY)?;
    let (run, rest) = number(rest)?;
    let (id, rest) = number(rest.strip_prefix(",\"lt_id\":")?)?;
    let (sent, _) = number(rest.strip_prefix(",\"lt_sent_us\":")?)?;
    Some((run, u32::try_from(id).ok()?, sent))
}

fn number(s: &str) -> Option<(u64, &str)> {
    let end = s.bytes().position(|b| !b.is_ascii_digit()).unwrap_or(s.len());
    Some((s[..end].parse().ok()?, &s[end..]))
}

/// `2024-05-01T12:34:56.123456+00:00` from unix microseconds.
pub fn iso8601_micros(us: u64) -> String {
    let secs = us / 1_000_000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}+00:00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        us % 1_000_000
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::population::{Mix, PopulationParams};

    fn generator(traffic: Traffic) -> Generator {
        let pop = Population::new(PopulationParams {
            connections: 200,
            tenants: 2,
            branches: 3,
            mix: Mix::default(),
            diners_per_session: 4,
        })
        .unwrap();
        Generator::new(traffic, pop, 7)
    }

    #[test]
    fn events_are_valid_envelopes_and_markers_round_trip() {
        for traffic in [Traffic::Probe, Traffic::Fanout, Traffic::Steady] {
            let g = generator(traffic);
            for id in 0..300 {
                let e = g.event(id);
                assert_eq!(e, g.event(id), "deterministic");
                assert!(e.copies() >= 1);
                let text = render(&e, 42, 1_700_000_000_123_456, 400);
                let env = wire::envelope::parse(text.as_bytes()).expect("valid envelope");
                assert_eq!(env.tenant_id, e.tenant_id);
                assert_eq!(env.branch_id, Some(e.branch_id));
                assert_eq!(env.sector_id, e.sector_id);
                assert_eq!(env.session_id, e.session_id);
                assert_eq!(parse_marker(&text), Some((42, id, 1_700_000_000_123_456)));
                assert!(text.len() >= 390 && text.len() <= 410, "{}", text.len());
                serde_json::from_str::<serde_json::Value>(&text).expect("json");
            }
        }
    }

    #[test]
    fn foreign_text_has_no_marker() {
        assert_eq!(parse_marker("{\"type\":\"pong\"}"), None);
        assert_eq!(parse_marker("{\"entity\":{\"lt_run\":1,\"lt_id\":x}"), None);
    }

    #[test]
    fn timestamps_are_iso8601_utc_with_microseconds() {
        assert_eq!(iso8601_micros(0), "1970-01-01T00:00:00.000000+00:00");
        assert_eq!(iso8601_micros(1_709_210_096_000_001), "2024-02-29T12:34:56.000001+00:00");
    }

    #[test]
    fn the_probe_covers_every_branch_then_every_session() {
        let g = generator(Traffic::Probe);
        let n = g.probe_len() as u32;
        let branches: std::collections::HashSet<_> =
            (0..n).map(|i| g.event(i)).filter(|e| e.event_type == "ROUND_SUBMITTED").map(|e| e.branch_id).collect();
        assert_eq!(branches.len(), 6);
        let sessions: std::collections::HashSet<_> = (0..n).filter_map(|i| g.event(i).session_id).collect();
        assert_eq!(sessions.len() as u64, g.sessions);
    }
}
