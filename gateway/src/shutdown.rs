//! Graceful shutdown, modelled on NATS lame-duck mode: readiness off and new connections refused
//! with 1012 first, then existing sessions closed with 1012 spread evenly over the drain window,
//! then a bounded wait for them to finish, then NATS drained. Also the OS signals that start it.

use crate::app::App;
use crate::close::CloseReason;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A token cancelled by the first SIGTERM or SIGINT.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: draining"),
        }
        cancel.cancel();
    });
    token
}

/// Drains the instance; returns once every session ended or the shutdown timeout passed.
pub(crate) async fn drain(app: &App) {
    let started = Instant::now();
    let deadline = started + app.config.shutdown_timeout;
    app.draining.cancel();
    app.metrics.draining.set(1);
    let conns = app.registry.snapshot();
    let window = app.config.drain_window;
    tracing::info!(connections = conns.len(), window_s = window.as_secs_f64(), "closing connections with 1012");
    let step = window.checked_div(conns.len() as u32).unwrap_or(Duration::ZERO);
    for (i, conn) in conns.iter().enumerate() {
        tokio::time::sleep_until(started + step * i as u32).await;
        conn.control.close(CloseReason::SERVICE_RESTART);
    }
    app.sessions.close();
    if tokio::time::timeout_at(deadline, app.sessions.wait()).await.is_err() {
        tracing::warn!(left = app.registry.len(), "shutdown timeout: abandoning sessions still open");
    }
    let remaining = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
    match tokio::time::timeout(remaining, app.nats.drain()).await {
        Ok(Ok(())) => tracing::info!("NATS drained"),
        Ok(Err(error)) => tracing::warn!(%error, "NATS drain failed"),
        Err(_) => tracing::warn!("NATS drain timed out"),
    }
}
