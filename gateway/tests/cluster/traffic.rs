//! The backend side of a cluster scenario and its judge: a publisher writing events to Redis at
//! a steady rate, alternately on the pub/sub channels the backend uses and on `events:critical`;
//! what JetStream stored, read back in stream order; and the oracle of protocol section 6,
//! written here independently of the gateway's routing code, that says which of those events
//! each client should have received. The verdict compares, per client, the received sequence
//! (cursors and payloads) with the stored events routed to it: same events, same order, once.

use crate::fleet::{Layout, Log, Member, Role};
use crate::harness::event;
use async_nats::jetstream::{self, consumer::pull::OrderedConfig, consumer::DeliverPolicy};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::time::Duration;
use testkit::{ClusterStack, NatsUser};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// One published event and the fields routing depends on.
#[derive(Debug, Clone)]
pub struct Published {
    pub seq: u64,
    pub payload: String,
    pub tenant: u64,
    pub branch: u64,
    pub ty: &'static str,
    pub sector: Option<u64>,
    pub session: Option<u64>,
    /// `None`: XADD to `events:critical`; else the pub/sub channels it was published on.
    pub channels: Option<Vec<String>>,
    /// For pub/sub: how many subscribers Redis delivered it to (0 = no bridge listening).
    pub receivers: i64,
}

/// The type sets of protocol section 6 for the types the publisher uses.
struct Class {
    kitchen: bool,
    session: bool,
    admin_only: bool,
    branch_wide_waiter: bool,
}

fn class(ty: &str) -> Class {
    let c =
        |kitchen, session, admin_only, branch_wide_waiter| Class { kitchen, session, admin_only, branch_wide_waiter };
    match ty {
        "ROUND_PENDING" => c(false, false, false, true),
        "TICKET_READY" => c(true, false, false, false),
        "ROUND_READY" => c(true, true, false, false),
        "PAYMENT_APPROVED" | "CART_ITEM_ADDED" => c(false, true, false, false),
        "ENTITY_UPDATED" | "ENTITY_CREATED" => c(false, false, true, false),
        "SERVICE_CALL_CREATED" => c(false, false, false, false),
        other => panic!("no class for {other}"),
    }
}

/// Whether `member` should receive `event` (protocol section 6; waiters have no sectors).
pub fn receives(member: &Member, event: &Published) -> bool {
    if member.tenant != event.tenant {
        return false;
    }
    let class = class(event.ty);
    if member.role == Role::Diner {
        return class.session && event.session.is_some() && event.session == member.session;
    }
    if event.branch == 0 {
        return member.role.admin_view();
    }
    if !member.branches.contains(&event.branch) {
        return false;
    }
    if member.role.admin_view() {
        return true;
    }
    match member.role {
        Role::Waiter => !class.admin_only && (class.branch_wide_waiter || event.sector.is_none()),
        Role::Kitchen => class.kitchen,
        _ => false,
    }
}

/// A small deterministic generator (xorshift), so a failing run can be reproduced by `seq`.
struct Dice(u64);

