//! Capped, jittered exponential backoff (reconnect loops and publish retries) and a warning
//! limiter so that a failing dependency logs a few lines per interval instead of one per event.
//! It owns no task and no I/O.

use std::sync::atomic::{AtomicU64, Ordering};
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

/// Lets one warning through per `every`, counting the ones it held back.
pub struct LogLimiter {
    every_ms: u64,
    start: Instant,
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl LogLimiter {
    pub fn new(every: Duration) -> LogLimiter {
        LogLimiter {
            every_ms: every.as_millis() as u64,
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when the caller should log now, `n` being how many warnings were held back.
    pub fn allow(&self) -> Option<u64> {
        let now = self.start.elapsed().as_millis() as u64 + self.every_ms;
        let last = self.last_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= self.every_ms
            && self.last_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
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

    #[test]
    fn limiter_lets_one_through_per_interval() {
        let l = LogLimiter::new(Duration::from_secs(3600));
        assert_eq!(l.allow(), Some(0));
        assert_eq!(l.allow(), None);
        assert_eq!(l.allow(), None);
        let l = LogLimiter::new(Duration::from_millis(1));
        assert_eq!(l.allow(), Some(0));
        std::thread::sleep(Duration::from_millis(3));
        assert!(l.allow().is_some());
    }
}
