//! The gateway behind the load balancers of `deploy/`: real HAProxy and nginx (Debian packages)
//! rendered from `deploy/haproxy/haproxy.cfg` and `deploy/nginx/nginx.conf` by
//! `testkit`, in front of two in-process replicas. For both: the WebSocket upgrade passes
//! and events flow; the proxies' idle limits exceed the heartbeat (read from the configuration,
//! plus a live check with a short heartbeat); connections spread over both replicas. HAProxy
//! only (nginx open source has no active health checks): a draining replica leaves rotation.

#[path = "support/harness.rs"]
mod harness;
use harness::*;
use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;
use testkit::{http_get, Haproxy, Nginx};

/// Either proxy, for the scenarios both must pass.
enum Proxy {
    Haproxy(Haproxy),
    Nginx(Nginx),
}

impl Proxy {
    async fn start(kind: &str, gateways: &[&Gateway]) -> Proxy {
        let backends: Vec<_> = gateways.iter().map(|g| g.addr).collect();
        match kind {
            "haproxy" => Proxy::Haproxy(Haproxy::start(&backends).await),
            "nginx" => Proxy::Nginx(Nginx::start(&backends).await),
            other => panic!("unknown proxy {other}"),
        }
    }

    fn ws(&self, path_and_query: &str) -> String {
        match self {
            Proxy::Haproxy(p) => p.ws(path_and_query),
            Proxy::Nginx(p) => p.ws(path_and_query),
        }
    }

    fn url(&self) -> String {
        match self {
            Proxy::Haproxy(p) => p.url(),
            Proxy::Nginx(p) => p.url(),
        }
    }

    fn log_tail(&self) -> String {
        match self {
            Proxy::Haproxy(p) => p.log_tail(),
            Proxy::Nginx(p) => p.log_tail(),
        }
    }

    async fn kitchen(&self, user: u64) -> Client {
        let token = staff_token(user, 1, &[10], &["KITCHEN"]);
        Client::connect(&self.ws(&format!("/ws/kitchen?token={token}")), Some(ORIGIN)).await
    }
}

async fn within<T>(what: &str, limit: Duration, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, fut).await.unwrap_or_else(|_| panic!("timed out after {limit:?}: {what}"))
}

/// `total_connections` of one replica's `/ws/health`.
async fn connections(gateway: &Gateway) -> u64 {
    gateway.get_json("/ws/health").await.1["total_connections"].as_u64().expect("total_connections")
}

