//! The live progress line (stderr, every second) and the per-second timeline the reports draw:
//! open connections, events sent and received per second, and latency so far.

use crate::hist::{self, fmt_us};
use crate::workers::Fleet;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub t_s: f64,
    pub phase: String,
    pub open: u64,
    pub sent_per_s: u64,
    pub received_per_s: u64,
    /// Latency of the deliveries received in this second.
    pub p50_us: u64,
    pub p99_us: u64,
}

/// What progress has seen so far.
pub struct Seen {
    pub timeline: Vec<Point>,
    pub latency: Histogram<u64>,
}

pub struct Progress {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Seen>,
    phase: Arc<Mutex<String>>,
}

/// Where the numbers come from: a fleet of WebSocket workers, or a custom receiver (bridge).
pub trait Source: Send + Sync + 'static {
    fn open(&self) -> u64;
    fn received(&self) -> u64;
    fn take_latency(&self) -> Histogram<u64>;
    fn extra(&self) -> String {
        String::new()
    }
}

impl Source for Fleet {
    fn open(&self) -> u64 {
        self.counters().open
    }
    fn received(&self) -> u64 {
        self.counters().received
    }
    fn take_latency(&self) -> Histogram<u64> {
        Fleet::take_latency(self)
    }
    fn extra(&self) -> String {
        let c = self.counters();
        let mut s = String::new();
        if c.connect_failures > 0 || c.server_closes > 0 {
            s = format!("  fail {} closed {}", c.connect_failures, c.server_closes);
        }
        if c.recycles > 0 {
            s.push_str(&format!("  recycled {}", c.recycles));
        }
        s
    }
}

impl Progress {
    pub fn start<S: Source>(source: Arc<S>, sent: Arc<AtomicU64>, target_open: u64) -> Progress {
        let stop = CancellationToken::new();
        let phase = Arc::new(Mutex::new("connect".to_string()));
        let task = tokio::spawn(tick(source, sent, target_open, stop.clone(), phase.clone()));
        Progress { stop, task, phase }
    }

    pub fn phase(&self, name: &str) {
        *self.phase.lock().expect("phase lock") = name.to_string();
    }

    pub async fn finish(self) -> Seen {
        self.stop.cancel();
        self.task.await.expect("progress task")
    }
}

async fn tick<S: Source>(
    source: Arc<S>,
    sent: Arc<AtomicU64>,
    target_open: u64,
    stop: CancellationToken,
    phase: Arc<Mutex<String>>,
) -> Seen {
    let start = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut seen = Seen { timeline: Vec::new(), latency: hist::new() };
    let (mut last_sent, mut last_received) = (0, 0);
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    interval.tick().await;
    loop {
        let stopping = tokio::select! {
            _ = stop.cancelled() => true,
            _ = interval.tick() => false,
        };
        let second = source.take_latency();
        let _ = seen.latency.add(&second);
        let (sent_now, received_now) = (sent.load(Relaxed), source.received());
        let phase = phase.lock().expect("phase lock").clone();
        let point = Point {
            t_s: (start.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            phase: phase.clone(),
            open: source.open(),
            sent_per_s: sent_now - last_sent,
            received_per_s: received_now.saturating_sub(last_received),
            p50_us: hist::summary(&second).p50_us,
            p99_us: hist::summary(&second).p99_us,
        };
        (last_sent, last_received) = (sent_now, received_now);
        let so_far = hist::summary(&seen.latency);
        let conns = if target_open > 0 { format!("conns {}/{target_open}  ", point.open) } else { String::new() };
        let line = format!(
            "[{:>5.0}s {phase:<7}] {conns}sent {sent_now} (+{})  recv {received_now} (+{})  p50 {} p99 {}{}",
            point.t_s,
            point.sent_per_s,
            point.received_per_s,
            fmt_us(so_far.p50_us),
            fmt_us(so_far.p99_us),
            source.extra(),
        );
        if tty {
            eprint!("\r\x1b[2K{line}");
        } else {
            eprintln!("{line}");
        }
        let _ = std::io::stderr().flush();
        seen.timeline.push(point);
        if stopping {
            if tty {
                eprintln!();
            }
            return seen;
        }
    }
}
