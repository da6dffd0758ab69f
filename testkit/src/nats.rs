//! `nats-server` fixtures: one JetStream node ([`NatsServer`]) or a routed JetStream cluster
//! ([`NatsCluster`]), with monitoring-endpoint helpers. Every server runs with the users of
//! `deploy/nats/auth.conf` and passwords of its own ([`NatsAuth`]): anonymous clients are
//! refused, as in the local stack. It owns no NATS client; [`NatsAuth`] says how to log in.

mod users;

pub use users::{auth_conf, NatsAuth, NatsUser};

use std::collections::HashSet;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use super::process::{fail, kill_now, log_tail, restart, start, wait_ready, Server, Spec, Wait};
use super::{fixture_dir, free_port, http_get, nats_server_bin, START_ATTEMPTS};

const START_TIMEOUT: Duration = Duration::from_secs(20);
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(40);
const CLUSTER_NAME: &str = "testkit";

/// One `nats-server` with JetStream on a file store in its tempdir. Killed on drop.
pub struct NatsServer {
    child: Option<Child>,
    spec: Spec,
    port: u16,
    monitor_port: u16,
    server_name: Option<String>,
    auth: NatsAuth,
    tls: Option<NatsTls>,
    // Last: removed after `Drop::drop` has killed the process.
    _dir: TempDir,
}

/// The client side of a TLS server ([`NatsServer::start_tls`]): the CA, and the client
/// certificate when the server verifies clients.
#[derive(Clone)]
struct NatsTls {
    ca: std::path::PathBuf,
    client: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// Client, monitoring and cluster ports of one node.
#[derive(Clone, Copy)]
struct Ports {
    client: u16,
    monitor: u16,
    cluster: u16,
}

/// `n` sets of ports, all distinct.
fn fresh_ports(n: usize) -> Vec<Ports> {
    let mut seen = HashSet::new();
    let mut next = || loop {
        let p = free_port();
        if seen.insert(p) {
            return p;
        }
    };
    (0..n).map(|_| Ports { client: next(), monitor: next(), cluster: next() }).collect()
}

impl NatsServer {
    /// A single node; waits until `/healthz?js-enabled-only=true` answers 200.
    pub async fn start() -> NatsServer {
        NatsServer::start_inner(None).await
    }

    /// A single node that accepts only TLS clients, with `pki`'s server certificate; with
    /// `verify_clients`, only clients whose certificate `pki`'s CA signed (mutual TLS).
    /// [`NatsServer::env`] then names the CA (and the client certificate).
    pub async fn start_tls(pki: &super::Pki, verify_clients: bool) -> NatsServer {
        NatsServer::start_inner(Some((pki, verify_clients))).await
    }

    async fn start_inner(tls: Option<(&super::Pki, bool)>) -> NatsServer {
        start("nats-server", START_TIMEOUT, || {
            NatsServer::spawn(fresh_ports(1)[0], None, &[], NatsAuth::generate(), tls)
        })
        .await
    }

    /// Spawns without waiting; `routes` are the cluster ports of the other nodes.
    fn spawn(
        ports: Ports,
        name: Option<String>,
        routes: &[u16],
        auth: NatsAuth,
        tls: Option<(&super::Pki, bool)>,
    ) -> NatsServer {
        let dir = fixture_dir("nats");
        let mut spec = Spec::new(nats_server_bin(), dir.path().join("nats-server.log"))
            .env(auth.server_env())
            .arg("-c")
            .arg(auth_conf().display())
            .arg("-a")
            .arg("127.0.0.1")
            .arg("-p")
            .arg(ports.client)
            .arg("-m")
            .arg(ports.monitor)
            .arg("-js")
            .arg("-sd")
            .arg(dir.path().join("store").display());
        if let Some(name) = &name {
            let routes: Vec<String> = routes.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect();
            spec = spec
                .arg("-n")
                .arg(name)
                .arg("--cluster_name")
                .arg(CLUSTER_NAME)
                .arg("--cluster")
                .arg(format!("nats://127.0.0.1:{}", ports.cluster))
                .arg("--routes")
                .arg(routes.join(","));
        }
        if let Some((pki, verify)) = tls {
            let (cert, key) = pki.server();
            spec = spec.arg("--tls").arg("--tlscert").arg(cert.display()).arg("--tlskey").arg(key.display());
            spec = spec.arg("--tlscacert").arg(pki.ca().display());
            if verify {
                spec = spec.arg("--tlsverify");
            }
        }
        let child = Some(spec.spawn());
        NatsServer {
            child,
            spec,
            port: ports.client,
            monitor_port: ports.monitor,
            server_name: name,
            auth,
            tls: tls.map(|(pki, verify)| NatsTls { ca: pki.ca(), client: verify.then(|| pki.client()) }),
            _dir: dir,
        }
    }

