//! Protocol section 7 and the probes: `/ws/health` counts against a known set of open
//! connections (and back down after they leave), `/ws/health/detailed` per dependency (NATS,
//! JetStream, Redis, PostgreSQL), the Prometheus text of `/ws/metrics` and `/metrics` with the
//! legacy `wsgateway_*` series, and `/livez` / `/readyz` including a drain.

#[path = "support/harness.rs"]
mod harness;
use harness::*;
use serde_json::{json, Value};
use std::time::Duration;

const LEGACY_KEYS: [&str; 8] = [
    "total_connections",
    "max_connections",
    "utilization_percent",
    "users_connected",
    "branches_with_connections",
    "sectors_with_connections",
    "sessions_with_connections",
    "admin_connections",
];

/// The counts of `/ws/health` this test checks, as one JSON object.
fn counts(health: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for key in LEGACY_KEYS {
        out.insert(key.into(), health[key].clone());
    }
    out.insert("connections_by_endpoint".into(), health["connections_by_endpoint"].clone());
    Value::Object(out)
}

#[allow(clippy::too_many_arguments)]
fn expected(
    total: u64,
    users: u64,
    branches: u64,
    sectors: u64,
    sessions: u64,
    admins: u64,
    by_endpoint: [u64; 4],
) -> Value {
    json!({
        "total_connections": total, "max_connections": 100, "utilization_percent": total as f64,
        "users_connected": users, "branches_with_connections": branches, "sectors_with_connections": sectors,
        "sessions_with_connections": sessions, "admin_connections": admins,
        "connections_by_endpoint": {
            "waiter": by_endpoint[0], "kitchen": by_endpoint[1], "admin": by_endpoint[2], "diner": by_endpoint[3],
        },
    })
}

