//! The model test's verdict: every connection of every steered client against what JetStream
//! stored (each incarnation of `EVENTS` read back in order before it was deleted, and the last
//! one at the end) and the contract's routing rule (`traffic::receives`). It owns no client and
//! no schedule.
//!
//! Per client, the events routed to it form one list in stream order, incarnation after
//! incarnation. What the client received must be that list, exactly once and in order, in
//! stretches ("runs"):
//! - a run starts at a connection with `resume=live`, or right after a `RESUME_GAP`; it may start
//!   at any routed event stored before that connection's `101` arrived (the client asked for
//!   "from now on"), but no later than the first one stored after it;
//! - a connection with `resume=<cursor>&epoch=<epoch>` continues the run: its first event is the
//!   one after the cursor, with no hole and no repeat at the seam;
//! - a connection that resumes with a cursor of an earlier incarnation (the stream was deleted and
//!   created again while the client was away) must get one `RESUME_GAP` first, with that cursor
//!   as `after` and a reason saying why (`cursor_beyond_end` or `epoch_mismatch`), then a new run;
//!   a `RESUME_GAP` anywhere else is a failure;
//! - a connected client follows a stream created again under it: after the old incarnation's
//!   last routed event comes the new one's first.
//!
//! Every event must carry its stream sequence as `_cursor` and the time the stream stored it
//! (unix nanoseconds) as `_epoch`. That a run reaches its end (everything stored before a
//! client left, or before the test ended) is checked by the schedule when it happens.

use crate::fleet::{Frame, Log, Member};
use crate::traffic::{receives, Published};
use std::collections::HashMap;

/// One stored message of `EVENTS`.
#[derive(Debug, Clone)]
pub struct Stored {
    pub seq: u64,
    /// When the stream stored it, unix nanoseconds.
    pub ns: u64,
    pub payload: String,
}

/// One incarnation of `EVENTS`: created (or, for the first, found) at `created_ns`.
#[derive(Debug, Clone)]
pub struct Incarnation {
    pub created_ns: u64,
    pub stored: Vec<Stored>,
}

/// Where a stored event is: incarnation and index in its `stored`.
#[derive(Debug, Clone, Copy)]
struct Place {
    inc: usize,
    index: usize,
}

/// One routed event of a client's list.
struct Routed<'a> {
    inc: usize,
    stored: &'a Stored,
}

pub struct Judged {
    /// One entry per client with a problem: its label, the problems, its timeline.
    pub clients: Vec<String>,
    pub bad_clients: usize,
    pub deliveries: usize,
    pub connections: usize,
    pub gaps: usize,
}

/// Names of the `ws://` bases, for timelines.
pub type Names = HashMap<String, &'static str>;

pub fn judge(
    members: &[&Member],
    logs: &[Log],
    incarnations: &[Incarnation],
    published: &HashMap<&str, &Published>,
    names: &Names,
    origin_ns: u64,
) -> Judged {
    let mut places: HashMap<&str, Place> = HashMap::new();
    for (inc, incarnation) in incarnations.iter().enumerate() {
        for (index, stored) in incarnation.stored.iter().enumerate() {
            places.insert(stored.payload.as_str(), Place { inc, index });
        }
    }
    let mut judged = Judged { clients: Vec::new(), bad_clients: 0, deliveries: 0, connections: 0, gaps: 0 };
    for (member, log) in members.iter().zip(logs) {
        judged.connections += log.connections.len();
        judged.gaps += log.gaps.len();
        judged.deliveries += log.received.len();
        let problems = judge_client(member, log, incarnations, &places, published);
        if !problems.is_empty() {
            judged.bad_clients += 1;
            judged.clients.push(format!(
                "{}:\n      {}\n    timeline:\n      {}",
                member.label(),
                problems.join("\n      "),
                timeline(log, incarnations, names, origin_ns).join("\n      ")
            ));
        }
    }
    judged
}

/// The incarnation in force at unix time `ns`.
fn incarnation_at(incarnations: &[Incarnation], ns: u64) -> usize {
    incarnations.iter().rposition(|i| i.created_ns <= ns).unwrap_or(0)
}

