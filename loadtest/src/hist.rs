//! Latency histograms: construction with one precision for the whole tool, a compact bucket list
//! that crosses the worker pipe as JSON, and the summary the reports print. Values are
//! microseconds.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::sync::Mutex;

/// Up to one hour, 3 significant figures.
pub fn new() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// `(value, count)` pairs of the non-empty buckets.
pub type Buckets = Vec<(u64, u64)>;

pub fn buckets(h: &Histogram<u64>) -> Buckets {
    h.iter_recorded().map(|v| (v.value_iterated_to(), v.count_since_last_iteration())).collect()
}

pub fn merge(into: &mut Histogram<u64>, buckets: &Buckets) {
    for (value, count) in buckets {
        let _ = into.record_n(*value, *count);
    }
}

/// Percentiles of one histogram, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub count: u64,
    pub min_us: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

pub fn summary(h: &Histogram<u64>) -> Summary {
    if h.is_empty() {
        return Summary::default();
    }
    Summary {
        count: h.len(),
        min_us: h.min(),
        p50_us: h.value_at_quantile(0.50),
        p90_us: h.value_at_quantile(0.90),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
        max_us: h.max(),
        mean_us: h.mean(),
    }
}

/// Histograms shared by many tasks, sharded so that recording rarely contends.
pub struct Sharded {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl Sharded {
    pub fn new(shards: usize) -> Sharded {
        Sharded { shards: (0..shards.max(1)).map(|_| Mutex::new(new())).collect() }
    }

    pub fn record(&self, key: u64, value: u64) {
        let shard = &self.shards[(key % self.shards.len() as u64) as usize];
        let _ = shard.lock().expect("histogram lock").record(value.max(1));
    }

    /// Everything recorded since the last call, emptying the shards.
    pub fn take(&self) -> Histogram<u64> {
        let mut out = new();
        for shard in &self.shards {
            let mut h = shard.lock().expect("histogram lock");
            let _ = out.add(&*h);
            h.reset();
        }
        out
    }
}

/// `1.23ms`-style rendering of microseconds.
pub fn fmt_us(us: u64) -> String {
    match us {
        0..=999 => format!("{us}µs"),
        1_000..=999_999 => format!("{:.2}ms", us as f64 / 1e3),
        _ => format!("{:.2}s", us as f64 / 1e6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_round_trip_through_merge() {
        let mut a = new();
        for v in [1, 5, 5, 900, 12_345, 1_000_000] {
            a.record(v).unwrap();
        }
        let mut b = new();
        merge(&mut b, &buckets(&a));
        assert_eq!(summary(&a), summary(&b));
        assert_eq!(b.len(), 6);
    }

    #[test]
    fn sharded_take_empties() {
        let s = Sharded::new(4);
        for k in 0..100 {
            s.record(k, 10 + k);
        }
        assert_eq!(s.take().len(), 100);
        assert_eq!(s.take().len(), 0);
    }
}
