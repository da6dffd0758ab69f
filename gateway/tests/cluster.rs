//! Zero loss across a real cluster (issue 4, "What must be shown"): `testkit::ClusterStack`
//! runs a three-node NATS JetStream cluster, Redis, two real `publisher-bridge` processes, three
//! real `gateway` processes and HAProxy in front, all on loopback. In each scenario 201
//! resume-capable clients over 3 tenants, 6 branches and every role (waiters, cooks, managers
//! on each endpoint, admins, diners of 24 table sessions) connect through HAProxy, which spreads
//! them over the replicas; then the backend side publishes 60 events/s to Redis, alternately on
//! the pub/sub channels and on `events:critical`, while one fault is injected:
//!
//! - `kill_9_one_gateway`: SIGKILL a replica (restarted later);
//! - `rolling_restart_with_sigterm`: SIGTERM each replica in turn, restarting each after it
//!   exits; the 1012 closes of each replica are printed and must spread over the drain window;
//! - `kill_9_the_nats_stream_leader`: SIGKILL the node leading the `EVENTS` stream (restarted);
//! - `kill_9_one_bridge`: SIGKILL one of the two bridges (restarted later);
//! - `kill_9_a_nats_node_a_replica_uses` (beyond the list): SIGKILL a NATS node that
//!   holds a replica's connection while another node leads `EVENTS` and events keep flowing.
//!
//! Every client reconnects like the browser apps (see `cluster/fleet.rs`: backoff from a 200 ms
//! base instead of the apps' 1 s, to keep the run short) with `resume=<last cursor>`. At the
//! end every published event must be stored once, and every client's received sequence must be
//! exactly the stored events protocol section 6 routes to it (an oracle written in
//! `cluster/traffic.rs`, independent of the gateway's routing code), in stream order, no
//! duplicate, nothing missing, no `RESUME_GAP`.
//!
//! `catch_up_returns_exactly_the_missed_events` checks the catch-up endpoints through HAProxy
//! after a replica died: staff and diners get exactly their events after `since`, never another
//! session's. (Slow clients: `slow_clients.rs`.)
//!
//! The fixture runs one cluster at a time per machine; each test takes 5 to 30 s once the
//! binaries are built (the fixture builds a missing or stale `publisher-bridge` first).

// Parts of `fleet` and `traffic` serve only the model test (`model.rs`).
#[path = "cluster/fleet.rs"]
#[allow(dead_code)]
mod fleet;
#[path = "support/harness.rs"]
mod harness;
#[path = "cluster/traffic.rs"]
#[allow(dead_code)]
mod traffic;

use fleet::{Fleet, Layout, Member, Role};
use harness::{JWT_SECRET, TABLE_SECRET};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use testkit::{http_get, ClusterOptions, ClusterStack};
use tokio::time::Instant;
use traffic::{Publisher, Verdict};

/// Events per second published to Redis during a scenario.
const RATE: u32 = 60;
/// Traffic before and after a fault.
const STEADY: Duration = Duration::from_secs(4);
/// How long clients may take to receive everything once publishing stopped, and how long
/// without any new delivery counts as "nothing more is coming".
const SETTLE: Duration = Duration::from_secs(45);
const QUIET: Duration = Duration::from_secs(8);

async fn start_stack() -> ClusterStack {
    let started = Instant::now();
    let stack =
        ClusterStack::start(ClusterOptions::new(env!("CARGO_BIN_EXE_gateway")).secrets(JWT_SECRET, TABLE_SECRET)).await;
    eprintln!("cluster: up after {:.1} s; clients enter at {}", started.elapsed().as_secs_f64(), stack.ws(""));
    stack
}

/// A scenario in progress: the clients connected, then the publisher started.
struct Run {
    fleet: Fleet,
    publisher: Publisher,
    started: Instant,
}

impl Run {
    /// Connects every client through HAProxy (all of them before the first event: the start
    /// barrier), shows how they spread over the replicas, then starts publishing.
    async fn begin(stack: &ClusterStack) -> Run {
        let layout = Arc::new(Layout::new(3, 2, 4));
        let members = fleet::population(&layout);
        assert!(members.len() >= 200, "the issue asks for at least 200 clients, not {}", members.len());
        let connecting = Instant::now();
        let fleet = Fleet::connect(&stack.ws(""), members).await;
        let spread = per_replica(stack).await;
        eprintln!(
            "cluster: {} clients connected in {:.1} s, per replica {spread:?}",
            fleet.len(),
            connecting.elapsed().as_secs_f64()
        );
        assert_eq!(
            spread.iter().map(|n| n.unwrap_or(0)).sum::<u64>(),
            fleet.len() as u64,
            "every client is on a replica"
        );
        assert!(
            spread.iter().all(|n| n.unwrap_or(0) > 0),
            "HAProxy spreads the clients over every replica: {spread:?}"
        );
        let publisher = Publisher::start(&stack.redis_url(), layout, RATE, 1).await;
        Run { fleet, publisher, started: Instant::now() }
    }