fn judge_client(
    member: &Member,
    log: &Log,
    incarnations: &[Incarnation],
    places: &HashMap<&str, Place>,
    published: &HashMap<&str, &Published>,
) -> Vec<String> {
    let mut problems = Vec::new();
    // The client's list: every stored event routed to it, in stream order, incarnation after
    // incarnation; and where each incarnation's part begins.
    let mut routed: Vec<Routed<'_>> = Vec::new();
    let mut inc_start = Vec::new();
    let mut index_of: HashMap<&str, usize> = HashMap::new();
    for (inc, incarnation) in incarnations.iter().enumerate() {
        inc_start.push(routed.len());
        for stored in &incarnation.stored {
            if published.get(stored.payload.as_str()).is_some_and(|p| receives(member, p)) {
                index_of.insert(stored.payload.as_str(), routed.len());
                routed.push(Routed { inc, stored });
            }
        }
    }
    let name = |g: usize| format!("{}:{}", routed[g].inc + 1, routed[g].stored.seq);
    let names = |range: std::ops::Range<usize>| {
        let shown: Vec<String> = range.clone().take(8).map(name).collect();
        let more = if range.len() > 8 { format!(" and {} more", range.len() - 8) } else { String::new() };
        format!("[{}{more}]", shown.join(", "))
    };

    // The run in progress: `Some(next)` expects routed[next]; `floating` holds the bounds of a
    // run not started yet (the first routed index it may start at, the last it may start at).
    let mut next: Option<usize> = None;
    let mut floating: Option<(usize, usize)> = None;
    let mut last: Option<usize> = None;
    let mut frames = log.frames.iter().peekable();
    let mut bad_epochs = 0usize;
    for (ci, connection) in log.connections.iter().enumerate() {
        let current = incarnation_at(incarnations, connection.started_ns);
        let float_from = |inc: usize| {
            let lower = inc_start[inc];
            let upper =
                (lower..routed.len()).find(|&g| routed[g].stored.ns > connection.opened_ns).unwrap_or(routed.len());
            (lower, upper)
        };
        let mut expect_gap: Option<u64> = None;
        if connection.resume == "live" {
            (next, floating) = (None, Some(float_from(current)));
        } else {
            let cursor: u64 = connection.resume.split('&').next().and_then(|c| c.parse().ok()).unwrap_or(u64::MAX);
            match last {
                Some(g) if routed[g].stored.seq != cursor => problems.push(format!(
                    "connection {}: resumed with cursor {cursor}, but the last event it received was {}",
                    ci + 1,
                    name(g)
                )),
                None => problems.push(format!("connection {}: resumed with cursor {cursor} before any event", ci + 1)),
                _ => {}
            }
            let cursor_inc = last.map(|g| routed[g].inc).unwrap_or(current);
            if cursor_inc < current {
                expect_gap = Some(cursor);
            } else {
                // A resume continues the run where the last event left it.
                if let Some(g) = last {
                    next = Some(g + 1);
                }
                floating = None;
            }
        }
        let mut first_frame = true;
        while let Some((_, frame)) = frames.next_if(|(c, _)| *c == ci) {
            match frame {
                Frame::Gap(text) => {
                    let gap: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
                    match expect_gap.take().filter(|_| first_frame) {
                        Some(cursor) => {
                            let reason = gap["reason"].as_str().unwrap_or("");
                            let held_before = incarnations[current]
                                .stored
                                .iter()
                                .filter(|s| s.ns < connection.started_ns)
                                .map(|s| s.seq)
                                .max()
                                .unwrap_or(0);
                            let held_at_end = incarnations[current].stored.last().map_or(0, |s| s.seq);
                            let allowed: &[&str] = if cursor > held_at_end {
                                &["cursor_beyond_end"]
                            } else if cursor <= held_before {
                                &["epoch_mismatch"]
                            } else {
                                &["cursor_beyond_end", "epoch_mismatch"]
                            };
                            if gap["after"].as_u64() != Some(cursor) || !allowed.contains(&reason) {
                                problems.push(format!(
                                    "connection {}: RESUME_GAP for cursor {cursor} of a deleted stream should say \
                                     after={cursor} and reason {allowed:?}: {text}",
                                    ci + 1
                                ));
                            }
                            (next, floating) = (None, Some(float_from(current)));
                        }
                        None => problems.push(format!(
                            "connection {} (resume={}): RESUME_GAP the contract does not call for: {text}",
                            ci + 1,
                            connection.resume
                        )),
                    }
                }
                Frame::Event { cursor, epoch, payload } => {
                    if let Some(cursor) = expect_gap.take() {
                        problems.push(format!(
                            "connection {}: resumed with cursor {cursor} of a deleted stream: no RESUME_GAP before \
                             its first event",
                            ci + 1
                        ));
                        (next, floating) = (None, Some(float_from(current)));
                    }
                    let Some(place) = places.get(payload.as_str()) else {
                        problems
                            .push(format!("connection {}: an event JetStream never stored (cursor {cursor})", ci + 1));
                        first_frame = false;
                        continue;
                    };
                    let stored = &incarnations[place.inc].stored[place.index];
                    if stored.seq != *cursor {
                        problems.push(format!(
                            "connection {}: event {}:{} with _cursor {cursor}",
                            ci + 1,
                            place.inc + 1,
                            stored.seq
                        ));
                    }
                    if epoch.as_deref() != Some(stored.ns.to_string().as_str()) {
                        bad_epochs += 1;
                        if bad_epochs == 1 {
                            problems.push(format!(
                                "connection {}: event {}:{} with _epoch {epoch:?}, stored at {} ns",
                                ci + 1,
                                place.inc + 1,
                                stored.seq,
                                stored.ns
                            ));
                        }
                    }
                    let Some(&g) = index_of.get(payload.as_str()) else {
                        problems.push(format!(
                            "connection {}: event {}:{} is not for it (contract section 6)",
                            ci + 1,
                            place.inc + 1,
                            stored.seq
                        ));
                        first_frame = false;
                        continue;
                    };
                    if let Some((lower, upper)) = floating.take() {
                        if g > upper {
                            problems.push(format!(
                                "connection {} (resume={}): started at {} but missed {} stored after its 101",
                                ci + 1,
                                connection.resume,
                                name(g),
                                names(upper..g)
                            ));
                        } else if g < lower {
                            problems.push(format!(
                                "connection {}: started at {}, an event of an earlier stream incarnation",
                                ci + 1,
                                name(g)
                            ));
                        }
                        next = Some(g + 1);
                    } else if let Some(n) = next {
                        if g > n {
                            problems.push(format!(
                                "connection {} (resume={}): missing {} before {}",
                                ci + 1,
                                connection.resume,
                                names(n..g),
                                name(g)
                            ));
                            next = Some(g + 1);
                        } else if g < n {
                            problems.push(format!(
                                "connection {} (resume={}): {} again or out of order (expected {})",
                                ci + 1,
                                connection.resume,
                                name(g),
                                if n < routed.len() { name(n) } else { "nothing more".into() }
                            ));
                        } else {
                            next = Some(g + 1);
                        }
                    } else {
                        next = Some(g + 1);
                    }
                    last = Some(last.map_or(g, |l| l.max(g)));
                }
            }
            first_frame = false;
        }
        if expect_gap.is_some() && ci + 1 == log.connections.len() {
            // The last connection of a client that resumed across a re-created stream and then
            // received nothing: it must still have had its gap signal.
            problems.push(format!(
                "connection {}: resumed with a cursor of a deleted stream, no RESUME_GAP at all",
                ci + 1
            ));
        }
    }
    if bad_epochs > 1 {
        problems.push(format!("{bad_epochs} events in all with a wrong _epoch"));
    }
    problems
}

