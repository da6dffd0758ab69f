//! The clients of a cluster scenario: a population of staff and diners over several tenants,
//! branches and roles, each running the reconnect loop of the browser apps against HAProxy, and
//! a log per client of everything it saw. It owns no expectation: `traffic` decides what each
//! client should have received.
//!
//! The loop: connect with `resume=live`; on any close or drop, wait a backoff and reconnect with
//! `resume=<last cursor seen>` (or `resume=0` if none yet: the stream of a scenario only holds
//! events published after every client's first connection, so `0` means "everything I missed").
//! The apps back off from a 1 s base with jitter; these clients use a 200 ms base
//! ([`BACKOFF_BASE`]), doubling per failed attempt up to 3.2 s, each ±50 %, to keep the test short.
//! They ping every 15 s like the apps, well inside the gateway's 60 s heartbeat.

use crate::harness::{staff_token, table_token, without_cursor, ORIGIN};
use futures_util::{SinkExt, StreamExt};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

pub const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_millis(3200);
const PING_EVERY: Duration = Duration::from_secs(15);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const PONG: &str = r#"{"type":"pong"}"#;

/// Tenants, their branches, and per branch the table sessions and sectors events refer to.
pub struct Layout {
    pub tenants: Vec<Tenant>,
}

pub struct Tenant {
    pub id: u64,
    pub branches: Vec<Branch>,
}

pub struct Branch {
    pub id: u64,
    /// Sessions with diners connected; events also name one session nobody holds.
    pub sessions: Vec<u64>,
    /// Sectors events name; no waiter is assigned to any (no PostgreSQL: waiters are branch-wide).
    pub sectors: Vec<u64>,
}

impl Layout {
    /// Tenants `1..=tenants`, each as [`Tenant::new`] lays it out.
    pub fn new(tenants: u64, branches: u64, sessions: u64) -> Layout {
        Layout { tenants: (1..=tenants).map(|t| Tenant::new(t, branches, sessions)).collect() }
    }
}

