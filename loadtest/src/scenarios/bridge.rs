//! The bridge scenario: Redis -> JetStream throughput of the publisher-bridge. Publishes
//! backend-shaped events to Redis (pub/sub, the stream, or both), follows the EVENTS stream's
//! last sequence to time how fast they are stored, and consumes their re-publication on `live.>`
//! to check that each event arrives exactly once and to measure Redis -> NATS latency.

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
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use wire::tokens::now_micros;

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

pub async fn run(args: BridgeArgs) -> anyhow::Result<Report> {
    let started = Instant::now();
    let started_at = crate::events::iso8601_micros(now_micros());
    let params = PopulationParams {
        connections: args.population.connections,
        tenants: args.population.tenants,
        branches: args.population.branches,
        mix: Mix::parse(&args.population.mix)?,
        diners_per_session: args.population.diners_per_session,
    };
    let generator = Generator::new(Traffic::Steady, Population::new(params)?, args.publish.seed);
    let rate = args.publish.rate.unwrap_or(50_000.0);
    let duration = args.publish.duration.unwrap_or(DEFAULT_DURATION_S);
    let count = if rate > 0.0 { (rate * duration).round() as u64 } else { (50_000.0 * duration) as u64 };
    let run = run_id();

    let nats = async_nats::ConnectOptions::new()
        .subscription_capacity(1 << 20)
        .connect(&args.nats_url)
        .await
        .with_context(|| format!("connect to NATS at {}", args.nats_url))?;
    let mut stream = events_stream::open(&nats, &args.stream).await?;
    let seq_before = events_stream::last_sequence(&mut stream).await?;
    let seen = Arc::new(Seen { run, copies: Mutex::default(), received: AtomicU64::new(0), foreign: AtomicU64::new(0), latency: Sharded::new(4) });
    let mut subscriber = nats.subscribe("live.>").await.context("subscribe to live.>")?;
    nats.flush().await?;
    let receiver = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(msg) = subscriber.next().await {
                seen.record(&msg.payload);
            }
        })
    };

    let latency_before = crate::bridge_probe::latency_buckets(&args.bridge_metrics).await;
    let cpu_before = crate::bridge_probe::cpu_by_process();
    let mut target = Target::redis(&args.publish.redis_url, &args.publish.stream_key).await?;
    let sent = Arc::new(AtomicU64::new(0));
    let progress = Progress::start(seen.clone(), sent.clone(), 0);
    progress.phase("publish");
    let shape: fn(EventSpec) -> EventSpec = match args.path {
        BridgePath::Pubsub => pubsub_only,
        BridgePath::Stream => stream_only,
        BridgePath::Mixed => |e| e,
    };
    let plan = Plan { generator: &generator, run, first_id: 0, count, rate, max_batch: args.publish.max_batch, pad_to: args.publish.payload_bytes, shape };
    let log = publisher::run(&mut target, plan, &sent, &CancellationToken::new()).await;
    let published = log.sent_us.iter().filter(|t| **t != 0).count() as u64;

    // Follow the stream until every event is stored or nothing moved for `settle`.
    progress.phase("drain");
    let idle = Duration::from_secs_f64(args.publish.settle.max(1.0));
    let (stored, stored_at_us) = events_stream::wait_stored(&mut stream, seq_before, published, idle, log.finished_us).await?;
    let cpu_s = crate::bridge_probe::cpu_used(&cpu_before, &crate::bridge_probe::cpu_by_process());
    let added_latency = match (latency_before, crate::bridge_probe::latency_buckets(&args.bridge_metrics).await) {
        (Some(before), Some(after)) => crate::bridge_probe::added_latency(&before, &after),
        _ => None,
    };
    progress.phase("settle");
    let deadline = Instant::now() + Duration::from_secs_f64(args.publish.settle);
    while Instant::now() < deadline && seen.copies.lock().expect("copies lock").iter().filter(|c| **c > 0).count() < published as usize {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    receiver.abort();
    let timeline_seen = progress.finish().await;

    let copies = seen.copies.lock().expect("copies lock").clone();
    let mut tally = Tally::default();
    for (id, sent_us) in log.sent_us.iter().enumerate() {
        let got = copies.get(id).copied().unwrap_or(0) as u64;
        if *sent_us == 0 {
            continue;
        }
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
    let drain_s = stored_at_us.saturating_sub(log.started_us) as f64 / 1e6;
    let received = seen.received.load(Relaxed);
    let latency: Histogram<u64> = timeline_seen.latency;
    Ok(Report {
        scenario: "bridge".into(),
        started_at,
        wall_s: started.elapsed().as_secs_f64(),
        command: command_line(),
        settings: serde_json::json!({
            "nats_url": args.nats_url, "stream": args.stream, "path": format!("{:?}", args.path).to_lowercase(),
            "rate": rate, "duration_s": duration, "events": count, "payload_bytes": args.publish.payload_bytes,
            "max_batch": args.publish.max_batch, "seed": args.publish.seed, "run": run,
        }),
        connections: None,
        events: Events::from_log(format!("redis {:?}", args.path).to_lowercase(), published, &log, rate),
        deliveries: Deliveries {
            avg_fanout: 1.0,
            per_s: crate::report::mean_active_rate(received, &timeline_seen.timeline),
            peak_per_s: timeline_seen.timeline.iter().map(|p| p.received_per_s).max().unwrap_or(0),
            tally,
            received,
            foreign: seen.foreign.load(Relaxed),
        },
        latency: hist::summary(&latency),
        latency_percentiles: percentiles(&latency),
        rss: None,
        bridge: Some(Bridge {
            stream: args.stream.clone(),
            stored,
            stored_per_s: if drain_s > 0.0 { stored as f64 / drain_s } else { 0.0 },
            drain_s,
            added_latency,
            bridge_cpu_us_per_event: cpu_s.get("publisher-bridge").filter(|_| stored > 0).map(|s| s * 1e6 / stored as f64),
            cpu_s,
        }),
        failover: None,
        replay: None,
        timeline: timeline_seen.timeline,
        problems: Vec::new(),
    })
}
