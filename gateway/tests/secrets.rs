//! The real `gateway` binary never prints a password from its URLs: started with passworded
//! `REDIS_URL`, `DATABASE_URL` and `NATS_URL`, through its start line, a database error, the
//! health and metrics answers, a drain, and the start failures (NATS unreachable, Redis
//! unreachable, bad configuration), at debug level, its output holds none of them.

#[path = "support/harness.rs"]
mod harness;
use harness::*;
use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

const REDIS_PW: &str = "redis-S3cret-pw";
const DB_PW: &str = "db-S3cret-pw";
const NATS_PW: &str = "nats-S3cret-pw";

fn command(env: &HashMap<String, String>) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_gateway"));
    cmd.env_clear().envs(env).env("RUST_LOG", "debug").stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    cmd
}

fn assert_no_password(what: &str, text: &str) {
    for pw in [REDIS_PW, DB_PW, NATS_PW] {
        assert!(!text.contains(pw), "{what} shows a password:\n{text}");
    }
}

/// stdout and stderr of a finished run.
fn output(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

async fn redis_require_password(stack: &Stack) {
    let mut redis = stack.redis().await;
    let set = redis::cmd("CONFIG").arg("SET").arg("requirepass").arg(REDIS_PW).clone();
    tokio::time::timeout(SOON, set.query_async::<()>(&mut redis)).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_in_urls_never_reach_the_output() {
    let stack = Stack::start().await;
    redis_require_password(&stack).await;
    let port = testkit::free_port();
    let mut env = stack.env();
    env.insert("GATEWAY_LISTEN_ADDR".into(), format!("127.0.0.1:{port}"));
    env.insert("REDIS_URL".into(), format!("redis://:{REDIS_PW}@127.0.0.1:{}/0", stack.redis.port()));
    // Nothing listens there: every sector look-up fails and is logged.
    let db_port = testkit::free_port();
    env.insert("DATABASE_URL".into(), format!("postgresql+psycopg://app:{DB_PW}@127.0.0.1:{db_port}/menu"));
    let mut child = command(&env).spawn().unwrap();
    // Read both pipes from the start: a full pipe would block the gateway's logging.
    let read = |mut pipe: Box<dyn tokio::io::AsyncRead + Unpin + Send>| {
        tokio::spawn(async move {
            let mut text = String::new();
            tokio::io::AsyncReadExt::read_to_string(&mut pipe, &mut text).await.map(|_| text)
        })
    };
    let stdout = read(Box::new(child.stdout.take().unwrap()));
    let stderr = read(Box::new(child.stderr.take().unwrap()));
    let base = format!("http://127.0.0.1:{port}");
    let ready = tokio::time::timeout(SOON, async {
        while !matches!(testkit::http_get(&format!("{base}/readyz")).await, Ok((200, _))) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(ready.is_ok(), "the binary never became ready");

    let mut waiter = Client::connect(
        &format!("ws://127.0.0.1:{port}/ws/waiter?token={}", staff_token(2, 1, &[10], &["WAITER"])),
        Some(ORIGIN),
    )
    .await;
    waiter.send("refresh_sectors").await;
    assert_eq!(waiter.text().await, "sectors_updated:", "no database: no sectors");
    for path in ["/ws/health/detailed", "/ws/health", "/ws/metrics"] {
        let (_, body) = tokio::time::timeout(SOON, testkit::http_get(&format!("{base}{path}"))).await.unwrap().unwrap();
        assert_no_password(path, &body);
        if path == "/ws/health/detailed" {
            let health: serde_json::Value = serde_json::from_str(&body).unwrap();
            let database = &health["dependencies"]["database"];
            assert!(database["status"] == "down" && database["error"].is_string(), "the error is reported: {body}");
        }
    }

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id().unwrap() as i32), nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    waiter.expect_close(1012, "Service restart").await;
    let out = tokio::time::timeout(Duration::from_secs(20), async {
        assert_eq!(child.wait().await.unwrap().code(), Some(0));
        format!("{}{}", stdout.await.unwrap().unwrap(), stderr.await.unwrap().unwrap())
    })
    .await
    .expect("exits after the drain");
    assert_no_password("the gateway's output", &out);
    assert!(
        out.contains(&format!("redis://:***@127.0.0.1:{}/0", stack.redis.port())),
        "masked in the start line:\n{out}"
    );
    assert!(out.contains(&format!("postgres://app:***@127.0.0.1:{db_port}/menu")), "masked in the start line:\n{out}");
    assert!(out.contains("sector look-up failed"), "the database error path ran:\n{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_failures_name_urls_without_their_passwords() {
    let stack = Stack::start().await;
    let free = testkit::free_port();
    let nats = format!("nats://gateway:{NATS_PW}@127.0.0.1:{free}");
    let cases = [
        // async-nats logs the server address, password included, at debug level.
        ("NATS unreachable", "NATS_URL", nats.clone(), "text", 69),
        ("NATS unreachable, JSON logs", "NATS_URL", nats, "json", 69),
        ("NATS token unreachable", "NATS_URL", format!("nats://{NATS_PW}@127.0.0.1:{free}"), "text", 69),
        ("Redis unreachable", "REDIS_URL", format!("redis://:{REDIS_PW}@127.0.0.1:{free}/0"), "text", 69),
        ("Redis URL invalid", "REDIS_URL", format!("redis://:{REDIS_PW}@127.0.0.1:port/0"), "text", 64),
        ("database URL invalid", "DATABASE_URL", format!("postgres://app:{DB_PW}@127.0.0.1:port/menu"), "text", 64),
    ];
    for (row, var, url, log_format, code) in cases {
        let mut env = stack.env();
        env.insert(var.into(), url);
        env.insert("LOG_FORMAT".into(), log_format.into());
        let out = tokio::time::timeout(Duration::from_secs(40), command(&env).output()).await.unwrap().unwrap();
        let text = output(&out);
        assert_eq!(out.status.code(), Some(code), "{row}:\n{text}");
        assert!(text.contains("***@") || text.contains(var), "{row}: the problem is named:\n{text}");
        assert_no_password(row, &text);
    }
}