impl Tenant {
    /// Tenant `t` has branches `10t+1..`, sessions `1000t+100k+s`, sectors `100t+10k+1..2`.
    pub fn new(t: u64, branches: u64, sessions: u64) -> Tenant {
        Tenant {
            id: t,
            branches: (1..=branches)
                .map(|k| Branch {
                    id: 10 * t + k,
                    sessions: (1..=sessions).map(|s| 1000 * t + 100 * k + s).collect(),
                    sectors: vec![100 * t + 10 * k + 1, 100 * t + 10 * k + 2],
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// WAITER on `/ws/waiter`, no sectors.
    Waiter,
    /// KITCHEN on `/ws/kitchen`.
    Kitchen,
    /// MANAGER on `/ws/admin`.
    Manager,
    /// MANAGER on `/ws/waiter`: sees what admins see.
    ManagerOnWaiter,
    /// MANAGER on `/ws/kitchen`: sees what admins see.
    ManagerOnKitchen,
    /// ADMIN on `/ws/admin` with every branch of the tenant.
    Admin,
    /// A diner of one table session on `/ws/diner`.
    Diner,
}

impl Role {
    /// Admin endpoint, or MANAGER/ADMIN on the waiter or kitchen endpoint.
    pub fn admin_view(self) -> bool {
        matches!(self, Role::Manager | Role::ManagerOnWaiter | Role::ManagerOnKitchen | Role::Admin)
    }
}

#[derive(Clone)]
pub struct Member {
    pub tenant: u64,
    pub branches: Vec<u64>,
    pub role: Role,
    pub session: Option<u64>,
    /// `/ws/<endpoint>?<credential>`, without the resume parameter.
    pub path: String,
    /// The credential alone (`token=...` / `table_token=...`), for the catch-up endpoints.
    pub credential: String,
}

impl Member {
    /// The catch-up requests this member makes for events after `since` (unix seconds, written
    /// as given): its session's, or one per branch (with the branch).
    pub fn catchup_paths(&self, since: impl std::fmt::Display) -> Vec<(String, Option<u64>)> {
        match self.session {
            Some(session) => {
                vec![(format!("/ws/catchup/session?session_id={session}&since={since}&{}", self.credential), None)]
            }
            None => self
                .branches
                .iter()
                .map(|b| (format!("/ws/catchup?branch_id={b}&since={since}&{}", self.credential), Some(*b)))
                .collect(),
        }
    }

    pub fn staff(user: u64, tenant: u64, branches: &[u64], role: Role) -> Member {
        let (endpoint, roles): (&str, &[&str]) = match role {
            Role::Waiter => ("waiter", &["WAITER"]),
            Role::Kitchen => ("kitchen", &["KITCHEN"]),
            Role::Manager => ("admin", &["MANAGER"]),
            Role::ManagerOnWaiter => ("waiter", &["MANAGER"]),
            Role::ManagerOnKitchen => ("kitchen", &["MANAGER"]),
            Role::Admin => ("admin", &["ADMIN"]),
            Role::Diner => unreachable!("diners have table tokens"),
        };
        let credential = format!("token={}", staff_token(user, tenant, branches, roles));
        Member {
            tenant,
            branches: branches.to_vec(),
            role,
            session: None,
            path: format!("/ws/{endpoint}?{credential}"),
            credential,
        }
    }

    pub fn diner(tenant: u64, branch: u64, session: u64) -> Member {
        let credential = format!("table_token={}", table_token(tenant, branch, session % 100, session));
        Member {
            tenant,
            branches: vec![branch],
            role: Role::Diner,
            session: Some(session),
            path: format!("/ws/diner?{credential}"),
            credential,
        }
    }

    pub fn label(&self) -> String {
        match self.session {
            Some(s) => format!("diner t{} session {s}", self.tenant),
            None => format!("{:?} t{} b{:?}", self.role, self.tenant, self.branches),
        }
    }
}

/// Per branch: 12 waiters, 4 cooks, 2 managers on the admin endpoint, a manager on each of the
/// waiter and kitchen endpoints, 3 diners per session; per tenant: 2 admins and a waiter of
/// every branch. With 3 tenants × 2 branches × 4 sessions: 201 clients.
pub fn population(layout: &Layout) -> Vec<Member> {
    let mut members = Vec::new();
    let mut user = 100;
    let mut next_user = || {
        user += 1;
        user
    };
    for tenant in &layout.tenants {
        let all: Vec<u64> = tenant.branches.iter().map(|b| b.id).collect();
        for branch in &tenant.branches {
            let one = [branch.id];
            let roles = [
                (Role::Waiter, 12),
                (Role::Kitchen, 4),
                (Role::Manager, 2),
                (Role::ManagerOnWaiter, 1),
                (Role::ManagerOnKitchen, 1),
            ];
            for (role, n) in roles {
                for _ in 0..n {
                    members.push(Member::staff(next_user(), tenant.id, &one, role));
                }
            }
            for session in &branch.sessions {
                for _ in 0..3 {
                    members.push(Member::diner(tenant.id, branch.id, *session));
                }
            }
        }
        for _ in 0..2 {
            members.push(Member::staff(next_user(), tenant.id, &all, Role::Admin));
        }
        members.push(Member::staff(next_user(), tenant.id, &all, Role::Waiter));
    }
    members
}

/// How one connection ended.
#[derive(Debug, Clone)]
pub struct Close {
    /// When the connection had been accepted (the `101`).
    pub opened: Instant,
    pub at: Instant,
    /// `None`: the connection dropped without a close frame.
    pub code: Option<u16>,
    pub reason: String,
}

/// One connection of a client, for failure messages.
#[derive(Debug, Clone)]
pub struct Connection {
    pub opened: Instant,
    /// Unix nanoseconds just before the handshake began and when its `101` arrived (to compare
    /// with the times JetStream stored events).
    pub started_ns: u64,
    pub opened_ns: u64,
    /// The `ws://` base the connection went to.
    pub target: String,
    /// The `resume` query value sent (`live`, `<cursor>`, or `<cursor>&epoch=<epoch>`).
    pub resume: String,
    pub received: usize,
    pub first: Option<u64>,
    pub last: Option<u64>,
}

/// One text frame a resuming client kept, in arrival order.
#[derive(Debug, Clone)]
pub enum Frame {
    /// An event: its `_cursor`, its `_epoch` (if any) and its bytes as published.
    Event { cursor: u64, epoch: Option<String>, payload: String },
    /// A `RESUME_GAP` signal, as received.
    Gap(String),
}

/// Everything one client saw.
#[derive(Debug, Default)]
pub struct Log {
    /// (cursor, event as published) in arrival order.
    pub received: Vec<(u64, String)>,
    /// Events and gap signals in arrival order, each with the index of its connection.
    pub frames: Vec<(usize, Frame)>,
    /// `RESUME_GAP` frames: a replay that could not be complete.
    pub gaps: Vec<String>,
    /// Text frames that were neither a pong, a gap signal nor an event with a cursor.
    pub unexpected: Vec<String>,
    /// Successful handshakes.
    pub connects: Vec<Instant>,
    /// One line per connection (resume parameter, cursors received), for failure messages.
    pub connections: Vec<Connection>,
    pub closes: Vec<Close>,
    /// Handshakes that failed (refused, reset, timed out) and were retried.
    pub failed_attempts: u32,
    pub connected: bool,
}

impl Log {
    /// Records a successful handshake to `target` with `resume`, started at `started_ns`.
    fn opened(&mut self, started_ns: u64, target: &str, resume: &str) -> Instant {
        let opened = Instant::now();
        self.connects.push(opened);
        self.connections.push(Connection {
            opened,
            started_ns,
            opened_ns: now_ns(),
            target: target.to_string(),
            resume: resume.to_string(),
            received: 0,
            first: None,
            last: None,
        });
        self.connected = true;
        opened
    }
}

/// The running clients.
pub struct Fleet {
    pub members: Vec<Member>,
    logs: Vec<Arc<Mutex<Log>>>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Fleet {
    /// Starts one reconnecting client per member against `ws_base` (`ws://<HAProxy>`) and waits
    /// until every one has connected once.
    pub async fn connect(ws_base: &str, members: Vec<Member>) -> Fleet {
        let stop = CancellationToken::new();
        let mut logs = Vec::new();
        let mut tasks = Vec::new();
        for member in &members {
            let log = Arc::new(Mutex::new(Log::default()));
            logs.push(log.clone());
            tasks.push(tokio::spawn(run_client(format!("{ws_base}{}", member.path), log, stop.clone())));
        }
        let fleet = Fleet { members, logs, stop, tasks };
        fleet.wait_all_connected(Duration::from_secs(60)).await;
        fleet
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Reads one client's log.
    pub fn with_log<T>(&self, i: usize, read: impl FnOnce(&Log) -> T) -> T {
        read(&self.logs[i].lock().unwrap())
    }

    pub fn connected(&self) -> usize {
        self.logs.iter().filter(|l| l.lock().unwrap().connected).count()
    }

    /// Closes seen by all clients that ended after `since`.
    pub fn closes_after(&self, since: Instant) -> usize {
        self.logs.iter().map(|l| l.lock().unwrap().closes.iter().filter(|c| c.at >= since).count()).sum()
    }

    /// Waits until every client holds an open connection.
    pub async fn wait_all_connected(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while self.connected() < self.len() {
            assert!(
                Instant::now() < deadline,
                "only {} of {} clients connected after {within:?}",
                self.connected(),
                self.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops every client (closing its socket) and hands back their logs, in member order.
    pub async fn stop(self) -> (Vec<Member>, Vec<Log>) {
        self.stop.cancel();
        for task in self.tasks {
            tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .expect("client stops in time")
                .expect("client task");
        }
        let logs =
            self.logs.into_iter().map(|l| Arc::try_unwrap(l).expect("sole owner").into_inner().unwrap()).collect();
        (self.members, logs)
    }
}

/// One client: connect, read until the connection ends, back off, reconnect with the cursor.
async fn run_client(base: String, log: Arc<Mutex<Log>>, stop: CancellationToken) {
    let mut cursor: Option<Cursor> = None;
    let mut ever_connected = false;
    let mut failures = 0u32;
    while !stop.is_cancelled() {
        let resume = match (ever_connected, &cursor) {
            (false, _) => "live".to_string(),
            (true, Some((c, _))) => c.to_string(),
            (true, None) => "0".to_string(),
        };
        let started_ns = now_ns();
        match handshake(&format!("{base}&resume={resume}")).await {
            Ok(ws) => {
                ever_connected = true;
                failures = 0;
                let opened = log.lock().unwrap().opened(started_ns, &base, &resume);
                let end = read_until_closed(ws, &log, &mut cursor, &stop).await;
                let mut log = log.lock().unwrap();
                log.connected = false;
                match end {
                    Some((at, code, reason)) => log.closes.push(Close { opened, at, code, reason }),
                    None => return,
                }
            }
            Err(_) => {
                failures += 1;
                log.lock().unwrap().failed_attempts += 1;
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff(failures)) => {}
        }
    }
}

/// What a steered client is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    /// Close the connection (if any) and stay away.
    Away,
    /// Be connected, to `bases[target]` first; a new `generation` means "(re)connect there now".
    On { target: usize, generation: u64 },
}

/// One client steered by a test (the model test): it connects where and when it is told, leaves
/// when told, and otherwise behaves like [`Fleet`]'s clients: after a close or drop it backs off
/// and reconnects, to the next of its bases, with `resume=<last cursor>&epoch=<its epoch>`
/// (`resume=live` while it holds no cursor).
pub struct Steered {
    pub log: Arc<Mutex<Log>>,
    want: tokio::sync::watch::Sender<Want>,
    generation: u64,
    task: JoinHandle<()>,
}

impl Steered {
    /// Starts the client, away; `path` is `/ws/<endpoint>?<credential>`.
    pub fn start(bases: Arc<Vec<String>>, path: String, stop: CancellationToken) -> Steered {
        let log = Arc::new(Mutex::new(Log::default()));
        let (want, asked) = tokio::sync::watch::channel(Want::Away);
        let task = tokio::spawn(run_steered(bases, path, log.clone(), asked, stop));
        Steered { log, want, generation: 0, task }
    }

    /// Connects (or reconnects, closing the current connection) to `bases[target]`.
    pub fn go(&mut self, target: usize) {
        self.generation += 1;
        self.want.send_replace(Want::On { target, generation: self.generation });
    }

    /// Closes the connection from this side and stays away until the next [`Steered::go`].
    pub fn away(&mut self) {
        self.want.send_replace(Want::Away);
    }

    pub fn wants_on(&self) -> bool {
        matches!(*self.want.borrow(), Want::On { .. })
    }

    pub fn connected(&self) -> bool {
        self.log.lock().unwrap().connected
    }

    /// Waits for the client task (after the `stop` token it was started with was cancelled)
    /// and hands back its log.
    pub async fn finish(self) -> Log {
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("client stops in time")
            .expect("client task");
        Arc::try_unwrap(self.log).expect("sole owner").into_inner().unwrap()
    }
}

async fn run_steered(
    bases: Arc<Vec<String>>,
    path: String,
    log: Arc<Mutex<Log>>,
    mut want: tokio::sync::watch::Receiver<Want>,
    stop: CancellationToken,
) {
    let mut cursor: Option<Cursor> = None;
    let (mut target, mut generation) = (0usize, 0u64);
    let mut failures = 0u32;
    loop {
        let current = loop {
            let asked = want.borrow_and_update().clone();
            if matches!(asked, Want::On { .. }) {
                break asked;
            }
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                changed = want.changed() => if changed.is_err() { return },
            }
        };
        if stop.is_cancelled() {
            return;
        }
        if let Want::On { target: asked, generation: g } = current {
            if g != generation {
                (target, generation) = (asked, g);
            }
        }
        let resume = match &cursor {
            None => "live".to_string(),
            Some((c, Some(epoch))) => format!("{c}&epoch={epoch}"),
            Some((c, None)) => c.to_string(),
        };
        let base = bases[target % bases.len()].clone();
        let started_ns = now_ns();
        match handshake(&format!("{base}{path}&resume={resume}")).await {
            Ok(ws) => {
                failures = 0;
                let opened = log.lock().unwrap().opened(started_ns, &base, &resume);
                // Leaving (or moving) closes the connection from this side.
                let leave = stop.child_token();
                let watcher = tokio::spawn({
                    let (leave, mut want, current) = (leave.clone(), want.clone(), current.clone());
                    async move {
                        while *want.borrow_and_update() == current {
                            if want.changed().await.is_err() {
                                return;
                            }
                        }
                        leave.cancel();
                    }
                });
                let end = read_until_closed(ws, &log, &mut cursor, &leave).await;
                watcher.abort();
                let dropped = {
                    let mut log = log.lock().unwrap();
                    log.connected = false;
                    match end {
                        Some((at, code, reason)) => {
                            log.closes.push(Close { opened, at, code, reason });
                            true
                        }
                        None => {
                            let left = Close { opened, at: Instant::now(), code: Some(1000), reason: "left".into() };
                            log.closes.push(left);
                            false
                        }
                    }
                };
                if stop.is_cancelled() {
                    return;
                }
                if dropped {
                    // Closed by the server or dropped: like the apps, back off and try again,
                    // here on the next replica.
                    target += 1;
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff(0)) => {}
                    }
                }
            }
            Err(_) => {
                failures += 1;
                log.lock().unwrap().failed_attempts += 1;
                target += 1;
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff(failures)) => {}
                }
            }
        }
    }
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn handshake(url: &str) -> Result<Socket, String> {
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    request.headers_mut().insert("Origin", ORIGIN.parse().unwrap());
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tokio_tungstenite::connect_async(request)).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("handshake timed out".into()),
    }
}

/// Reads events until the connection ends (`Some(when, code, reason)`: when the close frame
/// arrived, code `None` for a drop) or the fleet stops (`None`, after closing from this side).
async fn read_until_closed(
    mut ws: Socket,
    log: &Mutex<Log>,
    cursor: &mut Option<Cursor>,
    stop: &CancellationToken,
) -> Option<(Instant, Option<u16>, String)> {
    let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => {
                let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                return None;
            }
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(text))) => record(text.as_str(), log, cursor),
                Some(Ok(Message::Close(frame))) => {
                    let at = Instant::now();
                    // Let the library answer the close; the stream then ends.
                    let _ = tokio::time::timeout(Duration::from_secs(2), async { while let Some(Ok(_)) = ws.next().await {} }).await;
                    let (code, reason) = frame.map(|f| (u16::from(f.code), f.reason.to_string())).unwrap_or((1005, String::new()));
                    return Some((at, Some(code), reason));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Some((Instant::now(), None, e.to_string())),
                None => return Some((Instant::now(), None, "stream ended".into())),
            },
            _ = ping.tick() => {
                if ws.send(Message::text("ping")).await.is_err() {
                    return Some((Instant::now(), None, "ping failed".into()));
                }
            }
        }
    }
}

