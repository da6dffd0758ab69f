//! Load-balancer fixtures: HAProxy and nginx (Debian packages) in front of given backends, each
//! rendered from the one configuration kept in `deploy/haproxy/haproxy.cfg` or
//! `deploy/nginx/nginx.conf`. It owns placeholder substitution, process lifetime and readiness;
//! it owns no client and keeps no second copy of either configuration.
//!
//! Rendering follows the convention written at the top of both files: every `${NAME}` or
//! `${NAME-default}` placeholder gets a value, and the lines between `# @backends-begin` and
//! `# @backends-end` (each alone on its line) become one copy of the first `server` line there
//! per backend, with only the name (HAProxy: `gw1`..`gwN`) and the address changed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::net::TcpStream;

use super::process::{kill_now, log_tail, start, wait_ready, Server, Spec, Wait};
use super::{fixture_dir, free_port, http_get, repo_root};

const START_TIMEOUT: Duration = Duration::from_secs(20);
/// The HAProxy backend the fixture fills.
const HAPROXY_BACKEND: &str = "gateways";
/// The lines that open and close the backend block (alone on their line, indentation aside).
const BEGIN: &str = "# @backends-begin";
const END: &str = "# @backends-end";

/// `haproxy -db` on 127.0.0.1 with a stats listener, in front of `backends`. Killed on drop.
pub struct Haproxy {
    child: Option<Child>,
    spec: Spec,
    port: u16,
    stats_port: u16,
    config: String,
    backends: Vec<SocketAddr>,
    // Last: removed after `Drop::drop` has killed the process.
    _dir: TempDir,
}

impl Haproxy {
    /// Renders `deploy/haproxy/haproxy.cfg` for `backends`, starts HAProxy and waits until the
    /// frontend accepts connections and every backend server is reported UP.
    pub async fn start(backends: &[SocketAddr]) -> Haproxy {
        assert!(!backends.is_empty(), "testkit: HAProxy needs at least one backend");
        start("haproxy", START_TIMEOUT, || Haproxy::spawn(backends)).await
    }

    fn spawn(backends: &[SocketAddr]) -> Haproxy {
        let dir = fixture_dir("haproxy");
        let (port, stats_port) = two_ports();
        let template = read_template("deploy/haproxy/haproxy.cfg");
        let config = render(
            &template,
            &[
                ("FRONTEND_ADDR", "127.0.0.1".into()),
                ("FRONTEND_PORT", port.to_string()),
                ("STATS_ADDR", "127.0.0.1".into()),
                ("STATS_PORT", stats_port.to_string()),
            ],
            backends,
            haproxy_server_line,
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, &config).unwrap_or_else(|e| panic!("testkit: write {}: {e}", path.display()));
        let spec = Spec::new("haproxy", dir.path().join("haproxy.log")).arg("-f").arg(path.display()).arg("-db");
        let child = Some(spec.spawn());
        Haproxy { child, spec, port, stats_port, config, backends: backends.to_vec(), _dir: dir }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `http://127.0.0.1:<frontend port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// `ws://127.0.0.1:<frontend port><path_and_query>`.
    pub fn ws(&self, path_and_query: &str) -> String {
        format!("ws://{}{path_and_query}", self.addr())
    }

    /// The stats listener (`/stats`, `/stats;csv`, `/metrics`).
    pub fn stats_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.stats_port)
    }

    /// The configuration HAProxy runs with.
    pub fn config(&self) -> &str {
        &self.config
    }

    /// HAProxy's view of `backend` (one of the addresses given to `start`): `UP`, `DOWN`,
    /// `MAINT`, `UP 1/2` (going down), ...
    pub async fn server_status(&self, backend: SocketAddr) -> String {
        let index = self
            .backends
            .iter()
            .position(|b| *b == backend)
            .unwrap_or_else(|| panic!("testkit: {backend} is not a backend of this HAProxy"));
        let statuses = server_statuses(&self.stats_url())
            .await
            .unwrap_or_else(|e| panic!("testkit: haproxy stats: {e}\n{}", log_tail(&self.spec.log)));
        statuses[index].clone()
    }

    /// Waits until HAProxy reports `backend` as exactly `status`; panics after `within`.
    pub async fn wait_server_status(&self, backend: SocketAddr, status: &str, within: Duration) {
        let deadline = Instant::now() + within;
        let mut last = String::new();
        while Instant::now() < deadline {
            last = self.server_status(backend).await;
            if last == status {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("testkit: HAProxy still reports {backend} as {last:?}, not {status:?}, after {within:?}");
    }

    /// The tail of HAProxy's log (stdout/stderr), for assertion messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.spec.log)
    }

    /// SIGKILL and reap; idempotent.
    pub fn kill(&mut self) {
        kill_now(&mut self.child);
    }
}

