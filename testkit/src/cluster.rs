//! The whole production topology on loopback, for tests that break parts of it: a three-node
//! NATS JetStream cluster, Redis, two real `publisher-bridge` processes, three real `gateway`
//! processes and HAProxy (rendered from `deploy/haproxy/haproxy.cfg`) in front of them
//! ([`ClusterStack`]). It owns process lifetimes, ports, readiness and the faults a test injects
//! (SIGKILL, SIGTERM, restart of a gateway, a bridge or a NATS node); it owns no client of any
//! of them. Locating (and, when stale, building) the bridge binary is part of it.
//!
//! Logs of the gateways and bridges are in the stack's tempdir, removed on drop unless
//! `TESTKIT_KEEP_LOGS` is set.
//!
//! One stack runs at a time on a machine: [`ClusterStack::start`] takes an exclusive lock
//! (`$TMPDIR/testkit-cluster.lock`) held until the stack is dropped, so that parallel test
//! processes do not run two clusters on the same cores and spoil each other's timings.

mod host;
mod service;

use std::collections::HashSet;
use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use nix::fcntl::Flock;
use tempfile::TempDir;

use super::{fixture_dir, free_port, http_get, Haproxy, NatsCluster, NatsUser, Redis};
use host::{bridge_binary, exclusive_lock};
pub use service::Service;

/// The JetStream stream the bridges fill and the gateways replay from.
pub const EVENTS_STREAM: &str = "EVENTS";
/// Each process's own start-up (bridges create the R3 streams, which takes a leader election).
const START_TIMEOUT: Duration = Duration::from_secs(40);
/// HAProxy's view of a (re)started gateway: `rise 2` checks every `inter 1s`, plus slack.
const HAPROXY_UP_TIMEOUT: Duration = Duration::from_secs(15);
const STREAM_LEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// What to run, and with which settings on top of the defaults of [`ClusterStack::start`].
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub gateway_bin: PathBuf,
    /// `None`: `publisher-bridge` next to `gateway_bin`, built first if missing or stale.
    pub bridge_bin: Option<PathBuf>,
    pub nats_nodes: usize,
    pub bridges: usize,
    pub gateways: usize,
    pub jwt_secret: String,
    pub table_token_secret: String,
    /// Extra or overriding variables of every gateway (an empty value removes the variable).
    pub gateway_env: Vec<(String, String)>,
    /// Extra or overriding variables of every bridge (an empty value removes the variable).
    pub bridge_env: Vec<(String, String)>,
}

impl ClusterOptions {
    /// Three NATS nodes, two bridges, three gateways; `gateway_bin` is usually
    /// `env!("CARGO_BIN_EXE_gateway")`.
    pub fn new(gateway_bin: impl Into<PathBuf>) -> ClusterOptions {
        ClusterOptions {
            gateway_bin: gateway_bin.into(),
            bridge_bin: None,
            nats_nodes: 3,
            bridges: 2,
            gateways: 3,
            jwt_secret: "cluster-jwt-secret".into(),
            table_token_secret: "cluster-table-secret".into(),
            gateway_env: Vec::new(),
            bridge_env: Vec::new(),
        }
    }

    /// The staff and table-token keys the gateways verify with.
    pub fn secrets(mut self, jwt_secret: &str, table_token_secret: &str) -> ClusterOptions {
        self.jwt_secret = jwt_secret.into();
        self.table_token_secret = table_token_secret.into();
        self
    }

    /// Sets a variable of every gateway (for example `RUST_LOG`).
    pub fn gateway_env(mut self, name: &str, value: &str) -> ClusterOptions {
        self.gateway_env.push((name.into(), value.into()));
        self
    }

    pub fn bridge_env(mut self, name: &str, value: &str) -> ClusterOptions {
        self.bridge_env.push((name.into(), value.into()));
        self
    }
}

/// The cluster. Fields drop in order: the proxy and the gateways go before what they use.
pub struct ClusterStack {
    pub haproxy: Haproxy,
    pub gateways: Vec<Service>,
    pub bridges: Vec<Service>,
    pub nats: NatsCluster,
    pub redis: Redis,
    options: ClusterOptions,
    _lock: Flock<File>,
    // Last: the logs are removed after every process is gone (kept with `TESTKIT_KEEP_LOGS=1`).
    dir: Option<TempDir>,
}

