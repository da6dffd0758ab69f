//! The global `tracing` subscriber of a service: log lines (text or JSON, filtered by
//! `RUST_LOG`, default `info`, URL passwords masked) and, when an OTLP endpoint is configured, an exporter layer that
//! sees only spans of target [`super::TARGET`]. [`Telemetry::shutdown`] flushes what is queued.

use super::export::{self, OtelError};
use super::{OtelSettings, TARGET};
use crate::settings::LogFormat;
use opentelemetry::trace::{Span as _, SpanBuilder, SpanKind, Tracer as _, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};
use tracing_subscriber::filter::{filter_fn, EnvFilter, FilterExt, LevelFilter};
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

/// How long a shutdown waits for the last spans to reach the collector.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

static ENABLED: AtomicBool = AtomicBool::new(false);
/// The exporting tracer, for spans recorded after the fact ([`finished_span`]).
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// Whether spans are exported: services create spans only then (`Span::none()` otherwise).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Stdout,
    Stderr,
}

/// Who is exporting: the resource's defaults.
#[derive(Debug, Clone)]
pub struct Service {
    /// `service.name` unless `OTEL_SERVICE_NAME` is set.
    pub name: &'static str,
    pub version: &'static str,
    pub instance_id: String,
}

/// Keeps the exporter; [`Telemetry::shutdown`] flushes it.
#[must_use = "call shutdown() at exit so the last spans are exported"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports what is queued (bounded by a timeout) and stops the exporter. Runs the blocking
    /// flush off the async workers, whose runtime carries the HTTP requests.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else { return };
        ENABLED.store(false, Ordering::Relaxed);
        let flushed = tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(FLUSH_TIMEOUT)).await;
        match flushed {
            Ok(Ok(())) => tracing::info!("trace export flushed"),
            Ok(Err(error)) => tracing::warn!(%error, "trace export did not flush"),
            Err(error) => tracing::warn!(%error, "trace export flush panicked"),
        }
    }
}

/// Installs the global subscriber: logs, plus trace export when `otel` has an endpoint. Export
/// needs a Tokio runtime (call from async code). A second call (tests) keeps the first
/// subscriber and exports nothing.
pub fn init(format: LogFormat, output: Output, otel: &OtelSettings, service: Service) -> Result<Telemetry, OtelError> {
    let Some(endpoint) = &otel.endpoint else {
        init_logging(format, output);
        return Ok(Telemetry { provider: None });
    };
    let provider = export::provider(otel, endpoint, &service)?;
    let traces = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(service.name))
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_context_activation(false)
        // Every exported span is at info: without the hint every level would look enabled.
        .with_filter(filter_fn(|meta| meta.target() == TARGET).with_max_level_hint(LevelFilter::INFO));
    if tracing_subscriber::registry().with(logs(format, output)).with(traces).try_init().is_err() {
        let _ = provider.shutdown();
        return Ok(Telemetry { provider: None });
    }
    let _ = TRACER.set(provider.tracer(service.name));
    ENABLED.store(true, Ordering::Relaxed);
    Ok(Telemetry { provider: Some(provider) })
}

/// Exports a root span that already ended: it started at `start` and ends now. For long-lived
/// things (a connection) whose span would otherwise be held in memory for their whole life; the
/// sampler decides when it is recorded. Does nothing without export.
pub fn finished_span(name: &'static str, kind: SpanKind, start: SystemTime, attributes: Vec<KeyValue>) {
    let Some(tracer) = TRACER.get().filter(|_| enabled()) else { return };
    let builder = SpanBuilder::from_name(name).with_kind(kind).with_start_time(start).with_attributes(attributes);
    tracer.build_with_context(builder, &opentelemetry::Context::new()).end();
}

/// Installs a logs-only subscriber; a second call is a no-op.
pub fn init_logging(format: LogFormat, output: Output) {
    let _ = tracing_subscriber::registry().with(logs(format, output)).try_init();
}

/// Writes each log line (the formatter writes a line in one call) with the passwords of any URL
/// in it masked ([`crate::settings::redact`]): libraries log their own connection URLs.
struct Redacting<W>(W);

impl<W: std::io::Write> std::io::Write for Redacting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match std::str::from_utf8(buf) {
            Ok(text) if crate::settings::may_hold_secret(text) => {
                self.0.write_all(crate::settings::redact(text).as_bytes())?;
                Ok(buf.len())
            }
            _ => self.0.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// The log layer: `RUST_LOG` (default `info`), never the exported spans; passwords masked.
/// Both its filters carry the EnvFilter's level hint: a filter without one makes every level
/// look enabled, and `try_init` sets the `log` crate's maximum level from the hints, so each
/// `log::trace!` a library makes per frame (tungstenite) would go through the filter instead
/// of being skipped by one comparison.
fn logs(format: LogFormat, output: Output) -> Box<dyn Layer<Registry> + Send + Sync> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let most_verbose = filter.max_level_hint().unwrap_or(LevelFilter::TRACE);
    let filter = filter.and(filter_fn(|meta| meta.target() != TARGET).with_max_level_hint(most_verbose));
    let (writer, terminal) = match output {
        Output::Stdout => {
            (BoxMakeWriter::new(|| Redacting(std::io::stdout())), std::io::IsTerminal::is_terminal(&std::io::stdout()))
        }
        Output::Stderr => {
            (BoxMakeWriter::new(|| Redacting(std::io::stderr())), std::io::IsTerminal::is_terminal(&std::io::stderr()))
        }
    };
    let layer = tracing_subscriber::fmt::layer().with_writer(writer);
    match format {
        LogFormat::Json => layer.json().flatten_event(true).with_filter(filter).boxed(),
        LogFormat::Text => layer.with_ansi(terminal).with_filter(filter).boxed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_records_more_verbose_than_the_filter_are_dropped_at_the_source() {
        init_logging(LogFormat::Text, Output::Stderr);
        match std::env::var("RUST_LOG") {
            Err(_) => assert_eq!(log::max_level(), log::LevelFilter::Info, "the default filter is info"),
            Ok(_) => {
                let hint = EnvFilter::from_default_env().max_level_hint().unwrap_or(LevelFilter::TRACE);
                assert_eq!(log::max_level() == log::LevelFilter::Trace, hint == LevelFilter::TRACE);
            }
        }
        assert!(
            !log::log_enabled!(target: "tungstenite::protocol", log::Level::Trace) || std::env::var("RUST_LOG").is_ok()
        );
    }
}
