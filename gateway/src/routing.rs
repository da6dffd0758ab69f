//! Who receives an event (protocol section 6), as a pure predicate over one connection's audience
//! and one event. The registry only narrows candidates; this function is the whole rule.

use crate::auth::Endpoint;
use wire::envelope::Envelope;
use wire::event_types::TypeClass;
use wire::subject::EventSubject;

/// The routing fields of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventScope {
    pub tenant_id: u64,
    /// 0 means tenant-wide.
    pub branch_id: u64,
    pub class: TypeClass,
    pub sector_id: Option<u64>,
    pub session_id: Option<u64>,
}

impl EventScope {
    /// The scope of a validated event carried on `subject`: the body's fields, the branch from
    /// the subject when the body has none. Live dispatch, resume replays and catch-up all route
    /// through this one function.
    pub fn of(subject: &EventSubject, envelope: &Envelope) -> EventScope {
        EventScope {
            tenant_id: envelope.tenant_id,
            branch_id: envelope.branch_id.unwrap_or(subject.branch_id),
            class: TypeClass::of(&envelope.event_type),
            sector_id: envelope.sector_id,
            session_id: envelope.session_id,
        }
    }
}

/// What a connection may receive, fixed at connect time (sectors change and are passed apart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    Staff {
        tenant_id: u64,
        branch_ids: Box<[u64]>,
        endpoint: Endpoint,
        /// Admin endpoint, or MANAGER/ADMIN on the waiter or kitchen endpoint.
        admin_view: bool,
    },
    Diner {
        tenant_id: u64,
        session_id: u64,
    },
}

impl Audience {
    pub fn tenant_id(&self) -> u64 {
        match self {
            Audience::Staff { tenant_id, .. } | Audience::Diner { tenant_id, .. } => *tenant_id,
        }
    }

    /// A waiter-endpoint connection without MANAGER/ADMIN: the only audience routed by sector.
    pub fn is_pure_waiter(&self) -> bool {
        self.role() == Role::Waiter
    }
}

/// Whether a connection with `audience` (and, for pure waiters, `sectors`) receives `event`:
/// the event must be within its reach (its tenant; one of its branches, or tenant-wide for the
/// admin view; its table session), and then its [`Role`] decides.
pub fn receives(audience: &Audience, sectors: &[u64], event: &EventScope) -> bool {
    if audience.tenant_id() != event.tenant_id {
        return false;
    }
    let within_reach = match audience {
        Audience::Diner { session_id, .. } => event.session_id == Some(*session_id),
        Audience::Staff { admin_view, .. } if event.branch_id == 0 => *admin_view,
        Audience::Staff { branch_ids, .. } => branch_ids.contains(&event.branch_id),
    };
    within_reach && audience.role().receives(sectors, event)
}

/// The part of [`receives`] that depends on what a connection is, not on where it is: what the
/// fan-out decides per candidate, the registry's index having already narrowed the candidates to
/// those within the event's reach. One byte, kept beside each candidate in the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The admin endpoint, or MANAGER/ADMIN on the waiter or kitchen endpoint: everything.
    AdminView,
    /// A waiter without the admin view: routed by sector.
    Waiter,
    Kitchen,
    Diner,
    /// Nothing (a staff audience on an endpoint without events of its own).
    Nothing,
}

impl Audience {
    pub fn role(&self) -> Role {
        match self {
            Audience::Diner { .. } => Role::Diner,
            Audience::Staff { admin_view: true, .. } => Role::AdminView,
            Audience::Staff { endpoint: Endpoint::Waiter, .. } => Role::Waiter,
            Audience::Staff { endpoint: Endpoint::Kitchen, .. } => Role::Kitchen,
            Audience::Staff { endpoint: Endpoint::Admin | Endpoint::Diner, .. } => Role::Nothing,
        }
    }
}

impl Role {
    /// Whether this role receives `event`, within its reach. `sectors` are read only when
    /// [`Role::needs_sectors`].
    pub fn receives(self, sectors: &[u64], event: &EventScope) -> bool {
        match self {
            Role::AdminView => true,
            Role::Waiter => waiter_receives(sectors, event),
            Role::Kitchen => event.class.kitchen,
            Role::Diner => event.class.session,
            Role::Nothing => false,
        }
    }

    /// Whether [`Role::receives`] depends on the connection's sectors for `event`.
    pub fn needs_sectors(self, event: &EventScope) -> bool {
        self == Role::Waiter && event.sector_id.is_some() && !event.class.admin_only && !event.class.branch_wide_waiter
    }
}