impl ClusterStack {
    /// Starts everything and waits until all of it is ready: NATS with a meta leader, Redis, the
    /// bridges one after the other (the first creates the R3 streams), the `EVENTS` stream with
    /// an elected leader, the gateways, and HAProxy reporting every gateway UP.
    ///
    /// Settings on top of `options` (overridable through `gateway_env` / `bridge_env`):
    /// gateways `ENVIRONMENT=development`, `GATEWAY_DRAIN_WINDOW=3s`,
    /// `GATEWAY_SHUTDOWN_TIMEOUT=8s`, `GATEWAY_INSTANCE_ID=gw-<n>`; bridges
    /// `BRIDGE_EVENTS_REPLICAS=3` (capped at the node count), `BRIDGE_CLAIM_IDLE=3s`,
    /// `BRIDGE_PUBLISH_TIMEOUT=1s` (so a killed bridge's entries are taken over within about
    /// 4 s), `BRIDGE_INSTANCE_ID=bridge-<n>`; all with every NATS node in `NATS_URL`, the
    /// gateways logged in as NATS user `gateway`, the bridges as `bridge`.
    pub async fn start(options: ClusterOptions) -> ClusterStack {
        assert!(options.gateways > 0 && options.bridges > 0 && options.nats_nodes > 0, "testkit: empty cluster");
        let lock = exclusive_lock().await;
        let bridge_bin = match &options.bridge_bin {
            Some(bin) => bin.clone(),
            None => bridge_binary(&options.gateway_bin),
        };
        let dir = fixture_dir("cluster");
        let (nats, redis) = tokio::join!(NatsCluster::start(options.nats_nodes), Redis::start());
        let ports = distinct_ports(options.bridges + options.gateways);
        let (bridge_ports, gateway_ports) = ports.split_at(options.bridges);

        let mut bridges: Vec<Service> = bridge_ports
            .iter()
            .enumerate()
            .map(|(i, port)| {
                let name = format!("bridge-{}", i + 1);
                let addr = loopback(*port);
                let env = bridge_env(&options, &name, addr, &nats.env(NatsUser::Bridge), &redis.url());
                Service::new(&name, &bridge_bin, addr, &env, dir.path())
            })
            .collect();
        for bridge in &mut bridges {
            bridge.start().await;
        }
        wait_stream_leader(&nats).await;

        let mut gateways: Vec<Service> = gateway_ports
            .iter()
            .enumerate()
            .map(|(i, port)| {
                let name = format!("gw-{}", i + 1);
                let addr = loopback(*port);
                let env = gateway_env(&options, &name, addr, &nats.env(NatsUser::Gateway), &redis.url());
                Service::new(&name, &options.gateway_bin, addr, &env, dir.path())
            })
            .collect();
        for gateway in &mut gateways {
            gateway.spawn();
        }
        for gateway in &mut gateways {
            gateway.wait_ready(START_TIMEOUT).await;
        }
        let backends: Vec<SocketAddr> = gateways.iter().map(Service::addr).collect();
        let haproxy = Haproxy::start(&backends).await;
        ClusterStack { haproxy, gateways, bridges, nats, redis, options, _lock: lock, dir: Some(dir) }
    }

    /// `ws://<HAProxy><path_and_query>`: the clients' entry point.
    pub fn ws(&self, path_and_query: &str) -> String {
        self.haproxy.ws(path_and_query)
    }

