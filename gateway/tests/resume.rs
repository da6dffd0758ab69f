//! Opt-in resume (contract section 8) against a real JetStream stream laid out as the bridge
//! lays it out: cursors on every event, a reconnect to another replica replaying exactly what
//! the connection would have received, in order, continuing live with no gap or duplicate at
//! the seam, and the explicit gap signal when history no longer reaches back.

#[path = "support/harness.rs"]
mod harness;
use harness::*;
use std::time::Duration;

fn waiter_token() -> String {
    staff_token(2, 1, &[10], &["WAITER"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_to_another_replica_replays_exactly_the_missed_events() {
    let stack = Stack::start().await;
    let js = events_stream(&stack).await;
    let (a, b) = (stack.gateway().await, stack.gateway().await);
    let mut plain = a.staff("waiter", &staff_token(3, 1, &[10], &["WAITER"])).await;
    let mut client = a.connect(&format!("/ws/waiter?token={}&resume=live", waiter_token())).await;

    let first = event("ROUND_PENDING", 1, 10, None, None, 1);
    store(&js, 1, 10, "waiters", &first).await;
    let received = client.text().await;
    assert_eq!(without_cursor(&received), first, "the payload is unchanged apart from the cursor");
    assert_eq!(plain.text().await, first, "clients that did not opt in see exactly the old protocol");
    let cursor = cursor_of(&received);
    let resume = resume_query(&received);
    assert!(epoch_of(&received).is_some(), "the cursor's epoch comes with it: {received}");
    client.close().await;

    // Missed while away: some for this waiter, some not (admin-only, another branch, another tenant).
    let mut expected = Vec::new();
    for seq in 2..=12 {
        let (e, mine) = match seq % 4 {
            0 => (event("ENTITY_UPDATED", 1, 10, None, None, seq), false),
            1 => (event("ROUND_PENDING", 1, 11, None, None, seq), false),
            2 => (event("SERVICE_CALL_CREATED", 2, 10, None, None, seq), false),
            _ => (event("SERVICE_CALL_CREATED", 1, 10, None, None, seq), true),
        };
        let tenant = if seq % 4 == 2 { 2 } else { 1 };
        let branch = if seq % 4 == 1 { 11 } else { 10 };
        let role = if seq % 4 == 0 { "admin" } else { "waiters" };
        store(&js, tenant, branch, role, &e).await;
        if mine {
            expected.push(e);
        }
    }
    let mut again = b.connect(&format!("/ws/waiter?token={}&{resume}", waiter_token())).await;
    let mut last = cursor;
    for e in &expected {
        let text = again.text().await;
        assert_eq!(without_cursor(&text), *e);
        assert!(cursor_of(&text) > last, "cursors increase");
        last = cursor_of(&text);
    }
    let live = event("ROUND_PENDING", 1, 10, None, None, 99);
    store(&js, 1, 10, "waiters", &live).await;
    assert_eq!(without_cursor(&again.text().await), live, "then live, nothing in between");
    assert_eq!(again.next_within(Duration::from_millis(300)).await, Seen::Nothing);

    // The replay's consumer is gone once it is done (a burst of resumes after a replica's death
    // must not pile up consumers until the stream's limit), long before the server's 30 s.
    wait_until("the replay's consumer is deleted", || {
        let js = js.clone();
        async move { js.get_stream("EVENTS").await.unwrap().cached_info().state.consumer_count == 0 }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_gap_and_no_duplicate_at_the_seam_while_events_keep_coming() {
    let stack = Stack::start().await;
    let js = events_stream(&stack).await;
    let gw = stack.gateway().await;
    let publisher = tokio::spawn({
        let js = js.clone();
        async move {
            let mut all = Vec::new();
            for seq in 0..400 {
                let e = event("ROUND_PENDING", 1, 10, None, None, seq);
                store(&js, 1, 10, "waiters", &e).await;
                all.push(e);
                if seq % 20 == 0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            all
        }
    });
    // Reconnect three times while the publisher runs, each time from the last cursor.
    let mut received: Vec<String> = Vec::new();
    let mut client = gw.connect(&format!("/ws/waiter?token={}&resume=0", waiter_token())).await;
    for round in 0..4 {
        let take = if round < 3 { 60 } else { usize::MAX };
        let mut n = 0;
        while n < take && received.len() < 400 {
            received.push(client.text().await);
            n += 1;
        }
        if received.len() == 400 {
            break;
        }
        client.close().await;
        let resume = resume_query(received.last().unwrap());
        client = gw.connect(&format!("/ws/waiter?token={}&{resume}", waiter_token())).await;
    }
    let all = tokio::time::timeout(Duration::from_secs(30), publisher).await.unwrap().unwrap();
    let got: Vec<String> = received.iter().map(|t| without_cursor(t)).collect();
    assert_eq!(got.len(), all.len());
    assert!(got == all, "every event exactly once, in order");
    assert_eq!(client.next_within(Duration::from_millis(300)).await, Seen::Nothing);
}

/// A long replay while events keep being stored: the live events that arrive during the replay
/// are held, and all of them are written, in order, before those queued after them. (They were
/// once written one at a time, each followed by the newer queued events: the resume mark passed
/// the rest of the held ones, which were skipped as copies the client had, and lost silently.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_events_held_during_a_long_replay_are_all_written_in_order() {
    const MISSED: u64 = 2000;
    const LIVE: u64 = 300;
    let stack = Stack::start().await;
    let js = events_stream(&stack).await;
    // Queues that hold the burst: a test client reads slower than a pipelined burst arrives,
    // and the default 256 would rightly cut it off as too slow.
    let gw = stack.gateway_with(&[("WS_SEND_QUEUE_SIZE", "4096")]).await;
    // Another waiter of the branch, connected throughout: once it has the last missed event,
    // the gateway has dispatched the whole burst, and what the resuming client holds during
    // its replay are the events stored after it.
    let mut observer = gw.staff("waiter", &staff_token(3, 1, &[10], &["WAITER"])).await;
    let mut client = gw.connect(&format!("/ws/waiter?token={}&resume=live", waiter_token())).await;
    store(&js, 1, 10, "waiters", &event("ROUND_PENDING", 1, 10, None, None, 0)).await;
    let resume = resume_query(&client.text().await);
    client.close().await;
    observer.text().await;
    let observed = tokio::spawn(async move {
        for _ in 0..MISSED {
            observer.text().await;
        }
        observer.close().await;
    });
    // Missed while away, enough for the replay to take a while; stored without waiting for each
    // acknowledgement.
    let missed: Vec<String> = (1..=MISSED).map(|seq| event("ROUND_PENDING", 1, 10, None, None, seq)).collect();
    let mut acks = Vec::new();
    for e in &missed {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(wire::headers::MSG_ID, wire::msg_id::Digest::of(e.as_bytes()).msg_id().as_str());
        acks.push(js.publish_with_headers("events.1.10.waiters", headers, e.clone().into()).await.unwrap());
    }
    for ack in acks {
        ack.await.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(30), observed).await.unwrap().unwrap();
    // Stored one by one while the client resumes, about one per millisecond: some arrive during
    // the replay (held), others while the held ones are written (queued). Not faster: a client
    // still reading the replay while hundreds more arrive is cut off as too slow (1013).
    let publisher = tokio::spawn({
        let js = js.clone();
        async move {
            let mut live = Vec::new();
            for seq in MISSED + 1..=MISSED + LIVE {
                let e = event("ROUND_PENDING", 1, 10, None, None, seq);
                store(&js, 1, 10, "waiters", &e).await;
                live.push(e);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            live
        }
    });
    let mut again = gw.connect(&format!("/ws/waiter?token={}&{resume}", waiter_token())).await;
    let mut got = Vec::new();
    while got.len() < (MISSED + LIVE) as usize {
        match again.next_within(Duration::from_secs(5)).await {
            Seen::Text(text) => got.push(without_cursor(&text)),
            other => {
                eprintln!("after {} events: {other:?}", got.len());
                break;
            }
        }
    }
    let live = tokio::time::timeout(Duration::from_secs(30), publisher).await.unwrap().unwrap();
    let expected: Vec<String> = missed.into_iter().chain(live).collect();
    let first_difference = got.iter().zip(&expected).position(|(g, e)| g != e);
    assert!(
        got == expected,
        "every event once, in order: {} received of {}, first difference at {first_difference:?}",
        got.len(),
        expected.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_that_no_longer_reaches_back_is_signalled() {
    let stack = Stack::start().await;
    let js = events_stream(&stack).await;
    let gw = stack.gateway_with(&[("GATEWAY_RESUME_MAX_EVENTS", "5")]).await;
    for seq in 0..10 {
        store(&js, 1, 10, "waiters", &event("ROUND_PENDING", 1, 10, None, None, seq)).await;
    }
    // More missed events than the replay limit.
    let mut client = gw.connect(&format!("/ws/waiter?token={}&resume=1", waiter_token())).await;
    let signal: serde_json::Value = serde_json::from_str(&client.text().await).unwrap();
    assert_eq!((signal["type"].as_str(), signal["reason"].as_str()), (Some("RESUME_GAP"), Some("too_many_events")));
    let next = event("ROUND_PENDING", 1, 10, None, None, 100);
    store(&js, 1, 10, "waiters", &next).await;
    assert_eq!(without_cursor(&client.text().await), next, "live continues after the signal");
    client.close().await;

    // History purged past the cursor.
    let mut stream = js.get_stream("EVENTS").await.unwrap();
    stream.purge().await.unwrap();
    store(&js, 1, 10, "waiters", &event("ROUND_PENDING", 1, 10, None, None, 101)).await;
    let oldest = stream.info().await.unwrap().state.first_sequence;
    let mut client = gw.connect(&format!("/ws/waiter?token={}&resume=2", waiter_token())).await;
    let signal: serde_json::Value = serde_json::from_str(&client.text().await).unwrap();
    assert_eq!((signal["type"].as_str(), signal["reason"].as_str()), (Some("RESUME_GAP"), Some("history_expired")));
    assert_eq!(signal["oldest"].as_u64(), Some(oldest));

    // A cursor that is not a cursor.
    let mut client = gw.connect(&format!("/ws/waiter?token={}&resume=yesterday", waiter_token())).await;
    let signal: serde_json::Value = serde_json::from_str(&client.text().await).unwrap();
    assert_eq!(signal["reason"], "invalid_cursor");
}
