//! The WebSocket scenarios, one flow: measure gateway RSS, spawn workers and wait for their
//! connect phase, measure RSS again, start churn, publish (idle: hold, then one probe round;
//! failover: kill a gateway meanwhile and wait for its clients to be back), settle, collect the
//! workers' tallies and build the report.

use super::failover;
use super::{command_line, run_id, Scenario};
use crate::backoff::Policy;
use crate::cli::{Kill, RunArgs};
use crate::events::Generator;
use crate::expectations::Tally;
use crate::hist;
use crate::messages::{ToWorker, WorkerSpec};
use crate::population::{Mix, Population, PopulationParams};
use crate::progress::Progress;
use crate::publisher::{self, Plan, Target};
use crate::report::{percentiles, Connections, Deliveries, Efficiency, Events, Report, Rss};
use crate::rss;
use crate::workers::{self, Fleet};
use anyhow::Context;
use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// File descriptors a worker needs besides its sockets (runtime, pipes, DNS).
const FD_HEADROOM: u64 = 256;

/// Runs `scenario`; `kill` is the failover scenario's.
pub async fn run(scenario: Scenario, args: RunArgs, kill: Option<Kill>) -> anyhow::Result<Report> {
    let hard = open_files_limit();
    anyhow::ensure!(
        args.per_worker + FD_HEADROOM <= hard,
        "--per-worker {} does not fit the open-files limit of {hard} per process (keep it below {})",
        args.per_worker,
        hard.saturating_sub(FD_HEADROOM)
    );
    let started = Instant::now();
    let started_at = crate::events::iso8601_micros(wire::clock::now_micros());
    let params = PopulationParams {
        connections: args.population.connections,
        tenants: args.population.tenants,
        branches: args.population.branches,
        mix: Mix::parse(&args.population.mix)?,
        diners_per_session: args.population.diners_per_session,
    };
    let pop = Population::new(params.clone())?;
    let generator = Generator::new(scenario.traffic(), pop.clone(), args.publish.seed);
    let rate = args.publish.rate.unwrap_or(scenario.default_rate());
    let duration = args.publish.duration.unwrap_or(scenario.default_duration());
    let failover = kill.map(|k| failover::Plan::resolve(&k, &args.gateway_bin, duration)).transpose()?;
    let resume = args.resume || failover.is_some();
    anyhow::ensure!(
        !(resume && args.direct_nats.is_some()),
        "resume needs the events stored in JetStream: leave out --direct-nats"
    );
    let backoff = failover.as_ref().map_or(Policy::Load, failover::Plan::backoff);
    let churn_rate = match scenario {
        Scenario::Churn => args.churn_rate.unwrap_or((pop.len() as f64 * 0.05).max(1.0)),
        _ => 0.0,
    };
    let run = run_id();

    let mut target = match &args.direct_nats {
        Some(url) => Target::nats(url).await?,
        None => Target::redis(&args.publish.redis_url, &args.publish.stream_key).await?,
    };
    let pids = if args.gateway_pids.is_empty() {
        rss::discover(&args.gateway_bin, &ports(&args.urls))
    } else {
        args.gateway_pids.clone()
    };
    let rss_before = rss::total_kib(&pids);
    let cpu_before = rss::cpu_readings(&pids);

    let ranges = workers::split(pop.len(), args.per_worker);
    let specs: Vec<WorkerSpec> = ranges
        .iter()
        .enumerate()
        .map(|(index, r)| WorkerSpec {
            index,
            first_slot: r.start,
            end_slot: r.end,
            population: params.clone(),
            traffic: scenario.traffic(),
            seed: args.publish.seed,
            run,
            urls: args.urls.clone(),
            origin: args.handshake.origin(),
            source_ips: args.source_ips.min(250),
            connect_concurrency: args.connect_concurrency,
            connect_timeout_ms: (args.connect_timeout * 1000.0) as u64,
            ping_interval_ms: (args.ping_interval * 1000.0) as u64,
            churn_rate: churn_rate * (r.end - r.start) as f64 / pop.len().max(1) as f64,
            churn_grace_ms: args.churn_grace_ms,
            resume,
            backoff,
            jwt_secret: args.handshake.secrets.jwt_secret.clone(),
            table_secret: args.handshake.secrets.table_secret.clone(),
        })
        .collect();
    let workers = specs.len();
    let fleet = Arc::new(Fleet::spawn(specs).await?);
    let sent = Arc::new(AtomicU64::new(0));
    let progress = Progress::start(fleet.clone(), sent.clone(), pop.len());
    let connect_budget = Duration::from_secs_f64(30.0 + pop.len() as f64 / 200.0 + args.connect_timeout);
    let phase = fleet.wait_ready(connect_budget).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = rss::total_kib(&pids);

    let count = match scenario {
        Scenario::Idle => generator.probe_len(),
        _ => (rate * duration).round() as u64,
    };
    // The floor is measured on both sides of the traffic, with the same parameters.
    // Without the gateways' processes there is no CPU to compare with, so no floor either.
    let floor_at = (matches!(scenario, Scenario::Fanout | Scenario::Steady) && !pids.is_empty()).then(|| {
        let recipients = planned_recipients(&generator, &pop, count);
        FloorAt {
            seconds: args.floor_seconds,
            connections: phase.connected,
            deliveries_per_s: rate * crate::floor::mean_recipients(&recipients),
            recipients: Arc::new(recipients),
            frame_bytes: mean_frame_bytes(&generator, run, count, args.publish.payload_bytes),
            source_ips: args.source_ips.min(250),
            gateways: args.urls.len().min(phase.connected as usize),
        }
    });
    let floors_before = match &floor_at {
        Some(at) => {
            if at.seconds > 0.0 {
                progress.phase("floor");
            }
            Some(at.measure().await)
        }
        None => None,
    };

    progress.phase(if scenario == Scenario::Idle { "hold" } else { "traffic" });
    let window = Window::open(&pids);
    fleet.send(&ToWorker::Go).await?;
    if scenario == Scenario::Idle {
        tokio::time::sleep(Duration::from_secs_f64(duration)).await;
        progress.phase("probe");
    }
    let plan = Plan {
        generator: &generator,
        run,
        first_id: 0,
        count,
        rate,
        max_batch: args.publish.max_batch,
        pad_to: args.publish.payload_bytes,
        shape: |e| e,
    };
    let killing = async {
        match &failover {
            Some(kill) => Some(failover::kill(kill, &fleet, &progress).await),
            None => None,
        }
    };
    let never = CancellationToken::new();
    let (log, killed) = tokio::join!(publisher::run(&mut target, plan, &sent, &never), killing);
    let kill_us = killed.transpose()?;
    if failover.is_some() {
        progress.phase("recover");
        failover::wait_reconnected(&fleet, phase.connected).await;
    }
    progress.phase("settle");
    tokio::time::sleep(Duration::from_secs_f64(args.publish.settle)).await;
    let (window_s, window_gateway_cpu_s, window_pipeline_cpu_s) = window.close(&pids);
    fleet.send(&ToWorker::Finish { sent_us: log.sent_us.clone() }).await?;
    let finals = fleet.wait_final(Duration::from_secs(120)).await?;
    let seen = progress.finish().await;
    let gateway_cpu_s = rss::cpu_used_since(&pids, &cpu_before);

    let mut tally = Tally::default();
    let mut conns = Connections { requested: pop.len(), workers, ..Connections::default() };
    let mut handshake = hist::new();
    hist::merge(&mut handshake, &phase.handshake);
    let (mut received, mut foreign) = (0, 0);
    for f in &finals {
        tally.add(&f.tally);
        hist::merge(&mut handshake, &f.handshake);
        conns.never_connected += f.never_connected;
        conns.connects_total += f.counters.connects;
        conns.connect_failures_total += f.counters.connect_failures;
        conns.recycles += f.counters.recycles;
        conns.server_closes += f.counters.server_closes;
        conns.resumed += f.counters.resumed;
        conns.resume_gaps += f.counters.resume_gaps;
        received += f.counters.received;
        conns.client_cpu_s += f.cpu_s;
        foreign += f.counters.foreign;
        for (k, v) in &f.failure_reasons {
            *conns.failure_reasons.entry(k.clone()).or_insert(0) += v;
        }
        for (k, v) in &f.close_codes {
            *conns.close_codes.entry(k.clone()).or_insert(0) += v;
        }
        for (k, v) in &f.gap_reasons {
            *conns.resume_gap_reasons.entry(k.clone()).or_insert(0) += v;
        }
    }
    conns.connected = phase.connected;
    conns.failed_first_attempt = phase.failed;
    conns.connect_phase_s = phase.last_done_us.saturating_sub(phase.first_start_us) as f64 / 1e6;
    conns.handshakes_per_s =
        if conns.connect_phase_s > 0.0 { phase.connected as f64 / conns.connect_phase_s } else { 0.0 };
    conns.handshake = hist::summary(&handshake);

    let published = log.sent_us.iter().filter(|t| **t != 0).count() as u64;
    let (failover, problems) = match (&failover, kill_us) {
        (Some(plan), Some(at_us)) => {
            let (section, problems) = failover::section(plan, at_us, &finals);
            (Some(section), problems)
        }
        _ => (None, Vec::new()),
    };
    let efficiency = match (floor_at, floors_before) {
        (Some(at), Some(before)) => {
            let x = Efficiency::new(window_s, received, window_gateway_cpu_s, window_pipeline_cpu_s);
            // The run's own figures stand without a floor; the report says why one is missing.
            Some(match before {
                Ok(Some(before)) => match at.measure().await {
                    Ok(Some(after)) => before.bracket(after, x),
                    Ok(None) => x,
                    Err(error) => x.without_floor(format!("after the traffic: {error:#}")),
                },
                Ok(None) => x,
                Err(error) => x.without_floor(format!("before the traffic: {error:#}")),
            })
        }
        _ => None,
    };
    let rss = (!pids.is_empty()).then(|| Rss {
        pids: pids.clone(),
        gateway_cpu_s,
        before_kib: rss_before,
        after_kib: rss_after,
        per_connection_kib: rss_after.saturating_sub(rss_before) as f64 / phase.connected.max(1) as f64,
    });
    Ok(Report {
        scenario: scenario.name().to_string(),
        started_at,
        wall_s: started.elapsed().as_secs_f64(),
        command: command_line(),
        settings: serde_json::json!({
            "urls": args.urls,
            "connections": pop.len(),
            "tenants": params.tenants,
            "branches_per_tenant": params.branches,
            "mix": args.population.mix,
            "diners_per_session": params.diners_per_session,
            "rate": rate,
            "duration_s": duration,
            "settle_s": args.publish.settle,
            "churn_rate": churn_rate,
            "churn_grace_ms": args.churn_grace_ms,
            "resume": resume,
            "payload_bytes": args.publish.payload_bytes,
            "per_worker": args.per_worker,
            "source_ips": args.source_ips,
            "origin": args.handshake.origin(),
            "seed": args.publish.seed,
            "run": run,
        }),
        connections: Some(conns),
        events: Events::from_log(target.describe().to_string(), published, &log, rate),
        deliveries: Deliveries {
            avg_fanout: tally.expected as f64 / published.max(1) as f64,
            per_s: crate::report::mean_active_rate(received, &seen.timeline),
            peak_per_s: seen.timeline.iter().map(|p| p.received_per_s).max().unwrap_or(0),
            tally,
            received,
            foreign,
        },
        latency: hist::summary(&seen.latency),
        latency_percentiles: percentiles(&seen.latency),
        rss,
        efficiency,
        bridge: None,
        failover,
        replay: None,
        timeline: seen.timeline,
        problems,
    })
}

