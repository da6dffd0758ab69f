//! Pacing of the publisher: an open-loop schedule (event `k` is due at `k / rate` seconds), which
//! is a token bucket that never discards credit: when the publisher falls behind, late events go
//! out as soon as possible in batches of at most `max_batch`, so the offered rate stays the one
//! asked for and the lag is reported instead of hidden. Pure; the publisher owns the clock.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Pacer {
    /// Events per second; 0 means as fast as possible.
    rate: f64,
    max_batch: u64,
    released: u64,
    limit: u64,
}

impl Pacer {
    /// `limit` events in all.
    pub fn new(rate: f64, max_batch: u64, limit: u64) -> Pacer {
        Pacer { rate, max_batch: max_batch.max(1), released: 0, limit }
    }

    pub fn released(&self) -> u64 {
        self.released
    }

    pub fn done(&self) -> bool {
        self.released >= self.limit
    }

    /// How many events to send now, `elapsed` after the start (and marks them released).
    pub fn take(&mut self, elapsed: Duration) -> u64 {
        let allowed = if self.rate <= 0.0 {
            self.limit
        } else {
            ((elapsed.as_secs_f64() * self.rate + 1e-6).floor() as u64 + 1).min(self.limit)
        };
        let n = allowed.saturating_sub(self.released).min(self.max_batch);
        self.released += n;
        n
    }

    /// When the next event is due, measured from the start.
    pub fn next_due(&self) -> Duration {
        if self.rate <= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(self.released as f64 / self.rate)
    }

    /// How far behind schedule the next event is at `elapsed` (zero when on time).
    pub fn lag(&self, elapsed: Duration) -> Duration {
        if self.done() || self.rate <= 0.0 {
            return Duration::ZERO;
        }
        elapsed.saturating_sub(self.next_due())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn releases_at_the_asked_rate() {
        let mut p = Pacer::new(1000.0, 1000, u64::MAX);
        assert_eq!(p.take(Duration::ZERO), 1, "the first event goes at once");
        assert_eq!(p.take(Duration::ZERO), 0);
        assert_eq!(p.next_due(), MS);
        assert_eq!(p.take(MS * 10), 10);
        let mut total = p.released();
        let mut t = MS * 10;
        while t < Duration::from_secs(2) {
            t += MS * 3;
            total += p.take(t);
        }
        assert_eq!(total, t.as_millis() as u64 + 1, "one event per ms, plus the first at once");
    }

    #[test]
    fn catches_up_in_bounded_batches_and_reports_the_lag() {
        let mut p = Pacer::new(10_000.0, 100, u64::MAX);
        let late = Duration::from_millis(50);
        assert_eq!(p.lag(late), late);
        assert_eq!(p.take(late), 100);
        assert_eq!(p.take(late), 100);
        let mut sent = 200;
        while p.take(late) > 0 {
            sent += 100;
        }
        assert!((500..=600).contains(&sent), "{sent}");
        assert!(p.lag(late) <= Duration::from_micros(100));
    }

    #[test]
    fn stops_at_the_limit_and_unlimited_rate_sends_batches() {
        let mut p = Pacer::new(0.0, 64, 150);
        assert_eq!(
            [p.take(Duration::ZERO), p.take(Duration::ZERO), p.take(Duration::ZERO), p.take(Duration::ZERO)],
            [64, 64, 22, 0]
        );
        assert!(p.done());
        assert_eq!(Pacer::new(0.0, 64, 150).lag(Duration::from_secs(3)), Duration::ZERO, "no schedule, no lag");
        let mut p = Pacer::new(100.0, 10, 5);
        assert_eq!(p.take(Duration::from_secs(10)), 5);
        assert!(p.done());
        assert_eq!(p.lag(Duration::from_secs(10)), Duration::ZERO);
    }
}
