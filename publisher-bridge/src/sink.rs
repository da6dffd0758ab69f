//! JetStream as the bridge's destination: publishing with retries ([`jetstream`]) and the stream
//! layout the bridge creates or updates at start ([`streams`]).

pub mod jetstream;
pub mod streams;
