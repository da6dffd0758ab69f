//! NATS subjects (`wire::subject::EventSubject::parse`). A parsed subject has exactly one
//! spelling: printing it back gives the input. And the other way round, any subject built from
//! the input's first bytes prints to text that parses back to it (when the tenant is non-zero).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::subject::{EventSubject, Role, EVENTS_PREFIX, LIVE_PREFIX};

const ROLES: [Role; 4] = [Role::Admin, Role::Kitchen, Role::Session, Role::Waiters];

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(s) = EventSubject::parse(text) {
            assert!(s.tenant_id > 0, "{text}");
            let again = if text.starts_with(EVENTS_PREFIX) { s.events() } else { s.live() };
            assert_eq!(again, text, "not the one spelling");
            assert_eq!(Role::parse(s.role.as_str()), Some(s.role));
        }
    }
    if let Some(bytes) = data.get(..17) {
        let tenant_id = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
        let branch_id = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
        let s = EventSubject { tenant_id, branch_id, role: ROLES[usize::from(bytes[16] % 4)] };
        let expected = (tenant_id > 0).then_some(s);
        assert_eq!(EventSubject::parse(&s.events()), expected, "{}", s.events());
        assert_eq!(EventSubject::parse(&s.live()), expected, "{}", s.live());
        assert!(s.events().starts_with(EVENTS_PREFIX) && s.live().starts_with(LIVE_PREFIX));
    }
});
