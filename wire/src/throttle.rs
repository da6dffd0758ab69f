//! One log line per interval for warnings that bad input or a failing dependency could repeat
//! thousands of times a second, counting what it held back. Monotonic time; usable in statics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Lets one line through per interval and counts the ones it held back.
pub struct Throttle {
    interval_ms: u64,
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

/// Milliseconds on a monotonic clock that starts far enough from 0 that the first line of any
/// throttle passes.
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    const FAR: u64 = 1 << 40;
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + FAR
}

impl Throttle {
    pub const fn every(interval: Duration) -> Throttle {
        Throttle { interval_ms: interval.as_millis() as u64, last_ms: AtomicU64::new(0), suppressed: AtomicU64::new(0) }
    }

    /// `Some(n)` when a line may be logged now, `n` being the lines held back since the last one.
    pub fn allow_with_count(&self) -> Option<u64> {
        let now = now_ms();
        let last = self.last_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= self.interval_ms
            && self.last_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }

    pub fn allow(&self) -> bool {
        self.allow_with_count().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::Throttle;
    use std::time::Duration;

    #[test]
    fn lets_one_line_through_per_interval_and_counts_the_rest() {
        let t = Throttle::every(Duration::from_secs(3600));
        assert_eq!(t.allow_with_count(), Some(0));
        assert!(!t.allow());
        assert_eq!(t.allow_with_count(), None);
        let t = Throttle::every(Duration::from_millis(1));
        assert_eq!(t.allow_with_count(), Some(0));
        assert_eq!(t.allow_with_count(), None);
        std::thread::sleep(Duration::from_millis(3));
        assert_eq!(t.allow_with_count(), Some(1), "one line was held back");
    }
}
