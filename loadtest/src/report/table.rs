//! The summary table printed at the end of a run (stdout).

use super::Report;
use crate::hist::fmt_us;
use std::fmt::Write;

pub fn render(r: &Report) -> String {
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut row = |k: &str, v: String| rows.push((k.to_string(), v));
    row("scenario", format!("{} ({:.1} s wall)", r.scenario, r.wall_s));
    if let Some(c) = &r.connections {
        row(
            "connections",
            format!(
                "{} of {} opened by {} worker(s), {} never",
                c.connected, c.requested, c.workers, c.never_connected
            ),
        );
        row(
            "handshakes",
            format!(
                "{:.0}/s over {:.2} s; p50 {} p99 {} max {}",
                c.handshakes_per_s,
                c.connect_phase_s,
                fmt_us(c.handshake.p50_us),
                fmt_us(c.handshake.p99_us),
                fmt_us(c.handshake.max_us)
            ),
        );
        if c.recycles > 0 || c.server_closes > 0 || c.connect_failures_total > 0 {
            row(
                "reconnects",
                format!(
                    "{} recycled, {} closed by server, {} failed attempts",
                    c.recycles, c.server_closes, c.connect_failures_total
                ),
            );
        }
        if c.resumed > 0 || c.resume_gaps > 0 {
            let reasons =
                if c.resume_gap_reasons.is_empty() { String::new() } else { format!(" {:?}", c.resume_gap_reasons) };
            row(
                "resume",
                format!("{} connections resumed from their cursor, {} RESUME_GAP{reasons}", c.resumed, c.resume_gaps),
            );
        }
        if !c.close_codes.is_empty() {
            row("server closes", format!("{:?}", c.close_codes));
        }
        if !c.failure_reasons.is_empty() {
            row("connect failures", format!("{:?}", c.failure_reasons));
        }
    }
    if let Some(m) = &r.rss {
        row(
            "gateway RSS",
            format!(
                "{} KiB -> {} KiB over pids {:?}: {:.2} KiB per connection",
                m.before_kib, m.after_kib, m.pids, m.per_connection_kib
            ),
        );
        let client = r.connections.as_ref().map_or(0.0, |c| c.client_cpu_s);
        row(
            "CPU",
            format!("gateways {:.1} s, loadtest workers {:.1} s, over {:.1} s wall", m.gateway_cpu_s, client, r.wall_s),
        );
    }
    if let Some(x) = &r.efficiency {
        let pipeline: Vec<String> = x.pipeline_cpu_s.iter().map(|(name, s)| format!("{name} {s:.2} s")).collect();
        row(
            "CPU/delivery",
            format!(
                "gateway {:.2} µs, whole server side {:.2} µs ({} deliveries in {:.1} s; gateway {:.2} s{}{})",
                x.gateway_cpu_us_per_delivery,
                x.server_cpu_us_per_delivery,
                x.deliveries,
                x.window_s,
                x.gateway_cpu_s,
                if pipeline.is_empty() { "" } else { ", " },
                pipeline.join(", ")
            ),
        );
        if let Some(error) = &x.floor_error {
            row("floor", format!("not measured: {error}"));
        }
        if let (Some(f), Some(gateway), Some(server)) = (&x.floor, x.gateway_over_floor, x.server_over_floor) {
            row("floor", format!("{}: gateway {gateway:.2}x, server side {server:.2}x", f.summary()));
        }
        if let (Some(f), Some(gateway)) = (&x.replicas_floor, x.gateway_over_replicas_floor) {
            row("floor/gw", format!("{}: gateway {gateway:.2}x", f.summary()));
        }
    }
    let e = &r.events;
    let asked =
        if e.target_rate > 0.0 { format!("{:.0}/s asked", e.target_rate) } else { "as fast as possible".to_string() };
    row(
        "events",
        format!(
            "{} published via {} ({} copies), {:.0}/s ({asked}), max lag {:.1} ms, {} errors",
            e.published, e.path, e.copies, e.achieved_rate, e.max_lag_ms, e.publish_errors
        ),
    );
    let d = &r.deliveries;
    row(
        "deliveries",
        format!(
            "{} expected, {} delivered, {:.1} per event, {:.0}/s mean, {}/s peak",
            d.tally.expected, d.tally.delivered, d.avg_fanout, d.per_s, d.peak_per_s
        ),
    );
    row(
        "loss",
        format!(
            "{} missing, {} duplicate, {} misrouted ({} outside window, tolerated)",
            d.tally.missing, d.tally.duplicates, d.tally.misrouted, d.tally.outside_window
        ),
    );
    let l = &r.latency;
    row(
        "latency",
        format!(
            "p50 {} p90 {} p99 {} p99.9 {} max {} (n={})",
            fmt_us(l.p50_us),
            fmt_us(l.p90_us),
            fmt_us(l.p99_us),
            fmt_us(l.p999_us),
            fmt_us(l.max_us),
            l.count
        ),
    );
    if let Some(b) = &r.bridge {
        let (key, from) = match (b.direct, b.backlog) {
            (true, _) => ("jetstream", "first publish, straight to JetStream without Redis and the bridge"),
            (false, true) => ("bridge", "SIGCONT, a backlog in Redis"),
            (false, false) => ("bridge", "first publish"),
        };
        row(
            key,
            format!(
                "{} stored in {} at {:.0}/s (drained in {:.2} s from {from})",
                b.stored, b.stream, b.stored_per_s, b.drain_s
            ),
        );
        if let Some(a) = &b.added_latency {
            row(
                "bridge adds",
                format!(
                    "p50 <= {} ms, p99 <= {} ms (its histogram's buckets, n={})",
                    a.p50_le_ms, a.p99_le_ms, a.count
                ),
            );
        }
        if !b.cpu_s.is_empty() {
            let used: Vec<String> = b.cpu_s.iter().map(|(name, s)| format!("{name} {s:.1} s")).collect();
            let per_event: String = [("bridge", b.bridge_cpu_us_per_event), ("nats-server", b.nats_cpu_us_per_event)]
                .iter()
                .filter_map(|(name, us)| us.map(|us| format!("; {name} {us:.1} µs per event")))
                .collect();
            row("CPU", format!("{} over {:.1} s wall{per_event}", used.join(", "), r.wall_s));
        }
    }
    if let Some(f) = &r.failover {
        row("failover", format!("gateway pid {} SIGKILLed {:.1} s into the traffic ({}): {} connections closed, {} without a cursor yet, {} not back", f.killed_pid, f.kill_after_s, f.killed_at, f.killed_connections, f.without_cursor, f.not_reconnected));
        let (l, n) = (&f.live_again, f.live_again.count);
        let mut live = format!("99% of the dead replica's {n} clients receiving live events again after {:.2} s (p50 {} p90 {} max {}; backoff base {} s)", l.p99_us as f64 / 1e6, fmt_us(l.p50_us), fmt_us(l.p90_us), fmt_us(l.max_us), f.backoff_base_s);
        if f.not_live_again > 0 {
            live.push_str(&format!("; {} got no event published after the kill", f.not_live_again));
        }
        row("live again", live);
        let b = &f.reconnected;
        row(
            "reconnected",
            format!(
                "p50 {} p90 {} p99 {} max {} after the kill",
                fmt_us(b.p50_us),
                fmt_us(b.p90_us),
                fmt_us(b.p99_us),
                fmt_us(b.max_us)
            ),
        );
        let e = &f.first_event;
        row(
            "first event",
            format!(
                "p50 {} p90 {} p99 {} max {} after the kill (the first published after it, however long none was)",
                fmt_us(e.p50_us),
                fmt_us(e.p90_us),
                fmt_us(e.p99_us),
                fmt_us(e.max_us)
            ),
        );
    }
    if let Some(p) = &r.replay {
        row(
            "replay",
            format!(
                "{} clients missed {} events each (stored in JetStream in {:.2} s)",
                p.clients, p.missed_per_client, p.stored_s
            ),
        );
        let t = &p.replay;
        row(
            "replay time",
            format!(
                "p50 {} p99 {} max {} from WebSocket open to the last replayed event; {:.0} events/s per client at p50, {:.0}/s in all; {} incomplete",
                fmt_us(t.p50_us),
                fmt_us(t.p99_us),
                fmt_us(t.max_us),
                p.events_per_s,
                p.total_events_per_s,
                p.incomplete
            ),
        );
    }
    for p in &r.problems {
        row("PROBLEM", p.clone());
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in rows {
        let _ = writeln!(out, "{k:>width$}  {v}");
    }
    out
}
