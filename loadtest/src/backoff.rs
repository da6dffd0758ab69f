//! How long a connection slot waits before it reconnects. The load scenarios retry soon and
//! deterministically; the failover scenario waits like the browser apps, because what it measures
//! is how long real clients take to come back. Pure: the slot owns the sleeping.

use serde::{Deserialize, Serialize};
use std::time::Duration;

const LOAD_MIN: Duration = Duration::from_millis(250);
const LOAD_MAX: Duration = Duration::from_secs(5);
/// The browser apps' longest wait.
const BROWSER_CAP: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Policy {
    /// 250 ms doubling up to 5 s, no jitter; starts over only after the client closed a
    /// connection itself (churn). The load scenarios' policy.
    Load,
    /// The browser apps': `base_ms` doubling per failed attempt up to 30 s, each wait jittered
    /// by ±50 %; every connection that opens starts it over.
    Browser { base_ms: u64 },
}

#[derive(Debug, Clone)]
pub struct Backoff {
    policy: Policy,
    attempt: u32,
    /// Jitter source (splitmix64 state), seeded per slot so runs are reproducible.
    jitter: u64,
}

impl Backoff {
    pub fn new(policy: Policy, seed: u64) -> Backoff {
        Backoff { policy, attempt: 0, jitter: seed }
    }

    /// The next wait, and one step further for the one after.
    pub fn next_delay(&mut self) -> Duration {
        let doubled = |base: Duration, cap: Duration| base.saturating_mul(1u32 << self.attempt.min(16)).min(cap);
        let wait = match self.policy {
            Policy::Load => doubled(LOAD_MIN, LOAD_MAX),
            Policy::Browser { base_ms } => {
                self.jitter = crate::events::splitmix(self.jitter);
                let unit = (self.jitter >> 11) as f64 / (1u64 << 53) as f64;
                doubled(Duration::from_millis(base_ms), BROWSER_CAP).mul_f64(0.5 + unit)
            }
        };
        self.attempt = self.attempt.saturating_add(1);
        wait
    }

    /// A connection opened.
    pub fn opened(&mut self) {
        if matches!(self.policy, Policy::Browser { .. }) {
            self.attempt = 0;
        }
    }

    /// The client closed its connection itself: the next wait is the first again.
    pub fn recycled(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_load_policy_doubles_to_five_seconds_and_forgets_only_on_recycle() {
        let mut b = Backoff::new(Policy::Load, 1);
        let waits: Vec<u64> = (0..7).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(waits, [250, 500, 1000, 2000, 4000, 5000, 5000]);
        b.opened();
        assert_eq!(b.next_delay(), LOAD_MAX, "an open connection does not reset it");
        b.recycled();
        assert_eq!(b.next_delay(), LOAD_MIN);
    }

    #[test]
    fn the_browser_policy_jitters_around_a_doubling_base_and_restarts_on_open() {
        let mut firsts = Vec::new();
        for slot in 0..200 {
            let mut b = Backoff::new(Policy::Browser { base_ms: 1000 }, slot);
            let first = b.next_delay();
            let second = b.next_delay();
            assert!(first >= Duration::from_millis(500) && first < Duration::from_millis(1500), "{first:?}");
            assert!(second >= Duration::from_millis(1000) && second < Duration::from_millis(3000), "{second:?}");
            b.opened();
            let again = b.next_delay();
            assert!(again < Duration::from_millis(1500), "an open connection starts over: {again:?}");
            firsts.push(first.as_millis());
        }
        let mean = firsts.iter().sum::<u128>() as f64 / firsts.len() as f64;
        assert!((900.0..1100.0).contains(&mean), "jitter centred on the base: {mean}");
        assert!(firsts.iter().min() < Some(&700) && firsts.iter().max() > Some(&1300), "spread over ±50 %");
        let mut b = Backoff::new(Policy::Browser { base_ms: 1000 }, 7);
        let late: Vec<Duration> = (0..12).map(|_| b.next_delay()).collect();
        assert!(late[8..].iter().all(|w| *w >= BROWSER_CAP / 2 && *w < BROWSER_CAP * 3 / 2), "capped: {late:?}");
    }
}
