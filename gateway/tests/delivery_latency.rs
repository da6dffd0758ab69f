//! The delivery latency histogram end to end: events published to Redis go through the real
//! bridge (in-process, `publisher_bridge::run`), which stamps `Bridge-Received-Us`; JetStream
//! re-publishes the header; the gateway observes `gateway_delivery_latency_seconds` once per
//! socket write. The bridge's own publish latency is observed too.

#[path = "support/harness.rs"]
mod harness;
use harness::*;
use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;

const EVENTS: u64 = 5;

/// The `_count` and `_sum` of a histogram in Prometheus text.
fn histogram(text: &str, name: &str) -> (f64, f64) {
    let value = |suffix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}_{suffix} ")))
            .map(|v| v.trim().parse::<f64>().unwrap())
            .unwrap_or_else(|| panic!("{name}_{suffix} missing in\n{text}"))
    };
    (value("count"), value("sum"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_is_observed_from_the_bridge_to_the_socket_write() {
    let stack = Stack::start().await;
    let env: std::collections::HashMap<String, String> =
        [("REDIS_URL", stack.redis.url()), ("BRIDGE_INSTANCE_ID", "bridge-latency".to_string())]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .chain(stack.bridge_nats_env())
            .collect();
    let config = publisher_bridge::Config::from_lookup(|k| env.get(k).cloned()).unwrap_or_else(|e| panic!("{e}"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bridge_http = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let bridge = tokio::spawn(publisher_bridge::run(config, listener, stop.clone()));
    wait_until("the bridge is ready", || async {
        matches!(testkit::http_get(&format!("{bridge_http}/readyz")).await, Ok((200, _)))
    })
    .await;

    let gw = stack.gateway().await;
    let mut waiter = gw.staff("waiter", &staff_token(2, 1, &[7], &["WAITER"])).await;
    let mut diner = gw.diner(&table_token(1, 7, 3, 42)).await;
    let (_, before) = gw.get("/metrics").await;
    assert_eq!(histogram(&before, "gateway_delivery_latency_seconds").0, 0.0);

    let mut redis = stack.redis().await;
    for seq in 0..EVENTS {
        let text = event("ROUND_PENDING", 1, 7, None, None, seq);
        let _: i64 = redis.publish("branch:7:waiters", &text).await.unwrap();
        assert_eq!(waiter.text().await, text);
    }
    let on_stream = event("CART_SYNC", 1, 7, None, Some(42), 99);
    let _: String = redis.xadd("events:critical", "*", &[("data", &on_stream)]).await.unwrap();
    assert_eq!(diner.text().await, on_stream);
    assert_eq!(waiter.text().await, on_stream, "a session event of the waiter's branch");

    // One observation per event written to a socket: EVENTS + 1 to the waiter, one to the diner.
    let expected = (EVENTS + 2) as f64;
    wait_until("every socket write is observed", || async {
        histogram(&gw.get("/metrics").await.1, "gateway_delivery_latency_seconds").0 == expected
    })
    .await;
    let (_, text) = gw.get("/metrics").await;
    let (count, sum) = histogram(&text, "gateway_delivery_latency_seconds");
    assert_eq!(count, expected);
    assert!(sum > 0.0 && sum / count < 5.0, "plausible latencies (sum {sum}s over {count})");
    assert!(text.contains(&format!("gateway_delivery_latency_seconds_bucket{{le=\"+Inf\"}} {expected}")), "{text}");

    let (_, bridge_text) =
        tokio::time::timeout(SOON, testkit::http_get(&format!("{bridge_http}/metrics"))).await.unwrap().unwrap();
    let published = (EVENTS + 1) as f64;
    assert_eq!(
        histogram(&bridge_text, "bridge_publish_latency_seconds").0,
        published,
        "the bridge observes each publish's acknowledgement"
    );

    gw.stop().await;
    stop.cancel();
    tokio::time::timeout(SOON, bridge).await.unwrap().unwrap().unwrap();
}
