//! The dispatcher writes an event straight to a connection's socket when it has room; when it
//! takes only part of a frame, the rest goes to the connection's task and the events after it
//! queue. A client that pauses reading, and asks for pongs meanwhile, still gets every event
//! whole, in order, exactly once, and every pong.

#[path = "support/harness.rs"]
mod harness;
use harness::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_pauses_reading_gets_every_event_whole_and_in_order() {
    let stack = Stack::start().await;
    let nats = stack.nats_client().await;
    let gw = stack.gateway_with(&[("WS_SEND_QUEUE_SIZE", "4096"), ("WS_WRITE_TIMEOUT", "30s")]).await;
    let token = staff_token(2, 1, &[10], &["WAITER"]);
    let mut paused = stalled_client(&gw.ws(&format!("/ws/waiter?token={token}"))).await;
    let mut reading = gw.staff("waiter", &staff_token(3, 1, &[10], &["WAITER"])).await;

    // Small events first (written directly), then large ones, more than the kernel buffers for
    // a socket (at most 4 MiB here), so the paused socket takes one only in part, then small
    // ones again behind them, with pings in between.
    const N: u64 = 140;
    let mut pings = 0;
    // Events are at most 64 KiB (the envelope's limit).
    let padding = "x".repeat(60_000);
    let mut published = Vec::new();
    for seq in 0..N {
        let mut e: serde_json::Value = serde_json::from_str(&event("ROUND_PENDING", 1, 10, None, None, seq)).unwrap();
        if (20..120).contains(&seq) {
            e["entity"]["padding"] = serde_json::json!(padding);
        }
        let text = e.to_string();
        publish(&nats, 1, 10, "waiters", &text).await;
        assert_eq!(reading.text().await, text, "the reading client keeps up");
        if seq % 25 == 24 {
            paused.send("ping").await;
            pings += 1;
        }
        published.push(text);
    }
    wait_until("the paused client's events to back up", || async {
        gw.metric("gateway_deliveries_total").await >= (2 * N) as f64
    })
    .await;

    let mut events = Vec::new();
    let mut pongs = 0;
    while events.len() < published.len() || pongs < pings {
        match paused.next_within(Duration::from_secs(10)).await {
            Seen::Text(t) if t == r#"{"type":"pong"}"# => pongs += 1,
            Seen::Text(t) => events.push(t),
            other => panic!("after {} events and {pongs} pongs: {other:?}", events.len()),
        }
    }
    assert!(events == published, "every event whole, in order, exactly once");
    // Both ways were taken: the reading client's events and the first of the paused one's were
    // written at once, the paused one's later events queued behind what its socket could not take.
    let (delivered, queued) =
        (gw.metric("gateway_deliveries_total").await, gw.metric("gateway_deliveries_queued_total").await);
    assert!(queued >= 1.0 && delivered - queued >= N as f64, "{delivered} delivered, {queued} queued");
    assert_eq!(pongs, pings, "every ping answered");
    assert_eq!(paused.next_within(Duration::from_millis(300)).await, Seen::Nothing);
    paused.ping().await;
}