impl Dice {
    fn new(seed: u64) -> Dice {
        Dice(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Event `seq`: a tenant, a branch (or tenant-wide), a type of every type set, the channels the
/// backend would use for it; even `seq` go to `events:critical`, odd ones to pub/sub.
pub fn generate(layout: &Layout, seq: u64) -> Published {
    shaped(layout, seq, Dice::new(seq), seq % 2 == 1)
}

/// Like [`generate`], with the draws (path included: pub/sub or `events:critical`) also
/// depending on `seed`, for the model test's seeded schedules.
pub fn generate_seeded(layout: &Layout, seq: u64, seed: u64) -> Published {
    let mut dice = Dice::new(seq ^ seed.rotate_left(29));
    let pubsub = dice.below(2) == 1;
    shaped(layout, seq, dice, pubsub)
}

fn shaped(layout: &Layout, seq: u64, mut dice: Dice, pubsub: bool) -> Published {
    let tenant = &layout.tenants[dice.below(layout.tenants.len() as u64) as usize];
    let branch = &tenant.branches[dice.below(tenant.branches.len() as u64) as usize];
    let (t, b) = (tenant.id, branch.id);
    // A session with diners, or now and then one nobody holds.
    let session = match dice.below(5) {
        0 => 1000 * t + 99,
        _ => branch.sessions[dice.below(branch.sessions.len() as u64) as usize],
    };
    let sector = branch.sectors[dice.below(branch.sectors.len() as u64) as usize];
    let (ty, branch_id, sector, session, channels): (&str, u64, Option<u64>, Option<u64>, Vec<String>) = match dice
        .below(10)
    {
        0 => {
            ("ROUND_PENDING", b, None, Some(session), vec![format!("branch:{b}:waiters"), format!("branch:{b}:admin")])
        }
        1 => ("SERVICE_CALL_CREATED", b, None, None, vec![format!("branch:{b}:waiters")]),
        2 => (
            "SERVICE_CALL_CREATED",
            b,
            Some(sector),
            None,
            vec![format!("sector:{sector}:waiters"), format!("branch:{b}:admin")],
        ),
        3 => ("TICKET_READY", b, None, None, vec![format!("branch:{b}:kitchen")]),
        4 | 5 => {
            ("ROUND_READY", b, None, Some(session), vec![format!("branch:{b}:kitchen"), format!("session:{session}")])
        }
        6 => ("PAYMENT_APPROVED", b, None, Some(session), vec![format!("session:{session}")]),
        7 => ("CART_ITEM_ADDED", b, None, Some(session), vec![format!("session:{session}")]),
        8 => ("ENTITY_UPDATED", b, None, None, vec![format!("branch:{b}:admin")]),
        _ => ("ENTITY_CREATED", 0, None, None, vec![format!("tenant:{t}:admin")]),
    };
    Published {
        seq,
        payload: event(ty, t, branch_id, sector, session, seq),
        tenant: t,
        branch: branch_id,
        ty,
        sector,
        session,
        channels: pubsub.then_some(channels),
        receivers: 0,
    }
}

/// Publishes generated events to Redis at a steady rate until stopped.
pub struct Publisher {
    stop: CancellationToken,
    task: JoinHandle<Vec<Published>>,
}

impl Publisher {
    /// Starts at `per_second`, numbering events from `first_seq`.
    pub async fn start(redis_url: &str, layout: std::sync::Arc<Layout>, per_second: u32, first_seq: u64) -> Publisher {
        let client = redis::Client::open(redis_url).unwrap();
        let mut conn = tokio::time::timeout(Duration::from_secs(10), client.get_multiplexed_async_connection())
            .await
            .unwrap()
            .unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut all = Vec::new();
                let mut tick = tokio::time::interval(Duration::from_secs(1) / per_second);
                let mut seq = first_seq;
                loop {
                    tokio::select! {
                        biased;
                        _ = stop.cancelled() => return all,
                        _ = tick.tick() => {}
                    }
                    all.push(publish(&mut conn, generate(&layout, seq)).await);
                    seq += 1;
                }
            }
        });
        Publisher { stop, task }
    }

    /// Stops and returns every event published, in publishing order.
    pub async fn stop(self) -> Vec<Published> {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("publisher stops")
            .expect("publisher task")
    }
}

/// Publishes one event as the backend would: `XADD events:critical` or `PUBLISH` on its channels.
pub async fn publish(conn: &mut redis::aio::MultiplexedConnection, mut event: Published) -> Published {
    let within = Duration::from_secs(10);
    match &event.channels {
        None => {
            let mut xadd = redis::cmd("XADD");
            xadd.arg("events:critical").arg("*").arg("data").arg(&event.payload);
            tokio::time::timeout(within, xadd.query_async::<String>(conn)).await.expect("XADD in time").expect("XADD");
        }
        Some(channels) => {
            for channel in channels {
                let mut publish = redis::cmd("PUBLISH");
                publish.arg(channel).arg(&event.payload);
                event.receivers += tokio::time::timeout(within, publish.query_async::<i64>(conn))
                    .await
                    .expect("PUBLISH in time")
                    .expect("PUBLISH");
            }
        }
    }
    event
}

