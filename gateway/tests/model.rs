//! A randomized, model-based delivery test (issue 13). `testkit::ClusterStack` runs the
//! production shape on loopback (3 NATS nodes with an R3 `EVENTS`, Redis, 2 bridges, 3 gateways,
//! HAProxy); a seeded schedule (`MODEL_SEED`, `MODEL_STEPS`) then drives it, with a CPU hog
//! (one busy loop per core at `nice 5`) beside it:
//!
//! - tenants created (at most 6 live at once; their first client, an admin, connects and an event of the tenant is
//!   published right after its handshake, then the tenant's other clients join) and dropped (every
//!   client of the tenant leaves; the gateways unsubscribe after `GATEWAY_UNSUBSCRIBE_DELAY`, 1 s
//!   here), and revived later (all of them resume);
//! - clients of every role (waiters, cooks, managers on each staff endpoint, admins, diners)
//!   joining, leaving, rejoining and moving, straight to `gw-1` or `gw-2` or through HAProxy, always
//!   with `resume=<last cursor>&epoch=<its epoch>` once they hold a cursor;
//! - catch-up (`/ws/catchup`, `/ws/catchup/session`) with a `since` between two stored events,
//!   compared with the oracle on the spot;
//! - events on every pub/sub channel kind and on `events:critical`: a steady trickle (25/s) over
//!   the live tenants, bursts over all tenants (dropped ones too);
//! - a replica stopped (SIGTERM or SIGKILL) and started again, a bridge likewise;
//! - `EVENTS` deleted and created again (after everything stored was read back).
//!
//! Every action kind comes once, in a seeded order, before weighted random picks; actions that do
//! not apply to the state fall back to a burst. The verdict (`model/oracle.rs`): every
//! connection's events against what JetStream stored and `traffic::receives` (the contract's
//! routing rule): exactly once, in stream order, nothing missing, nothing extra, `RESUME_GAP` only
//! for a cursor of a deleted stream. A failure's message starts with the seed and the command
//! that replays it.

#[path = "cluster/fleet.rs"]
#[allow(dead_code)]
mod fleet;
#[path = "support/harness.rs"]
mod harness;
#[path = "model/hog.rs"]
mod hog;
#[path = "model/oracle.rs"]
mod oracle;
#[path = "cluster/traffic.rs"]
#[allow(dead_code)]
mod traffic;

use async_nats::jetstream;
use fleet::{now_ns, Layout, Member, Role, Steered, Tenant};
use futures_util::FutureExt;
use harness::{JWT_SECRET, TABLE_SECRET};
use oracle::{Incarnation, Stored};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use testkit::{http_get, ClusterOptions, ClusterStack, EVENTS_STREAM};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use traffic::Published;

const DEFAULT_SEED: u64 = 13;
const DEFAULT_STEPS: usize = 40;
/// Branches per tenant and table sessions per branch.
const BRANCHES: u64 = 2;
const SESSIONS: u64 = 2;
/// Tenants with clients at once (a new one beyond falls back to a burst): the clients stay
/// within what two shared cores carry beside the CPU hog.
const MAX_LIVE_TENANTS: usize = 6;
/// The trickle of events over the live tenants.
const TRICKLE_EVERY: Duration = Duration::from_millis(40);
/// Bounded waits: a client connecting, a client receiving what was stored for it, JetStream
/// storing what was published.
const CONNECT_WITHIN: Duration = Duration::from_secs(40);
const CATCH_UP_WITHIN: Duration = Duration::from_secs(20);
const STORE_WITHIN: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    NewTenant,
    DropTenant,
    ReviveTenant,
    Leave,
    Rejoin,
    Move,
    JoinNew,
    Burst,
    CatchUp,
    RestartReplica,
    RestartBridge,
    RecreateStream,
}

/// Every action and its weight in the random part of a schedule.
const ACTIONS: [(Action, u64); 12] = [
    (Action::NewTenant, 3),
    (Action::DropTenant, 2),
    (Action::ReviveTenant, 2),
    (Action::Leave, 3),
    (Action::Rejoin, 3),
    (Action::Move, 3),
    (Action::JoinNew, 2),
    (Action::Burst, 4),
    (Action::CatchUp, 3),
    (Action::RestartReplica, 1),
    (Action::RestartBridge, 1),
    (Action::RecreateStream, 1),
];

/// SplitMix64: the schedule's dice.
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        (!items.is_empty()).then(|| &items[self.below(items.len() as u64) as usize])
    }
}

