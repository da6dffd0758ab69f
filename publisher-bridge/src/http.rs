//! The bridge's HTTP surface: `/livez` (the process runs), `/readyz` (200 only when Redis pub/sub,
//! the Redis stream reader and NATS are connected, the streams were ensured, the pipeline is not
//! stalled ([`Health::stalled_for`]) and the bridge is not draining; otherwise 503 with a JSON
//! body naming what is down) and `/metrics` (Prometheus text).
//! It owns no state of its own.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::metrics::Metrics;

#[derive(Clone)]
pub struct AppState {
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
}

/// The router (tests may call it without a socket).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let (ready, body) = state.health.readiness();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.encode())
}

/// Serves until `stop` fires.
pub async fn serve(listener: TcpListener, state: AppState, stop: CancellationToken) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(stop.cancelled_owned()).await
}