/// CPU readings of the gateways and the rest of the pipeline at the start of the traffic.
struct Window {
    started: Instant,
    gateways: Vec<Option<f64>>,
    pipeline: BTreeMap<String, f64>,
}

impl Window {
    fn open(pids: &[i32]) -> Window {
        Window { started: Instant::now(), gateways: rss::cpu_readings(pids), pipeline: pipeline_cpu() }
    }

    /// Seconds since the start, and the CPU seconds the gateways and each pipeline process used.
    fn close(self, pids: &[i32]) -> (f64, f64, BTreeMap<String, f64>) {
        let gateways = rss::cpu_used_since(pids, &self.gateways);
        let pipeline = crate::bridge_probe::cpu_used(&self.pipeline, &pipeline_cpu());
        (self.started.elapsed().as_secs_f64(), gateways, pipeline)
    }
}

/// CPU seconds of the server-side processes besides the gateways (the load generator is not one).
fn pipeline_cpu() -> BTreeMap<String, f64> {
    let mut cpu = crate::bridge_probe::cpu_by_process();
    cpu.remove("loadtest");
    cpu
}

/// The floor of a run: its connections, rate, recipients and frame size as planned.
struct FloorAt {
    seconds: f64,
    connections: u64,
    deliveries_per_s: f64,
    /// Events of the run, each as its recipients' slots: the floor writes to the same sockets.
    recipients: Arc<Vec<Vec<u32>>>,
    frame_bytes: usize,
    /// The clients' source addresses, which the floor's reader takes too.
    source_ips: u32,
    /// The run's gateways: with more than one, the floor is also measured with one sender per
    /// gateway.
    gateways: usize,
}

