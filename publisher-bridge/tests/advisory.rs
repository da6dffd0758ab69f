//! The JetStream-native dead-letter path: a durable consumer on EVENTS with `MaxDeliver = 2`
//! that naks one message and terminates another; two bridge replicas both see the advisories and
//! EVENTS_DLQ holds exactly one copy of each, with the reason, the consumer and the sequence.

#[path = "support/bridge.rs"]
mod support;

use std::time::Duration;

use anyhow::Result;
use async_nats::jetstream::consumer::{pull, AckPolicy};
use async_nats::jetstream::AckKind;
use futures_util::StreamExt;
use redis::AsyncCommands;
use support::*;
use testkit::{NatsServer, NatsUser, Redis};

#[tokio::test]
async fn max_deliveries_and_terminated_messages_are_copied_to_the_dlq_once() -> Result<()> {
    let redis_server = Redis::start().await;
    let nats = NatsServer::start().await;
    let a = InProcess::start(env(&redis_server.url(), &nats.env(NatsUser::Bridge), "adv-a", &[])).await?;
    let b = InProcess::start(env(&redis_server.url(), &nats.env(NatsUser::Bridge), "adv-b", &[])).await?;
    let js = jetstream(nats.connect(NatsUser::Operator).await).await?;
    let mut conn = redis(&redis_server.url()).await?;
    let naked = event(1, "ROUND_READY", 2, Some(3));
    let terminated = event(2, "ROUND_READY", 2, Some(3));
    for body in [&naked, &terminated] {
        let _: i64 = within(5, "PUBLISH", conn.publish("branch:3:kitchen", body.as_str())).await??;
    }
    wait_count(&js, "EVENTS", 2, 10).await?;

    let stream = js.get_stream("EVENTS").await?;
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("processor".into()),
            ack_policy: AckPolicy::Explicit,
            max_deliver: 2,
            ack_wait: Duration::from_secs(1),
            ..Default::default()
        })
        .await?;
    // A processor that always fails the first event and rejects the second for good.
    let mut deliveries = 0;
    let dlq_full =
        eventually(20, "both advisories copied", || async { (count(&js, "EVENTS_DLQ").await >= 2).then_some(()) });
    tokio::pin!(dlq_full);
    loop {
        tokio::select! {
            r = &mut dlq_full => { r?; break; }
            batch = consumer.fetch().max_messages(10).expires(Duration::from_millis(300)).messages() => {
                let mut batch = batch?;
                while let Some(msg) = within(5, "fetch", batch.next()).await? {
                    let msg = msg.map_err(|e| anyhow::anyhow!("{e}"))?;
                    deliveries += 1;
                    let kind = if msg.payload.as_ref() == naked.as_bytes() { AckKind::Nak(None) } else { AckKind::Term };
                    msg.ack_with(kind).await.map_err(|e| anyhow::anyhow!("{e}"))?;
                }
            }
        }
    }
    assert!(deliveries >= 3, "nak'd twice, terminated once: {deliveries}");
    let dlq = read_all(&js, "EVENTS_DLQ").await?;
    assert_eq!(dlq.len(), 2, "two replicas, one copy each: {dlq:?}");
    let max = dlq.iter().find(|m| m.header("Dlq-Reason") == "max_deliveries").expect("max_deliveries copy");
    assert_eq!(max.subject, "dlq.max_deliveries");
    assert_eq!(max.payload, naked.as_bytes());
    assert_eq!(max.header("Dlq-Consumer"), "processor");
    assert_eq!(max.header("Dlq-Stream-Seq"), "1");
    assert_eq!(max.header("Dlq-Subject"), "events.2.3.kitchen");
    assert_eq!(max.header("Nats-Msg-Id"), "advisory:processor:1");
    assert_eq!(max.header("Bridge-Source"), "pubsub:branch:3:kitchen");
    let term = dlq.iter().find(|m| m.header("Dlq-Reason") == "terminated").expect("terminated copy");
    assert_eq!(term.payload, terminated.as_bytes());
    assert_eq!(term.header("Dlq-Stream-Seq"), "2");
    assert_eq!(term.header("Nats-Msg-Id"), "advisory:processor:2");
    eventually(10, "the copy is counted once", || async {
        let counted = a.metric("bridge_dead_lettered_total{reason=\"max_deliveries\"}").await
            + b.metric("bridge_dead_lettered_total{reason=\"max_deliveries\"}").await;
        (counted == 1.0).then_some(())
    })
    .await?;
    a.shutdown().await?;
    b.shutdown().await
}
