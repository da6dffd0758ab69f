//! Opt-in resume (protocol section 8). A client that connects with `resume=live` or
//! `resume=<cursor>` receives every event with a `"_cursor":<stream sequence>` key spliced in
//! front of the event's own keys (the rest of the bytes unchanged). Reconnecting with the last
//! cursor, to any replica, first replays from JetStream exactly the events this connection
//! would have received since, in order, then continues live; live events the replay already
//! covered are skipped at the seam. When the replay cannot be complete (cursor older than the
//! stream's history, more than the replay limit, history unreadable, unreadable cursor) the
//! client gets one `{"type":"RESUME_GAP",...}` frame instead of a silent partial replay.
//! Clients without the parameter see exactly the old protocol.

use serde_json::json;

pub const PARAM: &str = "resume";

/// What the client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Cursors from now on, no replay.
    Live,
    /// Replay everything after this cursor first.
    After(u64),
    /// A value that is not a cursor: the client is told with a gap signal, then goes live.
    Invalid,
}

pub fn parse(value: &str) -> Request {
    match value.trim() {
        "" | "live" => Request::Live,
        v => v.parse::<u64>().map(Request::After).unwrap_or(Request::Invalid),
    }
}

/// Per-connection resume state.
#[derive(Debug, Clone, Copy)]
pub struct Resume {
    pub request: Request,
    /// Highest stream sequence already delivered or covered by the replay.
    pub floor: u64,
}

/// `payload` with `"_cursor":<sequence>` as its first key. `payload` is a validated JSON object.
pub fn with_cursor(payload: &str, sequence: u64) -> String {
    let Some(open) = payload.find('{') else { return payload.to_string() };
    let rest = &payload[open + 1..];
    let separator = if rest.trim_start().starts_with('}') { "" } else { "," };
    format!("{}{{\"_cursor\":{sequence}{separator}{rest}", &payload[..open])
}

/// The gap signal: events after `after` could not all be replayed; `oldest` is the oldest
/// cursor the stream still holds. The client should reload its state, then use the cursors of
/// the events that follow.
pub fn gap(after: Option<u64>, oldest: Option<u64>, reason: &str) -> String {
    json!({"type": "RESUME_GAP", "after": after, "oldest": oldest, "reason": reason}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_parameter() {
        assert_eq!(parse("live"), Request::Live);
        assert_eq!(parse(""), Request::Live);
        assert_eq!(parse("1234"), Request::After(1234));
        assert_eq!(parse("1"), Request::After(1), "1 is a cursor, the stream's first sequence");
        assert_eq!(parse("0"), Request::After(0), "everything the stream holds");
        assert_eq!(parse("-3"), Request::Invalid);
        assert_eq!(parse("abc"), Request::Invalid);
    }

    #[test]
    fn splices_the_cursor_and_keeps_every_other_byte() {
        let original = r#" { "type" : "X", "tenant_id":1 }"#;
        let spliced = with_cursor(original, 42);
        assert_eq!(spliced, r#" {"_cursor":42, "type" : "X", "tenant_id":1 }"#);
        let v: serde_json::Value = serde_json::from_str(&spliced).unwrap();
        assert_eq!(v["_cursor"], 42);
        assert_eq!(with_cursor("{}", 7), r#"{"_cursor":7}"#);
    }

    #[test]
    fn the_gap_signal_is_json() {
        let v: serde_json::Value = serde_json::from_str(&gap(Some(5), Some(90), "history_expired")).unwrap();
        assert_eq!(v["type"], "RESUME_GAP");
        assert_eq!(v["after"], 5);
        assert_eq!(v["oldest"], 90);
    }
}
