//! publisher-bridge: reads the backend's Redis pub/sub channels and its `events:critical` stream
//! and stores every event exactly once in the JetStream `EVENTS` stream under
//! `events.<tenant>.<branch>.<role>`, or in `EVENTS_DLQ` under `dlq.<reason>` when it is refused.
//!
//! [`run`] is the one entry point (the binary and the tests call it). Modules, in the order data
//! flows (each imports only from those after it): [`source`] (Redis readers), [`pipeline`]
//! (mapping, copy window, in-flight bound, headers), [`sink`] (JetStream publishing, the
//! acknowledgements and retries of what is in flight, stream layout); beside them [`config`]
//! (environment), [`budget`] (the readers' memory bounds), [`mapping`] (event → subject /
//! reason), [`advisory`] (durable consumers' dead letters), [`http`], [`metrics`], [`health`],
//! [`header`] (safe header values), [`shutdown`], [`telemetry`] and [`traces`] (logs and OTLP
//! spans).

// The layout above names crate-private modules on purpose (`cargo doc --document-private-items`).
#![allow(rustdoc::private_intra_doc_links)]

pub(crate) mod advisory;
pub(crate) mod budget;
pub mod config;
pub(crate) mod header;
pub(crate) mod health;
pub(crate) mod http;
pub mod mapping;
pub(crate) mod metrics;
pub(crate) mod pipeline;
pub mod shutdown;
pub mod sink;
pub mod source;
pub mod telemetry;
pub(crate) mod traces;

mod run;

pub use config::Config;
pub use run::{run, BridgeError};
