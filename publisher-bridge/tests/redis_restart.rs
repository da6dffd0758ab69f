//! Redis restarted (without persistence) under a running bridge: pub/sub resubscribes by itself,
//! the stream reader re-creates its consumer group at the last entry it saw and picks up entries
//! written right after the restart, and nothing is stored twice.

#[path = "support/bridge.rs"]
mod support;

use anyhow::Result;
use redis::AsyncCommands;
use support::*;
use testkit::{NatsServer, NatsUser, Redis};

async fn publish_range(conn: &mut redis::aio::MultiplexedConnection, range: std::ops::Range<u64>) -> Result<()> {
    for n in range {
        let _: i64 =
            within(5, "PUBLISH", conn.publish("branch:1:waiters", event(n, "SERVICE_CALL_CREATED", 1, Some(1))))
                .await??;
    }
    Ok(())
}

fn stream_range(range: std::ops::Range<u64>) -> Vec<String> {
    range.map(|n| event(n, "ROUND_READY", 1, Some(1))).collect()
}

#[tokio::test]
async fn pubsub_resubscribes_and_stream_resumes_after_a_redis_restart() -> Result<()> {
    let mut redis_server = Redis::start().await;
    let nats = NatsServer::start().await;
    let bridge = InProcess::start(env(&redis_server.url(), &nats.env(NatsUser::Bridge), "restart-1", &[])).await?;
    let js = jetstream(nats.connect(NatsUser::Operator).await).await?;
    let mut conn = redis(&redis_server.url()).await?;
    publish_range(&mut conn, 0..10).await?;
    xadd_all(&mut conn, "events:critical", "data", &stream_range(10..20)).await?;
    wait_count(&js, "EVENTS", 20, 15).await?;

    within(30, "redis restart", redis_server.restart()).await?;
    // Written at once, before the bridge has even noticed: the group is re-created at the last
    // entry id the bridge saw, so these are read.
    let mut conn = redis(&redis_server.url()).await?;
    xadd_all(&mut conn, "events:critical", "data", &stream_range(20..30)).await?;
    eventually(20, "pub/sub resubscribed (PUBSUB NUMPAT = 6)", || {
        let mut conn = conn.clone();
        async move {
            let n: i64 = redis::cmd("PUBSUB").arg("NUMPAT").query_async(&mut conn).await.ok()?;
            (n == 6).then_some(())
        }
    })
    .await?;
    publish_range(&mut conn, 30..40).await?;
    xadd_all(&mut conn, "events:critical", "data", &stream_range(40..50)).await?;
    wait_count(&js, "EVENTS", 50, 20).await?;
    assert_exactly_once(&read_all(&js, "EVENTS").await?, 50);
    bridge.wait_ready(10).await?;
    eventually(10, "everything acknowledged in the new Redis", || {
        let mut conn = conn.clone();
        async move { (xpending(&mut conn, "events:critical", "publisher_bridge").await.ok()? == 0).then_some(()) }
    })
    .await?;
    bridge.shutdown().await
}
