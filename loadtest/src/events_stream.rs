//! The bridge's JetStream stream (`EVENTS`) as the scenarios see it from outside: found through
//! a NATS connection, its last sequence, and waiting until a number of new messages are stored.
//! It reads nothing of the messages themselves.

use anyhow::Context;
use async_nats::jetstream::stream::Stream;
use std::time::{Duration, Instant};
use wire::clock::now_micros;

pub async fn open(nats: &async_nats::Client, name: &str) -> anyhow::Result<Stream> {
    async_nats::jetstream::new(nats.clone()).get_stream(name).await.with_context(|| {
        format!("JetStream stream {name} not found: the publisher-bridge creates it at start; is the bridge running?")
    })
}

pub async fn last_sequence(stream: &mut Stream) -> anyhow::Result<u64> {
    Ok(stream.info().await.context("read the stream's state")?.state.last_sequence)
}

/// Follows the last sequence until `want` messages were stored after sequence `since`, or it
/// did not move for `idle`: how many were stored, and when the last of them was seen (`from_us`
/// when none was). It looks at once, then every 20 ms, so messages stored before the call (a
/// publisher that waited for its acknowledgements) are timed when it is called, not 20 ms later.
pub async fn wait_stored(
    stream: &mut Stream,
    since: u64,
    want: u64,
    idle: Duration,
    from_us: u64,
) -> anyhow::Result<(u64, u64)> {
    let (mut stored, mut stored_at_us) = (0, from_us);
    let mut last_move = Instant::now();
    loop {
        let now = last_sequence(stream).await?.saturating_sub(since);
        if now != stored {
            (stored, stored_at_us, last_move) = (now, now_micros(), Instant::now());
        }
        if stored >= want || last_move.elapsed() >= idle {
            return Ok((stored, stored_at_us));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
