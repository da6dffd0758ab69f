//! TLS to every dependency, against real servers and certificates the test makes
//! (`testkit::Pki`): Redis with `--tls-auth-clients yes` (`rediss://` plus a client certificate),
//! nats-server with `--tlsverify` (mutual TLS), and OTLP receivers that require a client
//! certificate: gRPC for the bridge (in this process), HTTP/protobuf over https for the gateway
//! (the real binary). One event each way through the bridge's two Redis sources reaches a
//! waiter, revocation look-ups and their push channel work over TLS, and both exporters deliver
//! their spans. Then each dependency is given the wrong CA: the binary refuses to start with
//! one line naming the failure.

#[path = "support/harness.rs"]
mod harness;
#[path = "support/otlp.rs"]
mod otlp;

use harness::*;
use redis::AsyncCommands;
use serde_json::json;
use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;
use testkit::{NatsServer, NatsUser, Pki, Redis, RedisTls};
use tokio_util::sync::CancellationToken;

fn path(p: std::path::PathBuf) -> String {
    p.display().to_string()
}

/// `REDIS_URL` on the TLS port with the CA and the client certificate.
fn redis_tls_env(redis: &Redis, pki: &Pki) -> Vec<(String, String)> {
    let (cert, key) = pki.client();
    vec![
        ("REDIS_URL".into(), redis.tls_url()),
        ("REDIS_TLS_CA_FILE".into(), path(pki.ca())),
        ("REDIS_TLS_CERT_FILE".into(), path(cert)),
        ("REDIS_TLS_KEY_FILE".into(), path(key)),
    ]
}

/// The OTLP variables of an exporter to `receiver` with the CA and the client certificate.
fn otlp_tls_env(receiver: &otlp::Receiver, protocol: &str, pki: &Pki) -> Vec<(String, String)> {
    let (cert, key) = pki.client();
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), receiver.url.clone()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL".into(), protocol.into()),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE".into(), path(pki.ca())),
        ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE".into(), path(cert)),
        ("OTEL_EXPORTER_OTLP_CLIENT_KEY".into(), path(key)),
        ("OTEL_TRACES_SAMPLER".into(), "always_on".into()),
        // A vendor's API key, as gRPC metadata or an HTTP header.
        ("OTEL_EXPORTER_OTLP_HEADERS".into(), "x-api-key=k%3Dsecret".into()),
    ]
}

