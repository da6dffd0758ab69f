//! The bridge scenario: Redis -> JetStream throughput of the publisher-bridge. Publishes
//! backend-shaped events to Redis (pub/sub, the stream, or both), follows the EVENTS stream's
//! last sequence to time how fast they are stored, and consumes their re-publication on `live.>`
//! to check that each event arrives exactly once and to measure Redis -> NATS latency.
//!
//! Two variants take the generator out of the measurement (on a small machine it competes with
//! the bridge, nats-server and Redis for the same cores): `--backlog` stops the bridge while the
//! events are XADDed and times only its drain of that backlog ([`pause`]); `--path direct`
//! stores the same events straight into JetStream with the bridge's subjects and headers, no
//! Redis and no bridge, for nats-server's own ceiling on this machine.

mod pause;

use super::{command_line, run_id, DEFAULT_DURATION_S};
use crate::cli::{BridgeArgs, BridgePath};
use crate::events::{parse_marker, EventSpec, Generator, Traffic};
use crate::events_stream;
use crate::expectations::Tally;
use crate::hist::{self, Sharded};
use crate::population::{Mix, Population, PopulationParams};
use crate::progress::{Progress, Source};
use crate::publisher::{self, Plan, Target};
use crate::report::{percentiles, Bridge, Deliveries, Events, Report};
use anyhow::Context;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use wire::clock::now_micros;

/// What the `live.>` subscriber saw.
struct Seen {
    run: u64,
    /// Copies received per event id (grown on demand).
    copies: Mutex<Vec<u32>>,
    received: AtomicU64,
    foreign: AtomicU64,
    latency: Sharded,
}

impl Source for Seen {
    fn open(&self) -> u64 {
        0
    }
    fn received(&self) -> u64 {
        self.received.load(Relaxed)
    }
    fn take_latency(&self) -> Histogram<u64> {
        self.latency.take()
    }
}

impl Seen {
    fn record(&self, payload: &[u8]) {
        let marker = std::str::from_utf8(payload).ok().and_then(parse_marker);
        match marker {
            Some((run, id, sent_us)) if run == self.run => {
                self.latency.record(id as u64, now_micros().saturating_sub(sent_us));
                self.received.fetch_add(1, Relaxed);
                let mut copies = self.copies.lock().expect("copies lock");
                if copies.len() <= id as usize {
                    copies.resize(id as usize + 1, 0);
                }
                copies[id as usize] += 1;
            }
            _ => {
                self.foreign.fetch_add(1, Relaxed);
            }
        }
    }
}

fn pubsub_only(mut e: EventSpec) -> EventSpec {
    e.stream = false;
    e
}

fn stream_only(mut e: EventSpec) -> EventSpec {
    e.channels.clear();
    e.stream = true;
    e
}

/// How each event travels on `path`. Direct events are shaped as stream entries: one stored
/// message per event, read from `events:critical` as far as the headers tell.
fn shape(path: BridgePath) -> fn(EventSpec) -> EventSpec {
    match path {
        BridgePath::Pubsub => pubsub_only,
        BridgePath::Stream | BridgePath::Direct => stream_only,
        BridgePath::Mixed => |e| e,
    }
}

fn path_name(path: BridgePath) -> String {
    format!("{path:?}").to_lowercase()
}

/// Refuses the combinations that would not measure what they claim.
fn check(args: &BridgeArgs, count: u64) -> anyhow::Result<()> {
    if !args.backlog {
        return Ok(());
    }
    anyhow::ensure!(
        args.path == BridgePath::Stream,
        "--backlog needs --path stream (not --path {}): a stopped bridge reads no pub/sub, so the events would be lost instead of waiting in Redis",
        path_name(args.path)
    );
    anyhow::ensure!(
        count <= publisher::STREAM_MAXLEN,
        "--backlog of {count} events: at most {} fit, the Redis stream is trimmed to that length",
        publisher::STREAM_MAXLEN
    );
    Ok(())
}

