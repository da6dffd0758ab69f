//! A three-node NATS JetStream cluster with an R3 EVENTS stream; the stream leader is killed with
//! SIGKILL mid-burst. Publishes that fail during the leader election are retried, not dropped:
//! every event is stored exactly once and the bridge keeps running.

#[path = "support/bridge.rs"]
mod support;

use std::time::Duration;

use anyhow::Result;
use support::*;
use testkit::{NatsCluster, NatsUser, Redis};

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
    let conn = redis(&redis_server.url()).await?;

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

/// A bridge that starts while JetStream cannot answer (two of three nodes down: no meta leader)
/// stays up and not ready, asking again, instead of exiting; once the nodes are back it creates
/// the streams, becomes ready and stores events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_before_jetstream_can_answer_and_waits_for_it() -> Result<()> {
    let redis_server = Redis::start().await;
    let mut cluster = NatsCluster::start(3).await;
    cluster.nodes[1].kill();
    cluster.nodes[2].kill();
    let only_node: Vec<(String, String)> = cluster
        .env(NatsUser::Bridge)
        .into_iter()
        .map(|(k, v)| if k == "NATS_URL" { (k, cluster.nodes[0].url()) } else { (k, v) })
        .collect();
    let env = env(&redis_server.url(), &only_node, "early", &[("BRIDGE_EVENTS_REPLICAS", "3")]);
    let config = publisher_bridge::config::Config::from_lookup(move |k| env.get(k).cloned())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(publisher_bridge::run(config, listener, stop.clone()));

    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(!task.is_finished(), "the bridge gave up: {:?}", task.await);
    let (status, _) = testkit::http_get(&format!("http://{addr}/readyz")).await?;
    assert_eq!(status, 503, "not ready without its streams");

    cluster.nodes[1].restart().await;
    cluster.nodes[2].restart().await;
    wait_ready(addr, 90).await?;
    let js = jetstream(cluster.connect(NatsUser::Operator).await).await?;
    let mut conn = redis(&redis_server.url()).await?;
    xadd_all(&mut conn, "events:critical", "data", &[event(1, "ROUND_READY", 1, Some(2))]).await?;
    assert_eq!(wait_count(&js, "EVENTS", 1, 30).await?, 1);
    stop.cancel();
    within(20, "bridge shutdown", task).await??.map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}
