//! The two Redis sources: [`pubsub`] (the contract's channels, at-most-once up to the bridge) and
//! [`stream`] (`events:critical` through a consumer group, at-least-once into JetStream), plus the
//! decoding of stream replies ([`entries`]), the readers' own protocol code ([`resp`]) and
//! connection ([`conn`]); the memory bounds of what they read are [`crate::budget`]'s. They only read
//! Redis and hand events to [`crate::pipeline`].

pub(crate) mod conn;
pub(crate) mod entries;
pub(crate) mod pubsub;
pub mod resp;
pub(crate) mod stream;

pub(crate) use crate::budget::BULK_CAP;
