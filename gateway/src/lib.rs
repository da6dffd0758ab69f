//! The WebSocket gateway: a drop-in replacement for the restaurant SaaS's Python gateway that
//! takes its events from NATS JetStream instead of Redis. [`run`] serves one replica until the
//! shutdown token is cancelled, then drains; [`serve`] is the same with the admin listener
//! chosen by the caller (tests).
//!
//! # Layout
//!
//! - Start and state: [`config`] (typed environment, validated at start), [`app`] (what every
//!   request and connection shares), [`listener`] (the socket), [`http`] (the routes), [`cors`],
//!   [`admin`] (the admin API on its own listener), [`shutdown`] (lame-duck drain).
//! - Who may connect: [`auth`] (tokens, origins, revocation), [`sectors`] (waiter sectors from
//!   PostgreSQL).
//! - A connection: [`connection`] (handshake, one task per socket, protocol frames, resume),
//!   [`close`] (the close codes and reasons, a leaf),
//!   [`registry`] (admission, per-tenant index, close control).
//! - Events in: [`subscriptions`] (one NATS subscription per held tenant), [`recovery`] (what a
//!   reconnect, a new subscription or a new stream leader missed), [`dispatch`] (checks, de-dup,
//!   fan-out), [`routing`] (the contract's rule, one predicate), [`history`] (reads of `EVENTS`
//!   for resume, recovery and [`catchup`]).
//! - Telling: [`metrics`], [`audit`], [`telemetry`] (logs, throttles), [`traces`] (OTLP spans).

// The layout above names crate-private modules on purpose (`cargo doc --document-private-items`).
#![allow(rustdoc::private_intra_doc_links)]

pub(crate) mod admin;
pub(crate) mod app;
pub(crate) mod audit;
pub mod auth;
pub(crate) mod catchup;
pub(crate) mod close;
pub mod config;
pub mod connection;
pub(crate) mod cors;
pub(crate) mod dispatch;
pub mod history;
pub(crate) mod http;
pub mod listener;
pub(crate) mod metrics;
pub(crate) mod outlet;
pub(crate) mod prefetch;
pub(crate) mod recovery;
pub(crate) mod registry;
pub(crate) mod routing;
pub(crate) mod sectors;
pub mod shutdown;
pub(crate) mod subscriptions;
pub mod telemetry;
pub(crate) mod traces;

pub use app::StartError;
pub use config::Config;
pub use recovery::LEADER_ADVISORY;

use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves on `listener` (and, with `GATEWAY_ADMIN_TOKEN` set, the admin API on
/// `GATEWAY_ADMIN_LISTEN_ADDR`) until `shutdown` is cancelled, then drains (see
/// [`shutdown::drain`]). `POST /admin/drain` cancels `shutdown` too.
pub async fn run(config: Config, listener: TcpListener, shutdown: CancellationToken) -> Result<(), StartError> {
    let admin = match config.admin_token {
        Some(_) => Some(
            TcpListener::bind(config.admin_listen_addr)
                .await
                .map_err(|e| StartError::AdminListen(config.admin_listen_addr, e))?,
        ),
        None => None,
    };
    serve(config, Listeners { public: listener, admin }, shutdown).await
}

/// The listeners of one replica.
pub struct Listeners {
    /// WebSockets, health, metrics, probes.
    pub public: TcpListener,
    /// The admin API; served only when `GATEWAY_ADMIN_TOKEN` is set.
    pub admin: Option<TcpListener>,
}

/// [`run`] on listeners bound by the caller.
pub async fn serve(config: Config, listeners: Listeners, shutdown: CancellationToken) -> Result<(), StartError> {
    let app = app::App::start(config).await?;
    let stop_http = CancellationToken::new();
    let server = wire::http_server::serve(
        listeners.public,
        http::router(app.clone()),
        app.config.http,
        app.metrics.http.clone(),
        stop_http.clone(),
    );
    let server = tokio::spawn(server);
    let admin = admin::spawn(&app, listeners.admin, shutdown.clone(), stop_http.clone());
    tracing::info!(instance = %app.config.instance_id, "gateway ready");
    shutdown.cancelled().await;
    shutdown::drain(&app).await;
    stop_http.cancel();
    if let Some(admin) = admin {
        let _ = tokio::time::timeout(Duration::from_secs(2), admin).await;
    }
    match tokio::time::timeout(Duration::from_secs(2), server).await {
        Ok(Ok(result)) => result?,
        _ => tracing::warn!("HTTP server did not stop in time"),
    }
    Ok(())
}
