//! Event flow through the in-process bridge against real `redis-server` and `nats-server`: every
//! channel pattern and the stream map to the documented subject with the payload bytes unchanged
//! (and are re-published on `live.*`), the same text on three channels is stored once, every
//! class of bad input is dead-lettered with its reason and counted while the next valid event
//! still flows, and the HTTP endpoints answer.

#[path = "support/bridge.rs"]
mod support;

use anyhow::Result;
use futures_util::StreamExt;
use redis::AsyncCommands;
use sha2::{Digest, Sha256};
use support::*;
use testkit::{http_get, NatsServer, NatsUser, Redis};

#[tokio::test]
async fn channels_and_stream_map_to_subjects_with_bytes_unchanged() -> Result<()> {
    let redis_server = Redis::start().await;
    let nats = NatsServer::start().await;
    let bridge = InProcess::start(env(&redis_server.url(), &nats.env(NatsUser::Bridge), "flow-1", &[])).await?;
    let js = jetstream(nats.connect(NatsUser::Operator).await).await?;
    let mut live = js.client().subscribe("live.>").await?;
    // The server has the subscription once it answered a round trip written after it; before,
    // on a loaded machine, the first re-published events could come before the SUB.
    js.client().flush().await?;
    let mut conn = redis(&redis_server.url()).await?;

    // (channel, body, expected subject); odd spacing proves bytes are not re-serialised.
    let cases: Vec<(&str, String, &str)> = vec![
        ("branch:7:waiters", event(1, "SERVICE_CALL_CREATED", 3, Some(7)), "events.3.7.waiters"),
        ("branch:7:kitchen", event(2, "ROUND_SUBMITTED", 3, Some(7)), "events.3.7.kitchen"),
        ("branch:7:admin", event(3, "ENTITY_UPDATED", 3, Some(7)), "events.3.7.admin"),
        ("sector:4:waiters", event(4, "ROUND_PENDING", 3, Some(7)), "events.3.7.waiters"),
        ("session:77", event(5, "CART_SYNC", 3, Some(7)), "events.3.7.session"),
        ("tenant:3:admin", event(6, "ENTITY_CREATED", 3, None), "events.3.0.admin"),
        ("branch:9:waiters", event(7, "SERVICE_CALL_CREATED", 3, None).replace(',', " ,  "), "events.3.9.waiters"),
    ];
    for (channel, body, _) in &cases {
        let receivers: i64 = within(5, "PUBLISH", conn.publish(*channel, body.as_str())).await??;
        assert_eq!(receivers, 1, "the bridge is subscribed to {channel}");
    }
    let stream_body = event(8, "ROUND_IN_KITCHEN", 3, Some(2));
    let legacy_body = event(9, "TABLE_CLEARED", 3, Some(2));
    xadd_all(&mut conn, "events:critical", "data", std::slice::from_ref(&stream_body)).await?;
    xadd_all(&mut conn, "events:critical", "payload", std::slice::from_ref(&legacy_body)).await?;

    wait_count(&js, "EVENTS", 9, 15).await?;
    let stored = read_all(&js, "EVENTS").await?;
    for (channel, body, subject) in &cases {
        let m = stored.iter().find(|m| m.payload == body.as_bytes()).unwrap_or_else(|| panic!("{channel} not stored"));
        assert_eq!(m.subject, *subject, "{channel}");
        assert_eq!(m.header("Bridge-Source"), format!("pubsub:{channel}"));
        assert_eq!(m.header("Nats-Msg-Id"), hex::encode(Sha256::digest(body.as_bytes())));
        assert!(m.header("Bridge-Received-Us").parse::<u64>().unwrap() > 1_700_000_000_000_000);
    }
    let m = stored.iter().find(|m| m.payload == stream_body.as_bytes()).expect("stream entry stored");
    assert_eq!(m.subject, "events.3.2.kitchen");
    assert!(m.header("Bridge-Source").starts_with("stream:events:critical:"), "{:?}", m.headers);
    let m = stored.iter().find(|m| m.payload == legacy_body.as_bytes()).expect("`payload` field accepted");
    assert_eq!(m.subject, "events.3.2.session");

    // RePublish re-emits each stored event on live.* with the same bytes.
    let mut live_seen: Vec<String> = Vec::new();
    while live_seen.len() < 9 {
        // A timeout names what did arrive (twice seen under the full suite before the flush above).
        let what = format!("live.> message {} of 9 after {live_seen:?}", live_seen.len() + 1);
        let msg = within(10, &what, live.next()).await?.expect("subscription open");
        assert!(msg.subject.starts_with("live.3."), "{}", msg.subject);
        assert!(stored.iter().any(|s| s.payload == msg.payload.as_ref()));
        live_seen.push(msg.subject.to_string());
    }

    // Stream entries are acknowledged once stored.
    eventually(10, "stream entries acknowledged", || {
        let mut conn = conn.clone();
        async move { (xpending(&mut conn, "events:critical", "publisher_bridge").await.ok()? == 0).then_some(()) }
    })
    .await?;
    bridge.wait_metric("bridge_received_total{source=\"pubsub\"}", 7.0).await?;
    bridge.wait_metric("bridge_received_total{source=\"stream\"}", 2.0).await?;
    bridge.wait_metric("bridge_published_total", 9.0).await?;
    bridge.wait_metric("bridge_stream_acked_total", 2.0).await?;
    bridge.shutdown().await
}

