//! A three-node NATS JetStream cluster with an R3 EVENTS stream; the stream leader is killed with
//! SIGKILL mid-burst. Publishes that fail during the leader election are retried, not dropped:
//! every event is stored exactly once and the bridge keeps running.

#[path = "support/bridge.rs"]
mod support;

use std::time::Duration;

use anyhow::Result;
use support::*;
use wire::testkit::{NatsCluster, NatsUser, Redis};

const STREAM_ENTRIES: u64 = 3_000;
const PUBSUB_EVENTS: u64 = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_leader_killed_mid_burst() -> Result<()> {
    let redis_server = Redis::start().await;
    let mut cluster = NatsCluster::start(3).await;
    let bridge = InProcess::start(env(
        &redis_server.url(),
        &cluster.env(NatsUser::Bridge),
        "cluster-1",
        &[("BRIDGE_EVENTS_REPLICAS", "3")],
    ))
    .await?;
    let js = jetstream(cluster.connect(NatsUser::Operator).await).await?;
    let info = js.get_stream("EVENTS").await?.info().await?.clone();
    assert_eq!(info.config.num_replicas, 3);
    let conn = support::redis(&redis_server.url()).await?;

    let writer = {
        let mut conn = conn.clone();
        tokio::spawn(async move {
            let rounds = 30;
            for round in 0..rounds {
                let per = STREAM_ENTRIES / rounds;
                let entries: Vec<String> =
                    (round * per..(round + 1) * per).map(|n| event(n, "ROUND_READY", 1, Some(2))).collect();
                xadd_all(&mut conn, "events:critical", "data", &entries).await?;
                let mut pipe = redis::pipe();
                let pper = PUBSUB_EVENTS / rounds;
                for n in 0..pper {
                    pipe.cmd("PUBLISH")
                        .arg("branch:2:kitchen")
                        .arg(event(STREAM_ENTRIES + round * pper + n, "ROUND_READY", 1, Some(2)))
                        .ignore();
                }
                within(5, "PUBLISH batch", pipe.query_async::<()>(&mut conn)).await??;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            anyhow::Ok(())
        })
    };
    eventually(20, "burst under way", || async { (count(&js, "EVENTS").await > 600).then_some(()) }).await?;
    let leader = eventually(10, "EVENTS has a leader", || cluster.leader_of_stream("EVENTS")).await?;
    cluster.nodes[leader].kill();
    within(60, "writer", writer).await???;

    let total = STREAM_ENTRIES + PUBSUB_EVENTS;
    wait_count(&js, "EVENTS", total, 60).await?;
    eventually(30, "group has nothing pending", || {
        let mut conn = conn.clone();
        async move { (xpending(&mut conn, "events:critical", "publisher_bridge").await.ok()? == 0).then_some(()) }
    })
    .await?;
    assert_exactly_once(&read_all(&js, "EVENTS").await?, total);
    bridge.wait_ready(30).await?;
    eprintln!("publish retries during the election: {}", bridge.metric("bridge_publish_retries_total").await);
    bridge.shutdown().await
}
