//! The admin API of one replica, on its own listener (`GATEWAY_ADMIN_LISTEN_ADDR`), never on the
//! public port: list connections, close a user's or a table session's connections with a
//! chosen code, start a drain. Every request needs `Authorization: Bearer <GATEWAY_ADMIN_TOKEN>`,
//! compared in constant time; without a token the API is not served at all. Each action is
//! written to the audit log. The handlers for connections live in [`connections`].

mod connections;

use crate::app::App;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wire::settings::Secret;

#[derive(Clone)]
pub struct AdminState {
    pub app: Arc<App>,
    /// SHA-256 of the token: requests are compared digest to digest, in constant time.
    token_digest: [u8; 32],
    /// The process's shutdown token: `POST /admin/drain` cancels it, as SIGTERM does.
    shutdown: CancellationToken,
}

/// The admin routes, behind the bearer-token check.
pub fn router(app: Arc<App>, token: &Secret, shutdown: CancellationToken) -> Router {
    let state = AdminState { app, token_digest: Sha256::digest(token.expose()).into(), shutdown };
    Router::new()
        .route("/admin/connections", get(connections::list))
        .route("/admin/connections/close", post(connections::close))
        .route("/admin/drain", post(drain))
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state)
}

/// Serves the admin API on `listener` until `stop`; logs that it is off when either the token
/// or the listener is missing.
pub fn spawn(
    app: &Arc<App>,
    listener: Option<TcpListener>,
    shutdown: CancellationToken,
    stop: CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    let (Some(token), Some(listener)) = (app.config.admin_token.as_ref(), listener) else {
        if app.config.admin_token.is_none() {
            tracing::info!("admin API disabled: GATEWAY_ADMIN_TOKEN is not set");
        } else {
            tracing::warn!("admin API disabled: no admin listener was given");
        }
        return None;
    };
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(%addr, "admin API listening");
    let router = router(app.clone(), token, shutdown);
    let server = wire::http_server::serve(listener, router, app.config.http, app.metrics.http.clone(), stop);
    Some(tokio::spawn(async move {
        if let Err(error) = server.await {
            tracing::error!(%error, "admin API stopped");
        }
    }))
}

async fn authorize(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .map(|token| -> [u8; 32] { Sha256::digest(token.trim().as_bytes()).into() });
    let allowed = presented.is_some_and(|digest| bool::from(digest.ct_eq(&state.token_digest)));
    if !allowed {
        if DENIED.allow() {
            tracing::warn!(target: crate::audit::TARGET, action = "admin_denied", path = request.uri().path(), "admin request without a valid token (repeats within 10 s not logged)");
        }
        let body =
            Json(json!({"error": "a valid bearer token is required (Authorization: Bearer <GATEWAY_ADMIN_TOKEN>)"}));
        return (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response();
    }
    next.run(request).await
}

/// Refused admin requests are logged at most once per 10 s: a scanner must not flood the log.
static DENIED: wire::throttle::Throttle = wire::throttle::Throttle::every(std::time::Duration::from_secs(10));

/// The credentials of an `Authorization: Bearer <token>` value; the scheme is case-insensitive
/// (RFC 9110 section 11.1).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token)
}

/// `POST /admin/drain`: the SIGTERM drain (readiness off, closes with 1012 spread over the
/// drain window, NATS drained), after which the process exits 0.
async fn drain(State(state): State<AdminState>) -> Response {
    let app = &state.app;
    let already = state.shutdown.is_cancelled() || app.is_draining();
    let connections = app.registry.len();
    tracing::info!(target: crate::audit::TARGET, action = "admin_drain", already, connections, "drain requested through the admin API");
    state.shutdown.cancel();
    let body = json!({
        "draining": true,
        "already_draining": already,
        "instance": app.config.instance_id,
        "connections": connections,
        "drain_window_s": app.config.drain_window.as_secs_f64(),
        "shutdown_timeout_s": app.config.shutdown_timeout.as_secs_f64(),
    });
    (StatusCode::ACCEPTED, Json(body)).into_response()
}

/// A 400 with a JSON error.
fn bad_request(message: impl Into<String>) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": message.into()}))).into_response()
}

#[cfg(test)]
mod tests {
    use super::bearer;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for value in ["Bearer abc", "bearer abc", "BEARER abc", " Bearer abc"] {
            assert_eq!(bearer(value), Some("abc"), "{value:?}");
        }
        for value in ["Basic abc", "Bearerabc", "abc", ""] {
            assert_eq!(bearer(value), None, "{value:?}");
        }
    }
}