/// The last event's `_cursor` and `_epoch`.
pub type Cursor = (u64, Option<String>);

/// Unix nanoseconds now.
pub fn now_ns() -> u64 {
    wire::clock::now_micros().saturating_mul(1000)
}

fn record(text: &str, log: &Mutex<Log>, cursor: &mut Option<Cursor>) {
    if text == PONG {
        return;
    }
    let value: Option<serde_json::Value> = serde_json::from_str(text).ok();
    let mut log = log.lock().unwrap();
    let connection = log.connections.len().saturating_sub(1);
    match value.as_ref().map(|v| (v["type"].as_str(), v["_cursor"].as_u64())) {
        Some((Some("RESUME_GAP"), _)) => {
            log.gaps.push(text.to_string());
            log.frames.push((connection, Frame::Gap(text.to_string())));
        }
        Some((_, Some(c))) => {
            let epoch = value.as_ref().and_then(|v| v["_epoch"].as_str().map(str::to_string));
            let payload = without_cursor(text);
            log.frames.push((connection, Frame::Event { cursor: c, epoch: epoch.clone(), payload: payload.clone() }));
            log.received.push((c, payload));
            *cursor = Some((c, epoch));
            if let Some(conn) = log.connections.last_mut() {
                conn.received += 1;
                conn.first.get_or_insert(c);
                conn.last = Some(c);
            }
        }
        _ => log.unexpected.push(text.to_string()),
    }
}

