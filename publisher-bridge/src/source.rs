//! The two Redis sources: [`pubsub`] (the contract's channels, at-most-once up to the bridge) and
//! [`stream`] (`events:critical` through a consumer group, at-least-once into JetStream), plus the
//! decoding of stream replies ([`entries`]) and the pub/sub reader's own protocol code ([`resp`]). They only read Redis and hand events to
//! [`crate::pipeline`].

pub mod entries;
pub mod pubsub;
pub mod resp;
pub mod stream;
