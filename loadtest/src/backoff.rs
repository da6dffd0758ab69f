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

/// One slot's reconnect delays: [`wire::backoff::Backoff`] with the policy's numbers.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: Policy,
    delays: wire::backoff::Backoff,
}

impl Backoff {
    /// `seed` makes the browser policy's jitter reproducible per slot.
    pub fn new(policy: Policy, seed: u64) -> Backoff {
        let delays = match policy {
            Policy::Load => wire::backoff::Backoff::new(LOAD_MIN, LOAD_MAX).with_jitter(0.0),
            Policy::Browser { base_ms } => {
                wire::backoff::Backoff::new(Duration::from_millis(base_ms), BROWSER_CAP).with_jitter(0.5).seeded(seed)
            }
        };
        Backoff { policy, delays }
    }

    /// The next wait, and one step further for the one after.
    pub fn next_delay(&mut self) -> Duration {
        self.delays.next_delay()
    }

    /// A connection opened.
    pub fn opened(&mut self) {
        if matches!(self.policy, Policy::Browser { .. }) {
            self.delays.reset();
        }
    }

    /// The client closed its connection itself: the next wait is the first again.
    pub fn recycled(&mut self) {
        self.delays.reset();
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
