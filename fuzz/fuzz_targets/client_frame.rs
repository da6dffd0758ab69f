//! Client text frames (`gateway::connection::protocol::classify`). A frame is a ping only as
//! `ping` or a JSON object whose `type` is the string `ping`, checked against serde_json's
//! reading; every such object, written plainly, is a ping; `refresh_sectors` only verbatim.
#![no_main]

use gateway::connection::protocol::{classify, Inbound};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let trimmed = text.trim();
    let json = match serde_json::from_str::<Value>(trimmed) {
        // JSON's grammar puts no range on numbers; serde_json's `Value` refuses what an f64
        // cannot hold. The gateway reads only `type` and skips the rest, so such an object is
        // classified by its `type`: nothing to compare it with here.
        Err(e) if e.to_string().starts_with("number out of range") => return,
        parsed => parsed.ok().filter(Value::is_object),
    };
    let typed_ping = json.as_ref().is_some_and(|v| v["type"] == "ping");
    match classify(text) {
        Inbound::Ping => assert!(trimmed == "ping" || typed_ping, "{text:?}"),
        Inbound::RefreshSectors => assert_eq!(trimmed, "refresh_sectors"),
        Inbound::Other => assert!(trimmed != "ping" && trimmed != "refresh_sectors", "{text:?}"),
    }
    if let Some(v) = json.filter(|_| typed_ping) {
        // Written without duplicate keys or odd spacing, it must be recognised.
        assert_eq!(classify(&v.to_string()), Inbound::Ping, "{v}");
    }
});
