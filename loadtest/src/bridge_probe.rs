//! What the bridge scenario reads around a run besides the stream: the bridge's own
//! publish-latency histogram (receipt from Redis to JetStream's acknowledgement, i.e. the
//! latency the bridge adds) from its `/metrics`, and the CPU seconds each process of the
//! pipeline used, to show where the time goes. Both are best effort: an unreachable endpoint or
//! a process not found is left out of the report.

use std::collections::BTreeMap;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HISTOGRAM: &str = "bridge_publish_latency_seconds_bucket{le=\"";
/// The processes of the pipeline, by executable name.
pub const PROCESSES: [&str; 4] = ["publisher-bridge", "nats-server", "redis-server", "loadtest"];

/// Cumulative bucket counts by upper bound in seconds (`+Inf` as infinity).
pub type Buckets = Vec<(f64, u64)>;

/// Reads the histogram from `url` (`http://host:port/path`); `None` when unreachable.
pub async fn latency_buckets(url: &str) -> Option<Buckets> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = rest.split_once('/').map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(authority).await.ok()?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut body = String::new();
        stream.read_to_string(&mut body).await.ok()?;
        Some(body)
    };
    let text = tokio::time::timeout(Duration::from_secs(3), fetch).await.ok()??;
    let buckets = parse_buckets(&text);
    (!buckets.is_empty()).then_some(buckets)
}

fn parse_buckets(text: &str) -> Buckets {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(HISTOGRAM)?;
            let (le, rest) = rest.split_once("\"}")?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, rest.trim().parse().ok()?))
        })
        .collect()
}

/// The latency the bridge added during a run, from two readings of its histogram.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AddedLatency {
    pub count: u64,
    /// Upper bounds of the buckets holding the 50th and 99th percentiles, in milliseconds.
    pub p50_le_ms: f64,
    pub p99_le_ms: f64,
}

pub fn added_latency(before: &Buckets, after: &Buckets) -> Option<AddedLatency> {
    let delta: Vec<(f64, u64)> = after
        .iter()
        .map(|(le, n)| (*le, n.saturating_sub(before.iter().find(|(b, _)| b == le).map_or(0, |(_, m)| *m))))
        .collect();
    let count = delta.last()?.1;
    if count == 0 {
        return None;
    }
    let at =
        |q: f64| delta.iter().find(|(_, n)| *n as f64 >= q * count as f64).map_or(f64::INFINITY, |(le, _)| le * 1000.0);
    Some(AddedLatency { count, p50_le_ms: at(0.5), p99_le_ms: at(0.99) })
}

/// CPU seconds used so far by every process named in [`PROCESSES`], by name.
pub fn cpu_by_process() -> BTreeMap<String, f64> {
    PROCESSES.iter().map(|name| (name.to_string(), crate::rss::total_cpu_seconds(&pids_named(name)))).collect()
}

/// Processes named `name`: by their executable (`argv[0]`), or by their kernel name
/// (`/proc/<pid>/comm`, cut to 15 bytes), all that is left of one that rewrote its command line
/// as redis-server does (`redis-server 127.0.0.1:6380` in a single argument).
fn pids_named(name: &str) -> Vec<i32> {
    let comm = name.get(..15).unwrap_or(name);
    let mut pids = crate::rss::discover(name, &[]);
    if let Ok(entries) = std::fs::read_dir("/proc") {
        pids.extend(
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == comm)),
        );
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// The difference of two [`cpu_by_process`] readings, without processes that used nothing.
pub fn cpu_used(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(name, s)| (name.clone(), s - before.get(name).copied().unwrap_or(0.0)))
        .filter(|(_, s)| *s > 0.0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = "# TYPE bridge_publish_latency_seconds histogram\n\
        bridge_publish_latency_seconds_sum 1.5\n\
        bridge_publish_latency_seconds_count 100\n\
        bridge_publish_latency_seconds_bucket{le=\"0.001\"} 40\n\
        bridge_publish_latency_seconds_bucket{le=\"0.002\"} 90\n\
        bridge_publish_latency_seconds_bucket{le=\"0.005\"} 99\n\
        bridge_publish_latency_seconds_bucket{le=\"+Inf\"} 100\n";

    #[test]
    fn percentiles_come_from_the_difference_of_two_readings() {
        let after = parse_buckets(METRICS);
        assert_eq!(after.len(), 4);
        let before = vec![(0.001, 30), (0.002, 30), (0.005, 30), (f64::INFINITY, 30)];
        // The run: 10 under 1 ms, 60 under 2 ms, 69 under 5 ms, 70 in all.
        let added = added_latency(&before, &after).unwrap();
        assert_eq!(added.count, 70);
        assert_eq!(added.p50_le_ms, 2.0);
        assert_eq!(added.p99_le_ms, f64::INFINITY, "69 of 70 is below the 99th percentile");
        assert!(added_latency(&after, &after).is_none(), "nothing happened");
    }

    #[test]
    fn processes_are_found_by_their_kernel_name_too() {
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
        let me = std::process::id() as i32;
        // The test binary's kernel name is its file name cut to 15 bytes: found either way.
        assert!(pids_named(comm.trim_end()).contains(&me));
        assert!(!pids_named("no-such-process-name").contains(&me));
    }
}
