//! Resume cursors (`gateway::connection::resume::parse`), the `resume` and `epoch` query
//! parameters. Input: `resume\nepoch\npayload` (the epoch and payload lines optional).
//! A cursor accepted is the decimal value given (trimmed), with the epoch given; `live` and
//! empty mean live; nothing else is live. And the cursor splice (`with_cursor`) of an event the
//! envelope parser accepts is still a JSON object with `_cursor` (and `_epoch`) first, the
//! event's fields unchanged.
#![no_main]

use fuzz::split_line;
use gateway::connection::resume::{parse, with_cursor, Request};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (value, rest) = split_line(text);
    let (epoch, payload) = match rest.map(split_line) {
        Some((epoch, payload)) => (Some(epoch), payload),
        None => (None, None),
    };
    let request = parse(value, epoch);
    match request {
        Request::Live => assert!(matches!(value.trim(), "" | "live"), "{value:?}"),
        Request::After { cursor, epoch: got } => {
            assert_eq!(value.trim().parse::<u64>().ok(), Some(cursor), "{value:?}");
            assert_eq!(got, epoch.map(|e| e.trim().parse::<u64>().expect("an accepted epoch is a number")));
        }
        Request::Invalid => assert!(
            !matches!(value.trim(), "" | "live")
                && (value.trim().parse::<u64>().is_err() || epoch.is_some_and(|e| e.trim().parse::<u64>().is_err())),
            "{value:?} {epoch:?}"
        ),
    }
    let Some(payload) = payload else { return };
    if wire::envelope::parse(payload.as_bytes()).is_err() {
        return;
    }
    // Events with unpaired surrogate escapes are valid JSON that serde_json's `Value` cannot
    // hold (see the envelope target): compared only where it can.
    let Ok(original) = serde_json::from_str::<Value>(payload) else { return };
    let (sequence, epoch) = match request {
        Request::After { cursor, epoch } => (cursor, epoch),
        _ => (7, None),
    };
    let spliced = with_cursor(payload, sequence, epoch);
    let v: Value = serde_json::from_str(&spliced).expect("spliced event is JSON");
    let fields = original.as_object().expect("an accepted event is an object");
    // An event that carries its own `_cursor` or `_epoch` keeps it (its key comes last and wins
    // in most JSON readers): the splice leaves the event's bytes alone, by design.
    if !fields.contains_key("_cursor") {
        assert_eq!(v["_cursor"].as_u64(), Some(sequence), "{spliced}");
    }
    if !fields.contains_key("_epoch") {
        assert_eq!(v["_epoch"].as_str().map(str::to_string), epoch.map(|e| e.to_string()), "{spliced}");
    }
    for (key, value) in fields {
        if key != "_cursor" && key != "_epoch" {
            assert_eq!(&v[key], value, "{key} changed: {spliced}");
        }
    }
});