    /// The client URL (no credentials in it: see [`NatsServer::auth`]).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "tls" } else { "nats" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The users' passwords of this server.
    pub fn auth(&self) -> &NatsAuth {
        &self.auth
    }

    /// A client logged in as `user`; panics after 10 s.
    pub async fn connect(&self, user: NatsUser) -> async_nats::Client {
        let Some(tls) = &self.tls else { return self.auth.connect(&self.url(), user).await };
        let mut options = self.auth.options(user).add_root_certificates(tls.ca.clone()).require_tls(true);
        if let Some((cert, key)) = &tls.client {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        let url = self.url();
        tokio::time::timeout(Duration::from_secs(10), options.connect(url.as_str()))
            .await
            .unwrap_or_else(|_| panic!("testkit: connecting to NATS at {url} timed out"))
            .unwrap_or_else(|e| panic!("testkit: cannot connect to NATS at {url}: {e}"))
    }

    /// `NATS_URL`, `NATS_USER` and `NATS_PASSWORD` of a gateway or bridge logged in as `user`;
    /// for a TLS server also `NATS_TLS_CA_FILE` (and the client certificate's variables).
    pub fn env(&self, user: NatsUser) -> Vec<(String, String)> {
        let mut env = vec![("NATS_URL".to_string(), self.url())];
        env.extend(self.auth.env(user));
        if let Some(tls) = &self.tls {
            env.push(("NATS_TLS_CA_FILE".to_string(), tls.ca.display().to_string()));
            if let Some((cert, key)) = &tls.client {
                env.push(("NATS_TLS_CERT_FILE".to_string(), cert.display().to_string()));
                env.push(("NATS_TLS_KEY_FILE".to_string(), key.display().to_string()));
            }
        }
        env
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.monitor_port)
    }

    /// `server_name` of a cluster node (`n0`, `n1`, ...); `None` for a single node.
    pub fn server_name(&self) -> Option<&str> {
        self.server_name.as_deref()
    }

    /// `GET /connz?subs=1`, parsed.
    pub async fn connz_subs(&self) -> Value {
        self.monitor_json("/connz?subs=1")
            .await
            .unwrap_or_else(|e| panic!("testkit: nats /connz?subs=1: {e}\n{}", log_tail(&self.spec.log)))
    }

    async fn monitor_json(&self, path: &str) -> Result<Value, String> {
        let (status, body) = http_get(&format!("{}{path}", self.monitor_url())).await.map_err(|e| e.to_string())?;
        if status != 200 {
            return Err(format!("HTTP {status}: {body}"));
        }
        serde_json::from_str(&body).map_err(|e| e.to_string())
    }

    /// SIGKILL and reap; idempotent.
    pub fn kill(&mut self) {
        kill_now(&mut self.child);
    }

    /// Starts again on the same ports and store dir and waits until healthy.
    pub async fn restart(&mut self) {
        let url = format!("{}/healthz?js-enabled-only=true", self.monitor_url());
        let healthy = || async { matches!(http_get(&url).await, Ok((200, _))) };
        restart("restarted nats-server", &mut self.child, &self.spec, START_TIMEOUT, healthy).await
    }
}

impl Server for NatsServer {
    async fn wait_until_ready(&mut self, deadline: Instant) -> Wait {
        let url = format!("{}/healthz?js-enabled-only=true", self.monitor_url());
        let Some(child) = self.child.as_mut() else { return Wait::TimedOut };
        wait_ready(child, deadline, || async { matches!(http_get(&url).await, Ok((200, _))) }).await
    }

