//! Opt-in resume (protocol section 8). A client that connects with `resume=live` or
//! `resume=<cursor>&epoch=<epoch>` receives every event with `"_cursor":<stream sequence>` and
//! `"_epoch":"<epoch>"` spliced in front of the event's own keys (the rest of the bytes
//! unchanged). The epoch is when the stream stored that event (unix nanoseconds): no event of
//! another incarnation of the stream (deleted and re-created, restored from a backup) has the
//! same sequence and the same epoch. Reconnecting with the last cursor and its epoch, to any
//! replica, first checks the stream still holds that very event, then replays exactly the events
//! this connection would have received since, in order, then continues live; live events the
//! replay already covered are skipped at the seam. When the replay cannot be complete (cursor
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
    /// The seam after a replay: live events at or below `floor` (the highest sequence the replay
    /// covered) that the stream stored before `until_ns` are copies of replayed ones and are
    /// skipped. The seam closes at the first live event above the floor; from then on every
    /// event is written, so a stream that starts again at sequence 1 is followed, never silenced.
    pub seam: Option<Seam>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seam {
    pub floor: u64,
    /// Unix nanoseconds: events stored later than this are not copies of replayed ones.
    pub until_ns: u64,
}

impl Seam {
    /// A seam at `floor` closing a replay that ended now.
    pub fn at(floor: u64) -> Seam {
        Seam { floor, until_ns: wire::tokens::now_micros().saturating_mul(1000).saturating_add(SEAM_SLACK_NS) }
    }

    /// Whether a live event is a copy of a replayed one.
    pub fn covers(&self, sequence: u64, stored_ns: Option<u64>) -> bool {
        sequence <= self.floor && stored_ns.is_none_or(|ns| ns <= self.until_ns)
    }
}

impl Resume {
    /// What to do with a live event: `false` skips it (a copy of a replayed one).
    pub fn admit(&mut self, sequence: u64, stored_ns: Option<u64>) -> bool {
        match self.seam {
            Some(seam) if seam.covers(sequence, stored_ns) => false,
            _ => {
                self.seam = None;
                true
            }
        }
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
    fn the_seam_skips_replayed_copies_then_follows_every_event() {
        let mut resume = Resume { request: Request::Live, seam: Some(Seam { floor: 100, until_ns: 5_000 }) };
        assert!(!resume.admit(99, Some(4_000)), "a copy of a replayed event");
        assert!(!resume.admit(100, None), "a copy without its stored time");
        assert!(resume.admit(101, Some(4_500)), "the first event above the floor closes the seam");
        assert!(resume.admit(3, Some(6_000)), "then a stream that started again is followed");
        assert!(resume.admit(1, None));
        let mut recreated = Resume { request: Request::Live, seam: Some(Seam { floor: 100, until_ns: 5_000 }) };
        assert!(recreated.admit(2, Some(9_000)), "stored after the replay ended: not a copy");
        assert_eq!(recreated.seam, None);
    }

    #[test]
    fn the_gap_signal_is_json() {
        let v: serde_json::Value = serde_json::from_str(&gap(Some(5), Some(90), "history_expired")).unwrap();
        assert_eq!(v["type"], "RESUME_GAP");
        assert_eq!(v["after"], 5);
        assert_eq!(v["oldest"], 90);
    }
}
