//! The contract shared by the publisher-bridge, the gateway and the loadtest: what a valid
//! backend event is ([`envelope`]), which type sets drive routing ([`event_types`]), the NATS
//! subject grammar and stream layout ([`subject`]), the header names carried on NATS messages
//! ([`headers`]) and the `Nats-Msg-Id` of an event ([`msg_id`]), and how backend tokens are minted ([`tokens`], for tests, demos and load).
//!
//! Typed settings from the environment ([`settings`]) and the de-duplication window ([`dedup`])
//! are shared too.
//!
//! It owns no I/O of its own. The `nats` feature adds the shared NATS connection settings
//! ([`natsconn`]); the `redis` feature the shared Redis settings ([`redisconn`]); both build on
//! the `tls` feature's CA and client certificate files ([`tls`]); the `otel` feature adds the
//! logging and OTLP trace set-up both services use ([`otel`]); the `server` feature the bounded
//! HTTP/1.1 listener loop ([`http_server`]). The test fixtures are a crate of their own,
//! `testkit`, a dev-dependency only.
//!
//! # Layout
//!
//! - The event contract: [`envelope`], [`event_types`], [`subject`], [`headers`], [`msg_id`],
//!   [`dedup`].
//! - Tokens, settings and time: [`tokens`], [`settings`] (typed environment, secrets masked),
//!   [`clock`], [`throttle`] (one log line per interval), [`backoff`] (every retry loop's delays).
//! - Reaching the dependencies: [`natsconn`] (`nats`), [`redisconn`] (`redis`), [`tls`] (`tls`:
//!   the CA, client certificate and key of each).
//! - Serving and telling: [`http_server`] (`server`), [`exposition`] (Prometheus text or
//!   OpenMetrics), [`otel`] (`otel`: OTLP over HTTP or gRPC, plain or TLS).

pub mod backoff;
pub mod clock;
pub mod dedup;
pub mod envelope;
pub mod event_types;
pub mod exposition;
pub mod headers;
#[cfg(feature = "server")]
pub mod http_server;
pub mod msg_id;
#[cfg(feature = "nats")]
pub mod natsconn;
#[cfg(feature = "otel")]
pub mod otel;
#[cfg(feature = "redis")]
pub mod redisconn;
pub mod settings;
pub mod subject;
pub mod throttle;
#[cfg(feature = "tls")]
pub mod tls;
pub mod tokens;
