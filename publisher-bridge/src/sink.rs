//! JetStream as the bridge's destination: publishing with retries ([`jetstream`]), the publishes
//! awaiting their acknowledgement ([`inflight`]), reading an acknowledgement ([`ack`]) and the
//! stream layout the bridge creates or updates at start ([`streams`]).

pub mod ack;
pub mod inflight;
pub mod jetstream;
pub mod streams;