impl Server for Haproxy {
    async fn wait_until_ready(&mut self, deadline: Instant) -> Wait {
        let (port, stats) = (self.port, self.stats_url());
        let servers = self.backends.len();
        let Some(child) = self.child.as_mut() else { return Wait::TimedOut };
        wait_ready(child, deadline, || {
            let stats = stats.clone();
            async move {
                accepts(port).await
                    && matches!(server_statuses(&stats).await, Ok(s) if s.len() == servers && s.iter().all(|st| st == "UP"))
            }
        })
        .await
    }

    fn log(&self) -> &Path {
        &self.spec.log
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        self.kill();
    }
}

/// nginx in the foreground as a single process (`master_process off`, so a SIGKILL leaves no
/// orphaned worker), prefix and every runtime path in its tempdir. Killed on drop.
pub struct Nginx {
    child: Option<Child>,
    spec: Spec,
    port: u16,
    config: String,
    // Last: removed after `Drop::drop` has killed the process.
    _dir: TempDir,
}

impl Nginx {
    /// Renders `deploy/nginx/nginx.conf` for `backends`, starts nginx and waits until it
    /// accepts connections. nginx has no active checks: nothing more to wait for.
    pub async fn start(backends: &[SocketAddr]) -> Nginx {
        assert!(!backends.is_empty(), "testkit: nginx needs at least one backend");
        start("nginx", START_TIMEOUT, || Nginx::spawn(backends)).await
    }

    fn spawn(backends: &[SocketAddr]) -> Nginx {
        let dir = fixture_dir("nginx");
        // Workers may run as `nobody` when nginx starts as root: let them reach the prefix.
        set_mode(dir.path(), 0o755);
        let tmp = dir.path().join("tmp");
        std::fs::create_dir_all(&tmp).unwrap_or_else(|e| panic!("testkit: create {}: {e}", tmp.display()));
        let port = free_port();
        let template = read_template("deploy/nginx/nginx.conf");
        let config = render(
            &template,
            &[("FRONTEND_ADDR", "127.0.0.1".into()), ("FRONTEND_PORT", port.to_string())],
            backends,
            nginx_server_line,
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, &config).unwrap_or_else(|e| panic!("testkit: write {}: {e}", path.display()));
        let spec = Spec::new("nginx", dir.path().join("nginx.log"))
            .arg("-e")
            .arg("stderr")
            .arg("-p")
            .arg(format!("{}/", dir.path().display()))
            .arg("-c")
            .arg(path.display())
            .arg("-g")
            .arg("daemon off; master_process off;");
        let child = Some(spec.spawn());
        Nginx { child, spec, port, config, _dir: dir }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// `ws://127.0.0.1:<port><path_and_query>`.
    pub fn ws(&self, path_and_query: &str) -> String {
        format!("ws://{}{path_and_query}", self.addr())
    }

    /// The configuration nginx runs with.
    pub fn config(&self) -> &str {
        &self.config
    }

    pub fn log_tail(&self) -> String {
        log_tail(&self.spec.log)
    }

    /// SIGKILL and reap; idempotent.
    pub fn kill(&mut self) {
        kill_now(&mut self.child);
    }
}

impl Server for Nginx {
    async fn wait_until_ready(&mut self, deadline: Instant) -> Wait {
        let port = self.port;
        let Some(child) = self.child.as_mut() else { return Wait::TimedOut };
        wait_ready(child, deadline, || accepts(port)).await
    }

    fn log(&self) -> &Path {
        &self.spec.log
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.kill();
    }
}

fn two_ports() -> (u16, u16) {
    let a = free_port();
    loop {
        let b = free_port();
        if b != a {
            return (a, b);
        }
    }
}

fn read_template(relative: &str) -> String {
    let path: PathBuf = repo_root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("testkit: read {}: {e}", path.display()))
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("testkit: chmod {}: {e}", path.display()));
}

async fn accepts(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).await.is_ok()
}

/// The `status` column of each server of [`HAPROXY_BACKEND`], in configuration order.
async fn server_statuses(stats_url: &str) -> Result<Vec<String>, String> {
    let (code, body) = http_get(&format!("{stats_url}/stats;csv")).await.map_err(|e| e.to_string())?;
    if code != 200 {
        return Err(format!("HTTP {code}: {body}"));
    }
    let mut lines = body.lines();
    let header = lines.next().and_then(|h| h.strip_prefix("# ")).ok_or("no CSV header")?;
    let column = |name: &str| header.split(',').position(|c| c == name).ok_or(format!("no {name} column"));
    let (px, sv, status) = (column("pxname")?, column("svname")?, column("status")?);
    Ok(lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f.get(px) == Some(&HAPROXY_BACKEND) && !matches!(f.get(sv), Some(&"BACKEND") | Some(&"FRONTEND")))
        .map(|f| f.get(status).unwrap_or(&"").to_string())
        .collect())
}

/// `server gw1 host:port opts...` → `server gw<i> <addr> opts...`.
fn haproxy_server_line(template: &str, i: usize, addr: SocketAddr) -> String {
    let mut words: Vec<String> = template.split_whitespace().map(str::to_owned).collect();
    assert!(words.len() >= 3, "testkit: HAProxy server line too short: {template}");
    words[1] = format!("gw{i}");
    words[2] = addr.to_string();
    words.join(" ")
}

