//! Token edges over real sockets: a staff token listing a branch several times gets each event
//! once (300 copies once overflowed the queue and closed the client with 1013), and tokens not
//! valid yet (`nbf`), issued in the future (`iat` beyond the 60 s clock skew leeway) or naming
//! ids above the backend's signed 64-bit range are refused with 4001, staff and table tokens.

#[path = "support/harness.rs"]
mod harness;
use harness::*;
use serde_json::json;
use std::time::Duration;

const I64_MAX_PLUS_1: u64 = i64::MAX as u64 + 1;

/// Publishes events on branch 1 of tenant 1 and returns them in order.
async fn publish_events(stack: &Stack, first_seq: u64, n: u64) -> Vec<String> {
    let nats = stack.nats_client().await;
    let mut sent = Vec::new();
    for seq in first_seq..first_seq + n {
        let payload = event("ROUND_READY", 1, 1, None, None, seq);
        publish(&nats, 1, 1, "waiters", &payload).await;
        sent.push(payload);
    }
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_branch_listed_many_times_delivers_each_event_once() {
    let stack = Stack::start().await;
    let gw = stack.gateway().await;
    let mut thrice = gw.staff("waiter", &staff_token(2, 1, &[1, 1, 1], &["WAITER"])).await;
    let mut three_hundred = gw.staff("admin", &staff_token(3, 1, &[1; 300], &["ADMIN"])).await;
    let mut once = gw.staff("waiter", &staff_token(4, 1, &[1], &["WAITER"])).await;
    for c in [&mut thrice, &mut three_hundred, &mut once] {
        c.ping().await;
    }
    let sent = publish_events(&stack, 1, 3).await;
    for (name, client) in [("[1,1,1]", &mut thrice), ("300 x [1]", &mut three_hundred), ("[1]", &mut once)] {
        for expected in &sent {
            assert_eq!(client.text().await, *expected, "{name}: each event once, in order");
        }
        assert_eq!(client.next_within(Duration::from_millis(300)).await, Seen::Nothing, "{name}: no copies");
        client.ping().await;
    }
    let health = gw.get_json("/ws/health").await.1;
    assert_eq!(health["branches_with_connections"], 1, "{health}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_not_valid_yet_from_the_future_or_out_of_range_close_4001() {
    let stack = Stack::start().await;
    let gw = stack.gateway().await;
    let now = wire::clock::now_unix();
    let staff = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut claims = wire::tokens::staff_claims(5, 1, &[10], &["WAITER"], 3600);
        edit(&mut claims);
        format!("/ws/waiter?token={}", wire::tokens::sign_jwt(JWT_SECRET.as_bytes(), &claims))
    };
    let table = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut claims = wire::tokens::table_claims(1, 10, 3, 77, 3600);
        edit(&mut claims);
        format!("/ws/diner?table_token={}", wire::tokens::sign_jwt(TABLE_SECRET.as_bytes(), &claims))
    };
    let refused: Vec<(&str, String)> = vec![
        ("staff nbf in 2 minutes", staff(&|c| c["nbf"] = json!(now + 120))),
        ("staff iat in 2 minutes", staff(&|c| c["iat"] = json!(now + 120))),
        ("staff tenant above i64", staff(&|c| c["tenant_id"] = json!(I64_MAX_PLUS_1))),
        ("staff branch above i64", staff(&|c| c["branch_ids"] = json!([10, I64_MAX_PLUS_1]))),
        ("staff sub above i64", staff(&|c| c["sub"] = json!(I64_MAX_PLUS_1.to_string()))),
        ("table nbf in 2 minutes", table(&|c| c["nbf"] = json!(now + 120))),
        ("table iat in 2 minutes", table(&|c| c["iat"] = json!(now + 120))),
        ("table session above i64", table(&|c| c["session_id"] = json!(I64_MAX_PLUS_1))),
        (
            "legacy table above i64",
            format!(
                "/ws/diner?table_token={}",
                urlencode(&wire::tokens::legacy_table_token(
                    TABLE_SECRET.as_bytes(),
                    1,
                    I64_MAX_PLUS_1,
                    3,
                    77,
                    now + 3600
                ))
            ),
        ),
    ];
    for (row, path) in &refused {
        let mut client = gw.connect(path).await;
        assert_eq!(client.next().await, Seen::Close(4001, "Authentication failed".into()), "{row}");
    }
    let accepted = [
        (
            "staff nbf now, iat 30 s ahead (clock skew)",
            staff(&|c| {
                c["nbf"] = json!(now);
                c["iat"] = json!(now + 30);
            }),
        ),
        (
            "staff ids at i64::MAX",
            staff(&|c| {
                c["tenant_id"] = json!(i64::MAX);
                c["branch_ids"] = json!([i64::MAX]);
            }),
        ),
        ("table nbf now", table(&|c| c["nbf"] = json!(now))),
    ];
    for (row, path) in &accepted {
        let mut client = gw.connect(path).await;
        client.send("ping").await;
        assert_eq!(client.next().await, Seen::Text(r#"{"type":"pong"}"#.into()), "{row}");
    }
    assert_eq!(gw.metric(r#"gateway_handshake_rejections_total{reason="auth_failed"}"#).await, refused.len() as f64);
    gw.stop().await;
}
