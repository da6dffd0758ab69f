//! A replica whose NATS connection drops while the stream keeps storing events: core NATS
//! delivers nothing to an absent subscriber, so everything re-published on `live.*` meanwhile
//! must be read back from the stream after the reconnect, and reach every client (resume or
//! not) in order, before what comes live afterwards, exactly once.
//!
//! The gateway reaches NATS through a TCP relay the test can cut, so the outage is exact: events
//! are stored while the gateway is certainly disconnected.

#[path = "support/harness.rs"]
mod harness;
use harness::*;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// A TCP relay to one upstream that refuses and severs connections while cut.
struct Relay {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    pipes: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Relay {
    async fn to(upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay = Relay { addr: listener.local_addr().unwrap(), cut: Arc::default(), pipes: Arc::default() };
        let (cut, pipes) = (relay.cut.clone(), relay.pipes.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if cut.load(Ordering::SeqCst) {
                    continue;
                }
                let pipe = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                pipes.lock().unwrap().push(pipe.abort_handle());
            }
        });
        relay
    }

    fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// Severs every relayed connection and refuses new ones.
    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for pipe in self.pipes.lock().unwrap().drain(..) {
            pipe.abort();
        }
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

async fn wait_nats_connected(gateway: &Gateway, connected: bool) {
    let want = if connected { 1.0 } else { 0.0 };
    wait_until("the gateway's NATS connection state", || async {
        gateway.metric("gateway_nats_connected").await == want
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stored_while_a_replica_reconnects_reach_its_clients_in_order() {
    let stack = Stack::start().await;
    let js = events_stream(&stack).await;
    let relay = Relay::to(format!("127.0.0.1:{}", stack.nats.port()).parse().unwrap()).await;
    let gateway = stack.gateway_with(&[("NATS_URL", &relay.url())]).await;

    let mut plain = gateway.staff("waiter", &staff_token(2, 1, &[10], &["WAITER"])).await;
    let mut resuming =
        gateway.connect(&format!("/ws/waiter?token={}&resume=live", staff_token(3, 1, &[10], &["WAITER"]))).await;
    // A tenant whose subscription has dispatched nothing before the outage.
    let mut quiet = gateway.staff("waiter", &staff_token(4, 2, &[20], &["WAITER"])).await;

    let before = event("ROUND_PENDING", 1, 10, None, None, 0);
    store(&js, 1, 10, "waiters", &before).await;
    assert_eq!(plain.text().await, before);
    let mut last_cursor = cursor_of(&resuming.text().await);

    relay.cut();
    wait_nats_connected(&gateway, false).await;
    let mut expected = Vec::new();
    for n in 1..=5 {
        let e = event("ROUND_PENDING", 1, 10, None, None, n);
        store(&js, 1, 10, "waiters", &e).await;
        expected.push(e);
    }
    let quiet_event = event("ROUND_PENDING", 2, 20, None, None, 1);
    store(&js, 2, 20, "waiters", &quiet_event).await;
    assert_eq!(gateway.metric("gateway_nats_connected").await, 0.0, "the events were stored during the outage");

    relay.restore();
    wait_nats_connected(&gateway, true).await;
    for n in 6..=7 {
        let e = event("ROUND_PENDING", 1, 10, None, None, n);
        store(&js, 1, 10, "waiters", &e).await;
        expected.push(e);
    }

    for (i, e) in expected.iter().enumerate() {
        assert_eq!(&plain.text().await, e, "plain client, event {} of {}", i + 1, expected.len());
        let received = resuming.text().await;
        assert_eq!(&without_cursor(&received), e, "resuming client, event {}", i + 1);
        let cursor = cursor_of(&received);
        assert!(cursor > last_cursor, "cursors keep increasing: {cursor} after {last_cursor}");
        last_cursor = cursor;
    }
    assert_eq!(
        quiet.text().await,
        quiet_event,
        "a subscription with nothing dispatched before the outage recovers too"
    );
    for client in [&mut plain, &mut resuming, &mut quiet] {
        let extra = client.next_within(Duration::from_millis(1500)).await;
        assert!(matches!(extra, Seen::Nothing), "no duplicate after the seam: {extra:?}");
    }
    assert_eq!(
        gateway.metric("gateway_nats_recovered_events_total").await,
        6.0,
        "five events of tenant 1, one of tenant 2"
    );
    assert_eq!(gateway.metric("gateway_nats_recovery_incomplete_total").await, 0.0);
}

/// Only the stream's leader re-publishes, when it applies a message: a leader that dies between
/// the commit and the apply leaves the message to followers that store it silently. Played here
/// on one node by a stream without RePublish (the events are stored, never re-published) and the
/// advisory a newly elected leader publishes: after it, every client of the replica gets the
/// stored events, in order, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_a_dead_leader_did_not_re_publish_arrive_after_the_election() {
    let stack = Stack::start().await;
    let js = events_stream(&stack).await;
    let gateway = stack.gateway().await;
    let mut plain = gateway.staff("waiter", &staff_token(2, 1, &[10], &["WAITER"])).await;
    let mut resuming =
        gateway.connect(&format!("/ws/waiter?token={}&resume=live", staff_token(3, 1, &[10], &["WAITER"]))).await;
    let first = event("ROUND_PENDING", 1, 10, None, None, 0);
    store(&js, 1, 10, "waiters", &first).await;
    assert_eq!(plain.text().await, first);
    let last_cursor = cursor_of(&resuming.text().await);

    let mut config = js.get_stream("EVENTS").await.unwrap().cached_info().config.clone();
    config.republish = None;
    js.update_stream(config).await.unwrap();
    let silent: Vec<String> = (1..=3).map(|n| event("ROUND_PENDING", 1, 10, None, None, n)).collect();
    for e in &silent {
        store(&js, 1, 10, "waiters", e).await;
    }
    assert_eq!(plain.next_within(Duration::from_millis(500)).await, Seen::Nothing, "stored, not re-published");

    let operator = stack.nats_client().await;
    let advisory = r#"{"type":"io.nats.jetstream.advisory.v1.stream_leader_elected","stream":"EVENTS"}"#;
    operator.publish("$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.EVENTS", advisory.into()).await.unwrap();
    operator.flush().await.unwrap();
    for (i, e) in silent.iter().enumerate() {
        assert_eq!(&plain.text().await, e, "plain client, event {} of {}", i + 1, silent.len());
        let received = resuming.text().await;
        assert_eq!(&without_cursor(&received), e, "resuming client, event {}", i + 1);
        assert_eq!(cursor_of(&received), last_cursor + 1 + i as u64, "in stream order");
    }
    for client in [&mut plain, &mut resuming] {
        assert_eq!(client.next_within(Duration::from_millis(1500)).await, Seen::Nothing, "once");
    }
    assert_eq!(gateway.metric("gateway_nats_recovered_events_total").await, 3.0);
}

/// `EVENTS` deleted and created again while the replica was disconnected: the new stream's
/// sequences start below the last one the replica dispatched, and its events still reach every
/// client (none is taken for a copy of what the re-read after the reconnect covered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_created_again_during_the_outage_is_followed() {
    let stack = Stack::start().await;
    let js = events_stream(&stack).await;
    let relay = Relay::to(format!("127.0.0.1:{}", stack.nats.port()).parse().unwrap()).await;
    let gateway = stack.gateway_with(&[("NATS_URL", &relay.url())]).await;
    let mut plain = gateway.staff("waiter", &staff_token(2, 1, &[10], &["WAITER"])).await;
    for n in 0..5 {
        let e = event("ROUND_PENDING", 1, 10, None, None, n);
        store(&js, 1, 10, "waiters", &e).await;
        assert_eq!(plain.text().await, e);
    }

    relay.cut();
    wait_nats_connected(&gateway, false).await;
    tokio::time::timeout(SOON, js.delete_stream("EVENTS")).await.unwrap().unwrap();
    events_stream(&stack).await;
    relay.restore();
    wait_nats_connected(&gateway, true).await;

    for n in 100..103 {
        let e = event("ROUND_PENDING", 1, 10, None, None, n);
        assert!(store(&js, 1, 10, "waiters", &e).await <= 3, "the new stream starts again");
        assert_eq!(plain.text().await, e, "event {n} of the new stream");
    }
    assert_eq!(plain.next_within(Duration::from_millis(1500)).await, Seen::Nothing, "once");
}
