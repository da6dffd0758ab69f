//! Opt-in resume (protocol section 8). A client that connects with `resume=live` or
//! `resume=<cursor>&epoch=<epoch>` receives every event with `"_cursor":<stream sequence>` and
//! `"_epoch":"<epoch>"` spliced in front of the event's own keys (the rest of the bytes
//! unchanged). The epoch is when the stream stored that event (unix nanoseconds): no event of
//! another incarnation of the stream (deleted and re-created, restored from a backup) has the
//! same sequence and the same epoch. Reconnecting with the last cursor and its epoch, to any
//! replica, first checks the stream still holds that very event, then replays exactly the events
//! this connection would have received since, in order, then continues live; live events the
//! replay already covered are skipped at the seam (see [`Mark`]). When the replay cannot be complete (cursor
//! older than the stream's history or beyond its end, another epoch, more than the replay limit,
//! history unreadable, unreadable cursor) the client gets one `{"type":"RESUME_GAP",...}` frame
//! instead of a silent partial replay, then every live event. A cursor without its epoch (the
//! format of earlier versions) is checked as far as it can be: the stream must hold an event of
//! this tenant at that sequence. Clients without the parameter see exactly the old protocol.

use serde_json::json;

pub const PARAM: &str = "resume";
pub const EPOCH_PARAM: &str = "epoch";

/// What the client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Cursors from now on, no replay.
    Live,
    /// Replay everything after this cursor first; `epoch` is the cursor's, when the client sent it.
    After { cursor: u64, epoch: Option<u64> },
    /// A value that is not a cursor: the client is told with a gap signal, then goes live.
    Invalid,
}

/// The `resume` parameter and the `epoch` parameter beside it.
pub fn parse(value: &str, epoch: Option<&str>) -> Request {
    match value.trim() {
        "" | "live" => Request::Live,
        v => match (v.parse::<u64>(), epoch.map(|e| e.trim().parse::<u64>())) {
            (Ok(cursor), None) => Request::After { cursor, epoch: None },
            (Ok(cursor), Some(Ok(epoch))) => Request::After { cursor, epoch: Some(epoch) },
            _ => Request::Invalid,
        },
    }
}

/// How much later than the end of its replay the stream may have stored an event that is still
/// a copy of a replayed one (clocks of the gateway and the NATS servers, and their skew).
const SEAM_SLACK_NS: u64 = 1_000_000_000;

/// Per-connection resume state.
#[derive(Debug, Clone, Copy)]
pub struct Resume {
    pub request: Request,
    /// The newest event this connection has, replayed or written; `None` before the first.
    pub mark: Option<Mark>,
}

/// An event's place: its sequence, and (an upper bound of) when the stream stored it, unix ns.
/// A live event at or below the sequence and stored no later is one the connection already has
/// (a live copy of a replayed event at the seam, or a repeat) and is skipped. One stored later
/// comes from a stream created again, which starts over at sequence 1: it is written, never
/// silenced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    pub sequence: u64,
    pub stored_ns: u64,
}

impl Mark {
    /// The mark of a replay that ended now, having covered the stream up to `floor`. `read`: the
    /// highest sequence the replay read (the cursor's own event included) and the latest time
    /// the stream stored any event it read. When the replay read the event at `floor`, that time
    /// bounds every covered event, and an event of a stream created again right after the
    /// replay (stored later, at a low sequence) is written, not taken for a copy. Otherwise the
    /// gateway's clock, with slack for skew, bounds it.
    pub fn after_replay(floor: u64, read: Option<(u64, u64)>) -> Mark {
        let stored_ns = match read {
            Some((sequence, stored_ns)) if sequence >= floor => stored_ns,
            _ => wire::clock::now_micros().saturating_mul(1000).saturating_add(SEAM_SLACK_NS),
        };
        Mark { sequence: floor, stored_ns }
    }

    /// Whether the event is one the connection already has.
    fn covers(&self, sequence: u64, stored_ns: Option<u64>) -> bool {
        sequence <= self.sequence && stored_ns.is_none_or(|ns| ns <= self.stored_ns)
    }
}

impl Resume {
    /// What to do with a live event: `false` skips it; `true` writes it and moves the mark.
    pub fn admit(&mut self, sequence: u64, stored_ns: Option<u64>) -> bool {
        if self.mark.is_some_and(|mark| mark.covers(sequence, stored_ns)) {
            return false;
        }
        let stored_ns = stored_ns.or(self.mark.map(|m| m.stored_ns)).unwrap_or_default();
        self.mark = Some(Mark { sequence, stored_ns });
        true
    }
}

