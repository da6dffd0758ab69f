//! What the parent and its worker processes say to each other: one JSON object per line, the
//! spec and commands on the worker's stdin, progress and results on its stdout. Nothing else is
//! ever written to a worker's stdout (its logs go to stderr).

use crate::backoff::Policy;
use crate::events::Traffic;
use crate::expectations::Tally;
use crate::hist::Buckets;
use crate::population::PopulationParams;
use crate::recovery::Recovery;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Everything a worker needs, sent as the first line of its stdin (secrets included, so they
/// never appear in a process listing).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub index: usize,
    pub first_slot: u64,
    pub end_slot: u64,
    pub population: PopulationParams,
    pub traffic: Traffic,
    pub seed: u64,
    pub run: u64,
    /// Gateway base URLs (`ws://host:port`); slot `s` uses `urls[s % len]`.
    pub urls: Vec<String>,
    pub origin: Option<String>,
    /// Spread client sockets over 127.0.0.1..=127.0.0.N (0: let the kernel choose).
    pub source_ips: u32,
    pub connect_concurrency: usize,
    pub connect_timeout_ms: u64,
    pub ping_interval_ms: u64,
    /// This worker's share of the churn rate (connections recycled per second), 0 for none.
    pub churn_rate: f64,
    pub churn_grace_ms: u64,
    /// Connect with `resume=live`, reconnect with `resume=<last cursor>`.
    pub resume: bool,
    pub backoff: Policy,
    pub jwt_secret: String,
    pub table_secret: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum ToWorker {
    /// Everyone is connected: start churning (publishing is the parent's).
    Go,
    /// A gateway is SIGKILLed at `at_us` (sent just before the kill): every connection records
    /// when it first receives an event published after it.
    Killing { at_us: u64 },
    /// Publishing and settling are over: close, account and report. `sent_us[id]` is the
    /// publish time of event `id` (0 when its publish failed).
    Finish { sent_us: Vec<u64> },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Counters {
    /// Connections open now.
    pub open: u64,
    /// Loadtest events received (every copy).
    pub received: u64,
    /// Text frames that are not loadtest events of this run (pongs, other traffic).
    pub foreign: u64,
    pub connects: u64,
    pub connect_failures: u64,
    /// Connections the server ended (close frame or broken socket) without the client asking.
    pub server_closes: u64,
    /// Deliberate disconnect-reconnect cycles (churn).
    pub recycles: u64,
    /// Connections opened with `resume=<cursor>`.
    pub resumed: u64,
    /// `RESUME_GAP` frames: the gateway could not replay everything a client missed.
    pub resume_gaps: u64,
}

/// The first connection attempt of every slot, for the handshake rate.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConnectPhase {
    pub attempted: u64,
    pub connected: u64,
    pub failed: u64,
    pub first_start_us: u64,
    pub last_done_us: u64,
    /// TCP connect + WebSocket handshake durations.
    pub handshake: Buckets,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Final {
    pub counters: Counters,
    pub tally: Tally,
    /// Slots that never had an open connection.
    pub never_connected: u64,
    pub failure_reasons: BTreeMap<String, u64>,
    pub close_codes: BTreeMap<String, u64>,
    /// `RESUME_GAP` frames by reason.
    pub gap_reasons: BTreeMap<String, u64>,
    /// Latency recorded since the last progress line.
    pub latency: Buckets,
    /// Handshakes after the connect phase (churn, reconnects).
    pub handshake: Buckets,
    /// CPU seconds (user + system) this worker used.
    pub cpu_s: f64,
    /// What the announced gateway kill did to this worker's slots.
    pub recovery: Option<Recovery>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub enum ToParent {
    Ready(ConnectPhase),
    /// Every second: cumulative counters and the latency recorded since the last one.
    Progress {
        counters: Counters,
        latency: Buckets,
    },
    Final(Box<Final>),
    Failed {
        error: String,
    },
}
