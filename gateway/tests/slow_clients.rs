//! A client that stops reading is cut off (1013 `Client too slow`) once its bounded outbound
//! queue is full, without holding up anyone else; through resume it then recovers every event
//! it missed, in order, exactly once.

#[path = "support/harness.rs"]
mod harness;
use harness::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_is_cut_off_and_recovers_through_resume() {
    let stack = Stack::start().await;
    let js = events_stream(&stack).await;
    let gw = stack.gateway_with(&[("WS_SEND_QUEUE_SIZE", "8"), ("WS_WRITE_TIMEOUT", "30s")]).await;
    let token = staff_token(2, 1, &[10], &["WAITER"]);
    let mut fast = gw.staff("waiter", &staff_token(3, 1, &[10], &["WAITER"])).await;
    const N: usize = 300;
    // The publisher stays at most a few events ahead of the fast client, so only the stalled one
    // can fill its queue, however slowly this machine runs the fast reader.
    let (progress, mut fast_progress) = tokio::sync::watch::channel(0usize);
    let reader = tokio::spawn(async move {
        let mut got = Vec::with_capacity(N);
        while got.len() < N {
            got.push(fast.text().await);
            progress.send_replace(got.len());
        }
        got
    });
    let mut slow = stalled_client(&gw.ws(&format!("/ws/waiter?token={token}&resume=live"))).await;

    let padding = "x".repeat(30_000);
    let mut published = Vec::new();
    for seq in 0..N {
        let mut e: serde_json::Value =
            serde_json::from_str(&event("ROUND_PENDING", 1, 10, None, None, seq as u64)).unwrap();
        e["entity"]["padding"] = serde_json::json!(padding);
        let text = e.to_string();
        let ahead = fast_progress.wait_for(|got| seq <= got + 4);
        tokio::time::timeout(Duration::from_secs(30), ahead).await.expect("the fast client keeps reading").unwrap();
        store(&js, 1, 10, "waiters", &text).await;
        published.push(text);
    }
    let fast_got =
        tokio::time::timeout(Duration::from_secs(60), reader).await.expect("the fast client keeps up").unwrap();
    assert!(fast_got == published, "the fast client gets every event regardless of the stalled one");
    wait_until("the stalled client to be closed as too slow", || async {
        gw.metric("gateway_connections_closed_total{endpoint=\"waiter\",reason=\"slow_consumer\"}").await >= 1.0
    })
    .await;

    // The stalled client now reads what reached it before the cut.
    let mut received: Vec<String> = Vec::new();
    loop {
        match slow.next_within(Duration::from_secs(5)).await {
            Seen::Text(t) => received.push(t),
            Seen::Close(code, reason) => {
                assert_eq!((code, reason.as_str()), (1013, "Client too slow"));
                break;
            }
            Seen::Dropped => break,
            Seen::Nothing => panic!("the stalled connection neither closed nor delivered"),
        }
    }
    assert!(received.len() < N, "the client was cut off before the end ({} events)", received.len());
    let cursor = received.last().map(|t| cursor_of(t)).unwrap_or(0);
    let mut resumed = gw.connect(&format!("/ws/waiter?token={token}&resume={cursor}")).await;
    while received.len() < N {
        received.push(resumed.text().await);
    }
    let got: Vec<String> = received.iter().map(|t| without_cursor(t)).collect();
    assert!(got == published, "every event exactly once, in order, after the resume");
    assert_eq!(resumed.next_within(Duration::from_millis(300)).await, Seen::Nothing);
}
