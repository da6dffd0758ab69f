//! The real `gateway` binary: it refuses bad configuration with exit code 64 naming every bad
//! variable, exits 69 when NATS is unreachable, and on SIGTERM closes every client with 1012
//! spread over the drain window, then exits 0 within the grace period.

#[path = "support/harness.rs"]
mod harness;
use harness::*;
use std::process::Stdio;
use std::time::{Duration, Instant};

fn command(env: &std::collections::HashMap<String, String>) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_gateway"));
    cmd.env_clear().envs(env).env("RUST_LOG", "info").stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_exits_64_naming_every_bad_variable() {
    let env = [("WS_MAX_CONNECTIONS_PER_USER", "three"), ("NATS_URL", "not a url"), ("WS_HEARTBEAT_TIMEOUT", "-1")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let out = tokio::time::timeout(SOON, command(&env).output()).await.unwrap().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for var in ["JWT_SECRET", "TABLE_TOKEN_SECRET", "WS_MAX_CONNECTIONS_PER_USER", "NATS_URL", "WS_HEARTBEAT_TIMEOUT"] {
        assert!(stderr.contains(var), "{var} not named in:\n{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_without_nats_credentials_exits_64_in_one_line() {
    let stack = Stack::start().await;
    let mut env = stack.env();
    env.remove("NATS_USER");
    env.remove("NATS_PASSWORD");
    let out = tokio::time::timeout(SOON, command(&env).output()).await.unwrap().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line =
        stderr.lines().find(|l| l.contains("NATS_USER")).unwrap_or_else(|| panic!("no NATS_USER line:\n{stderr}"));
    assert!(line.contains("NATS_ALLOW_ANONYMOUS") && line.contains("production"), "{line}");

    // The waiver gets past the configuration; the test NATS itself refuses anonymous clients.
    env.insert("NATS_ALLOW_ANONYMOUS".into(), "true".into());
    let out = tokio::time::timeout(Duration::from_secs(30), command(&env).output()).await.unwrap().unwrap();
    let output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(69), "{output}");
    assert!(output.to_lowercase().contains("authorization"), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_nats_exits_69() {
    let stack = Stack::start().await;
    let mut env = stack.env();
    env.insert("NATS_URL".into(), format!("nats://127.0.0.1:{}", testkit::free_port()));
    let out = tokio::time::timeout(Duration::from_secs(30), command(&env).output()).await.unwrap().unwrap();
    assert_eq!(out.status.code(), Some(69), "{}", String::from_utf8_lossy(&out.stdout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_every_client_with_1012_and_exits_0() {
    let stack = Stack::start().await;
    let port = testkit::free_port();
    let mut env = stack.env();
    env.insert("GATEWAY_LISTEN_ADDR".into(), format!("127.0.0.1:{port}"));
    env.insert("GATEWAY_DRAIN_WINDOW".into(), "1s".into());
    env.insert("GATEWAY_SHUTDOWN_TIMEOUT".into(), "5s".into());
    let mut child = command(&env).spawn().unwrap();
    let base = format!("127.0.0.1:{port}");
    let ready = tokio::time::timeout(SOON, async {
        loop {
            if matches!(testkit::http_get(&format!("http://{base}/readyz")).await, Ok((200, _))) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(ready.is_ok(), "the binary never became ready");

    let ws = |path: String| {
        let url = format!("ws://{base}{path}");
        async move { Client::connect(&url, Some(ORIGIN)).await }
    };
    let mut clients = vec![
        ws(format!("/ws/waiter?token={}", staff_token(2, 1, &[10], &["WAITER"]))).await,
        ws(format!("/ws/kitchen?token={}", staff_token(3, 1, &[10], &["KITCHEN"]))).await,
        ws(format!("/ws/admin?token={}", staff_token(4, 2, &[10], &["ADMIN"]))).await,
        ws(format!("/ws/diner?table_token={}", urlencode(&table_token(1, 10, 3, 77)))).await,
    ];
    for c in &mut clients {
        c.ping().await;
    }

    let sent = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id().unwrap() as i32), nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    let mut closed_at = Vec::new();
    for c in &mut clients {
        c.expect_close(1012, "Service restart").await;
        closed_at.push(sent.elapsed());
    }
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits within the grace period")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let spread = closed_at.iter().max().unwrap().saturating_sub(*closed_at.iter().min().unwrap());
    eprintln!("closes after SIGTERM: {closed_at:?}");
    assert!(
        spread >= Duration::from_millis(400),
        "closes are spread over the 1 s drain window, not all at once: {closed_at:?}"
    );
}