/// The events of the run: the steady mix over the population's shapes.
fn generator(args: &BridgeArgs) -> anyhow::Result<Generator> {
    let params = PopulationParams {
        connections: args.population.connections,
        tenants: args.population.tenants,
        branches: args.population.branches,
        mix: Mix::parse(&args.population.mix)?,
        diners_per_session: args.population.diners_per_session,
    };
    Ok(Generator::new(Traffic::Steady, Population::new(params)?, args.publish.seed))
}

/// Subscribes to `live.>` (JetStream's re-publication of what it stored) and records every
/// message in `seen` until aborted.
async fn follow_live(nats: &async_nats::Client, seen: Arc<Seen>) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut subscriber = nats.subscribe("live.>").await.context("subscribe to live.>")?;
    nats.flush().await.context("flush the live.> subscription")?;
    Ok(tokio::spawn(async move {
        while let Some(msg) = subscriber.next().await {
            seen.record(&msg.payload);
        }
    }))
}

/// Where the events go: the EVENTS stream itself with `--path direct`, Redis otherwise.
async fn target(args: &BridgeArgs) -> anyhow::Result<Target> {
    match args.path {
        BridgePath::Direct => Target::jetstream(&args.nats_url, &args.publish.stream_key).await,
        _ => Target::redis(&args.publish.redis_url, &args.publish.stream_key).await,
    }
}

/// `--backlog`: stops the bridge's processes (continued on every way out, see [`pause`]).
fn stop_bridges(args: &BridgeArgs) -> anyhow::Result<(Vec<i32>, pause::Paused)> {
    let pids = pause::bridge_pids(&args.bridge_pids)?;
    let paused = pause::Paused::stop(&pids)?;
    eprintln!("loadtest: {} pids {pids:?} stopped (SIGSTOP) while the backlog is written", pause::BRIDGE_BIN);
    Ok((pids, paused))
}