async fn wait_counts(gw: &Gateway, want: &Value, what: &str) {
    wait_until(&format!("/ws/health shows {what}: {want}"), || async {
        counts(&gw.get_json("/ws/health").await.1) == *want
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_counts_the_open_connections() {
    let stack = Stack::start().await;
    let gw = stack.gateway_with(&[("WS_MAX_TOTAL_CONNECTIONS", "100")]).await;
    let (status, health) = gw.get_json("/ws/health").await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "healthy");
    for key in LEGACY_KEYS {
        assert!(health[key].is_number(), "/ws/health has the legacy key {key}: {health}");
    }
    assert_eq!(counts(&health), expected(0, 0, 0, 0, 0, 0, [0; 4]), "no connections yet");

    let waiter = staff_token(2, 1, &[10], &["WAITER"]);
    let waiter_a = gw.staff("waiter", &waiter).await;
    let waiter_b = gw.staff("waiter", &waiter).await;
    let admin = gw.staff("admin", &staff_token(3, 1, &[10, 11], &["MANAGER"])).await;
    let kitchen = gw.staff("kitchen", &staff_token(4, 1, &[12], &["KITCHEN"])).await;
    let diner_a = gw.diner(&table_token(1, 10, 3, 77)).await;
    let diner_b = gw.diner(&legacy_table_token(1, 10, 4, 77)).await;
    let (_, health) = gw.get_json("/ws/health").await;
    assert_eq!(
        counts(&health),
        expected(6, 3, 3, 0, 1, 1, [2, 1, 1, 2]),
        "2 waiters of one user, 1 admin (branches 10, 11), 1 kitchen (branch 12), 2 diners of one session"
    );

    waiter_a.close().await;
    diner_a.close().await;
    wait_counts(&gw, &expected(4, 3, 3, 0, 1, 1, [1, 1, 1, 1]), "one waiter and one diner gone").await;
    waiter_b.close().await;
    diner_b.close().await;
    wait_counts(&gw, &expected(2, 2, 3, 0, 0, 1, [0, 1, 1, 0]), "user 2 and session 77 gone").await;
    admin.close().await;
    drop(kitchen); // a dropped TCP connection, no close frame
    wait_counts(&gw, &expected(0, 0, 0, 0, 0, 0, [0; 4]), "everyone gone").await;
    gw.stop().await;
}

/// `(HTTP status, overall status, [nats, jetstream, redis, database] statuses)`.
async fn detailed(gw: &Gateway) -> (u16, Value, [Value; 4]) {
    let (status, body) = gw.get_json("/ws/health/detailed").await;
    let deps = &body["dependencies"];
    (status, body["status"].clone(), ["nats", "jetstream", "redis", "database"].map(|d| deps[d]["status"].clone()))
}

async fn create_events_stream(stack: &Stack) {
    let js = async_nats::jetstream::new(stack.nats_client().await);
    let config = async_nats::jetstream::stream::Config {
        name: "EVENTS".into(),
        subjects: vec!["events.>".into()],
        ..Default::default()
    };
    tokio::time::timeout(SOON, js.get_or_create_stream(config))
        .await
        .expect("stream created in time")
        .expect("stream created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_detailed_reports_jetstream_and_redis() {
    let mut stack = Stack::start().await;
    let gw = stack.gateway().await;
    let (status, overall, deps) = detailed(&gw).await;
    assert_eq!(status, 503, "no EVENTS stream yet");
    assert_eq!(overall, "degraded");
    assert_eq!(
        deps,
        [json!("up"), json!("down"), json!("up"), json!("not_configured")],
        "nats, jetstream, redis, database"
    );

    // The checks run at most once a second, so a change shows within about a second.
    create_events_stream(&stack).await;
    wait_until("the EVENTS stream shows", || async { detailed(&gw).await.0 == 200 }).await;
    let (status, overall, deps) = detailed(&gw).await;
    assert_eq!((status, overall), (200, json!("healthy")), "EVENTS stream exists");
    assert_eq!(deps, [json!("up"), json!("up"), json!("up"), json!("not_configured")]);
    let (_, body) = gw.get_json("/ws/health/detailed").await;
    assert_eq!(body["dependencies"]["jetstream"]["stream"], "EVENTS", "{body}");

    stack.redis.kill();
    wait_until("the dead Redis shows", || async { detailed(&gw).await.0 == 503 }).await;
    let (status, overall, deps) = detailed(&gw).await;
    assert_eq!((status, overall), (503, json!("degraded")), "Redis killed");
    assert_eq!(deps, [json!("up"), json!("up"), json!("down"), json!("not_configured")]);
    let (_, body) = gw.get_json("/ws/health/detailed").await;
    assert!(body["dependencies"]["redis"]["error"].is_string(), "the error is named: {body}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_detailed_reports_the_database_and_health_counts_sectors() {
    let stack = Stack::with_postgres().await;
    create_events_stream(&stack).await;
    let without = stack.gateway_with(&[("DATABASE_URL", "")]).await;
    let (status, _, deps) = detailed(&without).await;
    assert_eq!((status, &deps[3]), (200, &json!("not_configured")), "no DATABASE_URL");
    without.stop().await;

    let gw = stack.gateway().await;
    let (status, overall, deps) = detailed(&gw).await;
    assert_eq!((status, overall), (200, json!("healthy")), "PostgreSQL configured");
    assert_eq!(deps, [json!("up"), json!("up"), json!("up"), json!("up")]);

    stack
        .sql(
            "CREATE TABLE waiter_sector_assignment (id serial PRIMARY KEY, tenant_id integer NOT NULL,
               branch_id integer, sector_id integer NOT NULL, waiter_id integer NOT NULL,
               assignment_date date NOT NULL DEFAULT current_date, is_active boolean NOT NULL DEFAULT true);
             INSERT INTO waiter_sector_assignment (tenant_id, branch_id, sector_id, waiter_id) VALUES (1, 10, 42, 5), (1, 10, 43, 5);",
        )
        .await;
    let _waiter = gw.staff("waiter", &staff_token(5, 1, &[10], &["WAITER"])).await;
    let (_, health) = gw.get_json("/ws/health").await;
    assert_eq!(health["sectors_with_connections"], 2, "waiter 5 holds sectors 42 and 43: {health}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_prometheus_text_with_the_legacy_series() {
    let stack = Stack::start().await;
    let gw = stack.gateway().await;
    let mut waiter = gw.staff("waiter", &staff_token(2, 1, &[10], &["WAITER"])).await;
    refused(&gw.ws("/ws/kitchen?token=garbage"), Some(ORIGIN), 4001, "Authentication failed").await;
    for path in ["/ws/metrics", "/metrics"] {
        let (status, text) = gw.get(path).await;
        assert_eq!(status, 200, "{path}");
        for line in [
            "# TYPE gateway_connections gauge",
            r#"gateway_connections{endpoint="waiter"} 1"#,
            "# TYPE wsgateway_connections gauge",
            "wsgateway_connections 1",
            r#"wsgateway_connections_rejected_total{reason="auth_failed"} 1"#,
            "# TYPE wsgateway_events_processed_total counter",
            "wsgateway_events_processed_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{path} lacks {line:?}:\n{text}");
        }
    }

    // Prometheus text unless the scraper asks for OpenMetrics (contract section 7).
    for (accept, content_type, last_line) in [
        (None, "text/plain; version=0.0.4; charset=utf-8", None),
        (Some("text/plain;version=0.0.4"), "text/plain; version=0.0.4; charset=utf-8", None),
        (
            Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5"),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Some("# EOF"),
        ),
    ] {
        let headers: Vec<(&str, &str)> = accept.map(|a| ("Accept", a)).into_iter().collect();
        let answer = tokio::time::timeout(SOON, testkit::http_exchange("GET", &gw.http("/ws/metrics"), &headers, None))
            .await
            .expect("metrics in time")
            .expect("metrics");
        assert_eq!(answer.header("content-type"), Some(content_type), "Accept: {accept:?}");
        assert_eq!(answer.body.lines().last() == Some("# EOF"), last_line.is_some(), "Accept: {accept:?}");
    }

    let nats = stack.nats_client().await;
    let first = event("ROUND_PENDING", 1, 10, None, None, 1);
    publish(&nats, 1, 10, "waiters", &first).await;
    assert_eq!(waiter.text().await, first);
    assert_eq!(gw.metric("wsgateway_events_processed_total").await, 1.0, "one event processed");

    publish(&nats, 1, 10, "waiters", "this is not JSON").await;
    let second = event("ROUND_PENDING", 1, 10, None, None, 2);
    publish(&nats, 1, 10, "waiters", &second).await;
    assert_eq!(waiter.text().await, second, "the bad payload is not delivered, the next event is");
    let dropped = r#"wsgateway_events_dropped_total{reason="not_json"}"#;
    wait_until("the not_json drop is counted", || async { gw.metric(dropped).await == 1.0 }).await;
    assert_eq!(gw.metric(r#"gateway_events_invalid_total{reason="not_json"}"#).await, 1.0);
    assert_eq!(gw.metric("wsgateway_events_processed_total").await, 3.0, "every message received is processed");
    let (_, text) = gw.get("/metrics").await;
    assert!(text.lines().any(|l| l == format!("{dropped} 1")), "/metrics serves the same series:\n{text}");

    waiter.close().await;
    gw.wait_connections(0).await;
    assert_eq!(gw.metric("wsgateway_connections").await, 0.0);
    assert_eq!(gw.metric(r#"gateway_connections{endpoint="waiter"}"#).await, 0.0);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn livez_and_readyz_through_a_drain() {
    let stack = Stack::start().await;
    let gw = stack.gateway_with(&[("GATEWAY_DRAIN_WINDOW", "3s"), ("GATEWAY_SHUTDOWN_TIMEOUT", "8s")]).await;
    assert_eq!(gw.get("/livez").await.0, 200);
    assert_eq!(gw.get("/readyz").await, (200, "ready".to_string()));
    let mut clients = Vec::new();
    for user in 2..=4 {
        clients.push(gw.staff("waiter", &staff_token(user, 1, &[10], &["WAITER"])).await);
    }
    gw.shutdown.cancel();
    wait_until("/readyz answers 503", || async { gw.get("/readyz").await.0 == 503 }).await;
    assert_eq!(gw.get("/livez").await.0, 200, "alive while draining");
    assert_eq!(gw.get_json("/ws/health").await.1["status"], "draining");
    let (status, body) = gw.get_json("/ws/health/detailed").await;
    assert_eq!((status, &body["status"]), (503, &json!("draining")));
    for client in &mut clients {
        client.expect_close(1012, "Service restart").await;
    }
    tokio::time::timeout(Duration::from_secs(20), gw.task).await.expect("drain ends in time").unwrap().unwrap();
}

/// Redis's count of PING commands served so far.
async fn pings_served(stack: &Stack) -> u64 {
    let mut redis = stack.redis().await;
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(&mut redis).await.expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_ping:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().expect("a count"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_detailed_checks_its_dependencies_at_most_once_a_second() {
    let stack = Stack::start().await;
    create_events_stream(&stack).await;
    let gw = stack.gateway().await;
    let before = pings_served(&stack).await;
    let started = std::time::Instant::now();
    let answers = futures_util::future::join_all((0..50).map(|_| detailed(&gw))).await;
    let rounds = started.elapsed().as_secs() + 1;
    assert!(answers.iter().all(|(status, ..)| *status == 200), "{answers:?}");
    let pings = pings_served(&stack).await - before;
    // One PING per round of checks, one round per second at most (an unauthenticated endpoint
    // must not turn each request into a Redis, JetStream and database request).
    assert!(pings <= rounds + 2, "{pings} Redis PINGs for 50 requests in {rounds} s");
    assert!(pings >= 1, "the checks ran");
    gw.stop().await;
}
