//! The contract shared by the publisher-bridge, the gateway and the loadtest: what a valid
//! backend event is ([`envelope`]), which type sets drive routing ([`event_types`]), the NATS
//! subject grammar and stream layout ([`subject`]), the header names carried on NATS messages
//! ([`headers`]), and how backend tokens are minted ([`tokens`], for tests, demos and load).
//!
//! It owns no I/O. The `testkit` feature adds real-process fixtures for integration tests.

pub mod envelope;
pub mod event_types;
pub mod headers;
pub mod subject;
pub mod tokens;

#[cfg(feature = "testkit")]
pub mod testkit;
