//! The client side of resume (protocol section 8): the `resume` query parameter a connection
//! opens with (`live` first, then the last cursor it saw), and what a received text frame holds:
//! the cursor the gateway spliced in front of an event's own keys, the loadtest marker behind it,
//! or the `RESUME_GAP` signal and its reason. Pure; the slot keeps the cursor.

use crate::events::{parse_marker, parse_marker_keys};

const CURSOR_PREFIX: &str = "{\"_cursor\":";
const EPOCH_PREFIX: &str = "\"_epoch\":\"";

/// `&resume=live` without a cursor, `&resume=<cursor>` with one.
pub fn param(cursor: Option<u64>) -> String {
    match cursor {
        Some(cursor) => format!("&resume={cursor}"),
        None => "&resume=live".to_string(),
    }
}

/// What a text frame from the gateway holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The event's stream sequence, when the connection opted into resume.
    pub cursor: Option<u64>,
    /// `(run, id, sent_us)` of a loadtest event.
    pub marker: Option<(u64, u32, u64)>,
    /// The reason of a `RESUME_GAP` (the gateway could not replay everything since the cursor):
    /// `history_expired`, `too_many_events`, `history_unavailable`, `invalid_cursor`.
    pub gap: Option<&'a str>,
}

pub fn read(text: &str) -> Frame<'_> {
    if let Some(rest) = text.strip_prefix(CURSOR_PREFIX) {
        let end = rest.bytes().position(|b| !b.is_ascii_digit()).unwrap_or(rest.len());
        let mut keys = rest[end..].strip_prefix(',').unwrap_or_default();
        // The cursor's epoch, when the gateway knew it (the loadtest resumes with the plain cursor).
        if let Some(epoch) = keys.strip_prefix(EPOCH_PREFIX) {
            keys = epoch.split_once("\",").map(|(_, keys)| keys).unwrap_or_default();
        }
        return Frame { cursor: rest[..end].parse().ok(), marker: parse_marker_keys(keys), gap: None };
    }
    let marker = parse_marker(text);
    let gap = (marker.is_none() && text.contains("\"RESUME_GAP\"")).then(|| gap_reason(text));
    Frame { cursor: None, marker, gap }
}

/// The `reason` of a gap signal, `unknown` without one.
fn gap_reason(text: &str) -> &str {
    let Some((_, rest)) = text.split_once("\"reason\":\"") else { return "unknown" };
    rest.split('"').next().unwrap_or("unknown")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{render, Generator, Traffic};
    use crate::population::{Mix, Population, PopulationParams};

    #[test]
    fn reads_the_cursor_and_the_marker_behind_it() {
        let pop = Population::new(PopulationParams {
            connections: 10,
            tenants: 1,
            branches: 1,
            mix: Mix::default(),
            diners_per_session: 4,
        })
        .unwrap();
        let text = render(&Generator::new(Traffic::Steady, pop, 1).event(9), 42, 1_700_000_000_000_001, 0);
        // As the gateway splices it (gateway/src/connection/resume.rs): the cursor first.
        let resumed = format!("{{\"_cursor\":1234,{}", &text[1..]);
        assert_eq!(
            read(&resumed),
            Frame { cursor: Some(1234), marker: Some((42, 9, 1_700_000_000_000_001)), gap: None }
        );
        let with_epoch = format!("{{\"_cursor\":1234,\"_epoch\":\"1796207887475607371\",{}", &text[1..]);
        assert_eq!(
            read(&with_epoch),
            Frame { cursor: Some(1234), marker: Some((42, 9, 1_700_000_000_000_001)), gap: None }
        );
        assert_eq!(read(&text), Frame { cursor: None, marker: Some((42, 9, 1_700_000_000_000_001)), gap: None });
        assert_eq!(
            read(r#"{"_cursor":77,"type":"ROUND_READY"}"#),
            Frame { cursor: Some(77), marker: None, gap: None },
            "a foreign event still moves the cursor"
        );
        assert_eq!(read(r#"{"_cursor":78}"#).cursor, Some(78));
    }

    #[test]
    fn recognises_the_gap_signal_and_other_frames() {
        let gap = r#"{"after":5,"oldest":90,"reason":"history_expired","type":"RESUME_GAP"}"#;
        assert_eq!(read(gap), Frame { cursor: None, marker: None, gap: Some("history_expired") });
        assert_eq!(read(r#"{"type":"RESUME_GAP"}"#).gap, Some("unknown"));
        assert_eq!(read(r#"{"type":"pong"}"#), Frame { cursor: None, marker: None, gap: None });
        assert_eq!(param(None), "&resume=live");
        assert_eq!(param(Some(12)), "&resume=12");
    }
}
