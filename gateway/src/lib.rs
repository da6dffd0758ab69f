//! The WebSocket gateway: a drop-in replacement for the restaurant SaaS's Python gateway that
//! takes its events from NATS JetStream instead of Redis. [`run`] serves one replica until the
//! shutdown token is cancelled, then drains.

pub mod app;
pub mod auth;
pub mod catchup;
pub mod config;
pub mod connection;
pub mod dedup;
pub mod dispatch;
pub mod history;
pub mod http;
pub mod metrics;
pub mod registry;
pub mod routing;
pub mod sectors;
pub mod shutdown;
pub mod subscriptions;
pub mod telemetry;

pub use app::StartError;
pub use config::Config;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves on `listener` until `shutdown` is cancelled, then drains (see [`shutdown::drain`]).
pub async fn run(config: Config, listener: TcpListener, shutdown: CancellationToken) -> Result<(), StartError> {
    let app = app::App::start(config).await?;
    let stop_http = CancellationToken::new();
    let server = axum::serve(listener, http::router(app.clone()))
        .with_graceful_shutdown(stop_http.clone().cancelled_owned());
    let server = tokio::spawn(async move { server.await });
    tracing::info!(instance = %app.config.instance_id, "gateway ready");
    shutdown.cancelled().await;
    shutdown::drain(&app).await;
    stop_http.cancel();
    match tokio::time::timeout(std::time::Duration::from_secs(2), server).await {
        Ok(Ok(result)) => result?,
        _ => tracing::warn!("HTTP server did not stop in time"),
    }
    Ok(())
}
