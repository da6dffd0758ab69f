//! Token revocation against a real `redis-server`: a Redis restart signs nobody out (the first
//! look-up after it is retried on a fresh connection), and revocations the backend writes are
//! pushed by Redis keyspace notifications to every replica, which close the affected staff
//! connections with 4001 within a second (the timer re-check, 300 s by default, is not what
//! closes them here). Run with `--no-capture` to see the measured times.

#[path = "support/harness.rs"]
mod harness;
use harness::*;
use serde_json::json;
use std::time::{Duration, Instant};
use testkit::{NatsServer, Redis};

const REVOKED: (u16, &str) = (4001, "Token expired or revoked");
/// What "within a second" is asserted as on a shared 2-core machine; the measured time is printed.
const PUSH_BOUND: Duration = Duration::from_secs(5);

/// An ISO-8601 UTC time with microseconds, as the backend writes `auth:user:revoked:{user}`.
fn iso_now() -> String {
    time::OffsetDateTime::now_utc()
        .format(time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]+00:00"
        ))
        .unwrap()
}

/// A staff token as the backend mints it, issued `age` seconds ago with `jti`.
fn token(user: u64, tenant: u64, roles: &[&str], jti: &str, age: i64) -> String {
    let jti = jti.to_string();
    let iat = wire::clock::now_unix() - age;
    staff_token_with(user, tenant, &[10], roles, move |c| {
        c["jti"] = json!(jti);
        c["iat"] = json!(iat);
    })
}

async fn push_status(gw: &Gateway) -> String {
    let (_, health) = gw.get_json("/ws/health/detailed").await;
    health["revocation_push"]["status"].as_str().unwrap_or_default().to_string()
}

async fn wait_push_active(gw: &Gateway) {
    wait_until(&format!("push revocation active on {}", gw.addr), || async { push_status(gw).await == "active" }).await;
}

/// `SET key value` on an open connection, as the backend writes its revocation keys.
async fn set(redis: &mut redis::aio::MultiplexedConnection, key: &str, value: &str) {
    let set = redis::cmd("SET").arg(key).arg(value).clone();
    tokio::time::timeout(SOON, set.query_async::<()>(redis)).await.expect("SET in time").expect("SET");
}

