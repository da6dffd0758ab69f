//! Real-process fixtures for integration tests: `nats-server` (single node and cluster),
//! `redis-server` (plain and TLS), PostgreSQL, HAProxy and nginx, each on free loopback ports, in
//! its own tempdir, killed on drop; and the certificates a TLS test needs ([`Pki`]).
//! It owns process lifetimes and readiness checks; it does not own any client of these servers.
//!
//! Every server is spawned with `PR_SET_PDEATHSIG=SIGKILL`, so a crashed test process leaves no
//! orphans. Linux delivers that signal when the *thread* that spawned the child exits: create
//! fixtures on the test's own thread (the usual `#[tokio::test]` body), not inside
//! `spawn_blocking`. Server output goes to a log file in the fixture's tempdir; every panic
//! message carries its tail.

mod cluster;
mod http;
mod nats;
mod postgres;
mod process;
mod proxy;
mod redis;
mod tls;

use std::net::TcpListener;
use std::path::{Path, PathBuf};

pub use cluster::{ClusterOptions, ClusterStack, Service, EVENTS_STREAM};
pub use http::{http_exchange, http_get, http_request, HttpResponse};
pub use nats::{auth_conf, NatsAuth, NatsCluster, NatsServer, NatsUser};
pub use postgres::Postgres;
pub use proxy::{Haproxy, Nginx};
pub use redis::{Redis, RedisTls};
pub use tls::Pki;

/// The workspace root: the first directory holding `Cargo.lock`, searched upwards from the
/// running test's `CARGO_MANIFEST_DIR`, then from the current executable, then from this crate.
pub fn repo_root() -> PathBuf {
    let mut starts: Vec<PathBuf> = Vec::new();
    if let Some(dir) = std::env::var_os("CARGO_MANIFEST_DIR") {
        starts.push(dir.into());
    }
    if let Ok(exe) = std::env::current_exe() {
        starts.push(exe);
    }
    starts.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    starts
        .iter()
        .find_map(|start| start.ancestors().find(|d| d.join("Cargo.lock").is_file()).map(Path::to_path_buf))
        .unwrap_or_else(|| panic!("testkit: no directory holding Cargo.lock above {starts:?}"))
}

/// `$NATS_SERVER_BIN`, else `<repo>/.tools/bin/nats-server`.
pub fn nats_server_bin() -> PathBuf {
    let bin = match std::env::var_os("NATS_SERVER_BIN") {
        Some(path) => PathBuf::from(path),
        None => repo_root().join(".tools/bin/nats-server"),
    };
    if !bin.is_file() {
        panic!(
            "testkit: nats-server not found at {}: run deploy/install-deps.sh (or set NATS_SERVER_BIN)",
            bin.display()
        );
    }
    bin
}

/// A port that was free on 127.0.0.1 a moment ago. Fixtures retry with new ports when a server
/// fails to start because someone else took it in between.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("testkit: bind 127.0.0.1:0")
}

/// How many times a fixture picks new ports after its server exited at start.
const START_ATTEMPTS: usize = 3;

/// A tempdir for one fixture, named after the server it holds.
fn fixture_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(&format!("testkit-{prefix}-")).tempdir().expect("testkit: create tempdir")
}

/// Series of a Prometheus text exposition (`# TYPE` lines) that have no row
/// ``| `name` | type |`` in `readme`'s metrics table; counters are looked up with their `_total`.
pub fn undocumented_series(exposition: &str, readme: &str) -> Vec<String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let (name, kind) = (parts.next()?, parts.next()?);
            let exposed = if kind == "counter" { format!("{name}_total") } else { name.to_string() };
            (!readme.contains(&format!("| `{exposed}` | {kind} |"))).then(|| format!("{exposed} ({kind})"))
        })
        .collect()
}
