//! Protocol section 4 on an open socket: every ping form, ignored text, WebSocket control pings
//! (answered, but not liveness), the heartbeat timeout, binary frames, the size limit in bytes,
//! the rate limit and its window, token re-checks closing silent connections (revocation through
//! both Redis keys, expiry of staff and table tokens), and the 1012 drain.

#[path = "support/harness.rs"]
mod harness;
use futures_util::StreamExt;
use harness::*;
use serde_json::json;
use std::time::Duration;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

const PONG: &str = r#"{"type":"pong"}"#;
/// The contract's bound on how late a heartbeat close may come.
const HEARTBEAT_GRACE: Duration = Duration::from_secs(5);

fn waiter(user: u64) -> String {
    staff_token(user, 1, &[10], &["WAITER"])
}

/// Asserts nothing arrives for a short while: the connection is open and silent.
async fn assert_quiet(client: &mut Client, what: &str) {
    assert_eq!(client.next_within(Duration::from_millis(300)).await, Seen::Nothing, "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ping_form_is_answered_and_other_text_is_ignored() {
    let stack = Stack::start().await;
    let gw = stack.gateway().await;
    let mut staff = gw.staff("waiter", &waiter(2)).await;
    let mut diner = gw.diner(&table_token(1, 10, 3, 77)).await;
    for client in [&mut staff, &mut diner] {
        for form in ["ping", r#"{"type":"ping"}"#, r#"{ "type" : "ping", "x": 1 }"#, "{\n  \"type\": \"ping\"\n}"] {
            client.send(form).await;
            assert_eq!(client.next().await, Seen::Text(PONG.into()), "reply to {form:?}");
        }
        for other in [
            "hello",
            "PING",
            "pong",
            r#"{"type":"pong"}"#,
            r#"{"type":"subscribe","branch":10}"#,
            "{not json",
            "[\"ping\"]",
            "",
        ] {
            client.send(other).await;
            client.send("ping").await;
            assert_eq!(client.next().await, Seen::Text(PONG.into()), "{other:?} is ignored and the connection stays");
        }
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_sectors_is_ignored_off_the_waiter_endpoint() {
    let stack = Stack::start().await;
    let gw = stack.gateway().await;
    let mut kitchen = gw.staff("kitchen", &staff_token(2, 1, &[10], &["KITCHEN"])).await;
    let mut admin = gw.staff("admin", &staff_token(3, 1, &[10], &["ADMIN"])).await;
    let mut diner = gw.diner(&table_token(1, 10, 3, 77)).await;
    for (name, client) in [("kitchen", &mut kitchen), ("admin", &mut admin), ("diner", &mut diner)] {
        client.send("refresh_sectors").await;
        assert_quiet(client, &format!("no reply to refresh_sectors on /ws/{name}")).await;
        client.send("ping").await;
        assert_eq!(client.next().await, Seen::Text(PONG.into()), "/ws/{name} still open after refresh_sectors");
    }
    gw.stop().await;
}

/// Sends a control ping every 300 ms; returns the close and the number of pongs seen.
async fn control_pings_until_closed(client: &mut Client, within: Duration) -> (Seen, usize) {
    let deadline = Instant::now() + within;
    let mut pongs = 0;
    while Instant::now() < deadline {
        client.send_message(Message::Ping(b"hb".to_vec().into())).await;
        let next_ping = (Instant::now() + Duration::from_millis(300)).min(deadline);
        while let Ok(frame) = tokio::time::timeout_at(next_ping, client.ws.next()).await {
            match frame {
                Some(Ok(Message::Pong(payload))) => {
                    assert_eq!(&payload[..], b"hb", "the pong echoes the ping's payload");
                    pongs += 1;
                }
                Some(Ok(Message::Close(Some(f)))) => return (Seen::Close(f.code.into(), f.reason.to_string()), pongs),
                other => panic!("control-ping client: unexpected {other:?}"),
            }
        }
    }
    (Seen::Nothing, pongs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_counts_text_frames_only() {
    let stack = Stack::start().await;
    let timeout = Duration::from_secs(1);
    let gw = stack.gateway_with(&[("WS_HEARTBEAT_TIMEOUT", "1s")]).await;
    let heartbeat = Seen::Close(1001, "Heartbeat timeout".into());

    let control_only = async {
        let mut client = gw.staff("waiter", &waiter(2)).await;
        let (seen, pongs) = control_pings_until_closed(&mut client, timeout + HEARTBEAT_GRACE).await;
        assert!(pongs >= 1, "control pings are answered with pongs");
        assert_eq!(seen, heartbeat, "a client sending only control pings is closed");
    };
    let text_pings = async {
        let mut client = gw.staff("kitchen", &staff_token(3, 1, &[10], &["KITCHEN"])).await;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(3) {
            client.ping().await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        client.ping().await;
    };
    let silent = async {
        let mut client = gw.diner(&table_token(1, 10, 3, 77)).await;
        let connected = Instant::now();
        assert_eq!(client.next_within(timeout / 2).await, Seen::Nothing, "a silent client is open before the timeout");
        assert_eq!(client.next_within(timeout + HEARTBEAT_GRACE).await, heartbeat, "a silent client is closed");
        let after = connected.elapsed();
        assert!(after >= timeout.mul_f64(0.8), "closed only after about the timeout, not after {after:?}");
    };
    tokio::join!(control_only, text_pings, silent);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_frames_close_1003() {
    let stack = Stack::start().await;
    let gw = stack.gateway().await;
    let mut staff = gw.staff("waiter", &waiter(2)).await;
    staff.send_message(Message::Binary(b"ping".to_vec().into())).await;
    staff.expect_close(1003, "Binary frames not supported").await;
    let mut diner = gw.diner(&table_token(1, 10, 3, 77)).await;
    diner.ping().await;
    diner.send_message(Message::Binary(vec![0u8; 16].into())).await;
    diner.expect_close(1003, "Binary frames not supported").await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_size_is_counted_in_bytes() {
    let stack = Stack::start().await;
    let too_large = Seen::Close(1009, "Message too large".into());
    let gw = stack.gateway().await;
    let cases = [
        ("65536 ASCII bytes (the default limit)", "a".repeat(65_536), true),
        (
            "65536 bytes of JSON",
            format!(r#"{{"type":"note","x":"{}"}}"#, "b".repeat(65_536 - r#"{"type":"note","x":""}"#.len())),
            true,
        ),
        ("65537 ASCII bytes", "a".repeat(65_537), false),
        ("40000 'é': 40000 chars, 80000 bytes", "é".repeat(40_000), false),
        ("32769 'é': 65538 bytes", "é".repeat(32_769), false),
        ("32768 'é': 65536 bytes", "é".repeat(32_768), true),
    ];
    for (user, (row, text, fits)) in (2..).zip(cases) {
        assert!(!fits || text.len() == 65_536, "{row}: test data");
        let mut client = gw.staff("waiter", &waiter(user)).await;
        client.send(&text).await;
        if fits {
            client.send("ping").await;
            assert_eq!(client.next().await, Seen::Text(PONG.into()), "{row}: accepted and still answering");
        } else {
            assert_eq!(client.next().await, too_large, "{row}");
        }
    }
    gw.stop().await;

    let gw = stack.gateway_with(&[("WS_MAX_MESSAGE_SIZE", "1000")]).await;
    let mut diner = gw.diner(&table_token(1, 10, 3, 77)).await;
    diner.send(&"é".repeat(500)).await;
    diner.ping().await;
    diner.send(&"é".repeat(600)).await;
    assert_eq!(diner.next().await, too_large, "WS_MAX_MESSAGE_SIZE=1000: 600 'é' are 1200 bytes");
    let mut staff = gw.staff("waiter", &waiter(2)).await;
    staff.send(&"x".repeat(1001)).await;
    assert_eq!(staff.next().await, too_large, "WS_MAX_MESSAGE_SIZE=1000: 1001 bytes");
    gw.stop().await;
}

/// Sends `n` pings in one burst (one flush).
async fn burst(client: &mut Client, n: usize) {
    use futures_util::SinkExt;
    let feed = async {
        for _ in 0..n {
            client.ws.feed(Message::text("ping")).await?;
        }
        client.ws.flush().await
    };
    tokio::time::timeout(SOON, feed).await.expect("burst sent in time").expect("burst sent");
}

async fn expect_pongs(client: &mut Client, n: usize, what: &str) {
    for i in 1..=n {
        assert_eq!(client.next().await, Seen::Text(PONG.into()), "{what}: pong {i} of {n}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_default_is_30_messages_per_second() {
    let stack = Stack::start().await;
    let gw = stack.gateway().await;
    let mut client = gw.staff("waiter", &waiter(2)).await;
    burst(&mut client, 31).await;
    expect_pongs(&mut client, 30, "30 messages within the window").await;
    client.expect_close(4029, "Rate limit exceeded").await;
    let mut diner = gw.diner(&table_token(1, 10, 3, 77)).await;
    for i in 0..30 {
        diner.send(if i % 2 == 0 { "hello" } else { r#"{"type":"ping"}"# }).await;
    }
    diner.send("ping").await;
    expect_pongs(&mut diner, 15, "ignored text counts too").await;
    diner.expect_close(4029, "Rate limit exceeded").await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_is_configurable_and_a_new_window_admits_again() {
    let stack = Stack::start().await;
    let gw = stack.gateway_with(&[("WS_MESSAGE_RATE_LIMIT", "5")]).await;
    let mut over = gw.staff("waiter", &waiter(2)).await;
    burst(&mut over, 6).await;
    expect_pongs(&mut over, 5, "limit 5").await;
    over.expect_close(4029, "Rate limit exceeded").await;

    let mut paced = gw.staff("waiter", &waiter(3)).await;
    burst(&mut paced, 5).await;
    expect_pongs(&mut paced, 5, "first window").await;
    tokio::time::sleep(Duration::from_millis(1300)).await; // the 1 s window must pass
    burst(&mut paced, 5).await;
    expect_pongs(&mut paced, 5, "second window").await;
    assert_quiet(&mut paced, "still open after 10 messages over two windows").await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_staff_connections_are_closed_after_revocation() {
    let stack = Stack::start().await;
    let gw = stack.gateway_with(&[("WS_TOKEN_RECHECK_INTERVAL", "1s"), ("WS_HEARTBEAT_TIMEOUT", "60s")]).await;
    let iat = wire::clock::now_unix() - 100;
    let token = |user: u64, jti: &'static str| {
        staff_token_with(user, 1, &[10], &["WAITER", "MANAGER"], move |c| {
            c["jti"] = json!(jti);
            c["iat"] = json!(iat);
        })
    };
    let mut by_jti = gw.staff("waiter", &token(2, "jti-silent-2")).await;
    let mut by_user = gw.staff("admin", &token(3, "jti-silent-3")).await;
    let mut untouched = gw.staff("kitchen", &token(4, "jti-silent-4")).await;
    let mut earlier = gw.staff("waiter", &token(5, "jti-silent-5")).await;
    assert_eq!(by_jti.next_within(Duration::from_millis(2500)).await, Seen::Nothing, "valid tokens survive re-checks");

    stack.redis_set("auth:token:blacklist:jti-silent-2", "1").await;
    by_jti.expect_close(4001, "Token expired or revoked").await;
    stack.redis_set("auth:user:revoked:3", &iso(iat + 50)).await;
    by_user.expect_close(4001, "Token expired or revoked").await;
    stack.redis_set("auth:user:revoked:5", &iso(iat - 50)).await;
    assert_eq!(earlier.next_within(Duration::from_millis(2500)).await, Seen::Nothing, "revoked before iat: stays");
    earlier.ping().await;
    untouched.ping().await;
    gw.stop().await;
}

fn iso(unix: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(unix).unwrap();
    t.format(time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]"))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_expiring_while_connected_are_closed() {
    let stack = Stack::start().await;
    let gw = stack
        .gateway_with(&[
            ("WS_TOKEN_RECHECK_INTERVAL", "1s"),
            ("WS_DINER_RECHECK_INTERVAL", "1s"),
            ("WS_HEARTBEAT_TIMEOUT", "60s"),
        ])
        .await;
    let exp = wire::clock::now_unix() + 2;
    let mut staff = gw.staff("waiter", &staff_token_with(2, 1, &[10], &["WAITER"], |c| c["exp"] = json!(exp))).await;
    let mut claims = wire::tokens::table_claims(1, 10, 3, 77, 3600);
    claims["exp"] = json!(exp);
    let mut diner = gw.diner(&wire::tokens::sign_jwt(TABLE_SECRET.as_bytes(), &claims)).await;
    let legacy = wire::tokens::legacy_table_token(TABLE_SECRET.as_bytes(), 1, 10, 4, 78, exp);
    let mut legacy_diner = gw.diner(&legacy).await;
    let mut lasting = gw.diner(&table_token(1, 10, 5, 79)).await;
    staff.expect_close(4001, "Token expired or revoked").await;
    diner.expect_close(4001, "Token expired").await;
    legacy_diner.expect_close(4001, "Token expired").await;
    assert!(wire::clock::now_unix() >= exp, "closed only once expired");
    lasting.ping().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_closes_every_client_with_1012() {
    let stack = Stack::start().await;
    let gw = stack.gateway().await;
    let mut clients = vec![
        gw.staff("waiter", &waiter(2)).await,
        gw.staff("kitchen", &staff_token(3, 1, &[10], &["KITCHEN"])).await,
        gw.staff("admin", &staff_token(4, 2, &[20], &["MANAGER"])).await,
        gw.diner(&table_token(1, 10, 3, 77)).await,
        gw.diner(&legacy_table_token(2, 20, 3, 90)).await,
    ];
    for client in &mut clients {
        client.ping().await;
    }
    gw.shutdown.cancel();
    for (i, client) in clients.iter_mut().enumerate() {
        assert_eq!(client.next().await, Seen::Close(1012, "Service restart".into()), "client {i}");
    }
    let finished = tokio::time::timeout(Duration::from_secs(20), gw.task).await.expect("gateway stops in time");
    assert!(matches!(finished, Ok(Ok(()))), "run returns Ok: {finished:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_control_pings_is_rate_limited() {
    let stack = Stack::start().await;
    let gw = stack.gateway().await;
    let mut client = gw.staff("waiter", &staff_token(2, 1, &[10], &["WAITER"])).await;
    for _ in 0..40 {
        client.send_message(Message::Ping(vec![1].into())).await;
    }
    client.expect_close(4029, "Rate limit exceeded").await;
}
