//! Logging and trace export set-up, shared with the gateway (`wire::otel`): logs on stderr as
//! text or one JSON object per line (`LOG_FORMAT`), level from `RUST_LOG` (default `info`); OTLP
//! trace export when `OTEL_EXPORTER_OTLP_*ENDPOINT` is set. Which spans exist: [`crate::traces`].

use crate::config::Config;
use wire::otel::{OtelError, Output, Service, Telemetry};
use wire::settings::LogFormat;

/// The service name in traces unless `OTEL_SERVICE_NAME` says otherwise.
pub const SERVICE_NAME: &str = "publisher-bridge";

/// Logs only; a second call (tests) is a no-op.
pub fn init(format: LogFormat) {
    wire::otel::init_logging(format, Output::Stderr);
}

/// Logs, and trace export when an OTLP endpoint is configured. Call inside the Tokio runtime;
/// [`Telemetry::shutdown`] at exit flushes the last spans.
pub fn install(config: &Config) -> Result<Telemetry, OtelError> {
    let service =
        Service { name: SERVICE_NAME, version: env!("CARGO_PKG_VERSION"), instance_id: config.instance_id.clone() };
    wire::otel::init(config.log_format, Output::Stderr, &config.otel, service)
}