    /// `http://<HAProxy><path>` (only the public paths pass: `/ws/health`, `/ws/catchup...`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.haproxy.url())
    }

    /// Comma-separated client URLs of every NATS node.
    pub fn nats_urls(&self) -> String {
        self.nats.urls()
    }

    /// A client of the NATS cluster logged in as `user` (tests acting as the backend or an
    /// administrator use [`NatsUser::Operator`]).
    pub async fn nats_client(&self, user: NatsUser) -> async_nats::Client {
        self.nats.connect(user).await
    }

    pub fn redis_url(&self) -> String {
        self.redis.url()
    }

    pub fn options(&self) -> &ClusterOptions {
        &self.options
    }

    /// SIGKILL gateway `i` (0-based). HAProxy notices within about 2 s.
    pub fn kill_gateway(&mut self, i: usize) {
        self.gateways[i].kill();
    }

    /// SIGTERM gateway `i` and wait for it to drain and exit (its shutdown timeout plus 5 s).
    pub async fn terminate_gateway(&mut self, i: usize) -> ExitStatus {
        let limit = self.gateway_shutdown_timeout() + Duration::from_secs(5);
        self.gateways[i].terminate(limit).await
    }

    /// Starts gateway `i` again on its port and waits until it is ready and HAProxy has it UP.
    pub async fn restart_gateway(&mut self, i: usize) {
        self.gateways[i].start().await;
        self.haproxy.wait_server_status(self.gateways[i].addr(), "UP", HAPROXY_UP_TIMEOUT).await;
    }

    /// SIGKILL bridge `i` (0-based). Its pending stream entries are claimed by the other bridge
    /// after `BRIDGE_CLAIM_IDLE`.
    pub fn kill_bridge(&mut self, i: usize) {
        self.bridges[i].kill();
    }

    pub async fn restart_bridge(&mut self, i: usize) {
        self.bridges[i].start().await;
    }

    /// Index of the node leading the `EVENTS` stream, waiting for an election if there is none.
    pub async fn events_leader(&self) -> usize {
        wait_stream_leader(&self.nats).await
    }

    /// SIGKILL NATS node `i`.
    pub fn kill_nats(&mut self, i: usize) {
        self.nats.nodes[i].kill();
    }

    /// Starts NATS node `i` again (same ports, same store) and waits until it is healthy.
    pub async fn restart_nats(&mut self, i: usize) {
        self.nats.nodes[i].restart().await;
    }

    /// The NATS node (index) holding the client connection named `name` (a gateway's or a
    /// bridge's instance id), from each node's `/connz`. `None` if no live node lists it.
    pub async fn nats_node_of(&self, name: &str) -> Option<usize> {
        for (i, node) in self.nats.nodes.iter().enumerate() {
            let Ok((200, body)) = http_get(&format!("{}/connz?limit=1024", node.monitor_url())).await else { continue };
            let Ok(connz) = serde_json::from_str::<serde_json::Value>(&body) else { continue };
            let conns = connz["connections"].as_array().cloned().unwrap_or_default();
            if conns.iter().any(|c| c["name"].as_str() == Some(name)) {
                return Some(i);
            }
        }
        None
    }

    /// Waits until every process runs and is ready again: each NATS node healthy, `EVENTS` with a
    /// leader, each bridge and gateway answering `/readyz` 200, HAProxy reporting every gateway UP.
    pub async fn wait_all_ready(&mut self) {
        for node in &self.nats.nodes {
            let url = format!("{}/healthz?js-enabled-only=true", node.monitor_url());
            poll(&format!("NATS node {url} healthy"), START_TIMEOUT, || {
                let url = url.clone();
                async move { matches!(http_get(&url).await, Ok((200, _))) }
            })
            .await;
        }
        wait_stream_leader(&self.nats).await;
        for service in self.bridges.iter_mut().chain(self.gateways.iter_mut()) {
            service.wait_ready(START_TIMEOUT).await;
        }
        for gateway in &self.gateways {
            self.haproxy.wait_server_status(gateway.addr(), "UP", HAPROXY_UP_TIMEOUT).await;
        }
    }

    /// `total_connections` of gateway `i`'s `/ws/health`, asked directly; `None` if it is down.
    pub async fn gateway_connections(&self, i: usize) -> Option<u64> {
        let (status, body) = http_get(&self.gateways[i].url("/ws/health")).await.ok()?;
        if status != 200 {
            return None;
        }
        serde_json::from_str::<serde_json::Value>(&body).ok()?["total_connections"].as_u64()
    }

    /// The log tails of every gateway, bridge and HAProxy, for assertion messages.
    pub fn logs_tail(&self) -> String {
        let mut out: Vec<String> = self.gateways.iter().chain(&self.bridges).map(Service::log_tail).collect();
        out.push(self.haproxy.log_tail());
        out.join("\n")
    }

    /// The drain window the gateways run with (for spreading assertions).
    pub fn gateway_drain_window(&self) -> Duration {
        self.gateway_duration("GATEWAY_DRAIN_WINDOW")
    }

    pub fn gateway_shutdown_timeout(&self) -> Duration {
        self.gateway_duration("GATEWAY_SHUTDOWN_TIMEOUT")
    }

    fn gateway_duration(&self, name: &str) -> Duration {
        let env = gateway_env(&self.options, "x", loopback(1), &[], "");
        let value = env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("testkit: no {name}"));
        wire::settings::parse_duration(value).unwrap_or_else(|| panic!("testkit: {name}={value} is not a duration"))
    }
}

