//! Logging setup: `tracing` to stderr as text or one JSON object per line (`LOG_FORMAT`), level
//! from `RUST_LOG` (default `info`). OTLP trace export (issue 5) will be added here; the place a
//! trace context is attached to each stored message is [`crate::pipeline`].

use tracing_subscriber::EnvFilter;
use wire::settings::LogFormat;

/// Installs the global subscriber; a second call (tests) is a no-op.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