/// Waits up to `settle` for a copy of each of `published` events on `live.>`.
async fn wait_copies(seen: &Seen, published: u64, settle: f64) {
    let deadline = Instant::now() + Duration::from_secs_f64(settle);
    while Instant::now() < deadline
        && seen.copies.lock().expect("copies lock").iter().filter(|c| **c > 0).count() < published as usize
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Each published event (a non-zero publish time) should have arrived exactly once.
fn tally(sent_us: &[u64], copies: &[u32]) -> Tally {
    let mut tally = Tally::default();
    for (id, sent_us) in sent_us.iter().enumerate() {
        if *sent_us == 0 {
            continue;
        }
        let got = copies.get(id).copied().unwrap_or(0) as u64;
        tally.expected += 1;
        if got == 0 {
            tally.missing += 1;
            if tally.missing_examples.len() < 10 {
                tally.missing_examples.push(format!("event {id}"));
            }
        } else {
            tally.delivered += 1;
            tally.duplicates += got - 1;
        }
    }
    tally
}

/// CPU time of `process` per stored event, in µs.
fn us_per_event(cpu_s: &BTreeMap<String, f64>, process: &str, stored: u64) -> Option<f64> {
    cpu_s.get(process).filter(|_| stored > 0).map(|s| s * 1e6 / stored as f64)
}

pub async fn run(args: BridgeArgs) -> anyhow::Result<Report> {
    let started = Instant::now();
    let started_at = crate::events::iso8601_micros(now_micros());
    let generator = generator(&args)?;
    let rate = args.publish.rate.unwrap_or(50_000.0);
    let duration = args.publish.duration.unwrap_or(DEFAULT_DURATION_S);
    let count = if rate > 0.0 { (rate * duration).round() as u64 } else { (50_000.0 * duration) as u64 };
    check(&args, count)?;
    let run = run_id();
    let direct = args.path == BridgePath::Direct;

    let nats =
        crate::nats::connect(&args.nats_url, async_nats::ConnectOptions::new().subscription_capacity(1 << 20)).await?;
    let mut stream = events_stream::open(&nats, &args.stream).await?;
    let seq_before = events_stream::last_sequence(&mut stream).await?;
    let seen = Arc::new(Seen {
        run,
        copies: Mutex::default(),
        received: AtomicU64::new(0),
        foreign: AtomicU64::new(0),
        latency: Sharded::new(4),
    });
    let receiver = follow_live(&nats, seen.clone()).await?;

    // The bridge's histogram times receipt from Redis to the acknowledgement: nothing of the
    // bridge's when it is bypassed, and mostly the wait in Redis when it was stopped.
    let bridge_latency = !direct && !args.backlog;
    let latency_before =
        if bridge_latency { crate::bridge_probe::latency_buckets(&args.bridge_metrics).await } else { None };
    let mut target = target(&args).await?;
    let (bridge_pids, mut paused) =
        if args.backlog { stop_bridges(&args).map(|(pids, p)| (pids, Some(p)))? } else { (Vec::new(), None) };
    let mut cpu_before = crate::bridge_probe::cpu_by_process();
    let sent = Arc::new(AtomicU64::new(0));
    let progress = Progress::start(seen.clone(), sent.clone(), 0);
    progress.phase(if args.backlog { "backlog" } else { "publish" });
    let plan = Plan {
        generator: &generator,
        run,
        first_id: 0,
        count,
        rate,
        max_batch: args.publish.max_batch,
        pad_to: args.publish.payload_bytes,
        shape: shape(args.path),
    };
    let log = publisher::run(&mut target, plan, &sent, &CancellationToken::new()).await;
    let published = log.sent_us.iter().filter(|t| **t != 0).count() as u64;

    // With a backlog, the clock and the CPU count start when the bridge runs again.
    let (drain_from_us, last_publish_us) = match paused.as_mut() {
        Some(paused) => {
            cpu_before = crate::bridge_probe::cpu_by_process();
            let t0 = now_micros();
            paused.resume()?;
            (t0, t0)
        }
        None => (log.started_us, log.finished_us),
    };

    // Follow the stream until every event is stored or nothing moved for `settle` (a continued
    // bridge gets 5 s at least: one whose Redis read timed out while stopped reconnects first).
    progress.phase("drain");
    let idle = Duration::from_secs_f64(args.publish.settle.max(if args.backlog { 5.0 } else { 1.0 }));
    let (stored, stored_at_us) =
        events_stream::wait_stored(&mut stream, seq_before, published, idle, last_publish_us).await?;
    let mut cpu_s = crate::bridge_probe::cpu_used(&cpu_before, &crate::bridge_probe::cpu_by_process());
    if direct {
        cpu_s.retain(|name, _| name == "nats-server" || name == "loadtest");
    }
    let added_latency = match (latency_before, bridge_latency) {
        (Some(before), true) => crate::bridge_probe::latency_buckets(&args.bridge_metrics)
            .await
            .and_then(|after| crate::bridge_probe::added_latency(&before, &after)),
        _ => None,
    };
    progress.phase("settle");
    wait_copies(&seen, published, args.publish.settle).await;
    receiver.abort();
    drop(paused);
    let timeline_seen = progress.finish().await;

    let copies = seen.copies.lock().expect("copies lock").clone();
    let drain_s = stored_at_us.saturating_sub(drain_from_us) as f64 / 1e6;
    let received = seen.received.load(Relaxed);
    warn_of_other_traffic(&args.stream, stored, published, seen.foreign.load(Relaxed));
    let latency: Histogram<u64> = timeline_seen.latency;
    Ok(Report {
        scenario: "bridge".into(),
        started_at,
        wall_s: started.elapsed().as_secs_f64(),
        command: command_line(),
        settings: serde_json::json!({
            "nats_url": args.nats_url, "stream": args.stream, "path": path_name(args.path), "backlog": args.backlog, "bridge_pids": bridge_pids,
            "rate": rate, "duration_s": duration, "events": count, "payload_bytes": args.publish.payload_bytes,
            "max_batch": args.publish.max_batch, "seed": args.publish.seed, "run": run,
        }),
        connections: None,
        events: Events::from_log(events_path(&args), published, &log, rate),
        deliveries: Deliveries {
            avg_fanout: 1.0,
            per_s: crate::report::mean_active_rate(received, &timeline_seen.timeline),
            peak_per_s: timeline_seen.timeline.iter().map(|p| p.received_per_s).max().unwrap_or(0),
            tally: tally(&log.sent_us, &copies),
            received,
            foreign: seen.foreign.load(Relaxed),
        },
        latency: hist::summary(&latency),
        latency_percentiles: percentiles(&latency),
        rss: None,
        efficiency: None,
        bridge: Some(Bridge {
            stream: args.stream.clone(),
            direct,
            backlog: args.backlog,
            stored,
            stored_per_s: if drain_s > 0.0 { stored as f64 / drain_s } else { 0.0 },
            drain_s,
            added_latency,
            bridge_cpu_us_per_event: us_per_event(&cpu_s, "publisher-bridge", stored),
            nats_cpu_us_per_event: us_per_event(&cpu_s, "nats-server", stored),
            cpu_s,
        }),
        failover: None,
        replay: None,
        timeline: timeline_seen.timeline,
        problems: Vec::new(),
    })
}

/// The stream's sequence counts every message stored, this run's or not: say so when another
/// publisher was storing too (more stored than published, or other events on `live.>`), since
/// stored/s and the CPU times then include its traffic.
fn warn_of_other_traffic(stream: &str, stored: u64, published: u64, foreign: u64) {
    if stored > published || foreign > 0 {
        eprintln!(
            "loadtest: warning: other traffic reached {stream} during the run ({stored} stored for {published} published, {foreign} other events on live.>): stored/s and CPU include it"
        );
    }
}

/// How the report names the way the events went.
fn events_path(args: &BridgeArgs) -> String {
    match (args.path, args.backlog) {
        (BridgePath::Direct, _) => "jetstream (direct, no bridge)".into(),
        (path, true) => format!("redis {} (bridge stopped)", path_name(path)),
        (path, false) => format!("redis {}", path_name(path)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn args(extra: &[&str]) -> BridgeArgs {
        let Command::Bridge(args) =
            Cli::try_parse_from(["loadtest", "bridge"].iter().chain(extra)).expect("parses").command
        else {
            panic!("bridge")
        };
        args
    }

    #[test]
    fn a_backlog_waits_in_the_redis_stream_only() {
        assert!(check(&args(&["--path", "stream", "--backlog"]), 500_000).is_ok());
        for path in ["mixed", "pubsub", "direct"] {
            let error = check(&args(&["--path", path, "--backlog"]), 1000).unwrap_err().to_string();
            assert!(error.contains("--backlog needs --path stream") && error.contains(path), "{error}");
        }
        assert!(check(&args(&["--backlog"]), 1000).is_err(), "the default path is mixed");
        assert!(
            check(&args(&["--path", "stream", "--backlog"]), publisher::STREAM_MAXLEN + 1).is_err(),
            "trimmed away"
        );
        assert!(check(&args(&["--path", "direct"]), 10_000_000).is_ok());
    }

    #[test]
    fn direct_events_are_one_stored_message_each() {
        let g = generator(&args(&[])).unwrap();
        for id in 0..100 {
            let e = shape(BridgePath::Direct)(g.event(id));
            assert_eq!((e.copies(), e.stream), (1, true));
        }
        assert_eq!(events_path(&args(&["--path", "direct"])), "jetstream (direct, no bridge)");
        assert_eq!(events_path(&args(&["--path", "stream", "--backlog"])), "redis stream (bridge stopped)");
    }

    #[test]
    fn each_published_event_is_owed_once() {
        // Event 1 failed to publish; 0 arrived twice, 2 never, 3 once.
        let t = tally(&[10, 0, 12, 13], &[2, 0, 0, 1]);
        assert_eq!((t.expected, t.delivered, t.missing, t.duplicates), (3, 2, 1, 1));
        assert_eq!(t.missing_examples, ["event 2"]);
    }
}
