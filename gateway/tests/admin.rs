//! The admin API over real sockets: its own port, a bearer token (401 without or with a wrong
//! one), listing this replica's connections with filters, closing a user's or a table session's
//! connections with a chosen code (the clients see it), and a drain that ends `run` as SIGTERM
//! does. The real binary shows the audit lines (JSON) for connects, closes and admin actions.

#[path = "support/harness.rs"]
mod harness;
use harness::*;
use serde_json::{json, Value};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

const TOKEN: &str = "admin-token-0123456789abcdef";

/// A gateway of `stack` with the admin API on a free port; returns it and the admin base URL.
async fn admin_gateway(stack: &Stack) -> (Gateway, String) {
    let addr = format!("127.0.0.1:{}", testkit::free_port());
    let gw = stack.gateway_with(&[("GATEWAY_ADMIN_TOKEN", TOKEN), ("GATEWAY_ADMIN_LISTEN_ADDR", &addr)]).await;
    (gw, format!("http://{addr}"))
}

async fn call(method: &str, url: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(auth) = &auth {
        headers.push(("Authorization", auth));
    }
    let body = body.map(|b| b.to_string());
    let (status, text) = tokio::time::timeout(SOON, testkit::http_request(method, url, &headers, body.as_deref()))
        .await
        .expect("admin answer in time")
        .expect("admin request");
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn list(admin: &str, query: &str) -> Value {
    let (status, body) = call("GET", &format!("{admin}/admin/connections{query}"), Some(TOKEN), None).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn close(admin: &str, body: Value) -> (u16, Value) {
    call("POST", &format!("{admin}/admin/connections/close"), Some(TOKEN), Some(body)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_needs_the_token() {
    let stack = Stack::start().await;
    let (gw, admin) = admin_gateway(&stack).await;
    for (method, path) in [
        ("GET", "/admin/connections"),
        ("POST", "/admin/connections/close"),
        ("POST", "/admin/drain"),
        ("GET", "/nothing"),
    ] {
        let url = format!("{admin}{path}");
        assert_eq!(call(method, &url, None, Some(json!({}))).await.0, 401, "{method} {path} without a token");
        assert_eq!(
            call(method, &url, Some("admin-token-0123456789abcdeX"), Some(json!({}))).await.0,
            401,
            "{method} {path}, wrong token"
        );
        let basic = [("Authorization", "Basic YWRtaW46YWRtaW4=")];
        assert_eq!(
            testkit::http_request(method, &url, &basic, None).await.unwrap().0,
            401,
            "{method} {path}, not a bearer token"
        );
    }
    assert_eq!(gw.get("/readyz").await.0, 200, "a refused drain request drains nothing");
    assert_eq!(gw.get("/admin/connections").await.0, 404, "the public port has no admin routes");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_connections_with_filters() {
    let stack = Stack::start().await;
    let (gw, admin) = admin_gateway(&stack).await;
    let _w1 = gw.staff("waiter", &staff_token(2, 1, &[7], &["WAITER", "KITCHEN"])).await;
    let _w2 =
        gw.connect(&format!("/ws/kitchen?token={}&resume=live", staff_token(2, 1, &[7], &["WAITER", "KITCHEN"]))).await;
    let _k = gw.staff("kitchen", &staff_token(3, 1, &[7], &["KITCHEN"])).await;
    let _other_tenant = gw.staff("admin", &staff_token(2, 2, &[7], &["ADMIN"])).await;
    let _d = gw.diner(&table_token(1, 7, 3, 42)).await;
    gw.wait_connections(5).await;

    let all = list(&admin, "").await;
    assert_eq!(
        (all["matched"].as_u64(), all["returned"].as_u64(), all["truncated"].as_bool()),
        (Some(5), Some(5), Some(false))
    );
    let empty_filters = list(&admin, "?tenant_id=&user_id=&endpoint=&session_id=").await;
    assert_eq!(empty_filters["matched"], 5, "empty parameters filter nothing");

    let user = list(&admin, "?tenant_id=1&user_id=2").await;
    assert_eq!(user["matched"], 2, "{user}");
    let conns = user["connections"].as_array().unwrap();
    let endpoints: Vec<&str> = conns.iter().map(|c| c["endpoint"].as_str().unwrap()).collect();
    assert_eq!(endpoints, ["waiter", "kitchen"], "in admission order");
    let kitchen = &conns[1];
    assert_eq!((kitchen["tenant_id"].as_u64(), kitchen["user_id"].as_u64()), (Some(1), Some(2)));
    assert_eq!(kitchen["resume"], true);
    assert_eq!(conns[0]["resume"], false);
    assert!(kitchen["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{kitchen}");
    assert!(kitchen["connected_since"].as_str().unwrap().ends_with('Z'), "{kitchen}");
    assert!(kitchen["connected_seconds"].as_f64().unwrap() < 60.0);
    assert_eq!(kitchen["closing"], false);

    assert_eq!(list(&admin, "?user_id=2").await["matched"], 3, "user 2 of both tenants");
    assert_eq!(list(&admin, "?tenant_id=1&endpoint=kitchen").await["matched"], 2);
    let diner = list(&admin, "?endpoint=diner").await;
    assert_eq!(diner["matched"], 1);
    assert_eq!(
        (diner["connections"][0]["session_id"].as_u64(), diner["connections"][0].get("user_id")),
        (Some(42), None)
    );
    let limited = list(&admin, "?limit=2").await;
    assert_eq!((limited["returned"].as_u64(), limited["truncated"].as_bool()), (Some(2), Some(true)));

    for bad in ["?tenant_id=one", "?endpoint=bar", "?colour=red"] {
        let (status, body) = call("GET", &format!("{admin}/admin/connections{bad}"), Some(TOKEN), None).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["error"].is_string(), "{body}");
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closes_a_users_connections_with_the_chosen_code() {
    let stack = Stack::start().await;
    let (gw, admin) = admin_gateway(&stack).await;
    let token = staff_token(2, 1, &[7], &["WAITER", "KITCHEN"]);
    let mut waiter = gw.staff("waiter", &token).await;
    let mut kitchen = gw.staff("kitchen", &token).await;
    let mut colleague = gw.staff("waiter", &staff_token(3, 1, &[7], &["WAITER"])).await;
    let mut same_id_other_tenant = gw.staff("waiter", &staff_token(2, 9, &[7], &["WAITER"])).await;

    let (status, body) = close(
        &admin,
        json!({"tenant_id": 1, "user_id": 2, "endpoint": "waiter", "code": 4100, "reason": "Moved by support"}),
    )
    .await;
    assert_eq!((status, body["matched"].as_u64(), body["closed"].as_u64()), (200, Some(1), Some(1)), "{body}");
    waiter.expect_close(4100, "Moved by support").await;
    kitchen.ping().await;

    let (status, body) = close(&admin, json!({"tenant_id": 1, "user_id": 2, "code": 1008, "reason": "Policy"})).await;
    assert_eq!((status, body["closed"].as_u64()), (200, Some(1)), "{body}");
    kitchen.expect_close(1008, "Policy").await;
    colleague.ping().await;
    same_id_other_tenant.ping().await;
    gw.wait_connections(2).await;
    let closed = gw.metric(r#"gateway_connections_closed_total{endpoint="waiter",reason="admin_closed"}"#).await;
    assert_eq!(closed, 1.0);

    let (status, body) = close(&admin, json!({"tenant_id": 1, "user_id": 2, "code": 4100})).await;
    assert_eq!((status, body["matched"].as_u64()), (200, Some(0)), "nothing left to close: {body}");

    for bad in [
        json!({"tenant_id": 1, "user_id": 3, "code": 1006}),
        json!({"tenant_id": 1, "user_id": 3, "code": 3000}),
        json!({"tenant_id": 1, "user_id": 3, "code": 4000, "reason": "x".repeat(124)}),
        json!({"user_id": 3, "code": 4000}),
        json!({"tenant_id": 1, "code": 4000}),
        json!({"tenant_id": 1, "user_id": 3, "session_id": 4, "code": 4000}),
        json!({"tenant_id": 1, "user_id": 3, "endpoint": "bar", "code": 4000}),
        json!({"tenant_id": 1, "user_id": 3}),
        json!({"tenant_id": 1, "user_id": 3, "code": 4000, "colour": "red"}),
    ] {
        let (status, body) = close(&admin, bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    colleague.ping().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closes_a_table_sessions_connections() {
    let stack = Stack::start().await;
    let (gw, admin) = admin_gateway(&stack).await;
    let mut first = gw.diner(&table_token(1, 7, 3, 42)).await;
    let mut second = gw.diner(&legacy_table_token(1, 7, 3, 42)).await;
    let mut other_table = gw.diner(&table_token(1, 7, 4, 43)).await;
    let (status, body) =
        close(&admin, json!({"tenant_id": 1, "session_id": 42, "code": 4002, "reason": "Table closed"})).await;
    assert_eq!((status, body["closed"].as_u64()), (200, Some(2)), "{body}");
    first.expect_close(4002, "Table closed").await;
    second.expect_close(4002, "Table closed").await;
    other_table.ping().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_through_the_api_ends_run_like_sigterm() {
    let stack = Stack::start().await;
    let (gw, admin) = admin_gateway(&stack).await;
    let mut waiter = gw.staff("waiter", &staff_token(2, 1, &[7], &["WAITER"])).await;
    let mut diner = gw.diner(&table_token(1, 7, 3, 42)).await;
    let (status, body) = call("POST", &format!("{admin}/admin/drain"), Some(TOKEN), None).await;
    assert_eq!(
        (status, body["draining"].as_bool(), body["connections"].as_u64()),
        (202, Some(true), Some(2)),
        "{body}"
    );
    waiter.expect_close(1012, "Service restart").await;
    diner.expect_close(1012, "Service restart").await;
    let ended = tokio::time::timeout(Duration::from_secs(20), gw.task).await.expect("run returns after the drain");
    ended.unwrap().unwrap();
}

/// The binary's stdout, line by line, collected in the background.
fn collect(stdout: tokio::process::ChildStdout) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    tokio::spawn(async move {
        let mut reader = tokio::io::BufReader::new(stdout).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

fn audit(lines: &Arc<Mutex<Vec<String>>>) -> Vec<Value> {
    lines
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "audit")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_writes_audit_lines_and_exits_0_after_a_drain_through_the_api() {
    let stack = Stack::start().await;
    let (port, admin_port) = (testkit::free_port(), testkit::free_port());
    let mut env = stack.env();
    env.insert("GATEWAY_LISTEN_ADDR".into(), format!("127.0.0.1:{port}"));
    env.insert("GATEWAY_ADMIN_LISTEN_ADDR".into(), format!("127.0.0.1:{admin_port}"));
    env.insert("GATEWAY_ADMIN_TOKEN".into(), TOKEN.into());
    env.insert("LOG_FORMAT".into(), "json".into());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .env_clear()
        .envs(&env)
        .env("RUST_LOG", "warn,audit=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let lines = collect(child.stdout.take().unwrap());
    let base = format!("127.0.0.1:{port}");
    let admin = format!("http://127.0.0.1:{admin_port}");
    wait_until("the binary is ready", || async {
        matches!(testkit::http_get(&format!("http://{base}/readyz")).await, Ok((200, _)))
    })
    .await;

    let mut waiter =
        Client::connect(&format!("ws://{base}/ws/waiter?token={}", staff_token(2, 1, &[7], &["WAITER"])), Some(ORIGIN))
            .await;
    let mut diner = Client::connect(
        &format!("ws://{base}/ws/diner?table_token={}", urlencode(&table_token(1, 7, 3, 42))),
        Some(ORIGIN),
    )
    .await;
    waiter.ping().await;
    diner.ping().await;
    let (status, _) = close(&admin, json!({"tenant_id": 1, "user_id": 2, "code": 4100, "reason": "Bye"})).await;
    assert_eq!(status, 200);
    waiter.expect_close(4100, "Bye").await;
    assert_eq!(call("POST", &format!("{admin}/admin/drain"), Some(TOKEN), None).await.0, 202);
    diner.expect_close(1012, "Service restart").await;
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(0), "the process exits 0 after a drain through the API");
    wait_until("stdout is read to the end", || async { audit(&lines).iter().any(|l| l["action"] == "admin_drain") })
        .await;

    let lines = audit(&lines);
    let find = |action: &str, key: &str, value: Value| {
        lines
            .iter()
            .find(|l| l["action"] == action && l[key] == value)
            .cloned()
            .unwrap_or_else(|| panic!("no {action} line with {key}={value} in {lines:#?}"))
    };
    let connect = find("connect", "user_id", json!(2));
    assert_eq!(
        (connect["tenant_id"].as_u64(), connect["endpoint"].as_str(), connect["level"].as_str()),
        (Some(1), Some("waiter"), Some("INFO"))
    );
    assert!(connect["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{connect}");
    let closed = find("close", "user_id", json!(2));
    assert_eq!(
        (closed["code"].as_u64(), closed["reason"].as_str(), closed["by"].as_str()),
        (Some(4100), Some("Bye"), Some("server")),
        "{closed}"
    );
    assert!(closed["duration_s"].as_f64().unwrap() >= 0.0);
    let diner_connect = find("connect", "session_id", json!(42));
    assert_eq!(diner_connect["endpoint"], "diner");
    assert!(diner_connect.get("user_id").is_none(), "{diner_connect}");
    let diner_closed = find("close", "session_id", json!(42));
    assert_eq!((diner_closed["code"].as_u64(), diner_closed["reason"].as_str()), (Some(1012), Some("Service restart")));
    let admin_close = find("admin_close", "user_id", json!(2));
    assert_eq!((admin_close["closed"].as_u64(), admin_close["code"].as_u64()), (Some(1), Some(4100)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_the_admin_api_is_off_and_says_so() {
    let stack = Stack::start().await;
    let (port, admin_port) = (testkit::free_port(), testkit::free_port());
    let mut env = stack.env();
    env.insert("GATEWAY_LISTEN_ADDR".into(), format!("127.0.0.1:{port}"));
    env.insert("GATEWAY_ADMIN_LISTEN_ADDR".into(), format!("127.0.0.1:{admin_port}"));
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .env_clear()
        .envs(&env)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let lines = collect(child.stdout.take().unwrap());
    wait_until("the binary is ready", || async {
        matches!(testkit::http_get(&format!("http://127.0.0.1:{port}/readyz")).await, Ok((200, _)))
    })
    .await;
    assert!(lines.lock().unwrap().iter().any(|l| l.contains("admin API disabled: GATEWAY_ADMIN_TOKEN is not set")));
    assert!(
        testkit::http_get(&format!("http://127.0.0.1:{admin_port}/admin/connections")).await.is_err(),
        "nothing listens on the admin port"
    );
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id().unwrap() as i32), nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    assert_eq!(tokio::time::timeout(Duration::from_secs(20), child.wait()).await.unwrap().unwrap().code(), Some(0));
}