/// The gateway binary's environment for these servers.
fn gateway_env(nats: &NatsServer, redis: &Redis, pki: &Pki, port: u16) -> HashMap<String, String> {
    let mut env: HashMap<String, String> = [
        ("JWT_SECRET", JWT_SECRET),
        ("TABLE_TOKEN_SECRET", TABLE_SECRET),
        ("ALLOWED_ORIGINS", ORIGIN),
        ("GATEWAY_DRAIN_WINDOW", "500ms"),
        ("GATEWAY_SHUTDOWN_TIMEOUT", "5s"),
        ("RUST_LOG", "info"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    env.insert("GATEWAY_LISTEN_ADDR".into(), format!("127.0.0.1:{port}"));
    env.extend(nats.env(NatsUser::Gateway));
    env.extend(redis_tls_env(redis, pki));
    env
}

/// The gateway binary; its log lines go to stdout.
fn spawn_gateway(env: &HashMap<String, String>, output: fn() -> Stdio) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .env_clear()
        .envs(env)
        .stdout(output())
        .stderr(output())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// A waiter's token for `branch` with `jti`, issued a few seconds ago.
fn token_with_jti(user: u64, branch: u64, jti: &str) -> String {
    let jti = jti.to_string();
    let iat = wire::clock::now_unix() - 5;
    staff_token_with(user, 1, &[branch], &["WAITER"], move |c| {
        c["jti"] = json!(jti);
        c["iat"] = json!(iat);
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_revocation_and_traces_over_mutual_tls() {
    let pki = Pki::generate();
    let (nats, redis) =
        tokio::join!(NatsServer::start_tls(&pki, true), Redis::start_tls(RedisTls { pki: &pki, verify_clients: true }));
    let grpc = otlp::Receiver::start_grpc(Some(otlp::Tls { pki: &pki, verify_clients: true })).await;
    let https = otlp::Receiver::start_https(otlp::Tls { pki: &pki, verify_clients: true }).await;
    assert!(grpc.url.starts_with("https://") && https.url.starts_with("https://"));

    // The bridge, in this process: both Redis sources over TLS, NATS over mutual TLS, spans over
    // gRPC with TLS.
    let mut bridge_env: HashMap<String, String> = HashMap::new();
    bridge_env.insert("BRIDGE_INSTANCE_ID".into(), "bridge-tls".into());
    bridge_env.extend(nats.env(NatsUser::Bridge));
    bridge_env.extend(redis_tls_env(&redis, &pki));
    bridge_env.extend(otlp_tls_env(&grpc, "grpc", &pki));
    let bridge = ExportingBridge::start(&bridge_env).await;

    // The gateway binary: revocation over TLS, NATS over mutual TLS, spans over https.
    let port = testkit::free_port();
    let mut env = gateway_env(&nats, &redis, &pki, port);
    env.extend(otlp_tls_env(&https, "http/protobuf", &pki));
    let mut gateway = spawn_gateway(&env, Stdio::inherit);
    let base = format!("127.0.0.1:{port}");
    wait_until("the gateway is ready", || async {
        matches!(testkit::http_get(&format!("http://{base}/readyz")).await, Ok((200, _)))
    })
    .await;
    wait_until("revocation push is active over TLS", || async {
        let (_, text) = testkit::http_get(&format!("http://{base}/ws/health/detailed")).await.unwrap();
        text.contains("\"status\":\"active\"")
    })
    .await;

    let mut waiter =
        Client::connect(&format!("ws://{base}/ws/waiter?token={}", token_with_jti(2, 7, "jti-tls-2")), Some(ORIGIN))
            .await;
    let mut doomed =
        Client::connect(&format!("ws://{base}/ws/waiter?token={}", token_with_jti(3, 8, "jti-tls-3")), Some(ORIGIN))
            .await;
    waiter.ping().await;
    doomed.ping().await;

    // The backend, unchanged, on Redis's plain port: one event by pub/sub, one on the stream.
    let backend = redis::Client::open(redis.url()).unwrap();
    let mut backend = tokio::time::timeout(SOON, backend.get_multiplexed_async_connection()).await.unwrap().unwrap();
    let by_pubsub = event("ROUND_PENDING", 1, 7, None, None, 1);
    let _: i64 = backend.publish("branch:7:waiters", &by_pubsub).await.unwrap();
    assert_eq!(waiter.text().await, by_pubsub, "pub/sub over TLS, NATS over mutual TLS");
    let by_stream = event("ROUND_PENDING", 1, 7, None, None, 2);
    let _: String = backend.xadd("events:critical", "*", &[("data", &by_stream)]).await.unwrap();
    assert_eq!(waiter.text().await, by_stream, "the stream source over TLS");
    wait_until("the stream entry was acknowledged over TLS", || {
        let mut backend = backend.clone();
        async move {
            let pending: redis::Value = redis::cmd("XPENDING")
                .arg("events:critical")
                .arg("publisher_bridge")
                .query_async(&mut backend)
                .await
                .unwrap();
            matches!(&pending, redis::Value::Array(v) if v.first() == Some(&redis::Value::Int(0)))
        }
    })
    .await;

    // Revocation: the two admissions above needed a look-up over TLS (a failed look-up refuses:
    // REVOCATION_FAIL_OPEN is off). The push channel closes a connection whose token is
    // blacklisted, and the look-up refuses it at the handshake from then on.
    let _: () = backend.set("auth:token:blacklist:jti-tls-3", "1").await.unwrap();
    doomed.expect_close(4001, "Token expired or revoked").await;
    refused(
        &format!("ws://{base}/ws/waiter?token={}", token_with_jti(3, 8, "jti-tls-3")),
        Some(ORIGIN),
        4001,
        "Authentication failed",
    )
    .await;
    waiter.ping().await;
    waiter.close().await;

    bridge.stop().await;
    terminate(&mut gateway).await;

    wait_until("the bridge's spans arrived over gRPC", || async { grpc.named("bridge.publish").len() == 2 }).await;
    wait_until("the gateway's spans arrived over https", || async { https.named("gateway.route").len() == 2 }).await;
    assert!(grpc.spans().iter().all(|s| s.service == "publisher-bridge"), "{:#?}", grpc.spans());
    assert!(https.spans().iter().all(|s| s.service == "realtime-gateway"), "{:#?}", https.spans());
    assert_eq!(grpc.named("bridge.publish")[0].trace_id, https.named("gateway.route")[0].trace_id);
    for receiver in [&grpc, &https] {
        let keys = receiver.api_keys();
        assert!(!keys.is_empty() && keys.iter().all(|k| k == "k=secret"), "{}: {keys:?}", receiver.url);
    }
}

/// Runs the gateway with `env` and returns its exit code and output (logs and stderr); it must
/// exit by itself.
async fn refused_start(env: &HashMap<String, String>) -> (Option<i32>, String) {
    let gateway = spawn_gateway(env, Stdio::piped);
    let out = tokio::time::timeout(Duration::from_secs(30), gateway.wait_with_output())
        .await
        .expect("the gateway gave up in time")
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code(), text)
}

/// The line that says why: one error line naming the dependency and the certificate problem.
fn assert_one_clear_line(output: &str, dependency: &str) {
    let errors: Vec<&str> = output.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "one error line, not {}:\n{output}", errors.len());
    eprintln!("wrong CA for {dependency}: {}", errors[0]);
    let line = errors[0].to_ascii_lowercase();
    assert!(
        errors[0].contains(dependency) && line.contains("certificate") && line.contains("unknownissuer"),
        "the error line names neither {dependency} nor the unknown issuer:\n{output}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_stops_gateway_and_bridge_with_one_clear_line() {
    let pki = Pki::generate();
    let (nats, redis) =
        tokio::join!(NatsServer::start_tls(&pki, true), Redis::start_tls(RedisTls { pki: &pki, verify_clients: true }));
    let good = gateway_env(&nats, &redis, &pki, testkit::free_port());

    let mut wrong_redis = good.clone();
    wrong_redis.insert("REDIS_TLS_CA_FILE".into(), path(pki.other_ca()));
    let (code, stderr) = refused_start(&wrong_redis).await;
    assert_ne!(code, Some(0), "{stderr}");
    assert_one_clear_line(&stderr, "Redis");

    let mut wrong_nats = good.clone();
    wrong_nats.insert("NATS_TLS_CA_FILE".into(), path(pki.other_ca()));
    let (code, stderr) = refused_start(&wrong_nats).await;
    assert_ne!(code, Some(0), "{stderr}");
    assert_one_clear_line(&stderr, "NATS");

    // The bridge stops the same way: its error names the dependency and the certificate.
    for (var, dependency) in [("REDIS_TLS_CA_FILE", "Redis"), ("NATS_TLS_CA_FILE", "NATS")] {
        let mut env: HashMap<String, String> = nats.env(NatsUser::Bridge).into_iter().collect();
        env.extend(redis_tls_env(&redis, &pki));
        env.insert(var.into(), path(pki.other_ca()));
        let config = publisher_bridge::Config::from_lookup(|k| env.get(k).cloned()).unwrap_or_else(|e| panic!("{e}"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let run = publisher_bridge::run(config, listener, CancellationToken::new());
        let error = tokio::time::timeout(Duration::from_secs(30), run).await.expect("the bridge gave up in time");
        let error = error.expect_err("a wrong CA must stop the bridge").to_string();
        eprintln!("wrong CA for the bridge's {dependency}: {error}");
        assert!(error.contains(dependency) && error.contains("UnknownIssuer"), "{error}");
    }

    // Without the client certificate, a server that verifies clients refuses the handshake.
    let mut no_client_cert = good.clone();
    no_client_cert.remove("REDIS_TLS_CERT_FILE");
    no_client_cert.remove("REDIS_TLS_KEY_FILE");
    let (code, stderr) = refused_start(&no_client_cert).await;
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains("Redis"), "{stderr}");
}

/// Traces are not a dependency the gateway waits for: with the wrong CA for the collector it
/// serves as usual, and the export's failure is logged, naming the certificate problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_collector_ca_is_logged_and_serving_goes_on() {
    let pki = Pki::generate();
    let (nats, redis) =
        tokio::join!(NatsServer::start_tls(&pki, true), Redis::start_tls(RedisTls { pki: &pki, verify_clients: true }));
    let https = otlp::Receiver::start_https(otlp::Tls { pki: &pki, verify_clients: true }).await;
    let port = testkit::free_port();
    let mut env = gateway_env(&nats, &redis, &pki, port);
    env.extend(otlp_tls_env(&https, "http/protobuf", &pki));
    env.insert("OTEL_EXPORTER_OTLP_CERTIFICATE".into(), path(pki.other_ca()));
    let gateway = spawn_gateway(&env, Stdio::piped);
    let base = format!("127.0.0.1:{port}");
    wait_until("the gateway is ready", || async {
        matches!(testkit::http_get(&format!("http://{base}/readyz")).await, Ok((200, _)))
    })
    .await;
    refused(&format!("ws://{base}/ws/waiter?token=forged"), Some(ORIGIN), 4001, "Authentication failed").await;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(gateway.id().unwrap() as i32), nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(30), gateway.wait_with_output()).await.unwrap().unwrap();
    let output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{output}");
    assert!(https.spans().is_empty(), "nothing reached the collector through an untrusted certificate");
    let errors: Vec<&str> = output.lines().filter(|l| l.contains("ERROR")).collect();
    for line in &errors {
        eprintln!("wrong CA for the collector: {line}");
    }
    assert!(
        errors.iter().any(|l| l.contains("OTLP export") && l.contains("UnknownIssuer")),
        "no error line names the certificate problem:\n{output}"
    );
}

/// Servers that only encrypt (no client certificate asked): the CA alone is enough, for Redis
/// and for NATS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_only_tls_needs_just_the_ca() {
    let pki = Pki::generate();
    let (nats, redis) = tokio::join!(
        NatsServer::start_tls(&pki, false),
        Redis::start_tls(RedisTls { pki: &pki, verify_clients: false })
    );
    let mut env = gateway_env(&nats, &redis, &pki, 0);
    env.remove("REDIS_TLS_CERT_FILE");
    env.remove("REDIS_TLS_KEY_FILE");
    assert!(!env.contains_key("NATS_TLS_CERT_FILE"), "a server that does not verify clients gets no certificate");
    let gw = Gateway::start(env).await;
    let mut waiter = gw.staff("waiter", &token_with_jti(2, 7, "jti-tls-only")).await;
    let live = event("ROUND_PENDING", 1, 7, None, None, 1);
    let operator = nats.connect(NatsUser::Operator).await;
    publish(&operator, 1, 7, "waiters", &live).await;
    assert_eq!(waiter.text().await, live);
    waiter.close().await;
    gw.stop().await;
}
