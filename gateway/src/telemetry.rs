//! Logging and trace export set-up (shared with the bridge: `wire::otel`; logs on stdout, text
//! or JSON lines filtered by `RUST_LOG`) and throttles that keep warnings about bad input to a
//! few lines per minute however much bad input arrives. Which spans exist: [`crate::traces`].

use crate::config::Config;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};
use wire::otel::{OtelError, Output, Service, Telemetry};
use wire::settings::LogFormat;

/// The service name in traces unless `OTEL_SERVICE_NAME` says otherwise.
pub const SERVICE_NAME: &str = "realtime-gateway";

/// Logs only (tests); a second call is a no-op.
pub fn init(format: LogFormat) {
    wire::otel::init_logging(format, Output::Stdout);
}

/// Logs, and trace export when `OTEL_EXPORTER_OTLP_*ENDPOINT` is set. Call from async code;
/// [`Telemetry::shutdown`] at exit flushes the last spans.
pub fn install(config: &Config) -> Result<Telemetry, OtelError> {
    let service =
        Service { name: SERVICE_NAME, version: env!("CARGO_PKG_VERSION"), instance_id: config.instance_id.clone() };
    wire::otel::init(config.log_format, Output::Stdout, &config.otel, service)
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