/// Polls until both replicas together report `total` connections.
async fn wait_total(a: &Gateway, b: &Gateway, total: u64) -> (u64, u64) {
    within("connections registered on the replicas", SOON, async {
        loop {
            let counts = (connections(a).await, connections(b).await);
            if counts.0 + counts.1 == total {
                return counts;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

// 1. The upgrade passes and events flow.

async fn upgrade_and_events(kind: &str) {
    let stack = Stack::start().await;
    let (a, b) = (stack.gateway().await, stack.gateway().await);
    let proxy = Proxy::start(kind, &[&a, &b]).await;
    let nats = stack.nats_client().await;

    let mut cook = proxy.kitchen(1).await;
    let mut diner =
        Client::connect(&proxy.ws(&format!("/ws/diner?table_token={}", table_token(1, 10, 3, 77))), Some(ORIGIN)).await;
    cook.ping().await;
    diner.ping().await;
    let ready = event("ROUND_READY", 1, 10, None, Some(77), 1);
    publish(&nats, 1, 10, "kitchen", &ready).await;
    assert_eq!(cook.text().await, ready, "{kind}: kitchen event through the proxy");
    assert_eq!(diner.text().await, ready, "{kind}: session event through the proxy");

    // A refused handshake still reaches the client as the documented close, not as an HTTP error.
    let mut stranger = Client::connect(&proxy.ws("/ws/kitchen?token=nope"), Some(ORIGIN)).await;
    stranger.expect_close(4001, "Authentication failed").await;

    // The public health summary passes; metrics and probes stay private.
    let get = |path: &str| {
        let url = format!("{}{path}", proxy.url());
        async move { within(&url, SOON, http_get(&url)).await.expect("HTTP through the proxy").0 }
    };
    assert_eq!(get("/ws/health").await, 200, "{kind}");
    assert_eq!(get("/ws/metrics").await, 404, "{kind}");
    assert_eq!(get("/readyz").await, 404, "{kind}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_passes_the_upgrade_and_events() {
    upgrade_and_events("haproxy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_passes_the_upgrade_and_events() {
    upgrade_and_events("nginx").await;
}

// 2. Idle limits: longer than the heartbeat, by configuration and live.

/// The gateway's default `WS_HEARTBEAT_TIMEOUT`, from its own configuration code.
fn default_heartbeat() -> Duration {
    let env: HashMap<String, String> =
        [("JWT_SECRET", "x"), ("TABLE_TOKEN_SECRET", "y"), ("NATS_ALLOW_ANONYMOUS", "true")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    gateway::Config::from_map(&env).expect("defaults parse").limits.heartbeat_timeout
}

/// The value of the first `directive value` line (a trailing `;` dropped), as a duration.
fn directive(config: &str, name: &str) -> Duration {
    let value = config
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name).filter(|rest| rest.starts_with(char::is_whitespace)))
        .unwrap_or_else(|| panic!("no `{name}` in the configuration"))
        .trim()
        .trim_end_matches(';');
    wire::settings::parse_duration(value).unwrap_or_else(|| panic!("`{name} {value}` is not a duration"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_idle_timeouts_exceed_the_heartbeat() {
    let stack = Stack::start().await;
    let gw = stack.gateway().await;
    let heartbeat = default_heartbeat();
    let haproxy = Haproxy::start(&[gw.addr]).await;
    let tunnel = directive(haproxy.config(), "timeout tunnel");
    assert!(tunnel > heartbeat, "HAProxy timeout tunnel {tunnel:?} must exceed WS_HEARTBEAT_TIMEOUT {heartbeat:?}");
    let nginx = Nginx::start(&[gw.addr]).await;
    for name in ["proxy_read_timeout", "proxy_send_timeout"] {
        let limit = directive(nginx.config(), name);
        assert!(limit > heartbeat, "nginx {name} {limit:?} must exceed WS_HEARTBEAT_TIMEOUT {heartbeat:?}");
    }
}

/// With a 2 s heartbeat: a client pinging every second stays connected for 5 s through the
/// proxy, and a silent one is closed by the gateway (1001), the close passing through intact.
async fn pings_keep_the_connection(kind: &str) {
    let stack = Stack::start().await;
    let heartbeat = [("WS_HEARTBEAT_TIMEOUT", "2s")];
    let (a, b) = (stack.gateway_with(&heartbeat).await, stack.gateway_with(&heartbeat).await);
    let proxy = Proxy::start(kind, &[&a, &b]).await;

    let mut pinging = proxy.kitchen(1).await;
    let mut silent = proxy.kitchen(2).await;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        pinging.send("ping").await;
        match pinging.next().await {
            Seen::Text(pong) => assert_eq!(pong, r#"{"type":"pong"}"#),
            other => panic!("{kind}: a pinging client lost its connection: {other:?}\n{}", proxy.log_tail()),
        }
    }
    silent.expect_close_within(1001, "Heartbeat timeout", Duration::from_secs(2)).await;
    pinging.ping().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_keeps_pinging_clients_connected() {
    pings_keep_the_connection("haproxy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_keeps_pinging_clients_connected() {
    pings_keep_the_connection("nginx").await;
}

// 3. Connections spread over the replicas.

async fn connections_spread(kind: &str) {
    let stack = Stack::start().await;
    let (a, b) = (stack.gateway().await, stack.gateway().await);
    let proxy = Proxy::start(kind, &[&a, &b]).await;
    let mut clients = Vec::new();
    for user in 1..=8 {
        let mut client = proxy.kitchen(user).await;
        client.ping().await;
        clients.push(client);
    }
    let (on_a, on_b) = wait_total(&a, &b, 8).await;
    assert!(on_a > 0 && on_b > 0, "{kind}: 8 clients landed {on_a} on one replica and {on_b} on the other");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_spreads_connections_over_replicas() {
    connections_spread("haproxy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_spreads_connections_over_replicas() {
    connections_spread("nginx").await;
}

// 4. HAProxy: a draining replica leaves rotation.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_takes_a_draining_replica_out_of_rotation() {
    let stack = Stack::start().await;
    // A long drain window keeps `a` draining (readiness off, still serving HTTP) for the whole
    // test: its held connections are closed one every 15 s.
    let slow_drain = [("GATEWAY_DRAIN_WINDOW", "60s"), ("GATEWAY_SHUTDOWN_TIMEOUT", "90s")];
    let (a, b) = (stack.gateway_with(&slow_drain).await, stack.gateway().await);
    let proxy = Haproxy::start(&[a.addr, b.addr]).await;
    let mut held = Vec::new();
    for user in 100..104 {
        held.push(a.staff("kitchen", &staff_token(user, 1, &[10], &["KITCHEN"])).await);
    }

    a.shutdown.cancel();
    within("a reports not ready", SOON, async {
        while a.get("/readyz").await.0 != 503 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    proxy.wait_server_status(a.addr, "DOWN", SOON).await;
    assert_eq!(proxy.server_status(b.addr).await, "UP");

    // Every new connection goes to `b`; none is refused with 1012.
    let before_b = connections(&b).await;
    let mut clients = Vec::new();
    for user in 1..=10 {
        let token = staff_token(user, 1, &[10], &["KITCHEN"]);
        let mut client = Client::connect(&proxy.ws(&format!("/ws/kitchen?token={token}")), Some(ORIGIN)).await;
        client.send("ping").await;
        match client.next().await {
            Seen::Text(pong) => assert_eq!(pong, r#"{"type":"pong"}"#),
            other => panic!("connection {user} through HAProxy after the drain began: {other:?}"),
        }
        clients.push(client);
    }
    within("the new connections are on b", SOON, async {
        while connections(&b).await != before_b + 10 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;

    // `a` was really draining all along (a direct connection is refused), so it was the proxy
    // that kept the new clients away from it.
    assert_eq!(a.get("/readyz").await.0, 503);
    let mut direct = a.staff("kitchen", &staff_token(200, 1, &[10], &["KITCHEN"])).await;
    direct.expect_close(1012, "Service restart").await;
}
