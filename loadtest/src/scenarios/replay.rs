//! The replay scenario: how fast the gateway replays what resuming clients missed. Tenant admins
//! (each receives every event of its tenant) connect with `resume=live`, receive one event each
//! for a cursor and leave; events are published to Redis while they are away and followed into
//! the EVENTS stream until stored; then every client comes back at once with its cursor and is
//! timed from its `101` to the last replayed event. This process holds the connections itself
//! (no workers: a replay run has tens to hundreds of clients); the accounting is the other
//! scenarios' exact one, over both connections of each client.

use super::{command_line, run_id};
use crate::cli::ReplayArgs;
use crate::client::{self, Dialer, Socket, CLOSE_WAIT};
use crate::events::{Generator, Traffic};
use crate::events_stream;
use crate::expectations::{self, Incarnation, Index, Opened};
use crate::hist;
use crate::population::{Member, Mix, Population, PopulationParams};
use crate::progress::{Progress, Source};
use crate::publisher::{self, Plan, Target};
use crate::report::{percentiles, Connections, Deliveries, Events, Replay, Report};
use crate::resume;
use crate::stats::Stats;
use crate::tokens::Secrets;
use anyhow::{bail, ensure};
use futures_util::future::join_all;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use wire::clock::now_micros;

/// The events are ROUND_SUBMITTED on branch channels only: nothing is XADDed to this stream.
const STREAM_KEY: &str = "events:critical";

/// What the clients share.
struct Shared {
    run: u64,
    dialer: Dialer,
    stats: Stats,
}

impl Source for Shared {
    fn open(&self) -> u64 {
        self.stats.open.load(Relaxed)
    }
    fn received(&self) -> u64 {
        self.stats.received.load(Relaxed)
    }
    fn take_latency(&self) -> Histogram<u64> {
        self.stats.latency.take()
    }
}

/// One connection of one client as it reads it.
struct Visit {
    me: Incarnation,
    cursor: Option<u64>,
    /// Unix µs of the last event of this run received.
    last_us: u64,
    /// Record latency (live events only: a replayed event's waited for the client to return).
    live: bool,
}

impl Visit {
    fn on_text(&mut self, shared: &Shared, text: &str) {
        let frame = resume::read(text);
        if frame.cursor.is_some() {
            self.cursor = frame.cursor;
        }
        match (frame.marker, frame.gap) {
            (Some((run, id, sent_us)), _) if run == shared.run => {
                self.last_us = now_micros();
                shared.stats.received.fetch_add(1, Relaxed);
                if self.live {
                    shared.stats.latency.record(self.me.slot, self.last_us.saturating_sub(sent_us));
                }
                self.me.received.push(id);
            }
            (_, Some(reason)) => shared.stats.resume_gap(reason),
            _ => {
                shared.stats.foreign.fetch_add(1, Relaxed);
            }
        }
    }

    /// Reads until `done` holds (`Ok(true)`) or `deadline` passes (`Ok(false)`); `Err` when the
    /// gateway ended the connection.
    async fn read_until(
        &mut self,
        ws: &mut Socket,
        shared: &Shared,
        deadline: tokio::time::Instant,
        done: impl Fn(&Visit) -> bool,
    ) -> Result<bool, String> {
        while !done(self) {
            match tokio::time::timeout_at(deadline, ws.next()).await {
                Err(_) => return Ok(false),
                Ok(Some(Ok(Message::Text(text)))) => self.on_text(shared, text.as_str()),
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return Err(frame.map_or_else(
                        || "no code".to_string(),
                        |f| format!("{} {}", u16::from(f.code), client::short(&f.reason)),
                    ))
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => return Err(format!("error: {}", client::short(&e.to_string()))),
                Ok(None) => return Err("eof".into()),
            }
        }
        Ok(true)
    }