/// `BACKOFF_BASE` × 2^failures, capped, ±50 % jitter.
fn backoff(failures: u32) -> Duration {
    let base = BACKOFF_BASE.saturating_mul(1 << failures.min(5)).min(BACKOFF_CAP);
    let jitter = 0.5 + fastish_random();
    base.mul_f64(jitter)
}

/// A number in [0, 1) from the clock's nanoseconds: jitter, not statistics.
fn fastish_random() -> f64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let mixed = (nanos as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
    (mixed as f64) / ((1u64 << 53) as f64)
}

impl Log {
    /// The client's connections and closes, in seconds after `origin`, for failure messages.
    pub fn timeline(&self, origin: Instant) -> String {
        let at = |i: Instant| i.saturating_duration_since(origin).as_secs_f64();
        let mut events: Vec<(f64, String)> = self
            .connections
            .iter()
            .map(|c| {
                (
                    at(c.opened),
                    format!(
                        "connected resume={} received {} cursors {:?}..{:?}",
                        c.resume, c.received, c.first, c.last
                    ),
                )
            })
            .collect();
        events.extend(self.closes.iter().map(|c| (at(c.at), format!("closed {:?} {}", c.code, c.reason))));
        events.sort_by(|a, b| a.0.total_cmp(&b.0));
        events.iter().map(|(t, what)| format!("{t:.2}s {what}")).collect::<Vec<_>>().join("; ")
    }
}
