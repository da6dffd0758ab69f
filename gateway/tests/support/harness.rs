//! Integration-test harness: real nats-server, redis-server and (when asked) PostgreSQL from
//! `testkit`, gateways run in-process through `gateway::run` on 127.0.0.1:0, and a
//! WebSocket client with timeouts on every read. Included by each test file with
//! `#[path = "support/harness.rs"] mod harness;`.
#![allow(dead_code)]

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use testkit::{NatsServer, NatsUser, Postgres, Redis};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

pub const JWT_SECRET: &str = "test-jwt-secret";
pub const TABLE_SECRET: &str = "test-table-secret";
pub const ORIGIN: &str = "http://localhost:5173";
/// Generous bound for anything that should happen "at once".
pub const SOON: Duration = Duration::from_secs(10);

/// The backing services of one test.
pub struct Stack {
    pub nats: NatsServer,
    pub redis: Redis,
    pub pg: Option<Postgres>,
}

impl Stack {
    pub async fn start() -> Stack {
        let (nats, redis) = tokio::join!(NatsServer::start(), Redis::start());
        Stack { nats, redis, pg: None }
    }

    pub async fn with_postgres() -> Stack {
        let (nats, redis, pg) = tokio::join!(NatsServer::start(), Redis::start(), Postgres::start());
        Stack { nats, redis, pg: Some(pg) }
    }

    /// The environment a gateway of this stack starts with: logged in to NATS as user `gateway`.
    pub fn env(&self) -> HashMap<String, String> {
        let mut env: HashMap<String, String> = [
            ("JWT_SECRET", JWT_SECRET),
            ("TABLE_TOKEN_SECRET", TABLE_SECRET),
            ("ALLOWED_ORIGINS", "http://localhost:5173,http://127.0.0.1:5173"),
            ("GATEWAY_LISTEN_ADDR", "127.0.0.1:0"),
            ("GATEWAY_UNSUBSCRIBE_DELAY", "500ms"),
            ("GATEWAY_DRAIN_WINDOW", "500ms"),
            ("GATEWAY_SHUTDOWN_TIMEOUT", "5s"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        env.extend(self.nats.env(NatsUser::Gateway));
        env.insert("REDIS_URL".into(), self.redis.url());
        if let Some(pg) = &self.pg {
            env.insert("DATABASE_URL".into(), pg.url());
        }
        env
    }

    pub async fn gateway(&self) -> Gateway {
        self.gateway_with(&[]).await
    }

    /// A gateway with `overrides` applied to [`Stack::env`] (an empty value removes the variable).
    pub async fn gateway_with(&self, overrides: &[(&str, &str)]) -> Gateway {
        let mut env = self.env();
        for (k, v) in overrides {
            if v.is_empty() {
                env.remove(*k);
            } else {
                env.insert(k.to_string(), v.to_string());
            }
        }
        Gateway::start(env).await
    }

    /// A NATS client logged in as the operator user: tests that play the backend or the bridge
    /// (publishing on `live.*` or `events.*`) or read the stream directly.
    pub async fn nats_client(&self) -> async_nats::Client {
        self.nats.connect(NatsUser::Operator).await
    }

    /// `NATS_URL` and the bridge user's credentials, for an in-process bridge of this stack.
    pub fn bridge_nats_env(&self) -> Vec<(String, String)> {
        self.nats.env(NatsUser::Bridge)
    }

    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(self.redis.url()).unwrap();
        tokio::time::timeout(SOON, client.get_multiplexed_async_connection()).await.unwrap().unwrap()
    }

    pub async fn sql(&self, statement: &str) {
        let url = &self.pg.as_ref().expect("stack started with_postgres").url();
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("PostgreSQL connect");
        tokio::spawn(conn);
        client.batch_execute(statement).await.expect(statement);
    }
}

/// A gateway running in this process.
pub struct Gateway {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<Result<(), gateway::StartError>>,
}

impl Gateway {
    pub async fn start(env: HashMap<String, String>) -> Gateway {
        // Gateway logs in test output when asked for: RUST_LOG=gateway=debug cargo test ...
        if std::env::var_os("RUST_LOG").is_some() {
            gateway::telemetry::init(wire::settings::LogFormat::Text);
        }
        let config = gateway::Config::from_map(&env).unwrap_or_else(|e| panic!("{e}"));
        let listener = tokio::net::TcpListener::bind(config.listen_addr).await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(gateway::run(config, listener, shutdown.clone()));
        let gw = Gateway { addr, shutdown, task };
        gw.wait_ready().await;
        gw
    }