    /// Closes politely, keeping what was still on its way.
    async fn close(mut self, mut ws: Socket, shared: &Shared) -> Incarnation {
        let _ = ws.send(Message::Close(None)).await;
        let _ = self.read_until(&mut ws, shared, tokio::time::Instant::now() + CLOSE_WAIT, |_| false).await;
        shared.stats.open.fetch_sub(1, Relaxed);
        self.me.ended_us = now_micros();
        self.me
    }
}

/// Opens `member`'s connection with `resume=<cursor>` (`live` without one): the socket and when
/// its `101` arrived.
async fn open(
    shared: &Shared,
    member: &Member,
    cursor: Option<u64>,
    timeout: Duration,
) -> anyhow::Result<(Socket, u64)> {
    let started = Instant::now();
    let gateway = (member.slot % shared.dialer.gateways.len() as u64) as usize;
    let query = resume::param(cursor);
    let connecting = shared.dialer.connect(member, gateway, &query);
    let ws = match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(reason)) => bail!("client {} could not connect: {reason}", member.slot),
        Err(_) => bail!("client {} could not connect within {timeout:?}", member.slot),
    };
    let opened_us = now_micros();
    shared.stats.connects.fetch_add(1, Relaxed);
    shared.stats.open.fetch_add(1, Relaxed);
    shared.stats.handshake.record(member.slot, started.elapsed().as_micros() as u64);
    Ok((ws, opened_us))
}

/// The first connection: reads until an event of this run brought a cursor, then leaves.
async fn first_visit(
    shared: &Shared,
    slot: u64,
    mut ws: Socket,
    connected_us: u64,
    timeout: Duration,
) -> anyhow::Result<(Incarnation, u64)> {
    let me = Incarnation { slot, connected_us, opened: Opened::Live, ..Incarnation::default() };
    let mut visit = Visit { me, cursor: None, last_us: 0, live: true };
    let deadline = tokio::time::Instant::now() + timeout;
    let got = visit.read_until(&mut ws, shared, deadline, |v| v.cursor.is_some() && !v.me.received.is_empty()).await;
    match got {
        Ok(true) => {}
        Ok(false) if visit.me.received.is_empty() => bail!("client {slot} received no event within {timeout:?}"),
        Ok(false) => bail!("client {slot} received its event without a cursor: does the gateway support resume?"),
        Err(reason) => bail!("the gateway ended client {slot}'s first connection: {reason}"),
    }
    let cursor = visit.cursor.expect("checked above");
    visit.me.closing_us = Some(now_micros());
    Ok((visit.close(ws, shared).await, cursor))
}

/// The second connection, with the cursor: reads until `owed` events of this run arrived or
/// `timeout` passed, then `settle` longer for late copies. Its record, and the replay time (µs
/// from the `101` to the last owed event) when complete.
async fn second_visit(
    shared: &Shared,
    member: &Member,
    cursor: u64,
    owed: u64,
    timeout: Duration,
    settle: Duration,
) -> anyhow::Result<(Incarnation, Option<u64>)> {
    let (mut ws, opened_us) = open(shared, member, Some(cursor), timeout).await?;
    shared.stats.resumed.fetch_add(1, Relaxed);
    let me =
        Incarnation { slot: member.slot, connected_us: opened_us, opened: Opened::Resumed, ..Incarnation::default() };
    let mut visit = Visit { me, cursor: Some(cursor), last_us: opened_us, live: false };
    let deadline = tokio::time::Instant::now() + timeout;
    let complete = match visit.read_until(&mut ws, shared, deadline, |v| v.me.received.len() as u64 >= owed).await {
        Ok(complete) => complete,
        Err(reason) => {
            shared.stats.close_code(reason);
            return Ok((visit.me, None));
        }
    };
    let replay_us = complete.then(|| visit.last_us.saturating_sub(opened_us));
    if let Err(reason) = visit.read_until(&mut ws, shared, tokio::time::Instant::now() + settle, |_| false).await {
        shared.stats.close_code(reason);
        return Ok((visit.me, replay_us));
    }
    Ok((visit.close(ws, shared).await, replay_us))
}