/// `server host:port opts...;` → `server <addr> opts...;`.
fn nginx_server_line(template: &str, _i: usize, addr: SocketAddr) -> String {
    let mut words: Vec<String> = template.split_whitespace().map(str::to_owned).collect();
    assert!(words.len() >= 2, "testkit: nginx server line too short: {template}");
    words[1] = if words[1].ends_with(';') { format!("{addr};") } else { addr.to_string() };
    words.join(" ")
}

/// Fills the placeholders and the backend block; panics when the file breaks the convention
/// (no backend block, no `server` template line, a placeholder left unfilled).
fn render(
    template: &str,
    vars: &[(&str, String)],
    backends: &[SocketAddr],
    server_line: fn(&str, usize, SocketAddr) -> String,
) -> String {
    let mut text = template.to_string();
    for (name, value) in vars {
        text = substitute(&text, name, value);
    }
    if let Some(at) = text.find("${") {
        let line = text[at..].lines().next().unwrap_or("");
        panic!("testkit: placeholder without a value in the proxy template: {line}");
    }
    let mut out = Vec::new();
    let mut lines = text.lines();
    let mut found = false;
    while let Some(line) = lines.next() {
        out.push(line.to_string());
        if line.trim() != BEGIN {
            continue;
        }
        found = true;
        let indent: String = line.chars().take_while(|c| c.is_whitespace()).collect();
        let mut block = Vec::new();
        let end = loop {
            match lines.next() {
                Some(l) if l.trim() == END => break l,
                Some(l) => block.push(l),
                None => panic!("testkit: `{BEGIN}` without `{END}` in the proxy template"),
            }
        };
        let first = block
            .iter()
            .find(|l| l.trim_start().starts_with("server "))
            .unwrap_or_else(|| panic!("testkit: no `server` line between @backends-begin and @backends-end"));
        for (i, addr) in backends.iter().enumerate() {
            out.push(format!("{indent}{}", server_line(first.trim(), i + 1, *addr)));
        }
        out.push(end.to_string());
    }
    assert!(found, "testkit: no `{BEGIN}` line in the proxy template");
    out.join("\n") + "\n"
}

/// Replaces `${name}` and `${name-default}` with `value`.
fn substitute(text: &str, name: &str, value: &str) -> String {
    let open = format!("${{{name}");
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(&open) {
        let after = &rest[at + open.len()..];
        let end = match after.chars().next() {
            Some('}') => Some(0),
            Some('-') => after.find('}'),
            _ => None,
        };
        match end {
            Some(end) => {
                out.push_str(&rest[..at]);
                out.push_str(value);
                rest = &after[end + 1..];
            }
            // A longer name that starts with this one (`${NAME_X}`): leave it.
            None => {
                out.push_str(&rest[..at + open.len()]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitutes_both_placeholder_forms() {
        let text = "bind \"${A-0.0.0.0}:${P}\" ${AB} ${P-1}";
        assert_eq!(substitute(&substitute(text, "A", "127.0.0.1"), "P", "80"), "bind \"127.0.0.1:80\" ${AB} 80");
    }

    #[test]
    fn renders_one_server_line_per_backend() {
        let template = "backend b\n    # @backends-begin\n    server gw1 gateway-1:8001 check\n    server gw2 gateway-2:8001 check\n    # @backends-end\n    # after\n";
        let backends: Vec<SocketAddr> = vec!["127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap()];
        let text = render(template, &[], &backends, haproxy_server_line);
        assert_eq!(
            text,
            "backend b\n    # @backends-begin\n    server gw1 127.0.0.1:1 check\n    server gw2 127.0.0.1:2 check\n    # @backends-end\n    # after\n"
        );
        let nginx = "u {\n  # @backends-begin\n  server 127.0.0.1:8001;\n  # @backends-end\n}\n";
        assert_eq!(
            render(nginx, &[], &backends[..1], nginx_server_line),
            "u {\n  # @backends-begin\n  server 127.0.0.1:1;\n  # @backends-end\n}\n"
        );
    }

    #[test]
    fn the_deploy_files_render() {
        let backends: Vec<SocketAddr> = vec!["127.0.0.1:1".parse().unwrap()];
        let haproxy = read_template("deploy/haproxy/haproxy.cfg");
        let vars = [
            ("FRONTEND_ADDR", "127.0.0.1".to_string()),
            ("FRONTEND_PORT", "1".into()),
            ("STATS_ADDR", "127.0.0.1".into()),
            ("STATS_PORT", "2".into()),
        ];
        assert!(render(&haproxy, &vars, &backends, haproxy_server_line).contains("server gw1 127.0.0.1:1"));
        let nginx = read_template("deploy/nginx/nginx.conf");
        assert!(render(&nginx, &vars[..2], &backends, nginx_server_line).contains("server 127.0.0.1:1 "));
    }
}
