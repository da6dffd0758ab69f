//! CORS on the HTTP endpoints the browser apps call from their own origin (contract section 7):
//! preflight and actual requests from an allowed origin get the old gateway's answer
//! (origin echoed, credentials, GET/POST/OPTIONS, `Authorization`/`Content-Type`/`X-Table-Token`);
//! any other origin gets no `Access-Control-*` header at all.

#[path = "support/harness.rs"]
mod harness;
use harness::*;
use testkit::{http_exchange, HttpResponse};

const APP: &str = "https://waiter.example.com";
const OTHER: &str = "https://evil.example.net";

async fn exchange(gw: &Gateway, method: &str, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    tokio::time::timeout(SOON, http_exchange(method, &gw.http(path), headers, None))
        .await
        .expect("HTTP answer in time")
        .expect("HTTP exchange")
}

fn preflight(origin: &str, headers: &str) -> [(&'static str, String); 3] {
    [
        ("Origin", origin.to_string()),
        ("Access-Control-Request-Method", "GET".to_string()),
        ("Access-Control-Request-Headers", headers.to_string()),
    ]
}

async fn options(gw: &Gateway, path: &str, origin: &str, headers: &str) -> HttpResponse {
    let h = preflight(origin, headers);
    let h: Vec<(&str, &str)> = h.iter().map(|(n, v)| (*n, v.as_str())).collect();
    exchange(gw, "OPTIONS", path, &h).await
}

fn lists(value: Option<&str>, item: &str) -> bool {
    value.unwrap_or_default().split(',').any(|v| v.trim().eq_ignore_ascii_case(item))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_answers_preflight_and_requests_from_allowed_origins_only() {
    let stack = Stack::start().await;
    let js = events_stream(&stack).await;
    let gw = stack.gateway_with(&[("ALLOWED_ORIGINS", &format!("{ORIGIN},{APP}"))]).await;
    let since = wire::clock::now_unix() as f64 - 1.0;
    let missed = event("ROUND_PENDING", 1, 10, None, None, 1);
    store(&js, 1, 10, "waiters", &missed).await;
    let catchup = format!("/ws/catchup?branch_id=10&since={since}&token={}", staff_token(2, 1, &[10], &["WAITER"]));
    let session = format!("/ws/catchup/session?session_id=77&since={since}&table_token={}", table_token(1, 10, 3, 77));

    for path in [catchup.as_str(), session.as_str()] {
        let answer = options(&gw, path, APP, "authorization,content-type,x-table-token").await;
        assert!((200..300).contains(&answer.status), "{path}: preflight answered, not 405: {answer:?}");
        assert_eq!(answer.header("access-control-allow-origin"), Some(APP), "{path}: {answer:?}");
        assert_eq!(answer.header("access-control-allow-credentials"), Some("true"), "{path}: {answer:?}");
        for method in ["GET", "POST", "OPTIONS"] {
            assert!(lists(answer.header("access-control-allow-methods"), method), "{path} allows {method}: {answer:?}");
        }
        for header in ["authorization", "content-type", "x-table-token"] {
            assert!(lists(answer.header("access-control-allow-headers"), header), "{path} allows {header}: {answer:?}");
        }

        let refused = options(&gw, path, OTHER, "authorization").await;
        assert!(!refused.has_header_prefix("access-control-"), "{path}: nothing for {OTHER}: {refused:?}");
    }

    let answer = exchange(&gw, "GET", &catchup, &[("Origin", APP)]).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.header("access-control-allow-origin"), Some(APP), "{answer:?}");
    assert_eq!(answer.header("access-control-allow-credentials"), Some("true"), "{answer:?}");
    assert!(lists(answer.header("vary"), "origin"), "caches keep one answer per origin: {answer:?}");
    let body: serde_json::Value = serde_json::from_str(&answer.body).expect("JSON body");
    assert_eq!(body["count"], 1, "the missed event is in the answer: {body}");

    let answer = exchange(&gw, "GET", &catchup, &[("Origin", OTHER)]).await;
    assert!(!answer.has_header_prefix("access-control-"), "a page of {OTHER} cannot read it: {answer:?}");

    let answer = exchange(&gw, "GET", "/ws/catchup?branch_id=10&since=0&token=bad", &[("Origin", APP)]).await;
    assert_eq!(answer.status, 401);
    assert_eq!(
        answer.header("access-control-allow-origin"),
        Some(APP),
        "the app can read the 401 and stop retrying: {answer:?}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_allowed_origins_the_defaults_and_their_https_variants_are_allowed() {
    let stack = Stack::start().await;
    let mut env = stack.env();
    env.remove("ALLOWED_ORIGINS");
    let gw = Gateway::start(env).await;
    for origin in ["http://localhost:5173", "https://localhost:5173", "https://127.0.0.1:5180"] {
        let answer = options(&gw, "/ws/catchup", origin, "authorization").await;
        assert_eq!(answer.header("access-control-allow-origin"), Some(origin), "{answer:?}");
    }
    let answer = options(&gw, "/ws/catchup", "http://localhost:8080", "authorization").await;
    assert!(!answer.has_header_prefix("access-control-"), "{answer:?}");
    gw.stop().await;
}
