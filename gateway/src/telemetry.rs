//! Logging and trace export set-up (shared with the bridge: `wire::otel`; logs on stdout, text
//! or JSON lines filtered by `RUST_LOG`) and throttles that keep warnings about bad input to a
//! few lines per minute however much bad input arrives. Which spans exist: [`crate::traces`].

use crate::config::Config;
use std::time::Duration;
use wire::otel::{OtelError, Output, Service, Telemetry};
use wire::settings::LogFormat;
use wire::throttle::Throttle;

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

/// Each keeps one kind of warning to one line per 10 s, with the count of lines held back.
pub static BAD_EVENTS: Throttle = Throttle::every(Duration::from_secs(10));
pub static DB_ERRORS: Throttle = Throttle::every(Duration::from_secs(10));
pub static REDIS_ERRORS: Throttle = Throttle::every(Duration::from_secs(10));
pub static SLOW_CLIENTS: Throttle = Throttle::every(Duration::from_secs(10));
