//! Who connects: a pure, O(1) mapping from a connection slot (0..N) to the member behind it
//! (kind, tenant, branches, user id, table session), so that the parent, every worker process and
//! the expectation model agree on the population without exchanging it. It does not connect.
//!
//! Ids are offset (tenants from 1000, users from 1,000,000, sessions from 1,000,000) so that a
//! load run never shares an id with demo data: in particular loadtest waiters have no sector
//! assignment in the backend database (the demo stack seeds one for user 2 only).

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

pub const TENANT_BASE: u64 = 1000;
pub const BRANCH_BASE: u64 = 1000;
pub const USER_BASE: u64 = 1_000_000;
pub const SESSION_BASE: u64 = 1_000_000;

/// What a connection is, which fixes its endpoint, roles and audience.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// `/ws/waiter` with roles `["WAITER"]`: a pure waiter (no sector assignments).
    Waiter,
    /// `/ws/waiter` with roles `["WAITER", "MANAGER"]`: receives what admins receive.
    Manager,
    /// `/ws/kitchen` with roles `["KITCHEN"]`.
    Kitchen,
    /// `/ws/admin` with roles `["ADMIN"]`, holding every branch of its tenant.
    Admin,
    /// `/ws/diner` with a table token of one table session.
    Diner,
}

impl Kind {
    pub const ALL: [Kind; 5] = [Kind::Waiter, Kind::Manager, Kind::Kitchen, Kind::Admin, Kind::Diner];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Waiter => "waiter",
            Kind::Manager => "manager",
            Kind::Kitchen => "kitchen",
            Kind::Admin => "admin",
            Kind::Diner => "diner",
        }
    }

    pub fn path(self) -> &'static str {
        match self {
            Kind::Waiter | Kind::Manager => "/ws/waiter",
            Kind::Kitchen => "/ws/kitchen",
            Kind::Admin => "/ws/admin",
            Kind::Diner => "/ws/diner",
        }
    }

    pub fn roles(self) -> &'static [&'static str] {
        match self {
            Kind::Waiter => &["WAITER"],
            Kind::Manager => &["WAITER", "MANAGER"],
            Kind::Kitchen => &["KITCHEN"],
            Kind::Admin => &["ADMIN"],
            Kind::Diner => &[],
        }
    }

    /// Admin endpoint, or MANAGER/ADMIN on the waiter or kitchen endpoint (protocol section 2).
    pub fn admin_view(self) -> bool {
        matches!(self, Kind::Manager | Kind::Admin)
    }
}

/// Relative weights of each kind, parsed from `waiter=40,kitchen=15,...`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mix {
    pub weights: [u32; 5],
}

impl Default for Mix {
    fn default() -> Self {
        Mix::parse("waiter=40,manager=5,kitchen=15,admin=5,diner=35").expect("default mix parses")
    }
}

impl Mix {
    pub fn parse(text: &str) -> anyhow::Result<Mix> {
        let mut weights = [0u32; 5];
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part.split_once('=').with_context(|| format!("'{part}' is not kind=weight"))?;
            let index = Kind::ALL
                .iter()
                .position(|k| k.name() == name.trim())
                .with_context(|| format!("unknown kind '{name}' (waiter, manager, kitchen, admin, diner)"))?;
            weights[index] = weight.trim().parse().with_context(|| format!("weight of '{name}' is not an integer"))?;
        }
        if weights.iter().all(|w| *w == 0) {
            bail!("the mix '{text}' has no kind with a positive weight");
        }
        Ok(Mix { weights })
    }

    fn weight(&self, kind: Kind) -> u64 {
        self.weights[kind as usize] as u64
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PopulationParams {
    pub connections: u64,
    pub tenants: u64,
    /// Branches per tenant.
    pub branches: u64,
    pub mix: Mix,
    /// Diners sharing one table session (the gateway allows 12 by default).
    pub diners_per_session: u64,
}

/// One connection slot's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub slot: u64,
    pub kind: Kind,
    pub tenant_id: u64,
    /// The member's branch (a diner's session branch; an admin's first branch).
    pub branch_id: u64,
    pub branch_ids: Vec<u64>,
    /// Staff `sub` (unique per slot, so the per-user limit never bites).
    pub user_id: u64,
    /// Diners only.
    pub session_id: Option<u64>,
}

/// The population with its interleaving pattern precomputed.
#[derive(Debug, Clone)]
pub struct Population {
    pub params: PopulationParams,
    /// Kinds in one cycle of the pattern, evenly interleaved (smooth weighted round robin).
    pattern: Vec<Kind>,
    /// For each pattern position, how many earlier positions hold the same kind.
    rank: Vec<u64>,
}

impl Population {
    pub fn new(params: PopulationParams) -> anyhow::Result<Population> {
        if params.tenants == 0 || params.branches == 0 {
            bail!("--tenants and --branches must be at least 1");
        }
        if !(1..=12).contains(&params.diners_per_session) {
            bail!("--diners-per-session must be between 1 and 12 (the gateway's per-session limit)");
        }
        let (pattern, rank) = interleave(&params.mix);
        Ok(Population { params, pattern, rank })
    }

    pub fn len(&self) -> u64 {
        self.params.connections
    }

