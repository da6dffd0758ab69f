//! Hostile or faulty input against the in-process bridge, real `redis-server` and `nats-server`:
//! channel names that inject headers, are 64 KiB or over 1 MiB long, and 2,000 bad ones in a
//! burst are dead-lettered with an escaped, bounded source while valid events published after
//! them still arrive; oversized stream entries cost the real binary their head only; publishes
//! JetStream refuses for good are dead-lettered, then dropped, and never hold a slot; `/readyz`
//! turns 503 while the pipeline is stalled and 200 once it moves again.

#[path = "support/bridge.rs"]
mod support;

use anyhow::{anyhow, Result};
use redis::AsyncCommands;
use support::*;
use testkit::{http_get, NatsServer, NatsUser, Redis};

/// Header names a stored message must never carry (they could only come from an injection).
const INJECTED: [&str; 2] = ["X-Injected", "Nats-Expected-Last-Sequence"];

fn assert_safe_source(m: &Stored) {
    let source = m.header("Bridge-Source");
    assert!(source.starts_with("pubsub:"), "{source}");
    assert!(source.len() <= "pubsub:".len() + 128, "{} bytes", source.len());
    assert!(source.bytes().all(|b| (0x21..=0x7e).contains(&b)), "{source:?}");
    for name in INJECTED {
        assert!(!m.headers.contains_key(name), "injected {name}: {:?}", m.headers);
    }
}

#[tokio::test]
async fn hostile_channel_names_are_dead_lettered_and_valid_events_still_flow() -> Result<()> {
    let redis_server = Redis::start().await;
    let nats = NatsServer::start().await;
    // Few slots: a publish retried forever would stop everything after 16 bad names.
    let bridge = InProcess::start(env(
        &redis_server.url(),
        &nats.env(NatsUser::Bridge),
        "wedge-1",
        &[("BRIDGE_MAX_IN_FLIGHT", "16")],
    ))
    .await?;
    let js = jetstream(nats.connect(NatsUser::Operator).await).await?;
    let mut conn = redis(&redis_server.url()).await?;

    // Every name matches one of the bridge's patterns (else Redis would not deliver it).
    let injection = "session:1\r\nX-Injected: yes".to_string();
    let expected_seq = "branch:1\r\nNats-Expected-Last-Sequence: 999\r\nX::waiters".to_string();
    let name_64k = format!("branch:{}:waiters", "1".repeat(65_536));
    let name_1m = format!("session:{}", "9".repeat((1 << 20) + 100));
    let mut bad: Vec<(String, String)> = vec![
        (injection.clone(), event(1, "ROUND_READY", 1, Some(1))),
        (expected_seq.clone(), event(2, "ROUND_READY", 1, Some(1))),
        (name_64k.clone(), event(3, "ROUND_READY", 1, Some(1))),
        (name_1m.clone(), event(4, "ROUND_READY", 1, Some(1))),
    ];
    for i in 0..2_000u64 {
        let name = match i % 5 {
            0 => format!("session:{i}\r\nX-Injected: {i}"),
            1 => format!("session:0{i}"),
            2 => format!("tenant:{i}:x:admin"),
            3 => format!("session:{i}\u{e9}"),
            _ => format!("branch:{i}\n\u{0}:waiters"),
        };
        bad.push((name, event(1_000 + i, "ROUND_READY", 1, Some(1))));
    }
    for chunk in bad.chunks(250) {
        let mut pipe = redis::pipe();
        for (channel, body) in chunk {
            pipe.publish(channel.as_str(), body.as_str());
        }
        let receivers: Vec<i64> = within(30, "PUBLISH burst", pipe.query_async(&mut conn)).await??;
        assert!(receivers.iter().all(|r| *r == 1), "a name no pattern matches: {receivers:?}");
    }
    // Published after the burst: both still arrive within seconds.
    let valid_pubsub = event(9_000, "ROUND_READY", 1, Some(1));
    let valid_stream = event(9_001, "ROUND_READY", 1, Some(1));
    let _: i64 = within(5, "PUBLISH", conn.publish("branch:1:kitchen", valid_pubsub.as_str())).await??;
    xadd_all(&mut conn, "events:critical", "data", std::slice::from_ref(&valid_stream)).await?;
    wait_count(&js, "EVENTS", 2, 30).await?;
    let events = read_all(&js, "EVENTS").await?;
    let mut seqs: Vec<u64> = events.iter().filter_map(|m| seq_of(&m.payload)).collect();
    seqs.sort();
    assert_eq!(seqs, vec![9_000, 9_001]);

    wait_count(&js, "EVENTS_DLQ", bad.len() as u64, 60).await?;
    let dlq = read_all(&js, "EVENTS_DLQ").await?;
    assert_eq!(dlq.len(), bad.len());
    for m in &dlq {
        assert_eq!(m.header("Dlq-Reason"), "bad_channel");
        assert_eq!(m.subject, "dlq.bad_channel");
        assert_safe_source(m);
    }
    let source_of =
        |n: u64| dlq.iter().find(|m| seq_of(&m.payload) == Some(n)).map(|m| m.header("Bridge-Source").to_string());
    assert_eq!(source_of(1).unwrap(), "pubsub:session:1\\x0d\\x0aX-Injected:\\x20yes");
    assert_eq!(
        source_of(2).unwrap(),
        "pubsub:branch:1\\x0d\\x0aNats-Expected-Last-Sequence:\\x20999\\x0d\\x0aX::waiters"
    );
    let s = source_of(3).unwrap();
    assert!(s.starts_with("pubsub:branch:1111") && s.ends_with(&format!("...[{}B]", name_64k.len())), "{s}");
    let s = source_of(4).unwrap();
    assert!(s.starts_with("pubsub:session:9999") && s.ends_with(&format!("...[{}B]", name_1m.len())), "{s}");
    assert_eq!(source_of(1_003).unwrap(), "pubsub:session:3\\xc3\\xa9");

    bridge.wait_metric("bridge_dead_lettered_total{reason=\"bad_channel\"}", bad.len() as f64).await?;
    bridge.wait_metric("bridge_in_flight", 0.0).await?;
    bridge.wait_metric("bridge_published_total", 2.0).await?;
    assert_eq!(bridge.metric("bridge_publish_retries_total").await, 0.0, "nothing was refused");
    assert_eq!(bridge.metric("bridge_nats_connected").await, 1.0, "the connection never dropped");
    let (status, body) = within(5, "readyz", http_get(&format!("http://{}/readyz", bridge.addr))).await??;
    assert_eq!(status, 200, "{body}");
    bridge.shutdown().await
}

