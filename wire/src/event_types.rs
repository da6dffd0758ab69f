//! The event type sets of protocol section 6. Routing in the gateway and the subject's role
//! segment in the bridge both classify events with these; nothing else lives here.

pub const KITCHEN: &[&str] = &[
    "ROUND_SUBMITTED",
    "ROUND_IN_KITCHEN",
    "ROUND_READY",
    "ROUND_SERVED",
    "TICKET_IN_PROGRESS",
    "TICKET_READY",
    "TICKET_DELIVERED",
];

pub const SESSION: &[&str] = &[
    "ROUND_IN_KITCHEN",
    "ROUND_READY",
    "ROUND_SERVED",
    "ROUND_CANCELED",
    "CHECK_REQUESTED",
    "CHECK_PAID",
    "PAYMENT_APPROVED",
    "PAYMENT_REJECTED",
    "PAYMENT_FAILED",
    "TABLE_SESSION_STARTED",
    "TABLE_CLEARED",
    "TABLE_STATUS_CHANGED",
    "CART_ITEM_ADDED",
    "CART_ITEM_UPDATED",
    "CART_ITEM_REMOVED",
    "CART_CLEARED",
    "CART_SYNC",
];

pub const ADMIN_ONLY: &[&str] = &["ENTITY_CREATED", "ENTITY_UPDATED", "ENTITY_DELETED", "CASCADE_DELETE"];

pub const BRANCH_WIDE_WAITER: &[&str] = &["ROUND_PENDING", "TABLE_SESSION_STARTED"];

/// The sets an event type belongs to, computed once per event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TypeClass {
    pub kitchen: bool,
    pub session: bool,
    pub admin_only: bool,
    pub branch_wide_waiter: bool,
}

impl TypeClass {
    pub fn of(event_type: &str) -> Self {
        TypeClass {
            kitchen: KITCHEN.contains(&event_type),
            session: SESSION.contains(&event_type),
            admin_only: ADMIN_ONLY.contains(&event_type),
            branch_wide_waiter: BRANCH_WIDE_WAITER.contains(&event_type),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_sets_are_both_reported() {
        let c = TypeClass::of("ROUND_IN_KITCHEN");
        assert!(c.kitchen && c.session && !c.admin_only && !c.branch_wide_waiter);
        let c = TypeClass::of("TABLE_SESSION_STARTED");
        assert!(c.session && c.branch_wide_waiter && !c.kitchen);
    }

    #[test]
    fn unknown_types_are_in_no_set() {
        assert_eq!(TypeClass::of("SERVICE_CALL_CREATED"), TypeClass::default());
        assert_eq!(TypeClass::of("round_ready"), TypeClass::default(), "matching is exact");
    }
}
