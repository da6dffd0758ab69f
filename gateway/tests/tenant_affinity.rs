//! A replica subscribes only to the tenants it holds connections for, as the NATS server itself
//! reports (`/connz?subs=1`): the subscription appears with the tenant's first client, goes a
//! short while after its last, is never a wildcard over tenants, and no replica receives another
//! tenant's traffic.

#[path = "support/harness.rs"]
mod harness;
use harness::*;
use std::time::Duration;

/// The subscriptions the NATS server holds for the connection named `instance`, but for its reply
/// inbox and the stream's leader advisories, which every replica follows from its start.
async fn live_subs(stack: &Stack, instance: &str) -> Vec<String> {
    let connz = stack.nats.connz_subs().await;
    let conn = connz["connections"]
        .as_array()
        .expect("connections")
        .iter()
        .find(|c| c["name"] == instance)
        .unwrap_or_else(|| panic!("no NATS connection named {instance} in {connz}"));
    let mut subs: Vec<String> = conn["subscriptions_list"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(|s| s.as_str())
                .filter(|s| !s.starts_with("_INBOX") && *s != gateway::LEADER_ADVISORY)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    subs.sort();
    subs
}

async fn wait_for_subs(stack: &Stack, instance: &str, expected: &[&str]) {
    let waited = tokio::time::timeout(SOON, async {
        loop {
            if live_subs(stack, instance).await == expected {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "{instance}: expected {expected:?}, NATS reports {:?}", live_subs(stack, instance).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_replica_subscribes_to_its_own_tenants_only() {
    let stack = Stack::start().await;
    let a = stack.gateway_with(&[("GATEWAY_INSTANCE_ID", "gw-a")]).await;
    let b = stack.gateway_with(&[("GATEWAY_INSTANCE_ID", "gw-b")]).await;
    assert_eq!(live_subs(&stack, "gw-a").await, Vec::<String>::new(), "nothing before the first client");
    assert_eq!(live_subs(&stack, "gw-b").await, Vec::<String>::new());

    // The 101 is only sent once the server confirmed the subscription, but its /connz report
    // can lag a moment behind: poll it.
    let mut t1_first = a.staff("admin", &staff_token(1, 1, &[10], &["ADMIN"])).await;
    let mut t1_second = a.diner(&table_token(1, 10, 3, 77)).await;
    let mut t2 = b.staff("kitchen", &staff_token(1, 2, &[10], &["KITCHEN"])).await;
    wait_for_subs(&stack, "gw-a", &["live.1.>"]).await;
    wait_for_subs(&stack, "gw-b", &["live.2.>"]).await;

    let nats = stack.nats_client().await;
    for seq in 0..20 {
        publish(&nats, 1, 10, "kitchen", &event("ROUND_READY", 1, 10, None, Some(77), seq)).await;
        publish(&nats, 2, 10, "kitchen", &event("ROUND_READY", 2, 10, None, None, seq)).await;
    }
    for _ in 0..20 {
        t1_first.text().await;
        t1_second.text().await;
        t2.text().await;
    }
    assert_eq!(a.metric("gateway_events_received_total").await, 20.0, "gw-a saw only tenant 1's events");
    assert_eq!(b.metric("gateway_events_received_total").await, 20.0, "gw-b saw only tenant 2's events");

    // One client of tenant 1 leaves: the other keeps the subscription.
    t1_first.ws.close(None).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await; // longer than GATEWAY_UNSUBSCRIBE_DELAY (500 ms)
    assert_eq!(live_subs(&stack, "gw-a").await, ["live.1.>"]);
    // The last one leaves: the subscription goes after the delay.
    t1_second.ws.close(None).await.unwrap();
    wait_for_subs(&stack, "gw-a", &[]).await;
    assert_eq!(live_subs(&stack, "gw-b").await, ["live.2.>"]);
    assert_eq!(a.metric("gateway_nats_subscriptions").await, 0.0);

    // Tenant 1 comes back to the other replica: it subscribes there, not on gw-a.
    let mut back = b.staff("admin", &staff_token(1, 1, &[10], &["ADMIN"])).await;
    wait_for_subs(&stack, "gw-b", &["live.1.>", "live.2.>"]).await;
    assert_eq!(live_subs(&stack, "gw-a").await, Vec::<String>::new());
    let e = event("ROUND_READY", 1, 10, None, None, 99);
    publish(&nats, 1, 10, "kitchen", &e).await;
    assert_eq!(back.text().await, e);
    assert_eq!(a.metric("gateway_events_received_total").await, 20.0, "gw-a no longer receives tenant 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quick_reconnect_keeps_the_subscription() {
    let stack = Stack::start().await;
    let gw = stack.gateway_with(&[("GATEWAY_INSTANCE_ID", "gw-r"), ("GATEWAY_UNSUBSCRIBE_DELAY", "3s")]).await;
    let token = staff_token(1, 5, &[10], &["ADMIN"]);
    let mut first = gw.staff("admin", &token).await;
    first.ws.close(None).await.unwrap();
    let mut again = gw.staff("admin", &token).await;
    tokio::time::sleep(Duration::from_secs(4)).await; // past the first leave's delay
    assert_eq!(
        live_subs(&stack, "gw-r").await,
        ["live.5.>"],
        "the delayed unsubscribe of the first leave must not fire"
    );
    let nats = stack.nats_client().await;
    let e = event("ROUND_READY", 5, 10, None, None, 1);
    publish(&nats, 5, 10, "kitchen", &e).await;
    assert_eq!(again.text().await, e);
}
