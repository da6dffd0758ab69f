//! The NATS subject grammar and the JetStream layout every component agrees on.
//!
//! ```text
//! events.<tenant_id>.<branch_id>.<role>   stored in stream EVENTS (the bridge publishes here)
//! live.<tenant_id>.<branch_id>.<role>     re-published by JetStream after storing (gateways subscribe
//!                                         to live.<tenant_id>.> for the tenants they hold)
//! dlq.<reason>                            stored in stream EVENTS_DLQ (refused events)
//! ```
//!
//! `tenant_id` is a positive integer, `branch_id` a non-negative integer (0 = tenant-wide) and
//! `role` is the event's primary audience, derived from its body (see [`Role::of`]), so the
//! subject of an event does not depend on which Redis channel carried it. Routing in the gateway
//! uses the body fields, never the role token; the role lets operators and replays filter.

use crate::event_types::TypeClass;

pub const EVENTS_STREAM: &str = "EVENTS";
pub const EVENTS_PREFIX: &str = "events";
pub const LIVE_PREFIX: &str = "live";
pub const DLQ_STREAM: &str = "EVENTS_DLQ";
pub const DLQ_PREFIX: &str = "dlq";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// ADMIN_ONLY types and tenant-wide (branch 0) events.
    Admin,
    /// KITCHEN types.
    Kitchen,
    /// SESSION types that are not KITCHEN types.
    Session,
    /// Everything else: admins and waiters.
    Waiters,
}

impl Role {
    pub fn of(class: TypeClass, branch_id: u64) -> Role {
        if class.admin_only || branch_id == 0 {
            Role::Admin
        } else if class.kitchen {
            Role::Kitchen
        } else if class.session {
            Role::Session
        } else {
            Role::Waiters
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Kitchen => "kitchen",
            Role::Session => "session",
            Role::Waiters => "waiters",
        }
    }

    pub fn parse(token: &str) -> Option<Role> {
        Some(match token {
            "admin" => Role::Admin,
            "kitchen" => Role::Kitchen,
            "session" => Role::Session,
            "waiters" => Role::Waiters,
            _ => return None,
        })
    }
}

/// The `tenant.branch.role` part of an event subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventSubject {
    pub tenant_id: u64,
    pub branch_id: u64,
    pub role: Role,
}

impl EventSubject {
    /// The subject the bridge publishes to.
    pub fn events(&self) -> String {
        self.with_prefix(EVENTS_PREFIX)
    }

    /// The subject JetStream re-publishes the stored event to.
    pub fn live(&self) -> String {
        self.with_prefix(LIVE_PREFIX)
    }

    fn with_prefix(&self, prefix: &str) -> String {
        format!("{prefix}.{}.{}.{}", self.tenant_id, self.branch_id, self.role.as_str())
    }

    /// Parses `events.T.B.R` or `live.T.B.R`. Leading zeros, a zero tenant and unknown roles
    /// are refused so that one event has exactly one spelling.
    pub fn parse(subject: &str) -> Option<EventSubject> {
        let mut parts = subject.split('.');
        let prefix = parts.next()?;
        if prefix != EVENTS_PREFIX && prefix != LIVE_PREFIX {
            return None;
        }
        let tenant_id = canonical_u64(parts.next()?)?;
        let branch_id = canonical_u64(parts.next()?)?;
        let role = Role::parse(parts.next()?)?;
        if parts.next().is_some() || tenant_id == 0 {
            return None;
        }
        Some(EventSubject { tenant_id, branch_id, role })
    }
}

fn canonical_u64(token: &str) -> Option<u64> {
    if token.is_empty() || (token.len() > 1 && token.starts_with('0')) || !token.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    token.parse().ok()
}

/// Stream subjects of the events stream.
pub fn events_stream_subjects() -> String {
    format!("{EVENTS_PREFIX}.>")
}

/// What a gateway subscribes to for one tenant.
pub fn live_tenant_filter(tenant_id: u64) -> String {
    format!("{LIVE_PREFIX}.{tenant_id}.>")
}

/// Stream filter for all of one tenant's stored events (resume, reconnect recovery).
pub fn events_tenant_filter(tenant_id: u64) -> String {
    format!("{EVENTS_PREFIX}.{tenant_id}.>")
}

/// Stream filter for one tenant's stored events of one branch (replays and catch-up).
pub fn events_branch_filter(tenant_id: u64, branch_id: u64) -> String {
    format!("{EVENTS_PREFIX}.{tenant_id}.{branch_id}.*")
}

/// Subject a refused event is stored under in the dead-letter stream.
pub fn dlq_subject(reason: &str) -> String {
    format!("{DLQ_PREFIX}.{reason}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_follows_the_body() {
        let t = |ty: &str, b: u64| Role::of(TypeClass::of(ty), b);
        assert_eq!(t("ENTITY_UPDATED", 4), Role::Admin);
        assert_eq!(t("ROUND_READY", 0), Role::Admin);
        assert_eq!(t("ROUND_IN_KITCHEN", 4), Role::Kitchen);
        assert_eq!(t("CART_SYNC", 4), Role::Session);
        assert_eq!(t("SERVICE_CALL_CREATED", 4), Role::Waiters);
    }

    #[test]
    fn round_trips_and_refuses_odd_spellings() {
        let s = EventSubject { tenant_id: 12, branch_id: 0, role: Role::Admin };
        assert_eq!(s.events(), "events.12.0.admin");
        assert_eq!(s.live(), "live.12.0.admin");
        assert_eq!(EventSubject::parse("live.12.0.admin"), Some(s));
        assert_eq!(EventSubject::parse("events.12.0.admin"), Some(s));
        for bad in [
            "live.012.0.admin",
            "live.0.1.admin",
            "live.1.1",
            "live.1.1.chef",
            "live.1.1.admin.x",
            "other.1.1.admin",
            "live.-1.1.admin",
            "live..1.admin",
        ] {
            assert_eq!(EventSubject::parse(bad), None, "{bad}");
        }
    }
}
