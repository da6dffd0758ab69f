//! A worker's live counters, shared by its connection tasks: atomics for counts, sharded
//! histograms for latency and handshakes, and bounded maps of failure reasons and close codes.

use crate::hist::{self, Sharded};
use crate::messages::{ConnectPhase, Counters};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// Distinct failure reasons kept; the rest are counted under `other`.
const MAX_REASONS: usize = 32;

#[derive(Default)]
struct Phase {
    attempted: AtomicU64,
    connected: AtomicU64,
    failed: AtomicU64,
    first_start_us: AtomicU64,
    last_done_us: AtomicU64,
}

pub struct Stats {
    pub open: AtomicU64,
    pub received: AtomicU64,
    pub foreign: AtomicU64,
    pub connects: AtomicU64,
    pub connect_failures: AtomicU64,
    pub server_closes: AtomicU64,
    pub recycles: AtomicU64,
    pub resumed: AtomicU64,
    pub resume_gaps: AtomicU64,
    pub latency: Sharded,
    pub handshake: Sharded,
    phase: Phase,
    failure_reasons: Mutex<BTreeMap<String, u64>>,
    close_codes: Mutex<BTreeMap<String, u64>>,
    gap_reasons: Mutex<BTreeMap<String, u64>>,
}

impl Stats {
    pub fn new() -> Stats {
        Stats {
            open: AtomicU64::new(0),
            received: AtomicU64::new(0),
            foreign: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            server_closes: AtomicU64::new(0),
            recycles: AtomicU64::new(0),
            resumed: AtomicU64::new(0),
            resume_gaps: AtomicU64::new(0),
            latency: Sharded::new(16),
            handshake: Sharded::new(4),
            phase: Phase { first_start_us: AtomicU64::new(u64::MAX), ..Phase::default() },
            failure_reasons: Mutex::default(),
            close_codes: Mutex::default(),
            gap_reasons: Mutex::default(),
        }
    }

    pub fn counters(&self) -> Counters {
        Counters {
            open: self.open.load(Relaxed),
            received: self.received.load(Relaxed),
            foreign: self.foreign.load(Relaxed),
            connects: self.connects.load(Relaxed),
            connect_failures: self.connect_failures.load(Relaxed),
            server_closes: self.server_closes.load(Relaxed),
            recycles: self.recycles.load(Relaxed),
            resumed: self.resumed.load(Relaxed),
            resume_gaps: self.resume_gaps.load(Relaxed),
        }
    }

    pub fn first_attempt_started(&self, now_us: u64) {
        self.phase.first_start_us.fetch_min(now_us, Relaxed);
    }

    /// Records the end of a slot's first attempt; returns how many slots have finished theirs.
    pub fn first_attempt_done(&self, ok: bool, now_us: u64) -> u64 {
        if ok {
            self.phase.connected.fetch_add(1, Relaxed);
            self.phase.last_done_us.fetch_max(now_us, Relaxed);
        } else {
            self.phase.failed.fetch_add(1, Relaxed);
        }
        self.phase.attempted.fetch_add(1, Relaxed) + 1
    }

    /// The connect phase, taking the handshake histogram recorded so far.
    pub fn connect_phase(&self) -> ConnectPhase {
        ConnectPhase {
            attempted: self.phase.attempted.load(Relaxed),
            connected: self.phase.connected.load(Relaxed),
            failed: self.phase.failed.load(Relaxed),
            first_start_us: self.phase.first_start_us.load(Relaxed),
            last_done_us: self.phase.last_done_us.load(Relaxed),
            handshake: hist::buckets(&self.handshake.take()),
        }
    }

    pub fn failure(&self, reason: String) {
        self.connect_failures.fetch_add(1, Relaxed);
        bump(&self.failure_reasons, reason);
    }

    pub fn close_code(&self, code: String) {
        bump(&self.close_codes, code);
    }

    /// A `RESUME_GAP` frame with its reason.
    pub fn resume_gap(&self, reason: &str) {
        self.resume_gaps.fetch_add(1, Relaxed);
        bump(&self.gap_reasons, reason.to_string());
    }

    pub fn gap_reasons(&self) -> BTreeMap<String, u64> {
        self.gap_reasons.lock().expect("stats lock").clone()
    }

    pub fn failure_reasons(&self) -> BTreeMap<String, u64> {
        self.failure_reasons.lock().expect("stats lock").clone()
    }

    pub fn close_codes(&self) -> BTreeMap<String, u64> {
        self.close_codes.lock().expect("stats lock").clone()
    }
}

fn bump(map: &Mutex<BTreeMap<String, u64>>, key: String) {
    let mut map = map.lock().expect("stats lock");
    let key = if map.len() >= MAX_REASONS && !map.contains_key(&key) { "other".to_string() } else { key };
    *map.entry(key).or_insert(0) += 1;
}
