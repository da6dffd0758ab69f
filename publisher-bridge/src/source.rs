//! The two Redis sources: [`pubsub`] (the contract's channels, at-most-once up to the bridge) and
//! [`stream`] (`events:critical` through a consumer group, at-least-once into JetStream), plus the
//! decoding of stream replies ([`entries`]). They only read Redis and hand events to
//! [`crate::pipeline`].

pub mod entries;
pub mod pubsub;
pub mod stream;