#[tokio::test]
async fn same_text_on_three_channels_is_stored_once() -> Result<()> {
    let redis_server = Redis::start().await;
    let nats = NatsServer::start().await;
    let bridge = InProcess::start(env(&redis_server.url(), &nats.env(NatsUser::Bridge), "flow-2", &[])).await?;
    let js = jetstream(nats.connect(NatsUser::Operator).await).await?;
    let mut conn = redis(&redis_server.url()).await?;

    for n in 0..20u64 {
        let body = event(n, "ROUND_PENDING", 4, Some(8)).replace("\"sector_id\":null", "\"sector_id\":3");
        let mut pipe = redis::pipe();
        for channel in ["sector:3:waiters", "branch:8:waiters", "branch:8:admin"] {
            pipe.publish(channel, body.as_str()).ignore();
        }
        // Also on the stream: the same event text is the same event on either path.
        if n % 5 == 0 {
            pipe.cmd("XADD").arg("events:critical").arg("*").arg("data").arg(body.as_str()).ignore();
        }
        within(5, "publish burst", pipe.query_async::<()>(&mut conn)).await??;
    }
    eventually(15, "every copy acknowledged by JetStream", || async {
        let published = bridge.metric("bridge_published_total").await;
        let duplicates = bridge.metric("bridge_duplicates_total").await;
        (published + duplicates == 64.0).then_some(())
    })
    .await?;
    let stored = read_all(&js, "EVENTS").await?;
    assert_exactly_once(&stored, 20);
    assert_eq!(bridge.metric("bridge_published_total").await, 20.0);
    assert_eq!(bridge.metric("bridge_duplicates_total").await, 44.0);
    bridge.shutdown().await
}