    pub async fn wait_ready(&self) {
        let url = self.http("/readyz");
        let ready = tokio::time::timeout(SOON, async {
            loop {
                if matches!(testkit::http_get(&url).await, Ok((200, _))) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        assert!(ready.is_ok(), "gateway at {} never became ready", self.addr);
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn ws(&self, path_and_query: &str) -> String {
        format!("ws://{}{path_and_query}", self.addr)
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        tokio::time::timeout(SOON, testkit::http_get(&self.http(path)))
            .await
            .expect("HTTP answer in time")
            .expect("HTTP GET")
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let (status, body) = self.get(path).await;
        (status, serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}")))
    }

    /// The value of one metric series line (`name{labels}`), 0 when absent.
    /// The value of one exact series (`name{labels}`). A series not exposed reads 0 only when its
    /// family is declared (`# TYPE`) or, for a labelled family with no series yet (which the
    /// exposition omits), documented in README's metrics table; any other name panics, so a typo
    /// cannot pass an `== 0.0` assertion.
    pub async fn metric(&self, series: &str) -> f64 {
        let (_, text) = self.get("/ws/metrics").await;
        if let Some(value) =
            text.lines().find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        {
            return value.trim().parse().unwrap_or_else(|e| panic!("{series}: {e}: {value}"));
        }
        let name = series.split('{').next().unwrap_or(series);
        let declared =
            text.lines().any(|l| l.strip_prefix("# TYPE ").is_some_and(|t| t.split(' ').next() == Some(name)));
        let readme = std::fs::read_to_string(testkit::repo_root().join("README.md")).expect("README.md");
        let documented = series.contains('{') && readme.contains(&format!("| `{name}` |"));
        assert!(declared || documented, "no metric {name} in /ws/metrics nor in README's metrics table");
        0.0
    }

    pub async fn connect(&self, path_and_query: &str) -> Client {
        Client::connect(&self.ws(path_and_query), Some(ORIGIN)).await
    }

    pub async fn staff(&self, endpoint: &str, token: &str) -> Client {
        self.connect(&format!("/ws/{endpoint}?token={token}")).await
    }

    pub async fn diner(&self, table_token: &str) -> Client {
        self.connect(&format!("/ws/diner?table_token={}", urlencode(table_token))).await
    }

    /// Cancels and waits for `run` to return.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("gateway stops in time")
            .unwrap()
            .unwrap();
    }
}

pub fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// What a client saw next.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    Text(String),
    Close(u16, String),
    /// The connection ended without a close frame.
    Dropped,
    Nothing,
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    pub async fn connect(url: &str, origin: Option<&str>) -> Client {
        let mut request = url.into_client_request().unwrap();
        if let Some(origin) = origin {
            request.headers_mut().insert("Origin", origin.parse().unwrap());
        }
        let (ws, response) = tokio::time::timeout(SOON, tokio_tungstenite::connect_async(request))
            .await
            .expect("handshake in time")
            .unwrap_or_else(|e| panic!("handshake with {url}: {e}"));
        assert_eq!(response.status(), 101);
        Client { ws }
    }

    pub async fn send(&mut self, text: &str) {
        tokio::time::timeout(SOON, self.ws.send(Message::text(text))).await.expect("send in time").expect("send");
    }

    pub async fn send_message(&mut self, message: Message) {
        tokio::time::timeout(SOON, self.ws.send(message)).await.expect("send in time").expect("send");
    }

    /// The next text or close within `within`; control frames are skipped.
    pub async fn next_within(&mut self, within: Duration) -> Seen {
        let read = async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Text(t))) => return Seen::Text(t.to_string()),
                    Some(Ok(Message::Close(Some(f)))) => return Seen::Close(u16::from(f.code), f.reason.to_string()),
                    Some(Ok(Message::Close(None))) => return Seen::Close(u16::from(CloseCode::Status), String::new()),
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => return Seen::Dropped,
                }
            }
        };
        tokio::time::timeout(within, read).await.unwrap_or(Seen::Nothing)
    }

    pub async fn next(&mut self) -> Seen {
        self.next_within(SOON).await
    }

    pub async fn text(&mut self) -> String {
        match self.next().await {
            Seen::Text(t) => t,
            other => panic!("expected a text message, saw {other:?}"),
        }
    }

    /// Asserts the server closes with `code` and `reason`.
    pub async fn expect_close(&mut self, code: u16, reason: &str) {
        self.expect_close_within(code, reason, SOON).await
    }

    pub async fn expect_close_within(&mut self, code: u16, reason: &str, within: Duration) {
        assert_eq!(self.next_within(within).await, Seen::Close(code, reason.to_string()));
    }

    pub async fn ping(&mut self) {
        self.send("ping").await;
        assert_eq!(self.text().await, r#"{"type":"pong"}"#);
    }
}

