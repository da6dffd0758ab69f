//! Shared helpers of the bridge's integration tests: running the bridge in-process or as the real
//! binary against `testkit` servers, reading what JetStream stored, polling conditions
//! with a deadline. Every wait here is bounded.
#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use async_nats::jetstream::{self, consumer::pull::OrderedConfig, consumer::DeliverPolicy};
use futures_util::StreamExt;
use publisher_bridge::Config;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Awaits `fut` for at most `secs` seconds.
pub async fn within<T>(secs: u64, what: &str, fut: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(Duration::from_secs(secs), fut).await.map_err(|_| anyhow!("timed out after {secs} s: {what}"))
}

/// Polls `check` every 100 ms until it returns `Some`, for at most `secs` seconds.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Ok(Some(v)) = tokio::time::timeout_at(deadline, check()).await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("condition not reached within {secs} s: {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The environment of a bridge talking to `redis_url` and to NATS as `nats` says (`NATS_URL`
/// and the bridge user's credentials: `NatsServer::env(NatsUser::Bridge)`), with fast test
/// timings.
pub fn env(
    redis_url: &str,
    nats: &[(String, String)],
    instance: &str,
    extra: &[(&str, &str)],
) -> HashMap<String, String> {
    let mut map: HashMap<String, String> = [
        ("REDIS_URL", redis_url),
        ("BRIDGE_INSTANCE_ID", instance),
        ("BRIDGE_LISTEN_ADDR", "127.0.0.1:0"),
        ("BRIDGE_SHUTDOWN_TIMEOUT", "5s"),
        ("BRIDGE_STARTUP_TIMEOUT", "10s"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .chain(nats.iter().cloned())
    .collect();
    for (k, v) in extra {
        map.insert(k.to_string(), v.to_string());
    }
    map
}

/// A bridge running in this process.
pub struct InProcess {
    pub addr: SocketAddr,
    pub stop: CancellationToken,
    task: Option<JoinHandle<std::result::Result<(), publisher_bridge::BridgeError>>>,
}

impl InProcess {
    pub async fn start(env: HashMap<String, String>) -> Result<InProcess> {
        let config = Config::from_lookup(move |k| env.get(k).cloned()).map_err(|e| anyhow!("{e}"))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(publisher_bridge::run(config, listener, stop.clone()));
        let bridge = InProcess { addr, stop, task: Some(task) };
        bridge.wait_ready(30).await?;
        Ok(bridge)
    }

    pub async fn wait_ready(&self, secs: u64) -> Result<()> {
        wait_ready(self.addr, secs).await
    }

    pub async fn metric(&self, series: &str) -> f64 {
        metric(self.addr, series).await.unwrap_or(f64::NAN)
    }

    /// Waits until `series` reads `value` (counters are bumped just after the acknowledgement
    /// that made the stored message visible, so a test polls rather than reads once).
    pub async fn wait_metric(&self, series: &str, value: f64) -> Result<()> {
        let last = std::sync::Mutex::new(f64::NAN);
        eventually(10, series, || async {
            let v = self.metric(series).await;
            *last.lock().unwrap() = v;
            (v == value).then_some(())
        })
        .await
        .map_err(|e| anyhow!("{e}: last value {}, expected {value}", last.lock().unwrap()))
    }

    /// Stops it and waits for the shutdown sequence to finish.
    pub async fn shutdown(mut self) -> Result<()> {
        self.stop.cancel();
        let task = self.task.take().expect("running");
        within(20, "bridge shutdown", task).await?.context("join")?.map_err(|e| anyhow!("{e}"))
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The real binary, killed on drop.
pub struct Binary {
    pub addr: SocketAddr,
    pub child: Child,
    pub log: PathBuf,
}

impl Binary {
    /// Spawns `publisher-bridge` with `env` (plus a free listen port) and waits until ready.
    pub async fn start(mut env: HashMap<String, String>, log: PathBuf) -> Result<Binary> {
        let addr: SocketAddr = format!("127.0.0.1:{}", testkit::free_port()).parse()?;
        env.insert("BRIDGE_LISTEN_ADDR".into(), addr.to_string());
        let log_file = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
        let child = Command::new(env!("CARGO_BIN_EXE_publisher-bridge"))
            .envs(env)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .context("spawn publisher-bridge")?;
        let mut bridge = Binary { addr, child, log };
        if let Err(e) = wait_ready(addr, 30).await {
            let _ = bridge.child.kill();
            bail!("{e}\n{}", bridge.log_tail());
        }
        Ok(bridge)
    }

    /// SIGSTOP (`false`) or SIGCONT (`true`): a stopped bridge reads, publishes and acknowledges
    /// nothing, so what it holds can be counted before it is killed.
    pub fn set_running(&mut self, running: bool) {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        let signal = if running { Signal::SIGCONT } else { Signal::SIGSTOP };
        kill(Pid::from_raw(self.child.id() as i32), signal).expect("signal the bridge");
    }

    pub fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit code (within `secs`).
    pub async fn sigterm(&mut self, secs: u64) -> Result<Option<i32>> {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM)?;
        let status = eventually(secs, "bridge exits after SIGTERM", || {
            let status = self.child.try_wait().ok().flatten();
            async move { status }
        })
        .await?;
        Ok(status.code())
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        self.sigkill();
    }
}

pub async fn wait_ready(addr: SocketAddr, secs: u64) -> Result<()> {
    let url = format!("http://{addr}/readyz");
    eventually(secs, "bridge /readyz answers 200", || {
        let url = url.clone();
        async move { matches!(testkit::http_get(&url).await, Ok((200, _))).then_some(()) }
    })
    .await
}

/// The value of one exact series (`name{labels}`) from `/metrics`.
pub async fn metric(addr: SocketAddr, series: &str) -> Option<f64> {
    let (_, body) = testkit::http_get(&format!("http://{addr}/metrics")).await.ok()?;
    body.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

pub async fn redis(url: &str) -> Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url)?;
    Ok(within(10, "redis connect", client.get_multiplexed_async_connection()).await??)
}

/// JetStream through `client` (tests read what was stored as the operator user:
/// `nats.connect(NatsUser::Operator)`).
pub async fn jetstream(client: async_nats::Client) -> Result<jetstream::Context> {
    Ok(jetstream::new(client))
}

/// One message as JetStream stored it.
#[derive(Debug, Clone)]
pub struct Stored {
    pub subject: String,
    pub headers: HashMap<String, String>,
    pub payload: Vec<u8>,
}

impl Stored {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }
}

/// Number of messages in `stream` (0 if it does not exist yet).
pub async fn count(js: &jetstream::Context, stream: &str) -> u64 {
    match js.get_stream(stream).await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Every message of `stream`, oldest first.
pub async fn read_all(js: &jetstream::Context, stream: &str) -> Result<Vec<Stored>> {
    let n = count(js, stream).await;
    if n == 0 {
        return Ok(Vec::new());
    }
    let s = js.get_stream(stream).await?;
    let consumer =
        s.create_consumer(OrderedConfig { deliver_policy: DeliverPolicy::All, ..Default::default() }).await?;
    let mut messages = consumer.messages().await?;
    let mut out = Vec::with_capacity(n as usize);
    while (out.len() as u64) < n {
        let msg = within(20, "reading the stream", messages.next()).await?.ok_or_else(|| anyhow!("stream ended"))??;
        let headers = msg
            .headers
            .iter()
            .flat_map(|h| h.iter().map(|(k, v)| (k.to_string(), v.first().map(|v| v.to_string()).unwrap_or_default())))
            .collect();
        out.push(Stored { subject: msg.subject.to_string(), headers, payload: msg.payload.to_vec() });
    }
    Ok(out)
}

/// Waits until `stream` holds at least `n` messages.
pub async fn wait_count(js: &jetstream::Context, stream: &str, n: u64, secs: u64) -> Result<u64> {
    let last = std::sync::atomic::AtomicU64::new(0);
    let r = eventually(secs, "stream count", || async {
        let c = count(js, stream).await;
        last.store(c, std::sync::atomic::Ordering::Relaxed);
        (c >= n).then_some(c)
    })
    .await;
    r.map_err(|e| anyhow!("{e}: {stream} has {} of {n} messages", last.into_inner()))
}

/// A unique valid event: its text carries `seq`, so digests differ.
pub fn event(seq: u64, event_type: &str, tenant: u64, branch: Option<u64>) -> String {
    let branch = branch.map(|b| format!(r#","branch_id":{b}"#)).unwrap_or_default();
    format!(
        r#"{{"type":"{event_type}","tenant_id":{tenant}{branch},"table_id":5,"session_id":77,"sector_id":null,"entity":{{"n":{seq}}},"actor":{{}},"ts":"2026-01-01T00:00:00.000001Z","v":1}}"#
    )
}

/// The `entity.n` of a stored test event.
pub fn seq_of(payload: &[u8]) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    v["entity"]["n"].as_u64()
}

/// `XPENDING key group` count.
pub async fn xpending(conn: &mut redis::aio::MultiplexedConnection, key: &str, group: &str) -> Result<i64> {
    let reply: redis::Value =
        within(5, "XPENDING", redis::cmd("XPENDING").arg(key).arg(group).query_async(conn)).await??;
    match reply {
        redis::Value::Array(items) => match items.first() {
            Some(redis::Value::Int(n)) => Ok(*n),
            other => bail!("unexpected XPENDING reply {other:?}"),
        },
        other => bail!("unexpected XPENDING reply {other:?}"),
    }
}

/// XADDs `field=payload` entries in pipelined batches.
pub async fn xadd_all(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &str,
    field: &str,
    payloads: &[String],
) -> Result<()> {
    for chunk in payloads.chunks(500) {
        let mut pipe = redis::pipe();
        for p in chunk {
            pipe.cmd("XADD").arg(key).arg("*").arg(field).arg(p).ignore();
        }
        within(10, "XADD batch", pipe.query_async::<()>(conn)).await??;
    }
    Ok(())
}

/// Asserts every `0..n` sequence number appears exactly once among `stored`.
pub fn assert_exactly_once(stored: &[Stored], n: u64) {
    let mut seen = vec![0u32; n as usize];
    for s in stored {
        let seq =
            seq_of(&s.payload).unwrap_or_else(|| panic!("not a test event: {}", String::from_utf8_lossy(&s.payload)));
        seen[seq as usize] += 1;
    }
    let missing: Vec<usize> = seen.iter().enumerate().filter(|(_, c)| **c == 0).map(|(i, _)| i).collect();
    let doubled: Vec<usize> = seen.iter().enumerate().filter(|(_, c)| **c > 1).map(|(i, _)| i).collect();
    assert!(
        missing.is_empty() && doubled.is_empty(),
        "missing {} (first {:?}), doubled {} (first {:?})",
        missing.len(),
        &missing[..missing.len().min(10)],
        doubled.len(),
        &doubled[..doubled.len().min(10)]
    );
    assert_eq!(stored.len() as u64, n);
}

/// A scratch file for a binary's log.
pub fn log_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("publisher-bridge-test-{name}-{}.log", std::process::id()))
}