fn waiter_receives(sectors: &[u64], event: &EventScope) -> bool {
    if event.class.admin_only {
        return false;
    }
    if event.class.branch_wide_waiter {
        return true;
    }
    match event.sector_id {
        Some(sector) => sectors.contains(&sector),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(ty: &str, branch: u64, sector: Option<u64>, session: Option<u64>) -> EventScope {
        EventScope { tenant_id: 1, branch_id: branch, class: TypeClass::of(ty), sector_id: sector, session_id: session }
    }

    fn staff(endpoint: Endpoint, admin_view: bool) -> Audience {
        Audience::Staff { tenant_id: 1, branch_ids: vec![10].into(), endpoint, admin_view }
    }

    const DINER: Audience = Audience::Diner { tenant_id: 1, session_id: 77 };

    /// (type, sector, session) -> [admin, manager on waiter, waiter in sector 5, waiter in sector 6, kitchen, diner of 77]
    #[test]
    fn matrix_for_branch_events() {
        let admin = staff(Endpoint::Admin, true);
        let manager_waiter = staff(Endpoint::Waiter, true);
        let waiter = staff(Endpoint::Waiter, false);
        let kitchen = staff(Endpoint::Kitchen, false);
        type Row = (&'static str, Option<u64>, Option<u64>, [bool; 6]);
        let rows: &[Row] = &[
            ("ROUND_SUBMITTED", None, None, [true, true, true, true, true, false]),
            ("ROUND_SUBMITTED", Some(5), None, [true, true, true, false, true, false]),
            ("ROUND_READY", Some(5), Some(77), [true, true, true, false, true, true]),
            ("ROUND_READY", Some(5), Some(78), [true, true, true, false, true, false]),
            ("CHECK_REQUESTED", Some(6), Some(77), [true, true, false, true, false, true]),
            ("ENTITY_UPDATED", Some(5), Some(77), [true, true, false, false, false, false]),
            ("ROUND_PENDING", Some(6), None, [true, true, true, true, false, false]),
            ("TABLE_SESSION_STARTED", Some(6), Some(77), [true, true, true, true, false, true]),
            ("SERVICE_CALL_CREATED", Some(5), Some(77), [true, true, true, false, false, false]),
            ("SOMETHING_NEW", None, None, [true, true, true, true, false, false]),
        ];
        for (ty, sector, session, expected) in rows {
            let e = event(ty, 10, *sector, *session);
            let got = [
                receives(&admin, &[], &e),
                receives(&manager_waiter, &[], &e),
                receives(&waiter, &[5], &e),
                receives(&waiter, &[6], &e),
                receives(&kitchen, &[], &e),
                receives(&DINER, &[], &e),
            ];
            assert_eq!(&got, expected, "{ty} sector {sector:?} session {session:?}");
        }
    }

    #[test]
    fn tenant_wide_events_reach_every_admin_of_the_tenant_only() {
        let e = event("ROUND_READY", 0, None, Some(77));
        let other_branch_admin =
            Audience::Staff { tenant_id: 1, branch_ids: vec![99].into(), endpoint: Endpoint::Admin, admin_view: true };
        assert!(receives(&other_branch_admin, &[], &e));
        assert!(receives(&staff(Endpoint::Kitchen, true), &[], &e));
        assert!(!receives(&staff(Endpoint::Waiter, false), &[], &e));
        assert!(!receives(&staff(Endpoint::Kitchen, false), &[], &e));
        assert!(receives(&DINER, &[], &e), "session events reach diners whatever the branch");
    }

    #[test]
    fn never_across_tenants_or_branches() {
        let mut e = event("ROUND_SUBMITTED", 10, None, Some(77));
        e.tenant_id = 2;
        for a in [staff(Endpoint::Admin, true), staff(Endpoint::Waiter, false), staff(Endpoint::Kitchen, false), DINER]
        {
            assert!(!receives(&a, &[], &e));
        }
        let e = event("ROUND_SUBMITTED", 11, None, None);
        for a in [staff(Endpoint::Admin, true), staff(Endpoint::Waiter, false), staff(Endpoint::Kitchen, false)] {
            assert!(!receives(&a, &[], &e), "branch 11 is not in branch_ids");
        }
    }

    #[test]
    fn diners_get_only_their_sessions_session_events() {
        assert!(!receives(&DINER, &[], &event("ROUND_SUBMITTED", 10, None, Some(77))), "kitchen-only type");
        assert!(!receives(&DINER, &[], &event("CART_SYNC", 10, None, None)), "no session id");
    }

    /// The fan-out skips reading a waiter's sectors unless `needs_sectors` says they matter:
    /// for every role and event, sectors that differ must then change nothing.
    #[test]
    fn sectors_matter_exactly_when_the_role_says_so() {
        let types =
            ["ROUND_SUBMITTED", "ROUND_READY", "CHECK_REQUESTED", "ENTITY_UPDATED", "ROUND_PENDING", "SOMETHING_NEW"];
        let roles = [Role::AdminView, Role::Waiter, Role::Kitchen, Role::Diner, Role::Nothing];
        let mut mattered = 0;
        for ty in types {
            for sector in [None, Some(5)] {
                let e = event(ty, 10, sector, Some(77));
                for role in roles {
                    let (with, without) = (role.receives(&[5], &e), role.receives(&[6], &e));
                    if role.needs_sectors(&e) {
                        mattered += usize::from(with != without);
                    } else {
                        assert_eq!(with, without, "{role:?} {ty} sector {sector:?}");
                    }
                }
            }
        }
        assert!(mattered > 0, "some sector-routed event must depend on the sectors");
    }
}
