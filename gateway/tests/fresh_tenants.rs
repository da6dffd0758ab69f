//! A tenant's first client is admitted only once NATS confirmed the tenant's subscription with
//! a real round trip, and what the stream stores from then on reaches it: 2,000 fresh tenants,
//! each with its first event stored in `EVENTS` right after its first client's handshake, while
//! the tenants before it leave and their subscriptions are dropped (a short
//! `GATEWAY_UNSUBSCRIBE_DELAY`). Every first event must be delivered.

#[path = "support/harness.rs"]
mod harness;
use futures_util::StreamExt;
use harness::*;
use std::time::Instant;

const TENANTS: u64 = 2_000;
/// Handshakes in flight at once.
const CONCURRENCY: usize = 32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fresh_tenants_first_event_is_delivered_while_others_unsubscribe() {
    let stack = Stack::start().await;
    let js = events_stream(&stack).await;
    let gw = stack.gateway_with(&[("GATEWAY_UNSUBSCRIBE_DELAY", "20ms")]).await;
    let started = Instant::now();
    let outcomes: Vec<Result<(), String>> = futures_util::stream::iter(1..=TENANTS)
        .map(|tenant| {
            let (gw, js) = (&gw, &js);
            async move {
                let mut client = gw.staff("waiter", &staff_token(1, tenant, &[10], &["WAITER"])).await;
                let first = event("ROUND_PENDING", tenant, 10, None, None, tenant);
                store(js, tenant, 10, "waiters", &first).await;
                let seen = client.next().await;
                // Leaving at once: this tenant's subscription goes 20 ms later, while others join.
                client.close().await;
                match seen {
                    Seen::Text(text) if text == first => Ok(()),
                    other => Err(format!("tenant {tenant}: {other:?}")),
                }
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let missed: Vec<&String> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert!(missed.is_empty(), "{} of {TENANTS} first events missed: {missed:?}", missed.len());
    eprintln!("{TENANTS} fresh tenants in {:.1} s", started.elapsed().as_secs_f64());
    // The unsubscribes did happen meanwhile: every tenant is dropped once its client left.
    wait_until("every tenant subscription is dropped", || async {
        gw.metric("gateway_nats_subscriptions").await == 0.0
    })
    .await;
    assert!(gw.metric("gateway_events_received_total").await >= TENANTS as f64);
}
