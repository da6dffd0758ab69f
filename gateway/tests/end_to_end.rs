//! End to end with the real bridge: what the backend publishes to Redis (every pub/sub channel
//! pattern and the `events:critical` stream, both field names) reaches the right WebSockets,
//! byte for byte, once.

#[path = "support/harness.rs"]
mod harness;
use harness::*;
use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;

async fn start_bridge(stack: &Stack) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let env: std::collections::HashMap<String, String> =
        [("REDIS_URL", stack.redis.url()), ("BRIDGE_INSTANCE_ID", "bridge-e2e".to_string())]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .chain(stack.bridge_nats_env())
            .collect();
    let config = publisher_bridge::Config::from_lookup(|k| env.get(k).cloned()).unwrap_or_else(|e| panic!("{e}"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ready = format!("http://{}/readyz", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let stop = stop.clone();
        async move { publisher_bridge::run(config, listener, stop).await.expect("bridge runs") }
    });
    let became_ready = tokio::time::timeout(SOON, async {
        while !matches!(testkit::http_get(&ready).await, Ok((200, _))) {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(became_ready.is_ok(), "bridge never became ready");
    (stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_events_in_redis_reach_the_right_sockets() {
    let stack = Stack::start().await;
    let (stop_bridge, bridge) = start_bridge(&stack).await;
    let gw = stack.gateway().await;
    let mut admin = gw.staff("admin", &staff_token(1, 1, &[7], &["ADMIN"])).await;
    let mut waiter = gw.staff("waiter", &staff_token(2, 1, &[7], &["WAITER"])).await;
    let mut kitchen = gw.staff("kitchen", &staff_token(3, 1, &[7], &["KITCHEN"])).await;
    let mut diner = gw.diner(&table_token(1, 7, 3, 42)).await;
    let mut redis = stack.redis().await;

    // Odd spacing and key order: bytes must reach clients unchanged.
    let spaced = |ty: &str, branch: u64, sector: &str, session: &str, seq: u64| {
        format!(
            r#"{{ "v":1, "type" : "{ty}", "tenant_id":1, "branch_id":{branch}, "sector_id":{sector}, "session_id":{session}, "table_id":3, "entity":{{"seq":{seq}}}, "actor":{{}}, "ts":"2026-11-23T10:00:00.000001Z" }}"#
        )
    };
    let cases: Vec<(&str, String, Vec<usize>)> = vec![
        ("branch:7:waiters", spaced("ROUND_PENDING", 7, "null", "null", 1), vec![0, 1]),
        ("branch:7:kitchen", spaced("TICKET_READY", 7, "null", "null", 2), vec![0, 1, 2]),
        ("branch:7:admin", spaced("ENTITY_UPDATED", 7, "null", "null", 3), vec![0]),
        ("sector:5:waiters", spaced("SERVICE_CALL_CREATED", 7, "5", "null", 4), vec![0]),
        ("session:42", spaced("CART_SYNC", 7, "null", "42", 5), vec![0, 1, 3]),
        ("tenant:1:admin", spaced("ENTITY_CREATED", 0, "null", "null", 6), vec![0]),
    ];
    let clients = [&mut admin, &mut waiter, &mut kitchen, &mut diner];
    for (channel, payload, receivers) in &cases {
        let _: i64 = redis.publish(*channel, payload).await.unwrap();
        for i in receivers {
            assert_eq!(clients[*i].text().await, *payload, "client {i} via {channel}");
        }
    }

    // The stream, with the current field name and the older one.
    let via_data = spaced("ROUND_READY", 7, "null", "42", 7);
    let via_payload = spaced("PAYMENT_APPROVED", 7, "null", "42", 8);
    let _: String = redis.xadd("events:critical", "*", &[("data", &via_data)]).await.unwrap();
    let _: String = redis.xadd("events:critical", "*", &[("payload", &via_payload)]).await.unwrap();
    for i in [0, 1, 2, 3] {
        assert_eq!(clients[i].text().await, via_data, "client {i} via the stream's data field");
    }
    for i in [0, 1, 3] {
        assert_eq!(clients[i].text().await, via_payload, "client {i} via the stream's payload field");
    }

    // One event published on three channels and added to the stream: each socket gets it once.
    let shared = spaced("SERVICE_CALL_CREATED", 7, "null", "null", 9);
    for channel in ["sector:5:waiters", "branch:7:waiters", "branch:7:admin"] {
        let _: i64 = redis.publish(channel, &shared).await.unwrap();
    }
    let _: String = redis.xadd("events:critical", "*", &[("data", &shared)]).await.unwrap();
    let fence = spaced("ROUND_PENDING", 7, "null", "null", 10);
    let _: i64 = redis.publish("branch:7:waiters", &fence).await.unwrap();
    for i in [0, 1] {
        assert_eq!(clients[i].text().await, shared);
        assert_eq!(clients[i].text().await, fence, "client {i} got no second copy");
    }

    // Refused events never reach anyone; the next valid one does.
    for bad in ["not json", "[1,2]", r#"{"type":"X","tenant_id":"1","branch_id":7}"#] {
        let _: i64 = redis.publish("branch:7:waiters", bad).await.unwrap();
    }
    let after = spaced("ROUND_PENDING", 7, "null", "null", 11);
    let _: i64 = redis.publish("branch:7:waiters", &after).await.unwrap();
    assert_eq!(clients[1].text().await, after);

    stop_bridge.cancel();
    tokio::time::timeout(SOON, bridge).await.unwrap().unwrap();
}