#[tokio::test]
async fn bad_input_is_dead_lettered_with_its_reason_and_valid_events_still_flow() -> Result<()> {
    let redis_server = Redis::start().await;
    let nats = NatsServer::start().await;
    let bridge = InProcess::start(env(&redis_server.url(), &nats.env(NatsUser::Bridge), "flow-3", &[])).await?;
    let js = jetstream(nats.connect(NatsUser::Operator).await).await?;
    let mut conn = redis(&redis_server.url()).await?;

    let huge = format!(r#"{{"type":"X","tenant_id":1,"branch_id":1,"pad":"{}"}}"#, "é".repeat(40_000));
    let pubsub_cases: Vec<(&str, String, &str)> = vec![
        ("branch:1:waiters", "not json at all".into(), "not_json"),
        ("branch:1:waiters", "[1,2,3]".into(), "not_object"),
        ("branch:1:waiters", r#"{"type":"X","tenant_id":1,"tenant_id":2}"#.into(), "bad_envelope"),
        ("branch:1:waiters", r#"{"tenant_id":1,"branch_id":1}"#.into(), "bad_type"),
        ("branch:1:waiters", r#"{"type":"X","tenant_id":"1","branch_id":1}"#.into(), "bad_tenant"),
        ("branch:1:waiters", r#"{"type":"X","branch_id":1}"#.into(), "bad_tenant"),
        ("sector:2:waiters", r#"{"type":"X","tenant_id":1}"#.into(), "bad_branch"),
        ("branch:1:waiters", r#"{"type":"X","tenant_id":1,"sector_id":0}"#.into(), "bad_sector"),
        ("session:1", r#"{"type":"X","tenant_id":1,"branch_id":1,"session_id":"s"}"#.into(), "bad_session"),
        ("branch:1:waiters", r#"{"type":"X","tenant_id":1,"table_id":2.5}"#.into(), "bad_table"),
        ("branch:1:waiters", huge.clone(), "too_large"),
        ("branch:abc:waiters", event(1, "X", 1, Some(1)), "bad_channel"),
        ("session:0", event(2, "X", 1, Some(1)), "bad_channel"),
        ("tenant:9:admin", event(3, "X", 1, Some(1)), "tenant_mismatch"),
    ];
    for (channel, body, _) in &pubsub_cases {
        let _: i64 = within(5, "PUBLISH", conn.publish(*channel, body.as_str())).await??;
    }
    let stream_bad = r#"{"type":"Y","tenant_id":1}"#.to_string(); // no branch on the stream
    xadd_all(&mut conn, "events:critical", "data", std::slice::from_ref(&stream_bad)).await?;
    let _: String = within(5, "XADD", conn.xadd("events:critical", "*", &[("other", "field")])).await??;
    let valid = event(100, "ROUND_READY", 1, Some(1));
    let _: i64 = within(5, "PUBLISH", conn.publish("branch:1:kitchen", valid.as_str())).await??;
    xadd_all(&mut conn, "events:critical", "data", &[event(101, "ROUND_READY", 1, Some(1))]).await?;

    wait_count(&js, "EVENTS_DLQ", pubsub_cases.len() as u64 + 2, 15).await?;
    wait_count(&js, "EVENTS", 2, 15).await?;
    let dlq = read_all(&js, "EVENTS_DLQ").await?;
    for (channel, body, reason) in &pubsub_cases {
        let m = dlq
            .iter()
            .find(|m| {
                m.header("Bridge-Source") == format!("pubsub:{channel}")
                    && m.header("Dlq-Reason") == *reason
                    && body.as_bytes().starts_with(&m.payload)
            })
            .unwrap_or_else(|| panic!("{reason} from {channel} not dead-lettered"));
        assert_eq!(m.subject, format!("dlq.{reason}"));
        assert!(m.header("Dlq-At").ends_with('Z'), "{:?}", m.headers);
        if *reason == "too_large" {
            // The reader keeps 65,537 bytes of a payload and says how long it was.
            assert_eq!(m.payload.len(), 65_537);
            assert_eq!(m.header("Dlq-Truncated-From"), body.len().to_string());
        } else {
            assert_eq!(m.payload, body.as_bytes(), "{reason}: whole payload kept");
        }
    }
    let m = dlq.iter().find(|m| m.payload == stream_bad.as_bytes()).expect("stream entry without branch");
    assert_eq!(m.header("Dlq-Reason"), "bad_branch");
    assert!(m.header("Bridge-Source").starts_with("stream:events:critical:"));
    let m = dlq.iter().find(|m| m.header("Dlq-Reason") == "no_data").expect("entry without data");
    assert_eq!(m.payload, br#"{"other":"field"}"#);

    let events = read_all(&js, "EVENTS").await?;
    assert_eq!(events.iter().map(|m| seq_of(&m.payload).unwrap()).collect::<Vec<_>>(), vec![100, 101]);
    for (reason, n) in [
        ("not_json", 1.0),
        ("bad_tenant", 2.0),
        ("bad_branch", 2.0),
        ("bad_channel", 2.0),
        ("tenant_mismatch", 1.0),
        ("too_large", 1.0),
        ("no_data", 1.0),
        ("bad_table", 1.0),
    ] {
        bridge.wait_metric(&format!("bridge_dead_lettered_total{{reason=\"{reason}\"}}"), n).await?;
    }
    eventually(10, "bad stream entries acknowledged too", || {
        let mut conn = conn.clone();
        async move { (xpending(&mut conn, "events:critical", "publisher_bridge").await.ok()? == 0).then_some(()) }
    })
    .await?;
    bridge.shutdown().await
}

#[tokio::test]
async fn oversized_dead_letters_keep_their_head_and_say_so() -> Result<()> {
    let redis_server = Redis::start().await;
    let nats = NatsServer::start().await;
    let bridge = InProcess::start(env(
        &redis_server.url(),
        &nats.env(NatsUser::Bridge),
        "flow-6",
        &[("BRIDGE_DLQ_MAX_MSG_SIZE", "16384")],
    ))
    .await?;
    let js = jetstream(nats.connect(NatsUser::Operator).await).await?;
    let mut conn = redis(&redis_server.url()).await?;
    let huge = format!(r#"{{"type":"X","tenant_id":1,"branch_id":1,"pad":"{}"}}"#, "x".repeat(100_000));
    let _: i64 = within(5, "PUBLISH", conn.publish("branch:1:admin", huge.as_str())).await??;
    wait_count(&js, "EVENTS_DLQ", 1, 10).await?;
    let m = &read_all(&js, "EVENTS_DLQ").await?[0];
    assert_eq!(m.header("Dlq-Reason"), "too_large");
    assert_eq!(m.header("Dlq-Truncated-From"), huge.len().to_string());
    assert_eq!(m.payload.len(), 16384 - 4096);
    assert!(huge.as_bytes().starts_with(&m.payload));
    bridge.shutdown().await
}

#[tokio::test]
async fn http_endpoints_and_graceful_stop() -> Result<()> {
    let redis_server = Redis::start().await;
    let nats = NatsServer::start().await;
    let bridge = InProcess::start(env(
        &redis_server.url(),
        &nats.env(NatsUser::Bridge),
        "flow-4",
        &[("BRIDGE_HTTP_HEADER_TIMEOUT", "1s")],
    ))
    .await?;
    let base = format!("http://{}", bridge.addr);
    // The port is bounded like the gateway's: a connection that never sends a request head is
    // closed by the header timeout, and it is counted.
    let mut idle = tokio::net::TcpStream::connect(bridge.addr).await?;
    let mut buf = [0u8; 64];
    let read = within(15, "an idle connection closed", tokio::io::AsyncReadExt::read(&mut idle, &mut buf)).await?;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    bridge.wait_metric("bridge_http_header_timeouts_total", 1.0).await?;
    let answer = within(5, "metrics", testkit::http_exchange("GET", &format!("{base}/metrics"), &[], None)).await??;
    assert_eq!(answer.header("content-type"), Some(wire::exposition::PROMETHEUS_TEXT), "Prometheus text by default");
    assert_eq!(within(5, "livez", http_get(&format!("{base}/livez"))).await??.0, 200);
    let (status, body) = within(5, "readyz", http_get(&format!("{base}/readyz"))).await??;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"ready\""), "{body}");
    let (status, body) = within(5, "metrics", http_get(&format!("{base}/metrics"))).await??;
    assert_eq!(status, 200);
    for series in [
        "bridge_redis_connected{connection=\"pubsub\"} 1",
        "bridge_redis_connected{connection=\"stream\"} 1",
        "bridge_nats_connected 1",
        "bridge_in_flight 0",
    ] {
        assert!(body.contains(series), "{series} missing in\n{body}");
    }
    // The streams exist with the configured layout.
    let js = jetstream(nats.connect(NatsUser::Operator).await).await?;
    let mut events = js.get_stream("EVENTS").await?;
    let info = events.info().await?;
    assert_eq!(info.config.subjects, vec!["events.>"]);
    assert_eq!(info.config.republish.as_ref().map(|r| r.destination.as_str()), Some("live.>"));
    assert_eq!(info.config.duplicate_window, std::time::Duration::from_secs(120));
    // Ensuring again with other settings updates them in place.
    let settings = publisher_bridge::config::StreamSettings {
        duplicate_window: std::time::Duration::from_secs(300),
        ..Default::default()
    };
    publisher_bridge::sink::streams::ensure_streams(&js, &settings).await?;
    assert_eq!(events.info().await?.config.duplicate_window, std::time::Duration::from_secs(300));
    bridge.shutdown().await
}

#[tokio::test]
async fn redis_down_at_start_fails_fast() -> Result<()> {
    let nats = NatsServer::start().await;
    let port = testkit::free_port();
    let env = env(
        &format!("redis://127.0.0.1:{port}"),
        &nats.env(NatsUser::Bridge),
        "flow-5",
        &[("BRIDGE_STARTUP_TIMEOUT", "2s")],
    );
    let config =
        publisher_bridge::Config::from_lookup(move |k| env.get(k).cloned()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let result = within(15, "run fails", publisher_bridge::run(config, listener, Default::default())).await?;
    let err = result.expect_err("Redis is down");
    assert!(err.to_string().contains("Redis"), "{err}");
    Ok(())
}