/// `payload` with `"_cursor":<sequence>` (and `"_epoch":"<epoch>"` when known) as its first
/// keys. `payload` is a validated JSON object.
pub fn with_cursor(payload: &str, sequence: u64, epoch: Option<u64>) -> String {
    let Some(open) = payload.find('{') else { return payload.to_string() };
    let rest = &payload[open + 1..];
    let separator = if rest.trim_start().starts_with('}') { "" } else { "," };
    let epoch = epoch.map(|e| format!(",\"_epoch\":\"{e}\"")).unwrap_or_default();
    format!("{}{{\"_cursor\":{sequence}{epoch}{separator}{rest}", &payload[..open])
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
    fn parses_the_parameters() {
        let after = |cursor, epoch| Request::After { cursor, epoch };
        assert_eq!(parse("live", None), Request::Live);
        assert_eq!(parse("", None), Request::Live);
        assert_eq!(parse("1234", None), after(1234, None), "today's plain cursors stay accepted");
        assert_eq!(parse("1234", Some("1796207887475607371")), after(1234, Some(1_796_207_887_475_607_371)));
        assert_eq!(parse("1", None), after(1, None), "1 is a cursor, the stream's first sequence");
        assert_eq!(parse("0", None), after(0, None), "everything the stream holds");
        assert_eq!(parse("-3", None), Request::Invalid);
        assert_eq!(parse("abc", None), Request::Invalid);
        assert_eq!(parse("12", Some("soon")), Request::Invalid, "an epoch that is not one");
    }

    #[test]
    fn splices_the_cursor_and_keeps_every_other_byte() {
        let original = r#" { "type" : "X", "tenant_id":1 }"#;
        let spliced = with_cursor(original, 42, None);
        assert_eq!(spliced, r#" {"_cursor":42, "type" : "X", "tenant_id":1 }"#);
        let v: serde_json::Value = serde_json::from_str(&spliced).unwrap();
        assert_eq!(v["_cursor"], 42);
        assert_eq!(with_cursor("{}", 7, None), r#"{"_cursor":7}"#);
        let spliced = with_cursor(original, 42, Some(1_796_207_887_475_607_371));
        assert_eq!(spliced, r#" {"_cursor":42,"_epoch":"1796207887475607371", "type" : "X", "tenant_id":1 }"#);
        assert_eq!(with_cursor("{}", 7, Some(9)), r#"{"_cursor":7,"_epoch":"9"}"#);
    }

    #[test]
    fn skips_what_the_connection_has_and_follows_a_stream_created_again() {
        let mut resume = Resume { request: Request::Live, mark: Some(Mark { sequence: 100, stored_ns: 5_000 }) };
        assert!(!resume.admit(99, Some(4_000)), "a copy of a replayed event");
        assert!(!resume.admit(100, None), "a copy without its stored time");
        assert!(resume.admit(101, Some(4_500)), "the first event above the replay");
        assert!(!resume.admit(100, Some(4_400)), "a late copy, still skipped");
        assert!(resume.admit(3, Some(6_000)), "stored later, lower sequence: a stream created again");
        assert!(resume.admit(4, Some(6_100)));
        assert!(!resume.admit(4, Some(6_100)), "a repeat");
        let mut live = Resume { request: Request::Live, mark: None };
        assert!(live.admit(7, Some(1)) && live.admit(8, None) && !live.admit(8, None));
    }

    #[test]
    fn a_stream_created_again_right_after_a_replay_is_followed() {
        // The replay read up to sequence 100, stored at 5_000 at the latest (found by the model
        // test: with the gateway's clock plus a second as the bound, the new stream's first
        // events were skipped for a second after every replay).
        let mut resume = Resume { request: Request::Live, mark: Some(Mark::after_replay(100, Some((100, 5_000)))) };
        assert!(!resume.admit(100, Some(5_000)), "a live copy of the last replayed event");
        assert!(!resume.admit(42, Some(4_000)), "a live copy of an earlier one");
        assert!(resume.admit(1, Some(5_001)), "the first event of a stream created again");
        // The event at the floor was not read: the clock and its slack bound it.
        let mark = Mark::after_replay(100, Some((90, 5_000)));
        assert!(mark.stored_ns > wire::clock::now_micros() * 1000);
        assert!(Mark::after_replay(0, None).stored_ns > wire::clock::now_micros() * 1000);
    }

    #[test]
    fn the_gap_signal_is_json() {
        let v: serde_json::Value = serde_json::from_str(&gap(Some(5), Some(90), "history_expired")).unwrap();
        assert_eq!(v["type"], "RESUME_GAP");
        assert_eq!(v["after"], 5);
        assert_eq!(v["oldest"], 90);
    }
}