    fn log(&self) -> &Path {
        &self.spec.log
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A JetStream cluster of nodes named `n0`, `n1`, ... routed to each other.
pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Waits until every node is healthy and sees the same elected JetStream meta leader, and the
    /// leader has every other node as a current peer (so a replicated stream can be placed).
    pub async fn start(n: usize) -> NatsCluster {
        assert!(n > 0, "testkit: a cluster needs at least one node");
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        'attempt: for attempt in 1..=START_ATTEMPTS {
            let ports = fresh_ports(n);
            let auth = NatsAuth::generate();
            let mut nodes: Vec<NatsServer> = (0..n)
                .map(|i| {
                    let routes: Vec<u16> =
                        ports.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, p)| p.cluster).collect();
                    NatsServer::spawn(ports[i], Some(format!("n{i}")), &routes, auth.clone(), None)
                })
                .collect();
            for (i, node) in nodes.iter_mut().enumerate() {
                match node.wait_until_ready(deadline).await {
                    Wait::Ready => {}
                    Wait::Exited(_) if attempt < START_ATTEMPTS => continue 'attempt,
                    outcome => fail(&format!("cluster node n{i}"), &outcome, &node.spec.log),
                }
            }
            let cluster = NatsCluster { nodes };
            while Instant::now() < deadline {
                if cluster.all_see_meta_leader().await {
                    return cluster;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let tails: Vec<String> = cluster.nodes.iter().map(|n| log_tail(&n.spec.log)).collect();
            panic!("testkit: no JetStream meta leader within {CLUSTER_TIMEOUT:?}\n{}", tails.join("\n"));
        }
        unreachable!("the last attempt either returns or panics")
    }

    async fn all_see_meta_leader(&self) -> bool {
        let mut leaders = HashSet::new();
        let mut peers_current = false;
        for node in &self.nodes {
            let Ok(jsz) = node.monitor_json("/jsz").await else { return false };
            let meta = &jsz["meta_cluster"];
            let Some(leader) = meta["leader"].as_str().filter(|l| !l.is_empty()) else { return false };
            leaders.insert(leader.to_owned());
            // Only the leader lists the other peers. A peer it has not heard from yet makes
            // placement fail ("no suitable peers for placement, peer offline", 10005).
            if node.server_name() == Some(leader) {
                let replicas = meta["replicas"].as_array().map(Vec::as_slice).unwrap_or_default();
                peers_current = replicas.len() + 1 == self.nodes.len()
                    && replicas.iter().all(|r| r["current"] == true && r["offline"] != true);
            }
        }
        leaders.len() == 1 && (peers_current || self.nodes.len() == 1)
    }

    /// Comma-separated client URLs of all nodes.
    pub fn urls(&self) -> String {
        self.nodes.iter().map(NatsServer::url).collect::<Vec<_>>().join(",")
    }

    /// The users' passwords, the same on every node.
    pub fn auth(&self) -> &NatsAuth {
        self.nodes[0].auth()
    }

    /// A client logged in as `user` with every node's URL; panics after 10 s.
    pub async fn connect(&self, user: NatsUser) -> async_nats::Client {
        self.auth().connect(&self.urls(), user).await
    }

    /// `NATS_URL` (every node), `NATS_USER` and `NATS_PASSWORD` of a service logged in as `user`.
    pub fn env(&self, user: NatsUser) -> Vec<(String, String)> {
        let mut env = vec![("NATS_URL".to_string(), self.urls())];
        env.extend(self.auth().env(user));
        env
    }

    /// Index of the node that currently leads `stream` (in any account): the node whose own
    /// `/jsz` names itself as the stream's cluster leader. Killed nodes are skipped.
    pub async fn leader_of_stream(&self, stream: &str) -> Option<usize> {
        for (i, node) in self.nodes.iter().enumerate() {
            let Ok(jsz) = node.monitor_json("/jsz?accounts=true&streams=true").await else { continue };
            let accounts = jsz["account_details"].as_array().cloned().unwrap_or_default();
            let leads = accounts
                .iter()
                .flat_map(|a| a["stream_detail"].as_array().cloned().unwrap_or_default())
                .any(|s| s["name"].as_str() == Some(stream) && s["cluster"]["leader"].as_str() == node.server_name());
            if leads {
                return Some(i);
            }
        }
        None
    }
}
