//! One event, one trace, two processes: the bridge (in this test process, exporting through the
//! same `wire::otel` set-up as its binary) and the real `gateway` binary both export OTLP/HTTP to
//! an in-test receiver. The event published to Redis yields `bridge.receive` → `bridge.publish`
//! → `gateway.route` → `gateway.fan_out` in one trace, the gateway's routing span parented by
//! the bridge's publish span through the `traceparent` header JetStream re-published. The
//! gateway honours an unsampled parent, exports its connection spans (admitted and refused) as
//! separate roots with the close code, and flushes on SIGTERM.

#[path = "support/harness.rs"]
mod harness;
#[path = "support/otlp.rs"]
mod otlp;

use harness::*;
use redis::AsyncCommands;
use std::collections::HashMap;
use std::process::Stdio;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

fn vars(pairs: &[(&str, String)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_event_is_one_trace_across_bridge_and_gateway() {
    let stack = Stack::start().await;
    let receiver = otlp::Receiver::start().await;

    // The bridge, in-process, exporting as "publisher-bridge" with every root sampled.
    let mut bridge_env = vars(&[
        ("REDIS_URL", stack.redis.url()),
        ("BRIDGE_INSTANCE_ID", "bridge-traces".into()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url.clone()),
        ("OTEL_TRACES_SAMPLER", "always_on".into()),
    ]);
    bridge_env.extend(stack.bridge_nats_env());
    let bridge = ExportingBridge::start(&bridge_env).await;

    // The gateway binary: roots sampled at ratio 1, children follow their parent's decision.
    let port = testkit::free_port();
    let mut env = stack.env();
    env.insert("GATEWAY_LISTEN_ADDR".into(), format!("127.0.0.1:{port}"));
    env.insert("OTEL_EXPORTER_OTLP_ENDPOINT".into(), receiver.url.clone());
    env.insert("OTEL_TRACES_SAMPLER".into(), "parentbased_traceidratio".into());
    env.insert("OTEL_TRACES_SAMPLER_ARG".into(), "1".into());
    env.insert("OTEL_RESOURCE_ATTRIBUTES".into(), "deployment.environment=test".into());
    let mut gateway = tokio::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .env_clear()
        .envs(&env)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("127.0.0.1:{port}");
    wait_until("the gateway is ready", || async {
        matches!(testkit::http_get(&format!("http://{base}/readyz")).await, Ok((200, _)))
    })
    .await;

    refused(&format!("ws://{base}/ws/waiter?token=forged"), Some(ORIGIN), 4001, "Authentication failed").await;
    let mut waiter =
        Client::connect(&format!("ws://{base}/ws/waiter?token={}", staff_token(2, 1, &[7], &["WAITER"])), Some(ORIGIN))
            .await;
    // Answered from the connection's loop: from here on its socket is written by the fan-out.
    waiter.ping().await;
    let event = event("ROUND_PENDING", 1, 7, None, None, 1);
    let mut redis = stack.redis().await;
    let _: i64 = redis.publish("branch:7:waiters", &event).await.unwrap();
    assert_eq!(waiter.text().await, event);

    // An event whose parent was not sampled: delivered, but the gateway exports nothing for it.
    let unsampled_trace = "0af7651916cd43dd8448eb211c80319c";
    let quiet = harness::event("ROUND_PENDING", 1, 7, None, None, 2);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("traceparent", format!("00-{unsampled_trace}-b7ad6b7169203331-00"));
    let nats = stack.nats_client().await;
    nats.publish_with_headers("live.1.7.waiters", headers, quiet.clone().into()).await.unwrap();
    nats.flush().await.unwrap();
    assert_eq!(waiter.text().await, quiet);

    let bye = CloseFrame { code: CloseCode::Normal, reason: "bye".into() };
    tokio::time::timeout(SOON, waiter.ws.close(Some(bye))).await.unwrap().unwrap();
    wait_until("the gateway saw the close", || async {
        let (_, text) = testkit::http_get(&format!("http://{base}/ws/health")).await.unwrap();
        text.contains("\"total_connections\":0")
    })
    .await;

    // Stop both; each flushes its spans on the way out.
    bridge.stop().await;
    terminate(&mut gateway).await;

    wait_until("the gateway's spans arrived", || async {
        !receiver.named("gateway.fan_out").is_empty() && receiver.named("gateway.connection").len() == 2
    })
    .await;
    let one = |name: &str| {
        let found = receiver.named(name);
        assert_eq!(found.len(), 1, "exactly one {name}: {:#?}", receiver.spans());
        found.into_iter().next().unwrap()
    };
    let receive = one("bridge.receive");
    let publish = one("bridge.publish");
    let route = one("gateway.route");
    let fan_out = one("gateway.fan_out");

    assert_eq!((receive.service.as_str(), publish.service.as_str()), ("publisher-bridge", "publisher-bridge"));
    assert_eq!((route.service.as_str(), fan_out.service.as_str()), ("realtime-gateway", "realtime-gateway"));
    for span in [&publish, &route, &fan_out] {
        assert_eq!(span.trace_id, receive.trace_id, "{} is in the event's trace", span.name);
    }
    assert_eq!(receive.parent, "", "the receive span is the root");
    assert_eq!(publish.parent, receive.span_id);
    assert_eq!(route.parent, publish.span_id, "the gateway's routing span is a child of the bridge's publish span");
    assert_eq!(fan_out.parent, route.span_id);

    assert_eq!(receive.attr("messaging.destination.name"), "branch:7:waiters");
    assert_eq!(receive.attr("outcome"), "published");
    assert_eq!(publish.attr("messaging.destination.name"), "events.1.7.waiters");
    assert_eq!(publish.attr("jetstream.duplicate"), "false");
    assert_eq!(route.attr("messaging.destination.name"), "live.1.7.waiters");
    assert_eq!(route.attr("jetstream.sequence"), publish.attr("jetstream.sequence"));
    assert_eq!(route.attr("outcome"), "delivered");
    assert_eq!(fan_out.attr("recipients"), "1");
    assert_eq!(fan_out.attr("written"), "1", "an idle connection's socket is written by the fan-out itself");

    assert!(
        receiver.spans().iter().all(|s| s.trace_id != unsampled_trace),
        "an unsampled parent's decision holds in the gateway"
    );

    let connections = receiver.named("gateway.connection");
    let (refusal, connection) = match connections[0].attr("close.by") {
        "refused" => (connections[0].clone(), connections[1].clone()),
        _ => (connections[1].clone(), connections[0].clone()),
    };
    assert_eq!(
        (refusal.attr("close.code"), refusal.attr("close.reason"), refusal.attr("close.by")),
        ("4001", "Authentication failed", "refused")
    );
    assert!(!refusal.attributes.contains_key("tenant_id"), "a refused connection has no tenant");
    assert_eq!(connection.service, "realtime-gateway");
    assert_eq!(connection.parent, "", "a connection span is a root");
    assert_ne!(connection.trace_id, receive.trace_id, "events never hang under a connection");
    assert_eq!(connection.attr("endpoint"), "waiter");
    assert_eq!(connection.attr("tenant_id"), "1");
    assert_eq!(connection.attr("close.code"), "1000");
    assert_eq!(connection.attr("close.reason"), "bye");
    assert_eq!(connection.attr("close.by"), "client");
}
