//! The real `publisher-bridge` binary and NATS credentials: in production (the default) it
//! refuses to start without any, saying why in one line with exit code 64; with the explicit
//! waiver it gets past its configuration, and a NATS with users still refuses it.

use std::process::Stdio;
use std::time::Duration;

use testkit::{NatsServer, Redis};

async fn run(env: &[(&str, String)]) -> (Option<i32>, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_publisher-bridge"));
    cmd.env_clear()
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("BRIDGE_LISTEN_ADDR", "127.0.0.1:0")
        .env("BRIDGE_STARTUP_TIMEOUT", "3s")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output()).await.expect("exits in time").expect("runs");
    (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_without_nats_credentials_exits_64_in_one_line() {
    let (nats, redis) = tokio::join!(NatsServer::start(), Redis::start());
    let mut env = vec![("REDIS_URL", redis.url()), ("NATS_URL", nats.url())];
    let (code, output) = run(&env).await;
    assert_eq!(code, Some(64), "{output}");
    let line =
        output.lines().find(|l| l.contains("NATS_USER")).unwrap_or_else(|| panic!("no NATS_USER line:\n{output}"));
    assert!(line.contains("NATS_ALLOW_ANONYMOUS") && line.contains("production"), "{line}");

    env.push(("NATS_ALLOW_ANONYMOUS", "true".into()));
    let (code, output) = run(&env).await;
    assert_ne!(code, Some(64), "the waiver passes the configuration:\n{output}");
    assert_ne!(code, Some(0), "the NATS of the tests refuses anonymous clients:\n{output}");
    assert!(output.to_lowercase().contains("authorization"), "{output}");
}
