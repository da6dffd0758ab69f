//! First contact: a staff client connects, pings, and receives an event published on NATS.

#[path = "support/harness.rs"]
mod harness;
use harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_connects_pings_and_receives_an_event() {
    let stack = Stack::start().await;
    let gw = stack.gateway().await;
    let mut waiter = gw.staff("waiter", &staff_token(2, 1, &[10], &["WAITER"])).await;
    waiter.ping().await;
    let nats = stack.nats_client().await;
    let e = event("ROUND_PENDING", 1, 10, None, None, 1);
    publish(&nats, 1, 10, "waiters", &e).await;
    assert_eq!(waiter.text().await, e);
    gw.stop().await;
}