/// A client whose socket receive buffer is tiny, so not reading backs up the server quickly.
pub async fn stalled_client(url: &str) -> Client {
    let addr = url.trim_start_matches("ws://").split('/').next().unwrap().parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert("Origin", ORIGIN.parse().unwrap());
    let (ws, _) = tokio::time::timeout(SOON, tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream)))
        .await
        .unwrap()
        .unwrap();
    Client { ws }
}

/// Connects and expects an immediate close (refused handshake).
pub async fn refused(url: &str, origin: Option<&str>, code: u16, reason: &str) {
    let mut client = Client::connect(url, origin).await;
    client.expect_close(code, reason).await;
}

// Tokens, minted exactly as the backend mints them.

pub fn staff_token(user: u64, tenant: u64, branches: &[u64], roles: &[&str]) -> String {
    wire::tokens::sign_jwt(JWT_SECRET.as_bytes(), &wire::tokens::staff_claims(user, tenant, branches, roles, 3600))
}

pub fn staff_token_with(
    user: u64,
    tenant: u64,
    branches: &[u64],
    roles: &[&str],
    edit: impl FnOnce(&mut Value),
) -> String {
    let mut claims = wire::tokens::staff_claims(user, tenant, branches, roles, 3600);
    edit(&mut claims);
    wire::tokens::sign_jwt(JWT_SECRET.as_bytes(), &claims)
}

pub fn table_token(tenant: u64, branch: u64, table: u64, session: u64) -> String {
    wire::tokens::sign_jwt(
        TABLE_SECRET.as_bytes(),
        &wire::tokens::table_claims(tenant, branch, table, session, 3 * 3600),
    )
}

pub fn legacy_table_token(tenant: u64, branch: u64, table: u64, session: u64) -> String {
    wire::tokens::legacy_table_token(
        TABLE_SECRET.as_bytes(),
        tenant,
        branch,
        table,
        session,
        wire::clock::now_unix() + 3600,
    )
}

// Events.

/// A backend event; `seq` makes its text unique.
pub fn event(ty: &str, tenant: u64, branch: u64, sector: Option<u64>, session: Option<u64>, seq: u64) -> String {
    json!({
        "type": ty, "tenant_id": tenant, "branch_id": branch, "table_id": 3,
        "session_id": session, "sector_id": sector, "entity": {"seq": seq}, "actor": {},
        "ts": "2026-11-23T10:00:00.000001Z", "v": 1,
    })
    .to_string()
}

/// Publishes on the live subject the way JetStream re-publishes a stored event.
pub async fn publish(nats: &async_nats::Client, tenant: u64, branch: u64, role: &str, payload: &str) {
    let subject = format!("live.{tenant}.{branch}.{role}");
    nats.publish(subject, payload.to_string().into()).await.unwrap();
    nats.flush().await.unwrap();
}

// Helpers added for handshake.rs, session.rs and http_endpoints.rs.

/// Polls `check` every 50 ms until it holds; panics naming `what` after [`SOON`].
pub async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let done = tokio::time::timeout(SOON, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(done.is_ok(), "timed out waiting until {what}");
}

impl Stack {
    /// `SET key value` in the backend's Redis (revocation keys).
    pub async fn redis_set(&self, key: &str, value: &str) {
        let mut redis = self.redis().await;
        let mut set = redis::cmd("SET");
        set.arg(key).arg(value);
        tokio::time::timeout(SOON, set.query_async::<()>(&mut redis))
            .await
            .expect("Redis SET in time")
            .expect("Redis SET");
    }
}

impl Gateway {
    /// Waits until `/ws/health` reports `n` open connections.
    pub async fn wait_connections(&self, n: u64) {
        wait_until(&format!("{} has {n} connections", self.addr), || async {
            self.get_json("/ws/health").await.1["total_connections"] == n
        })
        .await;
    }
}

