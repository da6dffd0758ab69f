//! Turning SIGTERM and SIGINT into the bridge's stop token. What stopping means (readiness off,
//! stop reading, finish in-flight publishes and their XACKs, drain NATS) lives in [`crate::run`].

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// Cancels `stop` on the first SIGTERM or SIGINT.
pub fn cancel_on_signal(stop: CancellationToken) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutting down");
        stop.cancel();
    });
    Ok(())
}