/// Two tenants first, every action once in a seeded order, then weighted picks.
fn schedule(seed: u64, steps: usize) -> Vec<Action> {
    let mut dice = Dice(seed);
    let mut all: Vec<Action> = ACTIONS.iter().map(|(a, _)| *a).collect();
    for i in (1..all.len()).rev() {
        all.swap(i, dice.below(i as u64 + 1) as usize);
    }
    let mut plan = vec![Action::NewTenant, Action::NewTenant];
    plan.extend(all);
    let total: u64 = ACTIONS.iter().map(|(_, w)| w).sum();
    while plan.len() < steps {
        let mut roll = dice.below(total);
        for (action, weight) in ACTIONS {
            if roll < weight {
                plan.push(action);
                break;
            }
            roll -= weight;
        }
    }
    plan.truncate(steps);
    plan
}

/// What has been published, and the tenants the trickle publishes for. Publishing holds the
/// lock, so taking it (with `paused` set) means nothing is on its way to Redis.
struct Feed {
    paused: bool,
    live: Vec<u64>,
    published: Vec<Published>,
    next_seq: u64,
    redis: redis::aio::MultiplexedConnection,
    seed: u64,
}

impl Feed {
    async fn emit(&mut self, tenant: u64) -> &Published {
        let layout = Layout { tenants: vec![Tenant::new(tenant, BRANCHES, SESSIONS)] };
        let event = traffic::generate_seeded(&layout, self.next_seq, self.seed);
        self.next_seq += 1;
        let event = traffic::publish(&mut self.redis, event).await;
        self.published.push(event);
        self.published.last().unwrap()
    }
}

type SharedFeed = Arc<tokio::sync::Mutex<Feed>>;

fn start_trickle(feed: SharedFeed, seed: u64, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut dice = Dice(seed ^ 0x0074_7269_636b_6c65);
        let mut tick = tokio::time::interval(TRICKLE_EVERY);
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let mut feed = feed.lock().await;
            if feed.paused {
                continue;
            }
            if let Some(&tenant) = dice.pick(&feed.live) {
                feed.emit(tenant).await;
            }
        }
    })
}

struct ModelClient {
    member: Member,
    steered: Steered,
}

struct ModelTenant {
    id: u64,
    live: bool,
    clients: Vec<usize>,
}

struct Model {
    dice: Dice,
    stack: ClusterStack,
    js: jetstream::Context,
    bases: Arc<Vec<String>>,
    names: oracle::Names,
    feed: SharedFeed,
    tenants: Vec<ModelTenant>,
    clients: Vec<ModelClient>,
    next_user: u64,
    /// Closed incarnations, read back before their deletion.
    closed: Vec<Incarnation>,
    /// When the current incarnation began, and how many published events preceded it.
    current_since: (u64, usize),
    problems: Vec<String>,
    journal: Vec<String>,
    stop: CancellationToken,
    origin_ns: u64,
}

impl Model {
    fn note(&mut self, line: String) {
        let line = format!("+{:.2}s {line}", now_ns().saturating_sub(self.origin_ns) as f64 / 1e9);
        eprintln!("model: {line}");
        self.journal.push(line);
    }

    fn target(&mut self) -> usize {
        self.dice.below(self.bases.len() as u64) as usize
    }

    fn spawn_client(&mut self, member: Member) -> usize {
        let steered = Steered::start(self.bases.clone(), member.path.clone(), self.stop.clone());
        self.clients.push(ModelClient { member, steered });
        self.clients.len() - 1
    }

    fn user(&mut self) -> u64 {
        self.next_user += 1;
        self.next_user
    }

    /// A member of `tenant` with `role`, on a seeded branch (or all of them for admins).
    fn member(&mut self, tenant: &Tenant, role: Role) -> Member {
        let branch = &tenant.branches[self.dice.below(tenant.branches.len() as u64) as usize];
        let all: Vec<u64> = tenant.branches.iter().map(|b| b.id).collect();
        match role {
            Role::Diner => {
                let session = branch.sessions[self.dice.below(branch.sessions.len() as u64) as usize];
                Member::diner(tenant.id, branch.id, session)
            }
            Role::Admin => Member::staff(self.user(), tenant.id, &all, role),
            Role::Waiter if self.dice.below(3) == 0 => Member::staff(self.user(), tenant.id, &all, role),
            _ => Member::staff(self.user(), tenant.id, &[branch.id], role),
        }
    }