/// The floors measured at one end of the traffic.
struct Floors {
    one_sender: crate::floor::Floor,
    /// With several gateways: one sender per gateway, each woken by every event.
    per_gateway: Option<crate::floor::Floor>,
}

impl Floors {
    /// These (measured before the traffic) and `after` as the floors of `x`.
    fn bracket(self, after: Floors, x: Efficiency) -> Efficiency {
        let x = x.with_floor(crate::floor::Bracket::new(self.one_sender, after.one_sender));
        match (self.per_gateway, after.per_gateway) {
            (Some(before), Some(after)) => x.with_replicas_floor(crate::floor::Bracket::new(before, after)),
            _ => x,
        }
    }
}

impl FloorAt {
    /// The one-sender floor and, with several gateways, the floor with one sender per gateway;
    /// `None` when there is nothing to measure (`--floor-seconds 0`, no connection, no delivery).
    async fn measure(&self) -> anyhow::Result<Option<Floors>> {
        let Some(one_sender) = self.measure_with(1).await? else { return Ok(None) };
        let per_gateway = match self.gateways {
            0 | 1 => None,
            n => Some(self.measure_with(n).await.context("with one sender per gateway")?),
        };
        Ok(Some(Floors { one_sender, per_gateway: per_gateway.flatten() }))
    }

