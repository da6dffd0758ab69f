//! The HTTP surface: the four WebSocket endpoints, the catch-up endpoints, `/ws/health`,
//! `/ws/health/detailed`, `/ws/metrics` (also `/metrics`), and the Kubernetes probes `/livez`
//! and `/readyz`.
//! [`router`] is what tests and `run` serve; every route answers CORS as [`crate::cors`] says.

use crate::app::App;
use crate::auth::Endpoint;
use crate::connection::handshake;
use crate::connection::upgrade::{NotAHandshake, Upgrade};
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub(crate) mod dependencies;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Serve it with `into_make_service_with_connect_info::<SocketAddr>()` so that connections
/// know their peer (the admin API and the audit log show it).
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/ws/waiter", get(|s, p, h, q, ws| socket(s, p, h, q, ws, Endpoint::Waiter)))
        .route("/ws/kitchen", get(|s, p, h, q, ws| socket(s, p, h, q, ws, Endpoint::Kitchen)))
        .route("/ws/admin", get(|s, p, h, q, ws| socket(s, p, h, q, ws, Endpoint::Admin)))
        .route("/ws/diner", get(|s, p, h, q, ws| socket(s, p, h, q, ws, Endpoint::Diner)))
        .route("/ws/catchup", get(crate::catchup::staff))
        .route("/ws/catchup/session", get(crate::catchup::session))
        .route("/ws/health", get(health))
        .route("/ws/health/detailed", get(health_detailed))
        .route("/ws/metrics", get(metrics))
        .route("/metrics", get(metrics))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .layer(axum::middleware::from_fn_with_state(
            crate::cors::Origins::new(&app.config.auth.cors_origins),
            crate::cors::middleware,
        ))
        .with_state(app)
}

async fn socket(
    State(app): State<Arc<App>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    ws: Result<Upgrade, NotAHandshake>,
    endpoint: Endpoint,
) -> Response {
    let peer = peer.map(|Extension(ConnectInfo(addr))| addr);
    handshake::upgrade(app, endpoint, ws, headers, query, peer).await
}

async fn health(State(app): State<Arc<App>>) -> Json<Value> {
    let stats = app.registry.stats();
    let max = app.registry.capacity().total;
    let by_endpoint: serde_json::Map<String, Value> =
        Endpoint::ALL.iter().map(|e| (e.as_str().to_string(), json!(stats.per_endpoint[*e as usize]))).collect();
    Json(json!({
        "status": if app.is_draining() { "draining" } else { "healthy" },
        "instance": app.config.instance_id,
        "total_connections": stats.total,
        "max_connections": max,
        "utilization_percent": (stats.total as f64 * 10_000.0 / max as f64).round() / 100.0,
        "users_connected": stats.users,
        "branches_with_connections": stats.branches,
        "sectors_with_connections": stats.sectors,
        "sessions_with_connections": stats.sessions,
        "admin_connections": stats.admin_connections,
        "connections_by_endpoint": by_endpoint,
        "subscribed_tenants": app.subscriptions.tenants().len(),
    }))
}

fn up(result: Result<Value, String>) -> (bool, Value) {
    match result {
        Ok(mut detail) => {
            detail["status"] = json!("up");
            (true, detail)
        }
        Err(error) => (false, json!({"status": "down", "error": error})),
    }
}

async fn check_dependencies(app: &App) -> (bool, Value) {
    let nats = up(if app.nats_connected() { Ok(json!({})) } else { Err("not connected".into()) });
    let jetstream = up(jetstream_state(app).await);
    let redis = up(app.revocation.ping().await.map(|_| json!({})).map_err(|e| e.to_string()));
    let database = match app.sectors.check().await {
        None => (true, json!({"status": "not_configured"})),
        Some(result) => up(result.map(|_| json!({}))),
    };
    let healthy = nats.0 && jetstream.0 && redis.0 && database.0;
    (healthy, json!({ "nats": nats.1, "jetstream": jetstream.1, "redis": redis.1, "database": database.1 }))
}

async fn health_detailed(State(app): State<Arc<App>>) -> Response {
    let (up, dependencies) = app.dependencies.get(check_dependencies(&app)).await;
    let healthy = up && !app.is_draining();
    let status = if healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = json!({
        "status": if app.is_draining() { "draining" } else if healthy { "healthy" } else { "degraded" },
        "instance": app.config.instance_id,
        "dependencies": dependencies,
        // Informative: without push, the timer re-check still finds revocations.
        "revocation_push": app.push.health(),
    });
    (status, Json(body)).into_response()
}

async fn jetstream_state(app: &App) -> Result<Value, String> {
    let js = async_nats::jetstream::new(app.nats.clone());
    let stream = tokio::time::timeout(CHECK_TIMEOUT, js.get_stream(wire::subject::EVENTS_STREAM))
        .await
        .map_err(|_| "no answer".to_string())?
        .map_err(|e| format!("stream {}: {e}", wire::subject::EVENTS_STREAM))?;
    let info = stream.cached_info();
    Ok(json!({"stream": info.config.name, "messages": info.state.messages, "last_sequence": info.state.last_sequence}))
}

/// Prometheus text, or OpenMetrics when the scraper asks for it (`wire::exposition`).
async fn metrics(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    app.metrics.set_connections(app.registry.per_endpoint());
    // Several `Accept` lines are one comma-separated list (RFC 9110 section 5.3).
    let accept: Vec<&str> = headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).collect();
    let (content_type, body) = wire::exposition::negotiate(Some(&accept.join(",")), app.metrics.encode());
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    let (ready, why) = if app.is_draining() {
        (false, "draining")
    } else if !app.nats_connected() {
        (false, "NATS not connected")
    } else {
        (true, "ready")
    };
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, why).into_response()
}