    /// Waits until each of `clients` holds an open connection.
    async fn wait_connected(&self, clients: &[usize], what: &str) {
        let deadline = Instant::now() + CONNECT_WITHIN;
        loop {
            let down: Vec<String> =
                clients.iter().filter(|&&i| !self.clients[i].steered.connected()).map(|&i| self.label(i)).collect();
            if down.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: not connected after {CONNECT_WITHIN:?}: {down:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn label(&self, i: usize) -> String {
        format!("client {} ({})", i + 1, self.clients[i].member.label())
    }

    fn wanted_on(&self) -> Vec<usize> {
        (0..self.clients.len()).filter(|&i| self.clients[i].steered.wants_on()).collect()
    }

    async fn new_tenant(&mut self) -> bool {
        if self.tenants.iter().filter(|t| t.live).count() >= MAX_LIVE_TENANTS {
            return false;
        }
        let id = self.tenants.len() as u64 + 1;
        let tenant = Tenant::new(id, BRANCHES, SESSIONS);
        // The admin first: it receives every event of its tenant.
        let admin = self.member(&tenant, Role::Admin);
        let first = self.spawn_client(admin);
        let target = self.target();
        self.clients[first].steered.go(target);
        self.wait_connected(&[first], "a new tenant's first client").await;
        // Right after the first handshake: the replica has just subscribed to the tenant.
        let n = 1 + self.dice.below(3);
        let mut seqs = Vec::new();
        {
            let mut feed = self.feed.lock().await;
            for _ in 0..n {
                seqs.push(feed.emit(id).await.seq);
            }
        }
        let mut clients = vec![first];
        let roles = [
            Role::Waiter,
            Role::Waiter,
            Role::Kitchen,
            Role::Manager,
            Role::ManagerOnWaiter,
            Role::ManagerOnKitchen,
            Role::Diner,
            Role::Diner,
            Role::Diner,
        ];
        for role in roles {
            let member = self.member(&tenant, role);
            let i = self.spawn_client(member);
            let target = self.target();
            self.clients[i].steered.go(target);
            clients.push(i);
        }
        self.wait_connected(&clients, "a new tenant's clients").await;
        self.feed.lock().await.live.push(id);
        self.note(format!(
            "tenant {id} created: first client {} on {}, events {seqs:?} published right after its 101; {} clients",
            self.label(first),
            ["gw-1", "gw-2", "haproxy"][target],
            clients.len()
        ));
        self.tenants.push(ModelTenant { id, live: true, clients });
        true
    }

    async fn drop_tenant(&mut self) -> bool {
        let live: Vec<usize> = (0..self.tenants.len()).filter(|&t| self.tenants[t].live).collect();
        if live.len() < 2 {
            return false;
        }
        let t = *self.dice.pick(&live).unwrap();
        let id = self.tenants[t].id;
        self.feed.lock().await.live.retain(|x| *x != id);
        let leaving: Vec<usize> =
            self.tenants[t].clients.iter().copied().filter(|&i| self.clients[i].steered.wants_on()).collect();
        self.leave(&leaving).await;
        self.tenants[t].live = false;
        self.note(format!("tenant {id} dropped: {} clients left", leaving.len()));
        true
    }

    async fn revive_tenant(&mut self) -> bool {
        let dropped: Vec<usize> = (0..self.tenants.len()).filter(|&t| !self.tenants[t].live).collect();
        let Some(&t) = self.dice.pick(&dropped) else { return false };
        let clients = self.tenants[t].clients.clone();
        for &i in &clients {
            let target = self.target();
            self.clients[i].steered.go(target);
        }
        self.wait_connected(&clients, "a revived tenant's clients").await;
        self.tenants[t].live = true;
        let id = self.tenants[t].id;
        self.feed.lock().await.live.push(id);
        self.note(format!("tenant {id} revived: {} clients resumed", clients.len()));
        true
    }

    fn pick_client(&mut self, on: bool) -> Option<usize> {
        let candidates: Vec<usize> = self
            .tenants
            .iter()
            .filter(|t| t.live)
            .flat_map(|t| t.clients.iter().copied())
            .filter(|&i| self.clients[i].steered.wants_on() == on)
            .collect();
        self.dice.pick(&candidates).copied()
    }

    async fn leave_one(&mut self) -> bool {
        let Some(i) = self.pick_client(true) else { return false };
        self.leave(&[i]).await;
        self.note(format!("{} left", self.label(i)));
        true
    }

    async fn rejoin(&mut self) -> bool {
        let Some(i) = self.pick_client(false) else { return false };
        let target = self.target();
        self.clients[i].steered.go(target);
        self.wait_connected(&[i], "a rejoining client").await;
        let resume = self.clients[i].steered.log.lock().unwrap().connections.last().unwrap().resume.clone();
        self.note(format!(
            "{} rejoined on {} with resume={resume}",
            self.label(i),
            ["gw-1", "gw-2", "haproxy"][target]
        ));
        true
    }

    async fn move_client(&mut self) -> bool {
        let Some(i) = self.pick_client(true) else { return false };
        let before = self.clients[i].steered.log.lock().unwrap().connections.len();
        let target = self.target();
        self.clients[i].steered.go(target);
        let deadline = Instant::now() + CONNECT_WITHIN;
        loop {
            let (n, connected) = {
                let log = self.clients[i].steered.log.lock().unwrap();
                (log.connections.len(), log.connected)
            };
            if n > before && connected {
                break;
            }
            assert!(Instant::now() < deadline, "{} did not reconnect after a move", self.label(i));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.note(format!("{} moved to {}", self.label(i), ["gw-1", "gw-2", "haproxy"][target]));
        true
    }

    async fn join_new(&mut self) -> bool {
        let live: Vec<usize> = (0..self.tenants.len()).filter(|&t| self.tenants[t].live).collect();
        let Some(&t) = self.dice.pick(&live) else { return false };
        let tenant = Tenant::new(self.tenants[t].id, BRANCHES, SESSIONS);
        let roles = [
            Role::Waiter,
            Role::Kitchen,
            Role::Manager,
            Role::ManagerOnWaiter,
            Role::ManagerOnKitchen,
            Role::Admin,
            Role::Diner,
        ];
        let role = *self.dice.pick(&roles).unwrap();
        let member = self.member(&tenant, role);
        let i = self.spawn_client(member);
        let target = self.target();
        self.clients[i].steered.go(target);
        self.wait_connected(&[i], "a new client").await;
        self.tenants[t].clients.push(i);
        self.note(format!("{} joined on {}", self.label(i), ["gw-1", "gw-2", "haproxy"][target]));
        true
    }

    async fn burst(&mut self) {
        let n = 5 + self.dice.below(21);
        let mut tenants = Vec::new();
        for _ in 0..n {
            // Mostly live tenants, now and then a dropped one (its clients resume later).
            let live: Vec<u64> = self.tenants.iter().filter(|t| t.live).map(|t| t.id).collect();
            let all: Vec<u64> = self.tenants.iter().map(|t| t.id).collect();
            let from = if self.dice.below(5) == 0 || live.is_empty() { &all } else { &live };
            tenants.push(*self.dice.pick(from).unwrap());
        }
        let mut first = 0;
        for (k, tenant) in tenants.iter().enumerate() {
            let mut feed = self.feed.lock().await;
            let seq = feed.emit(*tenant).await.seq;
            if k == 0 {
                first = seq;
            }
            drop(feed);
            tokio::time::sleep(Duration::from_millis(self.dice.below(8))).await;
        }
        self.note(format!("burst of {n} events from seq {first} over tenants {tenants:?}"));
    }

    /// The current incarnation's stored events, read back in order.
    async fn read_current(&self) -> Vec<Stored> {
        read_stream(&self.js).await
    }

    /// Waits until JetStream holds every event published in this incarnation (pub/sub events no
    /// bridge heard cannot be: none expected, both bridges never down at once).
    async fn wait_stored(&mut self) {
        let want = {
            let feed = self.feed.lock().await;
            feed.published[self.current_since.1..].iter().filter(|p| p.channels.is_none() || p.receivers > 0).count()
                as u64
        };
        let held = traffic::wait_stored(&self.js, want, STORE_WITHIN).await;
        if held < want {
            self.problems.push(format!("JetStream holds {held} events of {want} published, after {STORE_WITHIN:?}"));
        }
    }

    /// Waits until each of `clients` has received the last event stored for it (unless that was
    /// stored before its current run began, see `model/oracle.rs`). Records a problem for each
    /// that has not after [`CATCH_UP_WITHIN`].
    async fn wait_caught_up(&mut self, clients: &[usize], why: &str) {
        let stored = self.read_current().await;
        let published: HashMap<String, Published> = {
            let feed = self.feed.lock().await;
            feed.published.iter().map(|p| (p.payload.clone(), p.clone())).collect()
        };
        let deadline = Instant::now() + CATCH_UP_WITHIN;
        let mut behind: Vec<(usize, u64)> = Vec::new();
        loop {
            behind.clear();
            for &i in clients {
                let member = &self.clients[i].member;
                let Some(last) = stored
                    .iter()
                    .rev()
                    .find(|s| published.get(&s.payload).is_some_and(|p| traffic::receives(member, p)))
                else {
                    continue;
                };
                let log = self.clients[i].steered.log.lock().unwrap();
                let run_start = log
                    .connections
                    .iter()
                    .enumerate()
                    .filter(|(ci, c)| {
                        c.resume == "live"
                            || log.frames.iter().any(|(f, frame)| f == ci && matches!(frame, fleet::Frame::Gap(_)))
                    })
                    .map(|(_, c)| c.opened_ns)
                    .next_back()
                    .unwrap_or(0);
                let has = log.received.iter().rev().any(|(_, p)| *p == last.payload);
                if !has && last.ns > run_start {
                    behind.push((i, last.seq));
                }
            }
            if behind.is_empty() || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for (i, seq) in behind.clone() {
            let line = format!(
                "{}: never received event {seq} (stored for it before it {why}), waited {CATCH_UP_WITHIN:?}",
                self.label(i)
            );
            self.problems.push(line);
        }
    }

    /// Clients leave once they hold what was stored for them.
    async fn leave(&mut self, clients: &[usize]) {
        self.wait_caught_up(clients, "left").await;
        for &i in clients {
            self.clients[i].steered.away();
        }
    }

    /// Publishing paused, everything stored, every client that should be connected connected
    /// and holding what was stored for it.
    async fn quiesce(&mut self, why: &str) {
        self.feed.lock().await.paused = true;
        self.wait_stored().await;
        let on = self.wanted_on();
        self.wait_connected(&on, why).await;
        self.wait_caught_up(&on, why).await;
    }

    async fn catch_up(&mut self) -> bool {
        let candidates: Vec<usize> = (0..self.clients.len()).collect();
        let Some(&i) = self.dice.pick(&candidates) else { return false };
        self.feed.lock().await.paused = true;
        self.wait_stored().await;
        let stored = self.read_current().await;
        // `since` halfway between two stored events at least 4 ms apart: "after since" is exact.
        let splits: Vec<usize> = (0..stored.len().saturating_sub(1))
            .filter(|&k| stored[k + 1].ns.saturating_sub(stored[k].ns) >= 4_000_000)
            .collect();
        let Some(&k) = self.dice.pick(&splits) else {
            self.feed.lock().await.paused = false;
            return false;
        };
        let since_ns = stored[k].ns + (stored[k + 1].ns - stored[k].ns) / 2;
        let since = format!("{}.{:09}", since_ns / 1_000_000_000, since_ns % 1_000_000_000);
        let published: HashMap<String, Published> = {
            let feed = self.feed.lock().await;
            feed.published.iter().map(|p| (p.payload.clone(), p.clone())).collect()
        };
        let via = self.target();
        let member = self.clients[i].member.clone();
        let asks = member.catchup_paths(&since);
        let mut answers = Vec::new();
        for (path, branch) in asks {
            let url = match via {
                2 => self.stack.url(&path),
                g => self.stack.gateways[g].url(&path),
            };
            let expected: Vec<Value> = stored[k + 1..]
                .iter()
                .filter_map(|s| published.get(&s.payload))
                .filter(|e| traffic::receives(&member, e) && branch.is_none_or(|b| e.branch == b || e.branch == 0))
                .map(|e| serde_json::from_str(&e.payload).unwrap())
                .collect();
            let (status, body) = tokio::time::timeout(Duration::from_secs(15), http_get(&url))
                .await
                .unwrap_or_else(|_| panic!("catch-up {path}: no answer in 15 s"))
                .unwrap_or_else(|e| panic!("catch-up {path}: {e}"));
            let body: Value = serde_json::from_str(&body).unwrap_or(Value::String(body));
            let got = body["events"].as_array().cloned().unwrap_or_default();
            let seqs =
                |events: &[Value]| events.iter().map(|e| e["entity"]["seq"].as_u64().unwrap_or(0)).collect::<Vec<_>>();
            if status != 200 || got != expected || body["count"] != expected.len() {
                self.problems.push(format!(
                    "catch-up of {} (branch {branch:?}, since {since}, after stream seq {}) via {}: status {status}, \
                     expected events {:?}, got {:?}",
                    self.label(i),
                    stored[k].seq,
                    ["gw-1", "gw-2", "haproxy"][via],
                    seqs(&expected),
                    seqs(&got)
                ));
            }
            answers.push(expected.len());
        }
        self.feed.lock().await.paused = false;
        self.note(format!(
            "catch-up of {} via {} after stream seq {}: {answers:?} events, compared",
            self.label(i),
            ["gw-1", "gw-2", "haproxy"][via],
            stored[k].seq
        ));
        true
    }

    async fn restart_replica(&mut self) {
        let victim = self.dice.below(self.stack.gateways.len() as u64) as usize;
        let name = self.stack.gateways[victim].name().to_string();
        let held = self.stack.gateway_connections(victim).await;
        if self.dice.below(2) == 0 {
            let status = self.stack.terminate_gateway(victim).await;
            self.note(format!("{name} (holding {held:?}) SIGTERM: exited {status}"));
        } else {
            self.stack.kill_gateway(victim);
            self.note(format!("{name} (holding {held:?}) SIGKILL"));
            tokio::time::sleep(Duration::from_millis(self.dice.below(1000))).await;
        }
        self.stack.restart_gateway(victim).await;
        let on = self.wanted_on();
        self.wait_connected(&on, "after a replica restart").await;
        self.note(format!("{name} restarted, every client connected again"));
    }

    async fn restart_bridge(&mut self) {
        let i = self.dice.below(self.stack.bridges.len() as u64) as usize;
        let name = self.stack.bridges[i].name().to_string();
        if self.dice.below(2) == 0 {
            let status = self.stack.bridges[i].terminate(Duration::from_secs(15)).await;
            self.note(format!("{name} SIGTERM: exited {status}"));
        } else {
            self.stack.kill_bridge(i);
            self.note(format!("{name} SIGKILL"));
        }
        tokio::time::sleep(Duration::from_millis(self.dice.below(2000))).await;
        self.stack.restart_bridge(i).await;
        self.note(format!("{name} restarted"));
    }

    /// Waits until the bridges hold no unacknowledged `events:critical` entry. One that a killed
    /// bridge stored but never acknowledged is published again by the bridge that claims it:
    /// JetStream drops the copy within its duplicate window, but a stream created again in
    /// between has no memory of it and would store it a second time.
    async fn wait_no_pending(&mut self) {
        let deadline = Instant::now() + STORE_WITHIN;
        loop {
            let mut redis = self.feed.lock().await.redis.clone();
            let pending: redis::RedisResult<(u64, redis::Value, redis::Value, redis::Value)> =
                redis::cmd("XPENDING").arg("events:critical").arg("publisher_bridge").query_async(&mut redis).await;
            match pending {
                Ok((0, ..)) => return,
                Ok((n, ..)) if Instant::now() >= deadline => {
                    self.problems.push(format!("the bridges still hold {n} unacknowledged stream entries"));
                    return;
                }
                Err(e) if Instant::now() >= deadline => panic!("XPENDING events:critical: {e}"),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Waits until both bridges are idle: no publish waiting for its acknowledgement and nothing
    /// new read from Redis for a moment. Both bridges publish every pub/sub event; the slower
    /// copy, still retried while the stream is deleted, would be stored again by the new one.
    async fn wait_bridges_idle(&mut self) {
        let deadline = Instant::now() + STORE_WITHIN;
        let mut before: Option<Vec<f64>> = None;
        loop {
            let mut now = Vec::new();
            let mut in_flight = 0.0;
            for bridge in &self.stack.bridges {
                let text = match http_get(&bridge.url("/metrics")).await {
                    Ok((200, text)) => text,
                    _ => String::new(),
                };
                let sum = |prefix: &str| -> f64 {
                    text.lines()
                        .filter(|l| l.starts_with(prefix))
                        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                        .sum()
                };
                in_flight += sum("bridge_in_flight ");
                now.push(sum("bridge_received_total"));
            }
            if in_flight == 0.0 && before.as_ref() == Some(&now) {
                return;
            }
            if Instant::now() >= deadline {
                self.problems.push(format!("the bridges were not idle after {STORE_WITHIN:?} ({in_flight} in flight)"));
                return;
            }
            before = Some(now);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    async fn recreate_stream(&mut self) {
        self.quiesce("before EVENTS is deleted").await;
        self.wait_no_pending().await;
        self.wait_bridges_idle().await;
        let stored = self.read_current().await;
        let created_ns = self.current_since.0;
        self.closed.push(Incarnation { created_ns, stored });
        let config = {
            let mut stream = self.js.get_stream(EVENTS_STREAM).await.expect("EVENTS info");
            stream.info().await.expect("EVENTS info").config.clone()
        };
        let deleted_at = now_ns();
        tokio::time::timeout(Duration::from_secs(15), self.js.delete_stream(EVENTS_STREAM))
            .await
            .expect("EVENTS deleted in time")
            .expect("EVENTS deleted");
        tokio::time::timeout(Duration::from_secs(15), self.js.create_stream(config))
            .await
            .expect("EVENTS created in time")
            .expect("EVENTS created");
        self.stack.events_leader().await;
        let published = self.feed.lock().await.published.len();
        self.current_since = (deleted_at, published);
        let held = self.closed.last().unwrap().stored.len();
        self.note(format!("EVENTS deleted (held {held} events) and created again"));
        self.feed.lock().await.paused = false;
    }

    async fn step(&mut self, action: Action) {
        let done = match action {
            Action::NewTenant => self.new_tenant().await,
            Action::DropTenant => self.drop_tenant().await,
            Action::ReviveTenant => self.revive_tenant().await,
            Action::Leave => self.leave_one().await,
            Action::Rejoin => self.rejoin().await,
            Action::Move => self.move_client().await,
            Action::JoinNew => self.join_new().await,
            Action::Burst => false,
            Action::CatchUp => self.catch_up().await,
            Action::RestartReplica => {
                self.restart_replica().await;
                true
            }
            Action::RestartBridge => {
                self.restart_bridge().await;
                true
            }
            Action::RecreateStream => {
                self.recreate_stream().await;
                true
            }
        };
        if !done {
            self.burst().await;
        }
        tokio::time::sleep(Duration::from_millis(self.dice.below(300))).await;
    }
}

/// Every message of `EVENTS` with the time it was stored, in stream order.
async fn read_stream(js: &jetstream::Context) -> Vec<Stored> {
    let stored = traffic::read_stored_timed(js).await;
    stored.into_iter().map(|(seq, ns, payload)| Stored { seq, ns, payload }).collect()
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| panic!("{name}={v} is not a number")),
        Err(_) => default,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_model_based_delivery() {
    let seed: u64 = env_or("MODEL_SEED", DEFAULT_SEED);
    let steps: usize = env_or("MODEL_STEPS", DEFAULT_STEPS);
    let replay =
        format!("MODEL_SEED={seed} MODEL_STEPS={steps} cargo nextest run -p gateway --test model --all-features");
    eprintln!("model: seed {seed}, {steps} steps; replay with: {replay}");
    let started = Instant::now();
    let outcome = std::panic::AssertUnwindSafe(run(seed, steps)).catch_unwind().await;
    eprintln!("model: {:.1} s in all", started.elapsed().as_secs_f64());
    let failure = match outcome {
        Ok(None) => return,
        Ok(Some(report)) => report,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "(no message)".into());
            format!("the schedule stopped: {message}")
        }
    };
    panic!("seed {seed}: replay with `{replay}`\n{failure}");
}

/// Starts the stack and the CPU hog, runs the schedule and judges; `Some(report)` on failure.
async fn run(seed: u64, steps: usize) -> Option<String> {
    let started = Instant::now();
    let stack = ClusterStack::start(
        ClusterOptions::new(env!("CARGO_BIN_EXE_gateway"))
            .secrets(JWT_SECRET, TABLE_SECRET)
            .gateway_env("GATEWAY_UNSUBSCRIBE_DELAY", "1s")
            .gateway_env("GATEWAY_DRAIN_WINDOW", "1s")
            .gateway_env("GATEWAY_SHUTDOWN_TIMEOUT", "4s"),
    )
    .await;
    eprintln!("model: cluster up after {:.1} s", started.elapsed().as_secs_f64());
    // Stopped when `run` ends, by return or by panic.
    let hog = hog::CpuHog::start();
    eprintln!(
        "model: CPU hog running beside the stack: {} busy loops at nice 5, pids {:?}",
        hog.pids().len(),
        hog.pids()
    );
    let stop = CancellationToken::new();
    let redis = redis::Client::open(stack.redis_url()).unwrap();
    let redis = tokio::time::timeout(Duration::from_secs(10), redis.get_multiplexed_async_connection())
        .await
        .expect("Redis in time")
        .expect("Redis");
    let feed = Arc::new(tokio::sync::Mutex::new(Feed {
        paused: false,
        live: Vec::new(),
        published: Vec::new(),
        next_seq: 1,
        redis,
        seed,
    }));
    let trickle = start_trickle(feed.clone(), seed, stop.clone());
    let bases =
        vec![format!("ws://{}", stack.gateways[0].addr()), format!("ws://{}", stack.gateways[1].addr()), stack.ws("")];
    let names: oracle::Names = bases.iter().cloned().zip(["gw-1", "gw-2", "haproxy"]).collect();
    let js = traffic::jetstream(&stack).await;
    let origin_ns = now_ns();
    let mut model = Model {
        dice: Dice(seed),
        stack,
        js,
        bases: Arc::new(bases),
        names,
        feed,
        tenants: Vec::new(),
        clients: Vec::new(),
        next_user: 100,
        closed: Vec::new(),
        current_since: (0, 0),
        problems: Vec::new(),
        journal: Vec::new(),
        stop: stop.clone(),
        origin_ns,
    };
    let plan = schedule(seed, steps);
    eprintln!("model: schedule {plan:?}");
    for (n, action) in plan.iter().enumerate() {
        model.note(format!("step {}/{}: {action:?}", n + 1, plan.len()));
        model.step(*action).await;
    }
    model.quiesce("at the end").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    trickle.await.expect("trickle task");
    let final_stored = model.read_current().await;
    let mut incarnations = std::mem::take(&mut model.closed);
    incarnations.push(Incarnation { created_ns: model.current_since.0, stored: final_stored });
    let clients = std::mem::take(&mut model.clients);
    let mut members = Vec::new();
    let mut logs = Vec::new();
    for client in clients {
        members.push(client.member);
        logs.push(client.steered.finish().await);
    }
    let feed = model.feed.lock().await;
    let published: HashMap<&str, &Published> = feed.published.iter().map(|p| (p.payload.as_str(), p)).collect();

    // Stored exactly once, across incarnations.
    let mut problems = std::mem::take(&mut model.problems);
    let mut seen: HashMap<&str, (usize, u64)> = HashMap::new();
    for (inc, incarnation) in incarnations.iter().enumerate() {
        for s in &incarnation.stored {
            if !published.contains_key(s.payload.as_str()) {
                problems.push(format!("stream {} holds an event nobody published at {}", inc + 1, s.seq));
            }
            if let Some((i, q)) = seen.insert(&s.payload, (inc + 1, s.seq)) {
                problems.push(format!("stored twice: {i}:{q} and {}:{}", inc + 1, s.seq));
            }
        }
    }
    let unheard = feed.published.iter().filter(|p| p.channels.is_some() && p.receivers == 0).count();
    let lost: Vec<u64> = feed
        .published
        .iter()
        .filter(|p| !seen.contains_key(p.payload.as_str()) && (p.channels.is_none() || p.receivers > 0))
        .map(|p| p.seq)
        .collect();
    if !lost.is_empty() {
        problems.push(format!("{} published events never stored: {:?}", lost.len(), &lost[..lost.len().min(20)]));
    }

    let member_refs: Vec<&Member> = members.iter().collect();
    let judged = oracle::judge(&member_refs, &logs, &incarnations, &published, &model.names, origin_ns);
    let via_stream = feed.published.iter().filter(|p| p.channels.is_none()).count();
    let summary = format!(
        "{} steps; {} tenants; {} clients, {} connections, {} RESUME_GAPs; {} events published ({} via \
         events:critical, {} via pub/sub, {unheard} heard by no bridge), stored in {} incarnation(s) of EVENTS: {:?}; \
         {} deliveries; {} clients with a wrong sequence",
        steps,
        model.tenants.len(),
        members.len(),
        judged.connections,
        judged.gaps,
        feed.published.len(),
        via_stream,
        feed.published.len() - via_stream,
        incarnations.len(),
        incarnations.iter().map(|i| i.stored.len()).collect::<Vec<_>>(),
        judged.deliveries,
        judged.bad_clients
    );
    eprintln!("model: {summary}");
    if problems.is_empty() && judged.bad_clients == 0 {
        return None;
    }
    let shown: Vec<&String> = judged.clients.iter().take(12).collect();
    Some(format!(
        "{summary}\n{}\n--- clients (events as <stream incarnation>:<sequence>) ---\n  {}{}\n--- schedule ---\n{}\n--- logs ---\n{}",
        problems.join("\n"),
        shown.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n  "),
        if judged.clients.len() > 12 { format!("\n  ... {} clients in all", judged.clients.len()) } else { String::new() },
        model.journal.join("\n"),
        model.stack.logs_tail()
    ))
}