    pub fn member(&self, slot: u64) -> Member {
        let w = self.pattern.len() as u64;
        let pos = (slot % w) as usize;
        let kind = self.pattern[pos];
        let ordinal = (slot / w) * self.params.mix.weight(kind) + self.rank[pos];
        let user_id = USER_BASE + slot;
        if kind == Kind::Diner {
            let group = ordinal / self.params.diners_per_session;
            let (tenant_id, branch_id) = self.session_home(group);
            return Member {
                slot,
                kind,
                tenant_id,
                branch_id,
                branch_ids: vec![branch_id],
                user_id,
                session_id: Some(SESSION_BASE + group),
            };
        }
        let (tenant_id, branch_id) = self.place(ordinal);
        let branch_ids = if kind == Kind::Admin { self.branches_of(tenant_id) } else { vec![branch_id] };
        Member { slot, kind, tenant_id, branch_id, branch_ids, user_id, session_id: None }
    }

    /// How many of the first `n` slots are of `kind`.
    pub fn count(&self, kind: Kind, n: u64) -> u64 {
        let w = self.pattern.len() as u64;
        let full = (n / w) * self.params.mix.weight(kind);
        full + self.pattern[..(n % w) as usize].iter().filter(|k| **k == kind).count() as u64
    }

    /// Number of table sessions with at least one diner.
    pub fn sessions(&self) -> u64 {
        self.count(Kind::Diner, self.len()).div_ceil(self.params.diners_per_session)
    }

    /// `(tenant_id, branch_id)` of session group `group` (session id `SESSION_BASE + group`).
    pub fn session_home(&self, group: u64) -> (u64, u64) {
        self.place(group)
    }

    pub fn tenant_ids(&self) -> impl Iterator<Item = u64> {
        (0..self.params.tenants).map(|t| TENANT_BASE + t)
    }

    /// Every `(tenant_id, branch_id)`.
    pub fn all_branches(&self) -> Vec<(u64, u64)> {
        self.tenant_ids().flat_map(|t| self.branches_of(t).into_iter().map(move |b| (t, b))).collect()
    }

    pub fn branches_of(&self, tenant_id: u64) -> Vec<u64> {
        let t = tenant_id - TENANT_BASE;
        (0..self.params.branches).map(|b| BRANCH_BASE + t * self.params.branches + b).collect()
    }

    /// Spreads the `ordinal`-th member of a kind over tenants first, then branches.
    fn place(&self, ordinal: u64) -> (u64, u64) {
        let t = ordinal % self.params.tenants;
        let b = (ordinal / self.params.tenants) % self.params.branches;
        (TENANT_BASE + t, BRANCH_BASE + t * self.params.branches + b)
    }
}

fn interleave(mix: &Mix) -> (Vec<Kind>, Vec<u64>) {
    let total: i64 = mix.weights.iter().map(|w| *w as i64).sum();
    let mut current = [0i64; 5];
    let mut seen = [0u64; 5];
    let mut pattern = Vec::with_capacity(total as usize);
    let mut rank = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(mix.weights) {
            *c += w as i64;
        }
        let best = (0..5)
            .filter(|i| mix.weights[*i] > 0)
            .max_by_key(|i| (current[*i], -(*i as i64)))
            .expect("a positive weight");
        current[best] -= total;
        pattern.push(Kind::ALL[best]);
        rank.push(seen[best]);
        seen[best] += 1;
    }
    (pattern, rank)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pop(n: u64, mix: &str) -> Population {
        Population::new(PopulationParams {
            connections: n,
            tenants: 3,
            branches: 2,
            mix: Mix::parse(mix).unwrap(),
            diners_per_session: 4,
        })
        .unwrap()
    }

    #[test]
    fn kinds_follow_the_weights_and_counts_agree_with_members() {
        let p = pop(1000, "waiter=40,manager=5,kitchen=15,admin=5,diner=35");
        for kind in Kind::ALL {
            let counted = (0..1000).filter(|s| p.member(*s).kind == kind).count() as u64;
            assert_eq!(counted, p.count(kind, 1000), "{kind:?}");
        }
        assert_eq!(p.count(Kind::Waiter, 1000), 400);
        assert_eq!(p.count(Kind::Diner, 1000), 350);
        assert_eq!(p.sessions(), 88);
    }

    #[test]
    fn members_spread_over_tenants_and_branches_and_sessions_fill_up() {
        let p = pop(600, "waiter=1,diner=1");
        let mut per_session = std::collections::HashMap::new();
        let mut branches = std::collections::HashSet::new();
        for s in 0..600 {
            let m = p.member(s);
            assert!(p.branches_of(m.tenant_id).contains(&m.branch_id));
            branches.insert(m.branch_id);
            if let Some(session) = m.session_id {
                *per_session.entry(session).or_insert(0) += 1;
                assert_eq!(p.session_home(session - SESSION_BASE), (m.tenant_id, m.branch_id));
            }
        }
        assert_eq!(branches.len(), 6);
        assert!(per_session.values().all(|n| *n == 4));
        assert_eq!(per_session.len() as u64, p.sessions());
    }

    #[test]
    fn admins_hold_every_branch_of_their_tenant_and_users_are_unique() {
        let p = pop(50, "admin=1,waiter=1");
        let admin = (0..50).map(|s| p.member(s)).find(|m| m.kind == Kind::Admin).unwrap();
        assert_eq!(admin.branch_ids, p.branches_of(admin.tenant_id));
        let users: std::collections::HashSet<_> = (0..50).map(|s| p.member(s).user_id).collect();
        assert_eq!(users.len(), 50);
    }

    #[test]
    fn bad_mixes_are_refused() {
        assert!(Mix::parse("chef=3").is_err());
        assert!(Mix::parse("waiter=0").is_err());
        assert!(Mix::parse("waiter=x").is_err());
    }
}