impl Drop for ClusterStack {
    fn drop(&mut self) {
        if std::env::var_os("TESTKIT_KEEP_LOGS").is_some() {
            if let Some(dir) = self.dir.take() {
                eprintln!("testkit: cluster logs kept in {}", dir.keep().display());
            }
        }
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn distinct_ports(n: usize) -> Vec<u16> {
    let mut seen = HashSet::new();
    while seen.len() < n {
        seen.insert(free_port());
    }
    seen.into_iter().collect()
}

/// `defaults`, then `overrides` (an empty value removes the variable).
fn merged(defaults: Vec<(&str, String)>, overrides: &[(String, String)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = defaults.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    for (key, value) in overrides {
        env.retain(|(k, _)| k != key);
        if !value.is_empty() {
            env.push((key.clone(), value.clone()));
        }
    }
    env
}

/// `nats`: `NATS_URL` and the credentials of the process's NATS user.
fn gateway_env(
    o: &ClusterOptions,
    name: &str,
    addr: SocketAddr,
    nats: &[(String, String)],
    redis: &str,
) -> Vec<(String, String)> {
    let mut defaults = vec![
        ("JWT_SECRET", o.jwt_secret.clone()),
        ("TABLE_TOKEN_SECRET", o.table_token_secret.clone()),
        ("ENVIRONMENT", "development".into()),
        ("REDIS_URL", redis.into()),
        ("GATEWAY_LISTEN_ADDR", addr.to_string()),
        ("GATEWAY_INSTANCE_ID", name.into()),
        ("GATEWAY_DRAIN_WINDOW", "3s".into()),
        ("GATEWAY_SHUTDOWN_TIMEOUT", "8s".into()),
        ("RUST_LOG", "info".into()),
    ];
    defaults.extend(nats.iter().map(|(k, v)| (k.as_str(), v.clone())));
    merged(defaults, &o.gateway_env)
}

fn bridge_env(
    o: &ClusterOptions,
    name: &str,
    addr: SocketAddr,
    nats: &[(String, String)],
    redis: &str,
) -> Vec<(String, String)> {
    let mut defaults = vec![
        ("REDIS_URL", redis.into()),
        ("BRIDGE_LISTEN_ADDR", addr.to_string()),
        ("BRIDGE_INSTANCE_ID", name.into()),
        ("BRIDGE_EVENTS_REPLICAS", o.nats_nodes.min(3).to_string()),
        ("BRIDGE_CLAIM_IDLE", "3s".into()),
        ("BRIDGE_PUBLISH_TIMEOUT", "1s".into()),
        ("BRIDGE_SHUTDOWN_TIMEOUT", "5s".into()),
        ("BRIDGE_STARTUP_TIMEOUT", "20s".into()),
        ("RUST_LOG", "info".into()),
    ];
    defaults.extend(nats.iter().map(|(k, v)| (k.as_str(), v.clone())));
    merged(defaults, &o.bridge_env)
}

async fn wait_stream_leader(nats: &NatsCluster) -> usize {
    let deadline = Instant::now() + STREAM_LEADER_TIMEOUT;
    loop {
        if let Some(leader) = nats.leader_of_stream(EVENTS_STREAM).await {
            return leader;
        }
        assert!(
            Instant::now() < deadline,
            "testkit: stream {EVENTS_STREAM} has no leader after {STREAM_LEADER_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn poll<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "testkit: not reached within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
