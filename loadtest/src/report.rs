//! The result of a run, as one serialisable [`Report`], and the verdict of `--expect-zero-loss`.
//! Rendering lives in [`table`] (terminal), [`json`] and [`svg`].

pub mod json;
pub mod svg;
pub mod table;

use crate::expectations::Tally;
use crate::hist::Summary;
use crate::progress::Point;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub scenario: String,
    pub started_at: String,
    pub wall_s: f64,
    /// The command line, secrets excluded (they are never arguments of the report).
    pub command: Vec<String>,
    pub settings: serde_json::Value,
    pub connections: Option<Connections>,
    pub events: Events,
    pub deliveries: Deliveries,
    pub latency: Summary,
    /// `(percentile, µs)` along the classic HdrHistogram percentile axis.
    pub latency_percentiles: Vec<(f64, u64)>,
    pub rss: Option<Rss>,
    /// CPU per delivery during the traffic, against the floor measured in the same run.
    pub efficiency: Option<Efficiency>,
    pub bridge: Option<Bridge>,
    pub failover: Option<Failover>,
    pub replay: Option<Replay>,
    pub timeline: Vec<Point>,
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Connections {
    pub requested: u64,
    pub workers: usize,
    /// First attempts that opened (the connect phase).
    pub connected: u64,
    pub failed_first_attempt: u64,
    pub never_connected: u64,
    /// Connect-phase handshakes per second (TCP + upgrade + token verification), over all workers.
    pub handshakes_per_s: f64,
    pub connect_phase_s: f64,
    pub handshake: Summary,
    pub connects_total: u64,
    pub connect_failures_total: u64,
    pub recycles: u64,
    pub server_closes: u64,
    /// Connections opened with `resume=<cursor>`.
    pub resumed: u64,
    /// `RESUME_GAP` frames received (never in a healthy run).
    pub resume_gaps: u64,
    pub resume_gap_reasons: BTreeMap<String, u64>,
    pub failure_reasons: BTreeMap<String, u64>,
    pub close_codes: BTreeMap<String, u64>,
    /// CPU seconds the worker processes used (the load generator competes for the same cores).
    pub client_cpu_s: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Events {
    pub path: String,
    pub published: u64,
    pub publish_errors: u64,
    pub first_error: Option<String>,
    /// Channel messages and stream entries (an event often goes to several).
    pub copies: u64,
    pub target_rate: f64,
    pub achieved_rate: f64,
    pub publish_s: f64,
    pub max_lag_ms: f64,
}

impl Events {
    /// What a publish run did: `published` events (failed batches excluded) over its duration.
    pub fn from_log(path: String, published: u64, log: &crate::publisher::PublishLog, target_rate: f64) -> Events {
        let publish_s = log.finished_us.saturating_sub(log.started_us) as f64 / 1e6;
        Events {
            path,
            published,
            publish_errors: log.errors,
            first_error: log.first_error.clone(),
            copies: log.copies,
            target_rate,
            achieved_rate: if publish_s > 0.0 { published as f64 / publish_s } else { 0.0 },
            publish_s,
            max_lag_ms: log.max_lag.as_secs_f64() * 1000.0,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Deliveries {
    #[serde(flatten)]
    pub tally: Tally,
    /// Every copy received (including duplicates and misrouted ones).
    pub received: u64,
    /// Text frames that were not this run's events (pongs, other traffic).
    pub foreign: u64,
    /// Expected deliveries per published event.
    pub avg_fanout: f64,
    /// Mean deliveries per second over the seconds in which deliveries arrived.
    pub per_s: f64,
    /// The busiest second.
    pub peak_per_s: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Rss {
    pub pids: Vec<i32>,
    /// CPU seconds the gateways used from before the connect phase to the end of the run.
    pub gateway_cpu_s: f64,
    pub before_kib: u64,
    pub after_kib: u64,
    pub per_connection_kib: f64,
}

/// What the server side spent per delivery while the events flowed (from the start of the
/// traffic to the end of the settle: the connect phase is left out), and the bare-write floor
/// measured right before and right after the traffic at its rate, fan-out, frame size and
/// connections.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Efficiency {
    pub window_s: f64,
    /// Event frames the clients received in the window.
    pub deliveries: u64,
    pub gateway_cpu_s: f64,
    pub gateway_cpu_us_per_delivery: f64,
    /// CPU seconds of the rest of the pipeline found on this machine (publisher-bridge,
    /// nats-server, redis-server), by process name.
    pub pipeline_cpu_s: BTreeMap<String, f64>,
    /// Gateway and pipeline together, per delivery.
    pub server_cpu_us_per_delivery: f64,
    pub floor: Option<crate::floor::Bracket>,
    /// Why the floor is missing, when measuring it failed.
    pub floor_error: Option<String>,
    /// Gateway CPU per delivery over the floor's.
    pub gateway_over_floor: Option<f64>,
    /// Server-side CPU per delivery over the floor's.
    pub server_over_floor: Option<f64>,
    /// With several gateways: the floor with one sender per gateway, each woken by every event
    /// (what replicas that all hold the tenant cannot avoid), and the gateways' CPU over it.
    pub replicas_floor: Option<crate::floor::Bracket>,
    pub gateway_over_replicas_floor: Option<f64>,
}

impl Efficiency {
    /// From the CPU used in the window; the floor is added after.
    pub fn new(window_s: f64, deliveries: u64, gateway_cpu_s: f64, pipeline_cpu_s: BTreeMap<String, f64>) -> Self {
        let per = |s: f64| s * 1e6 / deliveries.max(1) as f64;
        let server = gateway_cpu_s + pipeline_cpu_s.values().sum::<f64>();
        Efficiency {
            window_s,
            deliveries,
            gateway_cpu_s,
            gateway_cpu_us_per_delivery: per(gateway_cpu_s),
            server_cpu_us_per_delivery: per(server),
            pipeline_cpu_s,
            floor: None,
            floor_error: None,
            gateway_over_floor: None,
            server_over_floor: None,
            replicas_floor: None,
            gateway_over_replicas_floor: None,
        }
    }

    pub fn without_floor(mut self, error: String) -> Self {
        self.floor_error = Some(error);
        self
    }

    pub fn with_floor(mut self, floor: crate::floor::Bracket) -> Self {
        let base = floor.cpu_us_per_delivery;
        if base > 0.0 {
            self.gateway_over_floor = Some(self.gateway_cpu_us_per_delivery / base);
            self.server_over_floor = Some(self.server_cpu_us_per_delivery / base);
        }
        self.floor = Some(floor);
        self
    }

    pub fn with_replicas_floor(mut self, floor: crate::floor::Bracket) -> Self {
        if floor.cpu_us_per_delivery > 0.0 {
            self.gateway_over_replicas_floor = Some(self.gateway_cpu_us_per_delivery / floor.cpu_us_per_delivery);
        }
        self.replicas_floor = Some(floor);
        self
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Bridge {
    pub stream: String,
    /// `--path direct`: loadtest stored the events itself, without Redis and the bridge.
    pub direct: bool,
    /// `--backlog`: the bridge was stopped while the events were written to Redis; `drain_s`
    /// and `cpu_s` count from its SIGCONT.
    pub backlog: bool,
    pub stored: u64,
    /// Events stored in JetStream per second, first publish (with `backlog`, the SIGCONT) to
    /// last stored.
    pub stored_per_s: f64,
    pub drain_s: f64,
    /// From the bridge's own histogram: receipt from Redis to JetStream's acknowledgement (not
    /// with `direct` or `backlog`, where it means nothing).
    pub added_latency: Option<crate::bridge_probe::AddedLatency>,
    /// CPU seconds used during the run (with `backlog`, the drain) by each process of the
    /// pipeline found on this machine.
    pub cpu_s: BTreeMap<String, f64>,
    /// The bridge's CPU time per stored event.
    pub bridge_cpu_us_per_event: Option<f64>,
    /// nats-server's CPU time per stored event.
    pub nats_cpu_us_per_event: Option<f64>,
}

/// The failover scenario: one gateway SIGKILLed mid-run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Failover {
    pub killed_pid: i32,
    /// Seconds after the start of the traffic.
    pub kill_after_s: f64,
    pub killed_at: String,
    /// Base of the clients' reconnect backoff (doubling, ±50 % jitter, capped at 30 s).
    pub backoff_base_s: f64,
    /// Connections open at the kill that the server ended after it: the dead replica's clients.
    pub killed_connections: u64,
    /// Of those, slots that had no cursor yet (they came back with `resume=live`).
    pub without_cursor: u64,
    pub not_reconnected: u64,
    /// Reconnected but received no event published after the kill (none was routed to them,
    /// or it is missing).
    pub not_live_again: u64,
    /// Kill to the slot's next open connection.
    pub reconnected: Summary,
    /// Kill to receiving live events again: to the new connection, plus how late the first
    /// event published after the kill arrived after it was published or the connection opened,
    /// whichever came later (so the seconds in which nothing was published for a slot are left
    /// out).
    pub live_again: Summary,
    pub live_again_percentiles: Vec<(f64, u64)>,
    /// Kill to the first event published after the kill that the slot received on a new
    /// connection (those seconds included).
    pub first_event: Summary,
}

/// The replay scenario: clients that missed events come back with their cursor.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Replay {
    pub clients: u64,
    /// Events each client missed while disconnected.
    pub missed_per_client: u64,
    /// First publish of the missed events to the last of them stored in JetStream.
    pub stored_s: f64,
    /// WebSocket open (the `101`) to the last replayed event, per client.
    pub replay: Summary,
    pub replay_percentiles: Vec<(f64, u64)>,
    /// Clients that did not receive every missed event within the timeout.
    pub incomplete: u64,
    /// One client's replay rate at the median replay time.
    pub events_per_s: f64,
    /// Every replayed event over the reconnect phase (first open to last replayed event).
    pub total_events_per_s: f64,
}

impl Report {
    /// What `--expect-zero-loss` fails on.
    pub fn loss_problems(&self) -> Vec<String> {
        let d = &self.deliveries.tally;
        let mut problems = Vec::new();
        if d.missing > 0 {
            problems.push(format!("{} missing deliveries (e.g. {})", d.missing, d.missing_examples.join(", ")));
        }
        if d.duplicates > 0 {
            problems.push(format!("{} duplicate deliveries", d.duplicates));
        }
        if d.misrouted > 0 {
            problems.push(format!("{} misrouted deliveries (e.g. {})", d.misrouted, d.misrouted_examples.join(", ")));
        }
        if self.events.publish_errors > 0 {
            problems.push(format!(
                "{} events failed to publish: {}",
                self.events.publish_errors,
                self.events.first_error.as_deref().unwrap_or("")
            ));
        }
        if let Some(c) = &self.connections {
            if c.never_connected > 0 {
                problems.push(format!("{} connections never opened ({:?})", c.never_connected, c.failure_reasons));
            }
            if c.resume_gaps > 0 {
                problems.push(format!(
                    "{} RESUME_GAP frames {:?}: the gateway could not replay everything its clients missed",
                    c.resume_gaps, c.resume_gap_reasons
                ));
            }
        }
        if d.delivered == 0 {
            problems.push("nothing was delivered".to_string());
        }
        problems
    }
}

/// The percentile axis of HdrHistogram plots: 0, 50, 75, 87.5, ... up to 99.999.
pub fn percentiles(h: &hdrhistogram::Histogram<u64>) -> Vec<(f64, u64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut q = 0.0f64;
    while q < 0.99999 {
        out.push((q * 100.0, h.value_at_quantile(q)));
        q += (1.0 - q) / 4.0;
    }
    out.push((99.999, h.value_at_quantile(0.99999)));
    out.push((100.0, h.max()));
    out
}

/// `received` spread over the seconds of `timeline` in which anything was received.
pub fn mean_active_rate(received: u64, timeline: &[Point]) -> f64 {
    let active = timeline.iter().filter(|p| p.received_per_s > 0).count();
    if active == 0 {
        0.0
    } else {
        received as f64 / active as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_per_delivery_and_its_multiple_of_the_floor() {
        let pipeline = BTreeMap::from([("nats-server".to_string(), 0.006), ("redis-server".to_string(), 0.004)]);
        let x = Efficiency::new(10.0, 1000, 0.02, pipeline);
        assert!((x.gateway_cpu_us_per_delivery - 20.0).abs() < 1e-9);
        assert!((x.server_cpu_us_per_delivery - 30.0).abs() < 1e-9, "gateway and pipeline together");
        let floor = |us| crate::floor::Floor { cpu_us_per_delivery: us, ..Default::default() };
        let bracket = crate::floor::Bracket::new(floor(7.0), floor(9.0));
        assert!((bracket.drift - (9.0 / 7.0 - 1.0)).abs() < 1e-9, "the host slowed down during the run");
        let x = x.with_floor(bracket);
        assert!((x.gateway_over_floor.unwrap() - 2.5).abs() < 1e-9);
        assert!((x.server_over_floor.unwrap() - 3.75).abs() < 1e-9);
        let missing = Efficiency::new(10.0, 0, 0.0, BTreeMap::new()).without_floor("no sockets".into());
        assert_eq!((missing.gateway_over_floor, missing.floor_error.as_deref()), (None, Some("no sockets")));
    }
}
