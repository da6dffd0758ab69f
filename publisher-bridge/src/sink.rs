//! JetStream as the bridge's destination: publishing with retries ([`jetstream`]), the publishes
//! awaiting their acknowledgement and the task that reads the acknowledgements ([`deliveries`],
//! over the token-keyed table of [`inflight`]), reading one acknowledgement ([`ack`]) and the
//! stream layout the bridge creates or updates at start ([`streams`]).

pub(crate) mod ack;
pub(crate) mod deliveries;
pub(crate) mod inflight;
pub(crate) mod jetstream;
pub mod streams;