pub async fn run(args: ReplayArgs) -> anyhow::Result<Report> {
    ensure!(args.clients > 0 && args.missed > 0, "--clients and --missed must be at least 1");
    let started = Instant::now();
    let started_at = crate::events::iso8601_micros(now_micros());
    let timeout = Duration::from_secs_f64(args.timeout);
    let params = PopulationParams {
        connections: args.clients,
        tenants: args.tenants,
        branches: 1,
        mix: Mix::parse("admin=1")?,
        diners_per_session: 1,
    };
    let pop = Population::new(params)?;
    // One ROUND_SUBMITTED per tenant and round: every admin of the tenant receives each.
    let generator = Generator::new(Traffic::Probe, pop.clone(), 0);
    let round = generator.probe_len();
    let run = run_id();

    let nats = crate::nats::connect(&args.nats_url, async_nats::ConnectOptions::new()).await?;
    let mut stream = events_stream::open(&nats, &args.stream).await?;
    let mut target = Target::redis(&args.redis_url, STREAM_KEY).await?;
    let mut gateways = Vec::new();
    for url in &args.urls {
        gateways.push((url.clone(), client::resolve(url).await?));
    }
    let dialer = Dialer {
        gateways,
        origin: args.handshake.origin(),
        source_ips: 0,
        secrets: Secrets {
            jwt: args.handshake.secrets.jwt_secret.clone(),
            table: args.handshake.secrets.table_secret.clone(),
        },
    };
    let shared = Arc::new(Shared { run, dialer, stats: Stats::new() });
    let members: Vec<Member> = (0..pop.len()).map(|s| pop.member(s)).collect();
    let sent = Arc::new(AtomicU64::new(0));
    let progress = Progress::start(shared.clone(), sent.clone(), pop.len());
    let plan = |first_id, count, rate| Plan {
        generator: &generator,
        run,
        first_id,
        count,
        rate,
        max_batch: args.max_batch,
        pad_to: args.payload_bytes,
        shape: |e| e,
    };
    let never = CancellationToken::new();

    // 1. Every client connects live and gets one event, hence a cursor; then it leaves.
    let connect_start_us = now_micros();
    let mut sockets = Vec::new();
    for opened in join_all(members.iter().map(|m| open(&shared, m, None, timeout))).await {
        sockets.push(opened?);
    }
    let connect_phase_s = now_micros().saturating_sub(connect_start_us) as f64 / 1e6;
    let handshake = shared.stats.handshake.take();
    progress.phase("prime");
    let primer = publisher::run(&mut target, plan(0, round, 0.0), &sent, &never).await;
    ensure!(primer.errors == 0, "the first events could not be published: {}", primer.first_error.unwrap_or_default());
    let firsts = join_all(
        sockets
            .into_iter()
            .zip(&members)
            .map(|((ws, connected_us), m)| first_visit(&shared, m.slot, ws, connected_us, timeout)),
    )
    .await;
    let (mut incarnations, mut cursors) = (Vec::new(), Vec::new());
    for first in firsts {
        let (incarnation, cursor) = first?;
        incarnations.push(incarnation);
        cursors.push(cursor);
    }

    // 2. What they miss: published to Redis, followed until the bridge stored it all.
    progress.phase("publish");
    let since = events_stream::last_sequence(&mut stream).await?;
    let log = publisher::run(&mut target, plan(round, args.missed * round, args.rate), &sent, &never).await;
    let published = log.sent_us[round as usize..].iter().filter(|t| **t != 0).count() as u64;
    progress.phase("store");
    let (stored, stored_at_us) =
        events_stream::wait_stored(&mut stream, since, published, timeout, log.started_us).await?;
    let mut problems = Vec::new();
    if stored < published {
        problems.push(format!("only {stored} of the {published} missed events were stored in {} within {timeout:?}: is the bridge running?", args.stream));
    }

    // 3. Everyone comes back at once with its cursor.
    progress.phase("replay");
    let index = Index::build(&pop, 0..pop.len());
    let mut owed = vec![0u64; pop.len() as usize];
    for id in (round..log.sent_us.len() as u64).filter(|id| log.sent_us[*id as usize] != 0) {
        for slot in index.recipients(&generator.event(id as u32)) {
            owed[slot as usize] += 1;
        }
    }
    let settle = Duration::from_secs_f64(args.settle);
    let seconds = join_all(
        members
            .iter()
            .zip(&cursors)
            .map(|(m, cursor)| second_visit(&shared, m, *cursor, owed[m.slot as usize], timeout, settle)),
    )
    .await;
    let mut replay = hist::new();
    let (mut replayed, mut first_open, mut last_event, mut incomplete) = (0u64, u64::MAX, 0u64, 0u64);
    for (second, m) in seconds.into_iter().zip(&members) {
        let (incarnation, replay_us) = second?;
        match replay_us {
            Some(us) => {
                let _ = replay.record(us.max(1));
                replayed += owed[m.slot as usize];
                first_open = first_open.min(incarnation.connected_us);
                last_event = last_event.max(incarnation.connected_us + us);
            }
            None => incomplete += 1,
        }
        incarnations.push(incarnation);
    }
    let seen = progress.finish().await;

    let mut sent_us = log.sent_us.clone();
    sent_us[..round as usize].copy_from_slice(&primer.sent_us);
    let tally = expectations::tally(&generator, &index, incarnations, &sent_us, 0);
    let stats = &shared.stats;
    let counters = stats.counters();
    let summary = hist::summary(&replay);
    let span_s = last_event.saturating_sub(first_open) as f64 / 1e6;
    let connections = Connections {
        requested: pop.len(),
        workers: 1,
        connected: pop.len(),
        handshakes_per_s: if connect_phase_s > 0.0 { pop.len() as f64 / connect_phase_s } else { 0.0 },
        connect_phase_s,
        handshake: hist::summary(&handshake),
        connects_total: counters.connects,
        resumed: counters.resumed,
        resume_gaps: counters.resume_gaps,
        resume_gap_reasons: stats.gap_reasons(),
        close_codes: stats.close_codes(),
        client_cpu_s: crate::rss::cpu_seconds(std::process::id() as i32).unwrap_or(0.0),
        ..Connections::default()
    };
    Ok(Report {
        scenario: "replay".into(),
        started_at,
        wall_s: started.elapsed().as_secs_f64(),
        command: command_line(),
        settings: serde_json::json!({
            "urls": args.urls, "clients": pop.len(), "tenants": args.tenants, "missed": args.missed,
            "rate": args.rate, "nats_url": args.nats_url, "stream": args.stream, "payload_bytes": args.payload_bytes,
            "timeout_s": args.timeout, "settle_s": args.settle, "origin": args.handshake.origin(), "run": run,
        }),
        connections: Some(connections),
        events: Events::from_log("redis".into(), published, &log, args.rate),
        deliveries: Deliveries {
            avg_fanout: tally.expected as f64 / (published + round).max(1) as f64,
            per_s: crate::report::mean_active_rate(counters.received, &seen.timeline),
            peak_per_s: seen.timeline.iter().map(|p| p.received_per_s).max().unwrap_or(0),
            tally,
            received: counters.received,
            foreign: counters.foreign,
        },
        latency: hist::summary(&seen.latency),
        latency_percentiles: percentiles(&seen.latency),
        rss: None,
        efficiency: None,
        bridge: None,
        failover: None,
        replay: Some(Replay {
            clients: pop.len(),
            missed_per_client: args.missed,
            stored_s: stored_at_us.saturating_sub(log.started_us) as f64 / 1e6,
            replay: summary,
            replay_percentiles: percentiles(&replay),
            incomplete,
            events_per_s: if summary.p50_us > 0 { args.missed as f64 * 1e6 / summary.p50_us as f64 } else { 0.0 },
            total_events_per_s: if span_s > 0.0 { replayed as f64 / span_s } else { 0.0 },
        }),
        timeline: seen.timeline,
        problems,
    })
}
