//! Capped exponential backoff with jitter, the one every retry loop of the workspace uses: the
//! services' reconnect loops (NATS, Redis, JetStream), the bridge's publish retries and the
//! loadtest's client reconnects. Pure: the caller owns the sleeping.

use std::time::{Duration, Instant};

/// `base` doubling per attempt up to `cap`, each delay scaled by a random factor in
/// `1 ± jitter`; optionally back to `base` once a connection stayed up for `healthy_after`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    jitter: f64,
    healthy_after: Duration,
    attempt: u32,
    /// splitmix64 state: seeded from the clock unless [`Backoff::seeded`].
    noise: u64,
}

impl Backoff {
    /// `base` doubling to `cap`, ±50 % jitter, never reset by [`Backoff::healthy`].
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        let noise = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9);
        Backoff { base, cap, jitter: 0.5, healthy_after: Duration::MAX, attempt: 0, noise }
    }

    /// The services' reconnect loops: 100 ms doubling to 5 s, ±50 %, reset after 30 s up.
    pub fn reconnect() -> Backoff {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(5)).reset_after(Duration::from_secs(30))
    }

    /// Publish retries: 50 ms doubling to 2 s (a stream leader election takes about 2 s).
    pub fn publish() -> Backoff {
        Backoff::new(Duration::from_millis(50), Duration::from_secs(2))
    }

    /// Each delay within `1 ± fraction` of the doubled base (0: exactly the doubled base).
    pub fn with_jitter(mut self, fraction: f64) -> Backoff {
        self.jitter = fraction.clamp(0.0, 1.0);
        self
    }

    /// [`Backoff::healthy`] starts over once a connection stayed up this long.
    pub fn reset_after(mut self, healthy_after: Duration) -> Backoff {
        self.healthy_after = healthy_after;
        self
    }

    /// As if `attempts` delays had been handed out already.
    pub fn after(mut self, attempts: u32) -> Backoff {
        self.attempt = attempts;
        self
    }

    /// Reproducible jitter (the loadtest's clients).
    pub fn seeded(mut self, seed: u64) -> Backoff {
        self.noise = seed;
        self
    }

    /// The next delay; the one after is twice as long (up to the cap).
    pub fn next_delay(&mut self) -> Duration {
        let doubled = self.base.saturating_mul(1u32 << self.attempt.min(16)).min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        if self.jitter == 0.0 {
            return doubled;
        }
        self.noise = splitmix(self.noise);
        let unit = (self.noise >> 11) as f64 / (1u64 << 53) as f64;
        doubled.mul_f64(1.0 - self.jitter + 2.0 * self.jitter * unit)
    }

    /// A connection made at `since` ended: starts over if it had been up long enough, so a
    /// dependency that flaps after a long healthy period is retried soon, and one that fails
    /// at once is not retried in a tight loop.
    pub fn healthy(&mut self, since: Instant) {
        if since.elapsed() >= self.healthy_after {
            self.attempt = 0;
        }
    }

    /// Starts over: the next delay is the first again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Delays handed out since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

/// splitmix64: a well-mixed next state.
fn splitmix(state: u64) -> u64 {
    let mut z = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_without_jitter() {
        let mut b = Backoff::new(Duration::from_millis(250), Duration::from_secs(5)).with_jitter(0.0);
        let waits: Vec<u128> = (0..7).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(waits, [250, 500, 1000, 2000, 4000, 5000, 5000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(250));
    }

    #[test]
    fn jitter_stays_within_its_fraction_and_varies() {
        let mut b = Backoff::reconnect().seeded(7);
        let mut seen = std::collections::HashSet::new();
        for attempt in 0..40u32 {
            let doubled = Duration::from_millis(100).saturating_mul(1 << attempt.min(16)).min(Duration::from_secs(5));
            let d = b.next_delay();
            assert!(d >= doubled.mul_f64(0.5) && d <= doubled.mul_f64(1.5), "{attempt}: {d:?}");
            seen.insert(d);
        }
        assert!(seen.len() > 20, "jittered delays differ: {seen:?}");
        let again: Vec<Duration> = {
            let mut b = Backoff::reconnect().seeded(7);
            (0..5).map(|_| b.next_delay()).collect()
        };
        let mut b = Backoff::reconnect().seeded(7);
        assert_eq!(again, (0..5).map(|_| b.next_delay()).collect::<Vec<_>>(), "a seed repeats");
    }

    #[test]
    fn starts_over_only_after_a_healthy_period() {
        let mut b = Backoff::reconnect();
        for _ in 0..5 {
            b.next_delay();
        }
        b.healthy(Instant::now());
        assert_eq!(b.attempts(), 5, "not up long enough");
        b.healthy(Instant::now() - Duration::from_secs(31));
        assert_eq!(b.attempts(), 0);
        let mut never = Backoff::publish();
        never.next_delay();
        never.healthy(Instant::now() - Duration::from_secs(3600));
        assert_eq!(never.attempts(), 1, "publish retries never reset by themselves");
    }
}
