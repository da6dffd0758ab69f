//! The two Redis sources: [`pubsub`] (the contract's channels, at-most-once up to the bridge) and
//! [`stream`] (`events:critical` through a consumer group, at-least-once into JetStream), plus the
//! decoding of stream replies ([`entries`]), the readers' own protocol code ([`resp`]) and
//! connection ([`conn`]), and the stream reads' byte budget ([`budget`]). They only read Redis and
//! hand events to [`crate::pipeline`].

pub(crate) mod budget;
pub(crate) mod conn;
pub(crate) mod entries;
pub(crate) mod pubsub;
pub mod resp;
pub(crate) mod stream;

/// The most bytes kept of any string Redis sends the readers (a payload, a channel name, a stream
/// field): one more than the contract's largest event, so that anything longer is known to be
/// `too_large` without keeping it. The rest of a longer string is discarded as it arrives.
pub const BULK_CAP: usize = wire::envelope::MAX_EVENT_BYTES + 1;
