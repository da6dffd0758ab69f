//! publisher-bridge: reads the backend's Redis pub/sub channels and its `events:critical` stream
//! and stores every event exactly once in the JetStream `EVENTS` stream under
//! `events.<tenant>.<branch>.<role>`, or in `EVENTS_DLQ` under `dlq.<reason>` when it is refused.
//!
//! [`run`] is the one entry point (the binary and the tests call it). Modules: [`config`]
//! (environment), [`source`] (Redis readers), [`mapping`] (event → subject / reason),
//! [`pipeline`] (mapping, copy window, in-flight bound, headers), [`sink`] (JetStream publishing,
//! the acknowledgements and retries of what is in flight, stream layout), [`advisory`] (durable
//! consumers' dead letters), [`http`], [`metrics`], [`health`], [`header`] (safe header values),
//! [`shutdown`], [`telemetry`] and [`traces`] (logs and OTLP spans).

pub mod advisory;
pub mod config;
pub mod header;
pub mod health;
pub mod http;
pub mod mapping;
pub mod metrics;
pub mod pipeline;
pub mod shutdown;
pub mod sink;
pub mod source;
pub mod telemetry;
pub mod traces;

mod run;

pub use config::Config;
pub use run::{run, BridgeError};