/// A JetStream context on every node of the cluster, as the operator user (the tests read the
/// stream directly).
pub async fn jetstream(stack: &ClusterStack) -> jetstream::Context {
    jetstream::new(stack.nats_client(NatsUser::Operator).await)
}

/// Messages in `EVENTS`, 0 while it cannot be asked.
pub async fn stored_count(js: &jetstream::Context) -> u64 {
    let info = async {
        let mut stream = js.get_stream(testkit::EVENTS_STREAM).await.ok()?;
        Some(stream.info().await.ok()?.state.messages)
    };
    tokio::time::timeout(Duration::from_secs(5), info).await.ok().flatten().unwrap_or(0)
}

/// Waits until `EVENTS` holds at least `n` messages; returns how many it holds.
pub async fn wait_stored(js: &jetstream::Context, n: u64, within: Duration) -> u64 {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let count = stored_count(js).await;
        if count >= n || tokio::time::Instant::now() >= deadline {
            return count;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every message of `EVENTS` as (sequence, payload), in stream order.
pub async fn read_stored(js: &jetstream::Context) -> Vec<(u64, String)> {
    read_stored_timed(js).await.into_iter().map(|(sequence, _, payload)| (sequence, payload)).collect()
}

/// Every message of `EVENTS` as (sequence, when it was stored in unix nanoseconds, payload), in
/// stream order.
pub async fn read_stored_timed(js: &jetstream::Context) -> Vec<(u64, u64, String)> {
    let n = stored_count(js).await;
    if n == 0 {
        return Vec::new();
    }
    let stream = js.get_stream(testkit::EVENTS_STREAM).await.expect("EVENTS exists");
    let consumer = stream
        .create_consumer(OrderedConfig { deliver_policy: DeliverPolicy::All, ..Default::default() })
        .await
        .expect("ordered consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let mut out = Vec::with_capacity(n as usize);
    while (out.len() as u64) < n {
        let message = tokio::time::timeout(Duration::from_secs(20), messages.next())
            .await
            .expect("stream read in time")
            .expect("stream open")
            .expect("message");
        let info = message.info().expect("JetStream message");
        let payload = String::from_utf8(message.payload.to_vec()).expect("UTF-8 payload");
        out.push((info.stream_sequence, info.published.unix_timestamp_nanos() as u64, payload));
    }
    out
}

/// The outcome of a scenario: what every client received against what it should have.
pub struct Verdict {
    pub problems: Vec<String>,
    pub summary: String,
}

/// Compares each client's log with the stored events routed to it.
pub fn judge(
    members: &[Member],
    logs: &[Log],
    published: &[Published],
    stored: &[(u64, String)],
    origin: tokio::time::Instant,
) -> Verdict {
    let mut problems = Vec::new();
    let by_payload: HashMap<&str, &Published> = published.iter().map(|p| (p.payload.as_str(), p)).collect();
    let mut stored_seq: HashMap<&str, u64> = HashMap::new();
    for (sequence, payload) in stored {
        if !by_payload.contains_key(payload.as_str()) {
            problems.push(format!("stream holds an event nobody published at {sequence}: {payload}"));
        }
        if let Some(first) = stored_seq.insert(payload, *sequence) {
            problems.push(format!("stored twice, at {first} and {sequence}: {payload}"));
        }
    }
    let lost: Vec<&Published> = published.iter().filter(|p| !stored_seq.contains_key(p.payload.as_str())).collect();
    for p in lost.iter().take(10) {
        let path = match &p.channels {
            None => "events:critical".to_string(),
            Some(c) => format!("pub/sub {c:?} ({} subscribers)", p.receivers),
        };
        problems.push(format!("published but never stored (event {} via {path})", p.seq));
    }
    if lost.len() > 10 {
        problems.push(format!("... {} published events never stored in all", lost.len()));
    }

    let (mut expected_total, mut bad_clients) = (0usize, 0usize);
    for (member, log) in members.iter().zip(logs) {
        let expected: Vec<(u64, &str)> = stored
            .iter()
            .filter(|(_, p)| by_payload.get(p.as_str()).is_some_and(|e| receives(member, e)))
            .map(|(s, p)| (*s, p.as_str()))
            .collect();
        expected_total += expected.len();
        let got: Vec<(u64, &str)> = log.received.iter().map(|(c, p)| (*c, p.as_str())).collect();
        let mut issues = Vec::new();
        if got != expected {
            issues.push(difference(&expected, &got));
        }
        if !log.gaps.is_empty() {
            issues.push(format!("{} RESUME_GAP signal(s), first {}", log.gaps.len(), log.gaps[0]));
        }
        if !log.unexpected.is_empty() {
            issues.push(format!("{} unexpected frame(s), first {}", log.unexpected.len(), log.unexpected[0]));
        }
        if !issues.is_empty() {
            bad_clients += 1;
            if bad_clients <= 15 {
                problems.push(format!(
                    "{}: {}\n    timeline: {}",
                    member.label(),
                    issues.join("; "),
                    log.timeline(origin)
                ));
            }
        }
    }
    if bad_clients > 15 {
        problems.push(format!("... {bad_clients} clients with a wrong sequence in all"));
    }
    let via_stream = published.iter().filter(|p| p.channels.is_none()).count();
    let reconnects: usize = logs.iter().map(|l| l.connects.len().saturating_sub(1)).sum();
    let failed: u32 = logs.iter().map(|l| l.failed_attempts).sum();
    let summary = format!(
        "{} clients; {} events published ({} via events:critical, {} via pub/sub), {} stored; {} deliveries expected; \
         {} reconnects, {} failed handshakes; {} clients with a wrong sequence",
        members.len(),
        published.len(),
        via_stream,
        published.len() - via_stream,
        stored.len(),
        expected_total,
        reconnects,
        failed,
        bad_clients
    );
    Verdict { problems, summary }
}

/// What differs between two (cursor, payload) sequences, briefly.
fn difference(expected: &[(u64, &str)], got: &[(u64, &str)]) -> String {
    let expected_seqs: HashMap<&str, u64> = expected.iter().map(|(s, p)| (*p, *s)).collect();
    let mut seen: HashMap<&str, u32> = HashMap::new();
    for (_, p) in got {
        *seen.entry(p).or_default() += 1;
    }
    let missing: Vec<u64> = expected.iter().filter(|(_, p)| !seen.contains_key(p)).map(|(s, _)| *s).collect();
    let duplicated = seen.values().filter(|n| **n > 1).count();
    let extra: Vec<u64> = got.iter().filter(|(_, p)| !expected_seqs.contains_key(p)).map(|(c, _)| *c).collect();
    let wrong_cursor = got.iter().filter(|(c, p)| expected_seqs.get(p).is_some_and(|s| s != c)).count();
    let out_of_order = got.windows(2).filter(|w| w[1].0 <= w[0].0).count();
    format!(
        "expected {} got {}: missing {} (first cursors {:?}), duplicated {}, not for it {} (first {:?}), wrong cursor {}, out of order {}",
        expected.len(),
        got.len(),
        missing.len(),
        &missing[..missing.len().min(5)],
        duplicated,
        extra.len(),
        &extra[..extra.len().min(5)],
        wrong_cursor,
        out_of_order
    )
}
