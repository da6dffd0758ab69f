//! Logging set-up (text or JSON lines, filtered by `RUST_LOG`) and throttles that keep warnings
//! about bad input to a few lines per minute however much bad input arrives.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};
use wire::settings::LogFormat;

pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let colour = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_ansi(colour);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Lets one log line through per interval and counts what it held back.
pub struct Throttle {
    interval_ms: u64,
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl Throttle {
    pub const fn every_secs(secs: u64) -> Throttle {
        Throttle { interval_ms: secs * 1000, last_ms: AtomicU64::new(0), suppressed: AtomicU64::new(0) }
    }

    /// `Some(n)` when a line may be logged now, `n` being the lines held back since the last one.
    pub fn allow_with_count(&self) -> Option<u64> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
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

pub static BAD_EVENTS: Throttle = Throttle::every_secs(10);
pub static DB_ERRORS: Throttle = Throttle::every_secs(10);
pub static REDIS_ERRORS: Throttle = Throttle::every_secs(10);
pub static SLOW_CLIENTS: Throttle = Throttle::every_secs(10);

#[cfg(test)]
mod tests {
    use super::Throttle;

    #[test]
    fn lets_one_line_through_per_interval() {
        let t = Throttle::every_secs(3600);
        assert_eq!(t.allow_with_count(), Some(0));
        assert!(!t.allow());
        assert!(!t.allow());
    }
}
