//! `--report-svg`: a self-contained SVG (written by hand) with the run's headline figures, the
//! latency distribution along the percentile axis, throughput over time and latency over time;
//! for failover and replay runs also the distribution of their recovery time.

use super::Report;
use crate::hist::fmt_us;
use anyhow::Context;
use std::fmt::Write;
use std::path::Path;

const WIDTH: f64 = 960.0;
const CHART_H: f64 = 240.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 150.0;

pub fn write(report: &Report, path: &Path) -> anyhow::Result<()> {
    std::fs::write(path, render(report)).with_context(|| format!("write {}", path.display()))
}

struct Series<'a> {
    name: &'a str,
    color: &'a str,
    points: Vec<(f64, f64)>,
}

pub fn render(r: &Report) -> String {
    let top = 110.0;
    let gap = 70.0;
    let recovery = recovery(r);
    let charts = if recovery.is_some() { 4.0 } else { 3.0 };
    let height = top + charts * (CHART_H + gap);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/>"#
    );
    let d = &r.deliveries;
    let l = &r.latency;
    let _ = write!(
        s,
        r#"<text x="20" y="30" font-size="18" font-weight="bold">loadtest {} — {}</text>"#,
        esc(&r.scenario),
        esc(&r.started_at)
    );
    let mut line2 = format!(
        "{} events, {} deliveries ({} missing, {} duplicate, {} misrouted)",
        r.events.published, d.tally.delivered, d.tally.missing, d.tally.duplicates, d.tally.misrouted
    );
    if let Some(c) = &r.connections {
        line2 = format!("{} connections, {:.0} handshakes/s; {line2}", c.connected, c.handshakes_per_s);
    }
    let _ = write!(s, r#"<text x="20" y="55">{}</text>"#, esc(&line2));
    let mut line3 = format!(
        "latency p50 {} p99 {} p99.9 {} max {}",
        fmt_us(l.p50_us),
        fmt_us(l.p99_us),
        fmt_us(l.p999_us),
        fmt_us(l.max_us)
    );
    if let Some(m) = &r.rss {
        line3.push_str(&format!("; gateway RSS {:.2} KiB per connection", m.per_connection_kib));
    }
    if let Some(b) = &r.bridge {
        let who = if b.direct {
            "JetStream direct"
        } else if b.backlog {
            "bridge backlog"
        } else {
            "bridge"
        };
        line3.push_str(&format!("; {who} {:.0} events/s stored", b.stored_per_s));
    }
    if let Some(f) = &r.failover {
        line3.push_str(&format!(
            "; 99% of {} killed clients live again after {:.2} s",
            f.live_again.count,
            f.live_again.p99_us as f64 / 1e6
        ));
    }
    if let Some(p) = &r.replay {
        line3.push_str(&format!(
            "; {} missed events replayed in {} (p50)",
            p.missed_per_client,
            fmt_us(p.replay.p50_us)
        ));
    }
    let _ = write!(s, r#"<text x="20" y="78">{}</text>"#, esc(&line3));

    // 1. Latency by percentile, x = log10(1 / (1 - q)).
    let xq = |p: f64| (1.0 / (1.0 - (p / 100.0).min(0.99999))).log10();
    let dist = Series {
        name: "latency",
        color: "#1f77b4",
        points: r.latency_percentiles.iter().map(|(p, us)| (xq(*p), *us as f64 / 1000.0)).collect(),
    };
    let ticks = || [0.0, 50.0, 90.0, 99.0, 99.9, 99.99, 99.999].iter().map(|p| (xq(*p), format!("{p}%"))).collect();
    chart(
        &mut s,
        top,
        "End-to-end latency by percentile (Redis publish to client receive)",
        "ms",
        &[dist],
        Some(ticks()),
    );

    // 2. Throughput over time.
    let t = &r.timeline;
    let sent =
        Series { name: "sent/s", color: "#ff7f0e", points: t.iter().map(|p| (p.t_s, p.sent_per_s as f64)).collect() };
    let recv = Series {
        name: "received/s",
        color: "#2ca02c",
        points: t.iter().map(|p| (p.t_s, p.received_per_s as f64)).collect(),
    };
    let open =
        Series { name: "open conns", color: "#9467bd", points: t.iter().map(|p| (p.t_s, p.open as f64)).collect() };
    chart(&mut s, top + CHART_H + gap, "Throughput over time (s)", "per second", &[sent, recv, open], None);

    // 3. Latency over time.
    let p50 = Series {
        name: "p50",
        color: "#1f77b4",
        points: t.iter().filter(|p| p.received_per_s > 0).map(|p| (p.t_s, p.p50_us as f64 / 1000.0)).collect(),
    };
    let p99 = Series {
        name: "p99",
        color: "#d62728",
        points: t.iter().filter(|p| p.received_per_s > 0).map(|p| (p.t_s, p.p99_us as f64 / 1000.0)).collect(),
    };
    chart(&mut s, top + 2.0 * (CHART_H + gap), "Latency over time (s), per second", "ms", &[p50, p99], None);

    // 4. Recovery time by percentile.
    if let Some((title, points)) = recovery {
        let series = Series {
            name: "time",
            color: "#d62728",
            points: points.iter().map(|(p, us)| (xq(*p), *us as f64 / 1e6)).collect(),
        };
        chart(&mut s, top + 3.0 * (CHART_H + gap), title, "s", &[series], Some(ticks()));
    }
    s.push_str("</svg>\n");
    s
}

/// The title and percentiles of the recovery chart of failover and replay runs.
fn recovery(r: &Report) -> Option<(&'static str, &[(f64, u64)])> {
    if let Some(f) = &r.failover {
        return Some((
            "Kill to receiving live events again, per killed connection, by percentile",
            &f.live_again_percentiles,
        ));
    }
    r.replay.as_ref().map(|p| {
        ("WebSocket open to the last replayed event, per client, by percentile", p.replay_percentiles.as_slice())
    })
}

fn chart(s: &mut String, y0: f64, title: &str, unit: &str, series: &[Series<'_>], x_ticks: Option<Vec<(f64, String)>>) {
    let (x0, w, h) = (LEFT, WIDTH - LEFT - RIGHT, CHART_H);
    let all = || series.iter().flat_map(|s| s.points.iter());
    let x_min = all().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let x_min = if x_min.is_finite() { x_min.min(0.0) } else { 0.0 };
    let x_max = all().map(|p| p.0).fold(x_min + 1e-9, f64::max);
    let y_max = nice(all().map(|p| p.1).fold(0.0, f64::max));
    let px = |x: f64| x0 + (x - x_min) / (x_max - x_min) * w;
    let py = |y: f64| y0 + h - y / y_max * h;
    let _ = write!(s, r#"<text x="{x0}" y="{}" font-size="14" font-weight="bold">{}</text>"#, y0 - 12.0, esc(title));
    let _ = write!(s, r##"<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#888"/>"##);
    for i in 0..=5 {
        let y = y_max * i as f64 / 5.0;
        let _ = write!(
            s,
            r##"<line x1="{x0}" x2="{}" y1="{py}" y2="{py}" stroke="#eee"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
            x0 + w,
            x0 - 6.0,
            py(y) + 4.0,
            short(y),
            py = py(y)
        );
    }
    let _ = write!(
        s,
        r#"<text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">{}</text>"#,
        y0 + h / 2.0,
        y0 + h / 2.0,
        esc(unit)
    );
    let ticks = x_ticks
        .unwrap_or_else(|| (0..=6).map(|i| x_min + (x_max - x_min) * i as f64 / 6.0).map(|x| (x, short(x))).collect());
    for (x, label) in ticks.into_iter().filter(|(x, _)| *x <= x_max + 1e-9) {
        let _ = write!(
            s,
            r##"<line x1="{px}" x2="{px}" y1="{y0}" y2="{}" stroke="#eee"/><text x="{px}" y="{}" text-anchor="middle">{}</text>"##,
            y0 + h,
            y0 + h + 16.0,
            esc(&label),
            px = px(x)
        );
    }
    for (i, series) in series.iter().enumerate() {
        if series.points.is_empty() {
            continue;
        }
        let path: Vec<String> = series.points.iter().map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y))).collect();
        let _ = write!(
            s,
            r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
            series.color,
            path.join(" ")
        );
        let ly = y0 + 14.0 + 18.0 * i as f64;
        let _ = write!(
            s,
            r#"<rect x="{}" y="{}" width="12" height="12" fill="{}"/><text x="{}" y="{}">{}</text>"#,
            x0 + w + 12.0,
            ly - 10.0,
            series.color,
            x0 + w + 30.0,
            ly,
            esc(series.name)
        );
    }
}

/// A round upper bound for an axis.
fn nice(max: f64) -> f64 {
    if max <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * magnitude).find(|v| *v >= max).unwrap_or(max)
}

fn short(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn esc(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_bounds_are_round() {
        assert_eq!(nice(0.0), 1.0);
        assert_eq!(nice(7.3), 10.0);
        assert_eq!(nice(1800.0), 2000.0);
        assert_eq!(nice(2100.0), 2500.0);
        assert_eq!(esc("a<b&\"c\""), "a&lt;b&amp;&quot;c&quot;");
    }

    #[test]
    fn failover_and_replay_runs_get_a_fourth_chart_of_their_recovery() {
        use crate::report::{Failover, Replay};
        let plain = render(&Report::default());
        assert!(!plain.contains("by percentile, per") && plain.contains(r#"height="1040""#), "three charts");
        let failover = Report {
            failover: Some(Failover {
                live_again_percentiles: vec![(50.0, 1_000_000), (99.0, 1_500_000)],
                ..Default::default()
            }),
            ..Report::default()
        };
        let svg = render(&failover);
        assert!(svg.contains("Kill to receiving live events again") && svg.contains(r#"height="1350""#));
        let replay = Report {
            replay: Some(Replay { replay_percentiles: vec![(50.0, 200_000)], ..Default::default() }),
            ..Report::default()
        };
        assert!(render(&replay).contains("WebSocket open to the last replayed event"));
    }
}