/// Waits for the close of every client at once; returns when each saw it, from `since`.
async fn closes(clients: &mut [&mut Client], since: Instant) -> Vec<Duration> {
    let waits = clients.iter_mut().map(|client| async move {
        let seen = client.next_within(PUSH_BOUND).await;
        (seen, since.elapsed())
    });
    let mut out = Vec::new();
    for (seen, at) in futures_util::future::join_all(waits).await {
        assert_eq!(seen, Seen::Close(REVOKED.0, REVOKED.1.into()), "closed by push within {PUSH_BOUND:?}");
        out.push(at);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_signs_nobody_out() {
    let mut stack = Stack::start().await;
    // Fail closed (the default), and re-checks often enough to run right after the restart.
    let gw = stack.gateway_with(&[("WS_TOKEN_RECHECK_INTERVAL", "1s")]).await;
    let staff = token(2, 1, &["WAITER"], "jti-restart-2", 5);
    let mut first = gw.staff("waiter", &staff).await;
    first.ping().await;

    stack.redis.restart().await;

    // The gateway's Redis connection is now dead: the next look-up fails on it, and is retried
    // on a fresh connection instead of becoming a 4001.
    let mut second = gw.staff("waiter", &staff).await;
    second.ping().await;
    let mut third = gw.staff("admin", &token(3, 1, &["ADMIN"], "jti-restart-3", 5)).await;
    third.ping().await;
    // The open connection's timer re-checks ran across the restart too.
    assert_eq!(first.next_within(Duration::from_millis(2500)).await, Seen::Nothing, "no close after the restart");
    first.ping().await;
    assert_eq!(gw.metric(r#"gateway_handshake_rejections_total{reason="auth_failed"}"#).await, 0.0);

    // The push subscription came back by itself too.
    wait_push_active(&gw).await;
    let mut redis = stack.redis().await;
    let since = Instant::now();
    set(&mut redis, "auth:user:revoked:2", &iso_now()).await;
    let at = closes(&mut [&mut first, &mut second], since).await;
    eprintln!("after a Redis restart, pushed revocation closed both connections after {at:?}");
    third.close().await;

    // Down longer than the client library's own reconnect attempts (about 6 s), as a restart
    // that loads a dataset or moves a container is: the first look-up afterwards fails on the
    // connection the library gave up on, and only the retry on a fresh one admits the client.
    // (Connections open meanwhile would be closed by their re-checks: Redis is down, fail closed.)
    stack.redis.kill();
    tokio::time::sleep(Duration::from_secs(8)).await;
    stack.redis.restart().await;
    let mut after_outage = gw.staff("kitchen", &token(4, 1, &["KITCHEN"], "jti-outage-4", 5)).await;
    after_outage.ping().await;
    assert_eq!(gw.metric(r#"gateway_handshake_rejections_total{reason="auth_failed"}"#).await, 0.0);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_are_pushed_to_every_replica_within_a_second() {
    let stack = Stack::start().await;
    let a = stack.gateway().await;
    let b = stack.gateway().await;
    wait_push_active(&a).await;
    wait_push_active(&b).await;
    assert_eq!(a.metric("gateway_revocation_push_active").await, 1.0);

    // One user on both replicas, two tokens; the same user id in another tenant; bystanders.
    let fired = token(7, 1, &["WAITER"], "jti-fired-7a", 5);
    let mut fired_a = a.staff("waiter", &fired).await;
    let mut fired_b = b.staff("admin", &token(7, 1, &["MANAGER"], "jti-fired-7b", 5)).await;
    let mut fired_other_tenant = b.staff("kitchen", &token(7, 2, &["KITCHEN"], "jti-fired-7c", 5)).await;
    let mut other_a = a.staff("waiter", &token(8, 1, &["WAITER"], "jti-other-8", 5)).await;
    let mut other_b = b.staff("waiter", &token(8, 1, &["WAITER"], "jti-other-8", 5)).await;
    // Issued after the revocation time below: not revoked by it.
    let mut newer = a.staff("waiter", &token(7, 1, &["WAITER"], "jti-newer-7", -30)).await;
    for c in [&mut fired_a, &mut fired_b, &mut fired_other_tenant, &mut other_a, &mut other_b, &mut newer] {
        c.ping().await;
    }

    // The backend revokes user 7: `SET auth:user:revoked:7 <now>`.
    let mut redis = stack.redis().await;
    let since = Instant::now();
    set(&mut redis, "auth:user:revoked:7", &iso_now()).await;
    let at = closes(&mut [&mut fired_a, &mut fired_b, &mut fired_other_tenant], since).await;
    eprintln!("auth:user:revoked: closed on both replicas after {at:?}");
    for c in [&mut other_a, &mut other_b, &mut newer] {
        c.ping().await;
    }

    // The backend blacklists one token: `SET auth:token:blacklist:{jti} 1`, both replicas.
    let mut token_a = a.staff("waiter", &token(9, 1, &["WAITER"], "jti-black-9", 5)).await;
    let mut token_b = b.staff("kitchen", &token(9, 1, &["KITCHEN"], "jti-black-9", 5)).await;
    let mut same_user_other_token = b.staff("waiter", &token(9, 1, &["WAITER"], "jti-white-9", 5)).await;
    token_a.ping().await;
    token_b.ping().await;
    same_user_other_token.ping().await;
    let since = Instant::now();
    set(&mut redis, "auth:token:blacklist:jti-black-9", "1").await;
    let at = closes(&mut [&mut token_a, &mut token_b], since).await;
    eprintln!("auth:token:blacklist: closed on both replicas after {at:?}");
    for c in [&mut same_user_other_token, &mut other_a, &mut other_b, &mut newer] {
        c.ping().await;
    }

    // A key the backend removes again changes nothing.
    let del = redis::cmd("DEL").arg("auth:user:revoked:8").arg("auth:token:blacklist:jti-other-8").clone();
    tokio::time::timeout(SOON, del.query_async::<()>(&mut redis)).await.unwrap().unwrap();
    other_a.ping().await;

    assert_eq!(a.metric("gateway_revocation_push_closed_total").await, 2.0);
    assert_eq!(b.metric("gateway_revocation_push_closed_total").await, 3.0);
    let (_, health) = b.get_json("/ws/health/detailed").await;
    assert_eq!(health["revocation_push"]["notify_keyspace_events"], "$K", "{health}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_revocation_reports_inactive_when_redis_does_not_notify() {
    let (nats, redis) = tokio::join!(NatsServer::start(), Redis::start_with_args(&["--notify-keyspace-events", ""]));
    let stack = Stack { nats, redis, pg: None };
    events_stream(&stack).await;
    let gw = stack.gateway_with(&[("WS_TOKEN_RECHECK_INTERVAL", "1s")]).await;
    wait_until("push revocation reported inactive", || async { push_status(&gw).await == "inactive" }).await;
    assert_eq!(gw.metric("gateway_revocation_push_active").await, 0.0);
    let (status, health) = gw.get_json("/ws/health/detailed").await;
    assert_eq!(status, 200, "push revocation is not a dependency: {health}");
    // The timer re-check is the fallback.
    let mut client = gw.staff("waiter", &token(4, 1, &["WAITER"], "jti-fallback-4", 5)).await;
    client.ping().await;
    stack.redis_set("auth:user:revoked:4", &iso_now()).await;
    client.expect_close(REVOKED.0, REVOKED.1).await;
    assert_eq!(gw.metric("gateway_revocation_push_closed_total").await, 0.0);
    gw.stop().await;
}