impl Client {
    /// Closes from the client side (1000) and waits until the connection has ended.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(SOON, self.ws.close(None)).await;
        let _ = tokio::time::timeout(SOON, async { while let Some(Ok(_)) = self.ws.next().await {} }).await;
    }
}

// JetStream, as the bridge lays it out.

/// Creates the EVENTS and EVENTS_DLQ streams exactly as the bridge does.
pub async fn events_stream(stack: &Stack) -> async_nats::jetstream::Context {
    let js = async_nats::jetstream::new(stack.nats_client().await);
    let settings = publisher_bridge::config::StreamSettings::default();
    tokio::time::timeout(SOON, publisher_bridge::sink::streams::ensure_streams(&js, &settings)).await.unwrap().unwrap();
    js
}

/// Publishes a backend event into the EVENTS stream the way the bridge does; returns its sequence.
pub async fn store(js: &async_nats::jetstream::Context, tenant: u64, branch: u64, role: &str, payload: &str) -> u64 {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(wire::headers::MSG_ID, wire::msg_id::Digest::of(payload.as_bytes()).msg_id().as_str());
    let ack = js
        .publish_with_headers(format!("events.{tenant}.{branch}.{role}"), headers, payload.to_string().into())
        .await
        .unwrap();
    tokio::time::timeout(SOON, ack).await.unwrap().unwrap().sequence
}

/// The `_cursor` of an event a resuming client received.
pub fn cursor_of(text: &str) -> u64 {
    let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
    v["_cursor"].as_u64().unwrap_or_else(|| panic!("no _cursor in {text}"))
}

/// The `_epoch` of an event a resuming client received (`None` when the gateway knew none).
pub fn epoch_of(text: &str) -> Option<String> {
    let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
    v["_epoch"].as_str().map(str::to_string)
}

/// `resume=<cursor>&epoch=<epoch>` for the last event a resuming client received.
pub fn resume_query(text: &str) -> String {
    match epoch_of(text) {
        Some(epoch) => format!("resume={}&epoch={epoch}", cursor_of(text)),
        None => format!("resume={}", cursor_of(text)),
    }
}

/// The event without its `_cursor` and `_epoch` keys, as the backend published it.
pub fn without_cursor(text: &str) -> String {
    let prefix_end = text.find(',').expect("a spliced cursor is followed by a comma");
    let rest = &text[prefix_end + 1..];
    let rest = match rest.strip_prefix("\"_epoch\":\"") {
        Some(epoch) => &epoch[epoch.find("\",").expect("an epoch is followed by a comma") + 2..],
        None => rest,
    };
    format!("{{{rest}")
}

// Trace tests: a bridge exporting spans in this process, the gateway binary beside it.

/// A publisher-bridge run in this process with logging and span export installed as its binary
/// installs them (the subscriber is global: one per test process).
pub struct ExportingBridge {
    telemetry: wire::otel::Telemetry,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), publisher_bridge::BridgeError>>,
}

impl ExportingBridge {
    /// Starts the bridge with `env` (its export must be on) and waits until it is ready.
    pub async fn start(env: &HashMap<String, String>) -> ExportingBridge {
        let config = publisher_bridge::Config::from_lookup(|k| env.get(k).cloned()).unwrap_or_else(|e| panic!("{e}"));
        let telemetry = publisher_bridge::telemetry::install(&config).unwrap();
        assert!(telemetry.exporting(), "the bridge exports spans");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ready = format!("http://{}/readyz", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let task = tokio::spawn(publisher_bridge::run(config, listener, stop.clone()));
        wait_until("the bridge is ready", || async { matches!(testkit::http_get(&ready).await, Ok((200, _))) }).await;
        ExportingBridge { telemetry, stop, task }
    }

    /// Stops the bridge, which must end cleanly, and flushes its spans.
    pub async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(SOON, self.task).await.expect("the bridge stopped in time").unwrap().unwrap();
        self.telemetry.shutdown().await;
    }
}

/// SIGTERM to a gateway binary, which must drain, flush and exit 0 within 20 s.
pub async fn terminate(gateway: &mut tokio::process::Child) {
    let pid = nix::unistd::Pid::from_raw(gateway.id().expect("the gateway is running") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), gateway.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(0));
}
