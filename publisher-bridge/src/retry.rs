//! Capped, jittered exponential backoff (reconnect loops and publish retries; warnings are kept
//! to a few lines per interval by `wire::throttle`). It owns no task and no I/O.

use std::time::{Duration, Instant};

/// Exponential backoff with ±50 % jitter, capped; [`Backoff::healthy`] resets it once the
/// connection has stayed up for `healthy_after`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    healthy_after: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration, healthy_after: Duration) -> Backoff {
        Backoff { base, cap, healthy_after, attempt: 0 }
    }

    /// Reconnect loops: 100 ms doubling to 5 s, reset after 30 s up.
    pub fn reconnect() -> Backoff {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(5), Duration::from_secs(30))
    }

    /// Publish retries: 50 ms doubling to 2 s (a stream leader election takes about 2 s).
    pub fn publish() -> Backoff {
        Backoff::new(Duration::from_millis(50), Duration::from_secs(2), Duration::MAX)
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.attempt.min(16)).min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        exp.mul_f64(0.5 + fastrand::f64())
    }

    /// Call when a connection that was established at `since` failed: resets the backoff if it
    /// had been healthy long enough, so a flapping dependency does not retry in a tight loop.
    pub fn healthy(&mut self, since: Instant) {
        if since.elapsed() >= self.healthy_after {
            self.attempt = 0;
        }
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5), Duration::from_secs(30));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(150), "{first:?}");
        for _ in 0..100 {
            assert!(b.next_delay() <= Duration::from_millis(7_500));
        }
        b.healthy(Instant::now());
        assert_eq!(b.attempts(), 101, "not healthy long enough");
        b.healthy(Instant::now() - Duration::from_secs(31));
        assert_eq!(b.attempts(), 0);
    }
}