    /// With `senders` sender threads, each woken by every event.
    async fn measure_with(&self, senders: usize) -> anyhow::Result<Option<crate::floor::Floor>> {
        // The sender and the reader each hold every socket: both stay under the open-files limit.
        let sockets = (self.connections as usize).min(open_files_limit().saturating_sub(FD_HEADROOM) as usize);
        if self.seconds <= 0.0 || sockets == 0 || self.deliveries_per_s < 1.0 {
            return Ok(None);
        }
        let fanout = (crate::floor::mean_recipients(&self.recipients).round() as usize).clamp(1, sockets);
        let params = crate::floor::Params {
            sockets,
            fanout,
            senders: senders.clamp(1, fanout),
            source_ips: self.source_ips,
            deliveries_per_s: self.deliveries_per_s,
            duration: Duration::from_secs_f64(self.seconds),
            frame_bytes: self.frame_bytes,
            recipients: Some(self.recipients.clone()),
            stride: 1,
        };
        // Let the gateways settle first (after the traffic, the workers' connections are closing).
        tokio::time::sleep(Duration::from_secs(1)).await;
        let floor = tokio::task::spawn_blocking(move || crate::floor::measure(params)).await??;
        Ok(Some(floor))
    }
}

/// The hard open-files limit of this process (raised to it at start); unlimited when unknown.
fn open_files_limit() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).map_or(u64::MAX, |(_, hard)| hard)
}

/// The recipients (slots) of up to 1,000 of the run's events, evenly spread over them: what the
/// clients' tallies will expect of each event, known before it is published.
fn planned_recipients(generator: &Generator, pop: &Population, count: u64) -> Vec<Vec<u32>> {
    let index = crate::expectations::Index::build(pop, 0..pop.len());
    let step = (count / 1000).max(1);
    (0..count)
        .step_by(step as usize)
        .map(|id| index.recipients(&generator.event(id as u32)).map(|slot| slot as u32).collect())
        .collect()
}

/// The mean size of the run's event frames as the gateway writes them (header included), over
/// up to 1,000 of its events.
fn mean_frame_bytes(generator: &Generator, run: u64, count: u64, pad_to: usize) -> usize {
    let step = (count / 1000).max(1);
    let ids: Vec<u64> = (0..count).step_by(step as usize).collect();
    let total: usize = ids
        .iter()
        .map(|id| crate::events::render(&generator.event(*id as u32), run, wire::clock::now_micros(), pad_to).len())
        .sum();
    let payload = total / ids.len().max(1);
    payload
        + match payload {
            0..=125 => 2,
            126..=65_535 => 4,
            _ => 10,
        }
}

/// Ports of `ws://host:port` URLs.
pub fn ports(urls: &[String]) -> Vec<u16> {
    urls.iter().filter_map(|u| u.strip_prefix("ws://")?.split('/').next()?.rsplit(':').next()?.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn ports_of_urls() {
        assert_eq!(
            super::ports(&["ws://127.0.0.1:8001".into(), "ws://h:9/x".into(), "ws://nohost".into()]),
            vec![8001, 9]
        );
    }
}