    /// Stops publishing, waits until JetStream holds every event and the clients have received
    /// what they should, stops the clients and judges.
    async fn finish(self, stack: &ClusterStack) -> (Verdict, Vec<Member>, Vec<fleet::Log>) {
        let published = self.publisher.stop().await;
        eprintln!("cluster: published {} events in {:.1} s", published.len(), self.started.elapsed().as_secs_f64());
        let js = traffic::jetstream(stack).await;
        let stored_n = traffic::wait_stored(&js, published.len() as u64, Duration::from_secs(60)).await;
        let stored = traffic::read_stored(&js).await;
        assert_eq!(stored.len() as u64, stored_n);
        // Wait until every client has at least as many events as it should, or the time is up.
        let expected: Vec<usize> = {
            let by_payload: std::collections::HashMap<&str, &traffic::Published> =
                published.iter().map(|p| (p.payload.as_str(), p)).collect();
            self.fleet
                .members
                .iter()
                .map(|m| {
                    stored
                        .iter()
                        .filter(|(_, p)| by_payload.get(p.as_str()).is_some_and(|e| traffic::receives(m, e)))
                        .count()
                })
                .collect()
        };
        let deadline = Instant::now() + SETTLE;
        let (mut total, mut progress) = (0, Instant::now());
        loop {
            let counts: Vec<usize> =
                (0..self.fleet.len()).map(|i| self.fleet.with_log(i, |l| l.received.len())).collect();
            let behind = counts.iter().zip(&expected).filter(|(got, want)| got < want).count();
            if behind == 0 {
                break;
            }
            if counts.iter().sum::<usize>() != total {
                (total, progress) = (counts.iter().sum(), Instant::now());
            }
            if Instant::now() >= deadline || progress.elapsed() >= QUIET {
                eprintln!(
                    "cluster: {behind} clients still short of events, nothing new for {:.1} s",
                    progress.elapsed().as_secs_f64()
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // A moment for anything extra (a duplicate) to show up.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (members, logs) = self.fleet.stop().await;
        let verdict = traffic::judge(&members, &logs, &published, &stored, self.started);
        eprintln!("cluster: {}", verdict.summary);
        (verdict, members, logs)
    }
}

/// Fails with every problem found.
fn assert_exact(verdict: &Verdict, stack: &ClusterStack) {
    assert!(
        verdict.problems.is_empty(),
        "{}\n{}\n--- logs ---\n{}",
        verdict.summary,
        verdict.problems.join("\n"),
        stack.logs_tail()
    );
}

/// `total_connections` of each replica (`None`: down).
async fn per_replica(stack: &ClusterStack) -> Vec<Option<u64>> {
    let mut counts = Vec::new();
    for i in 0..stack.gateways.len() {
        counts.push(stack.gateway_connections(i).await);
    }
    counts
}

/// Percentiles of durations, for printing.
fn percentiles(mut samples: Vec<Duration>) -> String {
    if samples.is_empty() {
        return "none".into();
    }
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize].as_secs_f64();
    format!("n={} p50={:.2}s p90={:.2}s p99={:.2}s max={:.2}s", samples.len(), at(0.5), at(0.9), at(0.99), at(1.0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_one_gateway() {
    let mut stack = start_stack().await;
    let run = Run::begin(&stack).await;
    tokio::time::sleep(STEADY).await;

    let victim = 1;
    let held = stack.gateway_connections(victim).await.expect("the victim is up");
    let killed = Instant::now();
    stack.kill_gateway(victim);
    eprintln!("cluster: SIGKILL {} holding {held} clients", stack.gateways[victim].name());
    let deadline = killed + Duration::from_secs(30);
    while run.fleet.closes_after(killed) < held as usize {
        assert!(
            Instant::now() < deadline,
            "only {} of {held} clients noticed the death",
            run.fleet.closes_after(killed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    run.fleet.wait_all_connected(Duration::from_secs(30)).await;
    // From the kill to each dropped client's next connection through HAProxy.
    let back: Vec<Duration> = (0..run.fleet.len())
        .filter_map(|i| run.fleet.with_log(i, |l| l.connects.iter().find(|c| **c > killed).map(|c| *c - killed)))
        .collect();
    eprintln!("cluster: reconnected after the kill: {}", percentiles(back.clone()));
    assert_eq!(back.len(), held as usize, "exactly the victim's clients reconnected");
    let spread = per_replica(&stack).await;
    eprintln!("cluster: per replica after the kill {spread:?}");
    tokio::time::sleep(STEADY).await;

    stack.restart_gateway(victim).await;
    tokio::time::sleep(STEADY).await;
    let (verdict, _, _) = run.finish(&stack).await;
    assert_exact(&verdict, &stack);
}

/// One replica's drain, as the clients saw it.
struct Drain {
    replica: usize,
    held: u64,
    signalled: Instant,
    exited: Instant,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_with_sigterm() {
    let mut stack = start_stack().await;
    let window = stack.gateway_drain_window();
    let run = Run::begin(&stack).await;
    tokio::time::sleep(STEADY).await;

    let mut drains = Vec::new();
    for replica in 0..stack.gateways.len() {
        run.fleet.wait_all_connected(Duration::from_secs(30)).await;
        let held = stack.gateway_connections(replica).await.expect("replica up");
        let signalled = Instant::now();
        let status = stack.terminate_gateway(replica).await;
        let exited = Instant::now();
        eprintln!(
            "cluster: {} held {held} clients, exited with {status} {:.2} s after SIGTERM",
            stack.gateways[replica].name(),
            (exited - signalled).as_secs_f64()
        );
        assert!(status.success(), "a drained replica exits 0\n{}", stack.gateways[replica].log_tail());
        stack.restart_gateway(replica).await;
        drains.push(Drain { replica, held, signalled, exited });
    }
    run.fleet.wait_all_connected(Duration::from_secs(30)).await;
    tokio::time::sleep(STEADY).await;
    let spread = per_replica(&stack).await;
    eprintln!("cluster: per replica after the rolling restart {spread:?}");
    let (verdict, _, logs) = run.finish(&stack).await;

    // The 1012 closes of connections that were open when the replica got SIGTERM. (A client
    // that reconnects to a draining replica before HAProxy took it out of rotation is refused
    // with 1012 at once: counted apart.)
    let mut failures = Vec::new();
    for drain in &drains {
        let name = stack.gateways[drain.replica].name();
        let during = |at: Instant| at >= drain.signalled && at <= drain.exited;
        let mut offsets: Vec<f64> = logs
            .iter()
            .flat_map(|l| &l.closes)
            .filter(|c| c.code == Some(1012) && c.opened < drain.signalled && during(c.at))
            .map(|c| (c.at - drain.signalled).as_secs_f64())
            .collect();
        offsets.sort_by(f64::total_cmp);
        let refused = logs
            .iter()
            .flat_map(|l| &l.closes)
            .filter(|c| c.code == Some(1012) && c.opened >= drain.signalled && during(c.at))
            .count();
        let other = logs
            .iter()
            .flat_map(|l| &l.closes)
            .filter(|c| c.code != Some(1012) && c.opened < drain.signalled && during(c.at))
            .count();
        let shown: Vec<String> = offsets.iter().map(|o| format!("{o:.2}")).collect();
        eprintln!(
            "cluster: {name}: {} closes with 1012 (held {}), s after SIGTERM: [{}]; {refused} reconnects refused with 1012 while draining; {other} other closes",
            offsets.len(),
            drain.held,
            shown.join(" ")
        );
        if offsets.len() as u64 != drain.held || other > 0 {
            failures.push(format!(
                "{name}: {} of {} held clients closed with 1012, {other} closed otherwise",
                offsets.len(),
                drain.held
            ));
            continue;
        }
        let span = offsets.last().unwrap() - offsets.first().unwrap();
        let tenth = window.as_secs_f64() / 10.0;
        // The busiest tenth of the window: with an even spread, about a tenth of the closes.
        let busiest = offsets
            .iter()
            .map(|start| offsets.iter().filter(|o| **o >= *start && **o < start + tenth).count())
            .max()
            .unwrap();
        eprintln!(
            "cluster: {name}: closes span {span:.2} s of the {:.1} s window; at most {busiest} within any {tenth:.2} s",
            window.as_secs_f64()
        );
        if span < window.as_secs_f64() / 2.0 || busiest as f64 > (offsets.len() as f64 * 0.3).max(3.0) {
            failures.push(format!(
                "{name}: closes not spread over the drain window (span {span:.2} s, {busiest} within {tenth:.2} s)"
            ));
        }
    }
    assert_exact(&verdict, &stack);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_the_nats_stream_leader() {
    let mut stack = start_stack().await;
    let run = Run::begin(&stack).await;
    tokio::time::sleep(STEADY).await;

    let leader = stack.events_leader().await;
    let mut on_leader = Vec::new();
    for name in stack.gateways.iter().chain(&stack.bridges).map(|s| s.name().to_string()) {
        if stack.nats_node_of(&name).await == Some(leader) {
            on_leader.push(name);
        }
    }
    let killed = Instant::now();
    stack.kill_nats(leader);
    eprintln!("cluster: SIGKILL NATS node n{leader}, leader of EVENTS; connected to it: {on_leader:?}");
    let new_leader = stack.events_leader().await;
    eprintln!("cluster: n{new_leader} leads EVENTS {:.2} s after the kill", killed.elapsed().as_secs_f64());
    tokio::time::sleep(STEADY).await;

    stack.restart_nats(leader).await;
    stack.wait_all_ready().await;
    eprintln!("cluster: n{leader} back, everything ready {:.1} s after the kill", killed.elapsed().as_secs_f64());
    tokio::time::sleep(STEADY).await;
    let (verdict, _, logs) = run.finish(&stack).await;
    let closes: usize = logs.iter().map(|l| l.closes.len()).sum();
    eprintln!("cluster: client connections closed during the scenario: {closes}");
    assert_exact(&verdict, &stack);
}

/// Not in the list, but the same guarantee: SIGKILL a NATS node that holds a replica's
/// connection while another node leads `EVENTS`, so events keep being stored and re-published on
/// `live.*` while that replica reconnects to NATS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_a_nats_node_a_replica_uses() {
    let mut stack = start_stack().await;
    let run = Run::begin(&stack).await;
    tokio::time::sleep(STEADY).await;

    let mut leader = stack.events_leader().await;
    let mut holding = gateways_on_nats(&stack).await;
    if holding.iter().all(|(node, _)| *node == leader) {
        // Every replica uses the leader's node: move the leadership away first.
        let js = traffic::jetstream(&stack).await;
        let subject = format!("STREAM.LEADER.STEPDOWN.{}", testkit::EVENTS_STREAM);
        let answer: Result<Value, _> =
            tokio::time::timeout(Duration::from_secs(10), js.request(subject, &serde_json::json!({})))
                .await
                .expect("step-down answered");
        eprintln!("cluster: asked n{leader} to step down as leader of EVENTS: {answer:?}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while stack.events_leader().await == leader {
            assert!(Instant::now() < deadline, "EVENTS leadership did not move");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        leader = stack.events_leader().await;
        holding = gateways_on_nats(&stack).await;
    }
    let (victim, replicas) =
        holding.into_iter().find(|(node, _)| *node != leader).expect("a replica on a follower node");
    let killed = Instant::now();
    stack.kill_nats(victim);
    eprintln!("cluster: SIGKILL NATS node n{victim} (n{leader} leads EVENTS), used by {replicas:?}");
    tokio::time::sleep(STEADY).await;
    stack.restart_nats(victim).await;
    stack.wait_all_ready().await;
    eprintln!("cluster: n{victim} back, everything ready {:.1} s after the kill", killed.elapsed().as_secs_f64());
    tokio::time::sleep(STEADY).await;
    let (verdict, _, logs) = run.finish(&stack).await;
    let closes: usize = logs.iter().map(|l| l.closes.len()).sum();
    eprintln!("cluster: client connections closed during the scenario: {closes}");
    assert_exact(&verdict, &stack);
}

/// The NATS node each gateway is connected to, grouped: (node, gateway names).
async fn gateways_on_nats(stack: &ClusterStack) -> Vec<(usize, Vec<String>)> {
    let mut by_node: std::collections::BTreeMap<usize, Vec<String>> = Default::default();
    for gateway in &stack.gateways {
        if let Some(node) = stack.nats_node_of(gateway.name()).await {
            by_node.entry(node).or_default().push(gateway.name().to_string());
        }
    }
    by_node.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_one_bridge() {
    let mut stack = start_stack().await;
    let run = Run::begin(&stack).await;
    tokio::time::sleep(STEADY).await;

    stack.kill_bridge(0);
    eprintln!("cluster: SIGKILL {}", stack.bridges[0].name());
    // Longer than BRIDGE_CLAIM_IDLE + BRIDGE_CLAIM_INTERVAL: the survivor takes over the dead
    // bridge's pending stream entries while the dead one is still down.
    tokio::time::sleep(Duration::from_secs(6)).await;
    stack.restart_bridge(0).await;
    eprintln!("cluster: {} restarted", stack.bridges[0].name());
    tokio::time::sleep(STEADY).await;
    let (verdict, _, _) = run.finish(&stack).await;
    assert_exact(&verdict, &stack);
}

/// `GET` through HAProxy, parsed.
async fn get_json(stack: &ClusterStack, path: &str) -> (u16, Value) {
    let url = stack.url(path);
    let (status, body) =
        tokio::time::timeout(Duration::from_secs(15), http_get(&url)).await.expect("answer in time").expect("HTTP GET");
    (status, serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}")))
}

/// Publishes about `n` events (100/s) from `first_seq` and waits until JetStream stored them.
async fn publish_batch(
    stack: &ClusterStack,
    layout: &Arc<Layout>,
    first_seq: u64,
    n: usize,
) -> Vec<traffic::Published> {
    let js = traffic::jetstream(stack).await;
    let before = traffic::stored_count(&js).await;
    let publisher = Publisher::start(&stack.redis_url(), layout.clone(), 100, first_seq).await;
    tokio::time::sleep(Duration::from_secs_f64(n as f64 / 100.0)).await;
    let published = publisher.stop().await;
    let stored = traffic::wait_stored(&js, before + published.len() as u64, Duration::from_secs(30)).await;
    assert_eq!(stored, before + published.len() as u64, "every event of the batch stored");
    published
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_returns_exactly_the_missed_events() {
    let mut stack = start_stack().await;
    let layout = Arc::new(Layout::new(3, 2, 4));
    let members = fleet::population(&layout);
    let before = publish_batch(&stack, &layout, 1, 100).await;
    // `since` falls between two batches, so which events are "after since" is exact.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let since = wire::clock::now_micros() as f64 / 1e6;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stack.kill_gateway(0);
    let published = publish_batch(&stack, &layout, before.len() as u64 + 1, 150).await;
    // In stream order, which is what catch-up returns (the two Redis paths may interleave).
    let stored = traffic::read_stored(&traffic::jetstream(&stack).await).await;
    let missed: Vec<&traffic::Published> =
        stored.iter().filter_map(|(_, payload)| published.iter().find(|e| e.payload == *payload)).collect();
    assert_eq!(missed.len(), published.len(), "the second batch is stored once");

    // One client of each role per tenant, and one diner per session of the first tenant.
    let mut sample: Vec<&Member> = Vec::new();
    for tenant in 1..=3 {
        for role in
            [Role::Waiter, Role::Kitchen, Role::Manager, Role::ManagerOnWaiter, Role::ManagerOnKitchen, Role::Admin]
        {
            sample.extend(members.iter().find(|m| m.tenant == tenant && m.role == role));
        }
    }
    let mut sessions = std::collections::HashSet::new();
    sample.extend(members.iter().filter(|m| m.tenant == 1 && m.role == Role::Diner && sessions.insert(m.session)));

    let mut checked = 0;
    for member in sample {
        let asks = member.catchup_paths(since);
        for (path, branch) in asks {
            let (status, body) = get_json(&stack, &path).await;
            assert_eq!(status, 200, "{}: {body}", member.label());
            let expected: Vec<Value> = missed
                .iter()
                .filter(|e| traffic::receives(member, e) && branch.is_none_or(|b| e.branch == b || e.branch == 0))
                .map(|e| serde_json::from_str(&e.payload).unwrap())
                .collect();
            let got = body["events"].as_array().cloned().unwrap_or_default();
            // Events are told apart by `entity.seq`, the publisher's numbering.
            let seqs =
                |events: &[Value]| events.iter().map(|e| e["entity"]["seq"].as_u64().unwrap_or(0)).collect::<Vec<_>>();
            assert!(
                got == expected,
                "{} (branch {branch:?}): exactly its missed events (after {}), oldest first\n expected {:?}\n got      {:?}",
                member.label(),
                before.len(),
                seqs(&expected),
                seqs(&got)
            );
            assert_eq!(body["count"], expected.len(), "{}", member.label());
            assert!(body.get("truncated").is_none(), "{}", member.label());
            checked += 1;
        }
    }
    // Never another session's: a diner asking for its neighbour's session is refused.
    let diner = members.iter().find(|m| m.role == Role::Diner).unwrap();
    let other = diner.session.unwrap() + 1;
    let (status, body) =
        get_json(&stack, &format!("/ws/catchup/session?session_id={other}&since={since}&{}", diner.credential)).await;
    assert_eq!((status, body), (403, serde_json::json!({"detail": "No access to this session"})));
    eprintln!("cluster: {checked} catch-up answers exact through HAProxy with {} down", stack.gateways[0].name());
}