/// Peak resident memory of a process, in bytes.
fn peak_rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no VmHWM in /proc/{pid}/status"))?;
    Ok(kb * 1024)
}

#[tokio::test]
async fn oversized_entries_and_payloads_cost_the_bridge_their_head_only() -> Result<()> {
    let redis_server = Redis::start().await;
    let nats = NatsServer::start().await;
    let bridge = Binary::start(
        env(&redis_server.url(), &nats.env(NatsUser::Bridge), "wedge-2", &[("BRIDGE_READ_MAX_BYTES", "1048576")]),
        log_path("wedge-2"),
    )
    .await?;
    let js = jetstream(nats.connect(NatsUser::Operator).await).await?;
    let mut conn = redis(&redis_server.url()).await?;
    let baseline = peak_rss(bridge.child.id())?;

    // 20 stream entries and 5 pub/sub messages of 5 MB each: 125 MB the bridge used to hold.
    let huge = |n: u64| {
        let mut e = event(n, "ROUND_READY", 1, Some(1));
        e.insert_str(e.len() - 1, &format!(r#","pad":"{}""#, "x".repeat(5 << 20)));
        e
    };
    for n in 0..20 {
        xadd_all(&mut conn, "events:critical", "data", &[huge(n)]).await?;
    }
    for n in 20..25 {
        let _: i64 = within(10, "PUBLISH", conn.publish("branch:1:waiters", huge(n))).await??;
    }
    xadd_all(&mut conn, "events:critical", "data", &[event(100, "ROUND_READY", 1, Some(1))]).await?;
    wait_count(&js, "EVENTS", 1, 30).await?;
    wait_count(&js, "EVENTS_DLQ", 25, 60).await?;
    for m in read_all(&js, "EVENTS_DLQ").await? {
        assert_eq!(m.header("Dlq-Reason"), "too_large");
        assert_eq!(m.payload.len(), 65_537, "the head is kept");
        assert!(m.header("Dlq-Truncated-From").parse::<usize>()? > 5 << 20);
    }
    eventually(10, "every entry acknowledged", || {
        let mut conn = conn.clone();
        async move { (xpending(&mut conn, "events:critical", "publisher_bridge").await.ok()? == 0).then_some(()) }
    })
    .await?;
    let peak = peak_rss(bridge.child.id())?;
    assert!(peak < baseline + (40 << 20), "peak RSS grew from {} MiB to {} MiB", baseline >> 20, peak >> 20);
    let read_bytes = metric(bridge.addr, "bridge_stream_read_bytes").await.unwrap_or(f64::NAN);
    assert!(read_bytes <= (1 << 20) as f64 + 70_000.0, "{read_bytes}");
    Ok(())
}

async fn set_max_msg_size(js: &async_nats::jetstream::Context, stream: &str, size: i32) -> Result<()> {
    let mut s = js.get_stream(stream).await?;
    let mut config = s.info().await?.config.clone();
    config.max_message_size = size;
    within(10, "update stream", js.update_stream(config)).await??;
    Ok(())
}

#[tokio::test]
async fn publishes_refused_for_good_are_dead_lettered_then_dropped_and_free_their_slot() -> Result<()> {
    let redis_server = Redis::start().await;
    let nats = NatsServer::start().await;
    let bridge = InProcess::start(env(
        &redis_server.url(),
        &nats.env(NatsUser::Bridge),
        "wedge-3",
        &[("BRIDGE_MAX_IN_FLIGHT", "4")],
    ))
    .await?;
    let js = jetstream(nats.connect(NatsUser::Operator).await).await?;
    let mut conn = redis(&redis_server.url()).await?;
    let padded = |n: u64| {
        let mut e = event(n, "ROUND_READY", 1, Some(1));
        e.insert_str(e.len() - 1, &format!(r#","pad":"{}""#, "x".repeat(4_000)));
        e
    };

    // An operator shrinks EVENTS below these (valid) events: JetStream refuses them for good.
    set_max_msg_size(&js, "EVENTS", 2_048).await?;
    for n in 0..5 {
        let _: i64 = within(5, "PUBLISH", conn.publish("branch:1:waiters", padded(n))).await??;
    }
    xadd_all(&mut conn, "events:critical", "data", &(5..10).map(padded).collect::<Vec<_>>()).await?;
    wait_count(&js, "EVENTS_DLQ", 10, 30).await?;
    for m in read_all(&js, "EVENTS_DLQ").await? {
        assert_eq!(m.subject, "dlq.publish_refused");
        assert_eq!(m.header("Dlq-Reason"), "publish_refused");
        assert!(m.header("Dlq-Error").starts_with("message_too_large:"), "{:?}", m.headers);
        assert_eq!(m.header("Dlq-Original-Subject"), "events.1.1.kitchen");
        assert!(
            m.header("Bridge-Source").starts_with("pubsub:branch:1:waiters")
                || m.header("Bridge-Source").starts_with("stream:")
        );
        assert!(seq_of(&m.payload).is_some(), "the whole event is kept");
    }
    bridge.wait_metric("bridge_dead_lettered_total{reason=\"publish_refused\"}", 10.0).await?;

    // The dead-letter stream refuses them too: dropped, counted, stream entries acknowledged.
    set_max_msg_size(&js, "EVENTS_DLQ", 2_048).await?;
    for n in 10..15 {
        let _: i64 = within(5, "PUBLISH", conn.publish("branch:1:waiters", padded(n))).await??;
    }
    xadd_all(&mut conn, "events:critical", "data", &(15..20).map(padded).collect::<Vec<_>>()).await?;
    bridge.wait_metric("bridge_events_dropped_total{reason=\"message_too_large\"}", 10.0).await?;

    // Nothing holds a slot: small events flow on both paths.
    let _: i64 =
        within(5, "PUBLISH", conn.publish("branch:1:waiters", event(100, "ROUND_READY", 1, Some(1)))).await??;
    xadd_all(&mut conn, "events:critical", "data", &[event(101, "ROUND_READY", 1, Some(1))]).await?;
    wait_count(&js, "EVENTS", 2, 15).await?;
    bridge.wait_metric("bridge_in_flight", 0.0).await?;
    eventually(10, "every entry acknowledged", || {
        let mut conn = conn.clone();
        async move { (xpending(&mut conn, "events:critical", "publisher_bridge").await.ok()? == 0).then_some(()) }
    })
    .await?;
    assert_eq!(count(&js, "EVENTS_DLQ").await, 10, "the dropped ones were not stored");
    bridge.shutdown().await
}

async fn readyz(bridge: &InProcess) -> (u16, String) {
    http_get(&format!("http://{}/readyz", bridge.addr)).await.unwrap_or((0, String::new()))
}

#[tokio::test]
async fn readyz_turns_503_while_stalled_and_200_once_progress_resumes() -> Result<()> {
    let redis_server = Redis::start().await;
    let nats = NatsServer::start().await;
    let bridge = InProcess::start(env(
        &redis_server.url(),
        &nats.env(NatsUser::Bridge),
        "wedge-4",
        &[("BRIDGE_STALL_TIMEOUT", "2s")],
    ))
    .await?;
    let js = jetstream(nats.connect(NatsUser::Operator).await).await?;
    let mut conn = redis(&redis_server.url()).await?;

    // The stream disappears: every publish meets no responders and is retried.
    within(10, "delete EVENTS", js.delete_stream("EVENTS")).await??;
    xadd_all(&mut conn, "events:critical", "data", &[event(1, "ROUND_READY", 1, Some(1))]).await?;
    let body = eventually(20, "/readyz 503 with the pipeline stalled", || async {
        let (status, body) = readyz(&bridge).await;
        (status == 503).then_some(body)
    })
    .await?;
    assert!(body.contains("\"pipeline\"") && body.contains("stalled"), "{body}");
    assert_eq!(bridge.metric("bridge_in_flight").await, 1.0);
    assert_eq!(bridge.metric("bridge_nats_connected").await, 1.0, "stalled, not disconnected");

    // The stream is back: the retry is stored and readiness returns.
    publisher_bridge::sink::streams::ensure_streams(&js, &Default::default()).await?;
    eventually(20, "/readyz 200 again", || async { (readyz(&bridge).await.0 == 200).then_some(()) }).await?;
    wait_count(&js, "EVENTS", 1, 10).await?;
    bridge.wait_metric("bridge_in_flight", 0.0).await?;
    bridge.shutdown().await
}
