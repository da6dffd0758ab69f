//! `redis-server` fixture without persistence (unless asked), keyspace notifications of string
//! commands on (`K$`, as the local stack), readiness by a raw `PING`. It owns no Redis client.
//! With [`Redis::start_tls`] it also listens with TLS on a second port, for the services under
//! test, while the plain port stays for the test's own commands (the backend is unchanged).

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::process::{kill_now, restart, start, wait_ready, Server, Spec, Wait};
use super::{fixture_dir, free_port};

const START_TIMEOUT: Duration = Duration::from_secs(20);

/// One `redis-server` on 127.0.0.1, working dir in its tempdir. Killed on drop.
pub struct Redis {
    child: Option<Child>,
    spec: Spec,
    port: u16,
    tls_port: Option<u16>,
    // Last: removed after `Drop::drop` has killed the process.
    _dir: TempDir,
}

/// How [`Redis::start_tls`] serves TLS.
pub struct RedisTls<'a> {
    pub pki: &'a super::Pki,
    /// `--tls-auth-clients yes`: a client must present a certificate signed by the CA.
    pub verify_clients: bool,
}

impl Redis {
    /// `--save "" --appendonly no`: nothing survives a restart.
    pub async fn start() -> Redis {
        Redis::start_with_args(&[]).await
    }

    /// Like [`Redis::start`] with extra `redis-server` arguments, which come last and so win:
    /// for example `&["--appendonly", "yes"]` keeps data across [`Redis::restart`] (the append
    /// file lives in the fixture's tempdir).
    pub async fn start_with_args(extra: &[&str]) -> Redis {
        Redis::start_inner(extra, None).await
    }

    /// Plain on [`Redis::port`] and TLS on [`Redis::tls_port`] with the server certificate of
    /// `tls.pki` ([`Redis::tls_url`]).
    pub async fn start_tls(tls: RedisTls<'_>) -> Redis {
        Redis::start_inner(&[], Some(tls)).await
    }

    async fn start_inner(extra: &[&str], tls: Option<RedisTls<'_>>) -> Redis {
        start("redis-server", START_TIMEOUT, || {
            let mut args: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
            let tls_port = tls.as_ref().map(|tls| {
                let port = free_port();
                let (cert, key) = tls.pki.server();
                let verify = if tls.verify_clients { "yes" } else { "no" };
                for (flag, value) in [
                    ("--tls-port", port.to_string()),
                    ("--tls-cert-file", cert.display().to_string()),
                    ("--tls-key-file", key.display().to_string()),
                    ("--tls-ca-cert-file", tls.pki.ca().display().to_string()),
                    ("--tls-auth-clients", verify.to_string()),
                ] {
                    args.extend([flag.to_string(), value]);
                }
                port
            });
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let mut redis = Redis::spawn(free_port(), &args);
            redis.tls_port = tls_port;
            redis
        })
        .await
    }

    fn spawn(port: u16, extra: &[&str]) -> Redis {
        let dir = fixture_dir("redis");
        let mut spec = Spec::new("redis-server", dir.path().join("redis-server.log"))
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--port")
            .arg(port)
            .arg("--dir")
            .arg(dir.path().display())
            .arg("--save")
            .arg("")
            .arg("--appendonly")
            .arg("no")
            .arg("--daemonize")
            .arg("no")
            // Keyspace notifications of string commands, as `deploy/stack.sh` runs Redis: the
            // gateway's push revocation listens to them.
            .arg("--notify-keyspace-events")
            .arg("K$");
        spec.args.extend(extra.iter().map(|a| a.to_string()));
        let child = Some(spec.spawn());
        Redis { child, spec, port, tls_port: None, _dir: dir }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The TLS port of a [`Redis::start_tls`] server.
    pub fn tls_port(&self) -> u16 {
        self.tls_port.expect("testkit: this redis-server was started without TLS")
    }

    /// `rediss://127.0.0.1:<tls port>`.
    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.tls_port())
    }

    /// SIGKILL and reap; idempotent.
    pub fn kill(&mut self) {
        kill_now(&mut self.child);
    }

    /// Starts again on the same port and waits for `PING`.
    pub async fn restart(&mut self) {
        let port = self.port;
        restart("restarted redis-server", &mut self.child, &self.spec, START_TIMEOUT, || ping(port)).await
    }
}

impl Server for Redis {
    async fn wait_until_ready(&mut self, deadline: Instant) -> Wait {
        let port = self.port;
        let Some(child) = self.child.as_mut() else { return Wait::TimedOut };
        wait_ready(child, deadline, || ping(port)).await
    }

    fn log(&self) -> &Path {
        &self.spec.log
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// True when an inline `PING` on `127.0.0.1:port` answers `+PONG`.
async fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)).await else { return false };
    if stream.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    let mut got = 0;
    while got < 7 {
        match stream.read(&mut buf[got..]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    buf[..got].starts_with(b"+PONG")
}