/// One line per connection: when, where, how it resumed, what it got, how it ended.
fn timeline(log: &Log, incarnations: &[Incarnation], names: &Names, origin_ns: u64) -> Vec<String> {
    let at = |ns: u64| ns.saturating_sub(origin_ns) as f64 / 1e9;
    let mut lines = Vec::new();
    for (ci, c) in log.connections.iter().enumerate() {
        let frames: Vec<&Frame> = log.frames.iter().filter(|(i, _)| *i == ci).map(|(_, f)| f).collect();
        let cursors: Vec<u64> = frames
            .iter()
            .filter_map(|f| match f {
                Frame::Event { cursor, .. } => Some(*cursor),
                Frame::Gap(_) => None,
            })
            .collect();
        let gaps: Vec<&str> = frames
            .iter()
            .filter_map(|f| match f {
                Frame::Gap(text) => Some(text.as_str()),
                Frame::Event { .. } => None,
            })
            .collect();
        let shown = if cursors.len() <= 12 {
            format!("{cursors:?}")
        } else {
            format!("{:?} .. {:?}", &cursors[..6], &cursors[cursors.len() - 6..])
        };
        let close = log.closes.get(ci).map(|c| format!("{:?} {}", c.code, c.reason)).unwrap_or_else(|| "open".into());
        lines.push(format!(
            "+{:.2}s #{} {} (stream {}) resume={}: {} events {shown}{} -> {close}",
            at(c.opened_ns),
            ci + 1,
            names.get(&c.target).copied().unwrap_or("?"),
            incarnation_at(incarnations, c.started_ns) + 1,
            c.resume,
            cursors.len(),
            if gaps.is_empty() { String::new() } else { format!(" after {gaps:?}") },
        ));
    }
    lines
}
