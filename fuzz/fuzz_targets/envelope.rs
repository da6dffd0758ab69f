//! Event envelopes (`wire::envelope::parse`), the bytes a backend publishes. Checked against
//! serde_json's own reading of the same bytes: an accepted event is a JSON object of at most
//! `MAX_EVENT_BYTES` whose routing fields are exactly what the parser reports; a refusal's
//! class (not JSON, not an object) agrees with serde_json.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::de::IgnoredAny;
use serde_json::Value;
use wire::envelope::{parse, Reject, MAX_EVENT_BYTES};

const MAX_ID: u64 = i64::MAX as u64;

fuzz_target!(|data: &[u8]| {
    let is_json = || serde_json::from_slice::<IgnoredAny>(data).is_ok();
    match parse(data) {
        Ok(e) => {
            assert!(data.len() <= MAX_EVENT_BYTES);
            assert!(is_json(), "accepted bytes that are not JSON");
            // JSON's grammar allows any `\uXXXX`, unpaired UTF-16 surrogates too; serde_json's
            // `Value` (Rust strings) does not. The parser reads only the routing fields and
            // passes the bytes on untouched (browsers' JSON.parse takes such strings), so such
            // an event is valid; its fields are then compared where `Value` can hold them.
            let v: Value = match serde_json::from_slice(data) {
                Ok(v) => v,
                Err(_) => return,
            };
            assert!(v.is_object(), "accepted a non-object");
            assert!(!e.event_type.is_empty());
            assert_eq!(v["type"].as_str(), Some(e.event_type.as_str()));
            assert!((1..=MAX_ID).contains(&e.tenant_id), "{e:?}");
            assert_eq!(v["tenant_id"].as_u64(), Some(e.tenant_id));
            for (field, id, min) in [
                ("branch_id", e.branch_id, 0),
                ("sector_id", e.sector_id, 1),
                ("session_id", e.session_id, 1),
                ("table_id", e.table_id, 1),
            ] {
                match id {
                    None => assert!(v[field].is_null(), "{field} reported missing: {v}"),
                    Some(id) => {
                        assert!((min..=MAX_ID).contains(&id), "{field} {id} out of range");
                        assert_eq!(v[field].as_u64(), Some(id), "{field}");
                    }
                }
            }
        }
        Err(Reject::TooLarge) => assert!(data.len() > MAX_EVENT_BYTES),
        Err(Reject::NotJson) => assert!(!is_json() || std::str::from_utf8(data).is_err()),
        Err(Reject::NotObject) => {
            assert!(is_json() && !serde_json::from_slice::<Value>(data).is_ok_and(|v| v.is_object()))
        }
        Err(_) => assert!(is_json(), "a field refusal for bytes that are not JSON"),
    }
});
