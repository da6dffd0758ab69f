//! The bridge's channel names (`publisher_bridge::mapping::Channel::parse`), as Redis sends
//! them. A parsed channel has exactly one spelling (its `Display` gives the input back) and an
//! id within the backend's range; any channel built from the input's first bytes prints to a
//! name that parses back to it exactly when its id is in range.
#![no_main]

use libfuzzer_sys::fuzz_target;
use publisher_bridge::mapping::{BranchRole, Channel};

const MAX_ID: u64 = i64::MAX as u64;

fuzz_target!(|data: &[u8]| {
    if let Some(channel) = Channel::parse(data) {
        let id = match channel {
            Channel::Branch(id, _) | Channel::Sector(id) | Channel::Session(id) | Channel::TenantAdmin(id) => id,
        };
        assert!((1..=MAX_ID).contains(&id), "{channel:?}");
        assert_eq!(channel.to_string().as_bytes(), data, "not the one spelling");
    }
    if let Some(bytes) = data.get(..9) {
        let id = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
        let channel = match bytes[8] % 6 {
            0 => Channel::Branch(id, BranchRole::Waiters),
            1 => Channel::Branch(id, BranchRole::Kitchen),
            2 => Channel::Branch(id, BranchRole::Admin),
            3 => Channel::Sector(id),
            4 => Channel::Session(id),
            _ => Channel::TenantAdmin(id),
        };
        let expected = (1..=MAX_ID).contains(&id).then_some(channel);
        assert_eq!(Channel::parse(channel.to_string().as_bytes()), expected, "{channel}");
    }
});
