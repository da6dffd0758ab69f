//! Smoke runs of every loadtest scenario against a real stack (nats-server, redis-server, two
//! gateway replicas and the publisher-bridge, all on free ports): a few hundred connections for
//! a few seconds each, with `--expect-zero-loss`, so the tool's own accounting stays correct.
//! The failover run kills a third gateway started for it, so the other runs keep their two.
//! The gateway and bridge binaries are taken from the same target directory as `loadtest`
//! (`cargo test --workspace` builds them; otherwise this test builds them first).

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use testkit::{free_port, http_get, NatsServer, NatsUser, Redis};

const JWT_SECRET: &str = "smoke-jwt-secret-0123456789abcdef";
const TABLE_SECRET: &str = "smoke-table-secret-0123456789abcdef";
const START_TIMEOUT: Duration = Duration::from_secs(30);
const RUN_TIMEOUT: Duration = Duration::from_secs(90);

/// A child process killed on drop, with its log file.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, bin: &Path, env: &[(&str, String)]) -> Proc {
        let log = std::env::temp_dir().join(format!("loadtest-smoke-{}-{name}.log", std::process::id()));
        let file = std::fs::File::create(&log).expect("create log");
        let child = Command::new(bin)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone log"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        Proc { name: name.to_string(), child, log }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "--- {} ({}) ---\n{}",
            self.name,
            self.log.display(),
            lines[lines.len().saturating_sub(20)..].join("\n")
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A workspace binary beside `loadtest`, built if missing.
fn workspace_bin(name: &str, package: &str) -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_loadtest")).with_file_name(name);
    if !bin.is_file() {
        eprintln!("smoke: {} is missing: running `cargo build -p {package}`", bin.display());
        let cargo = option_env!("CARGO").unwrap_or("cargo");
        let status = Command::new(cargo)
            .args(["build", "-p", package])
            .current_dir(testkit::repo_root())
            .status()
            .expect("run cargo");
        assert!(
            status.success() && bin.is_file(),
            "could not build {package}: build it with `cargo build -p {package}`"
        );
    }
    bin
}

async fn wait_http_ok(url: &str, who: &Proc) {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Ok((200, _))) = tokio::time::timeout(Duration::from_secs(2), http_get(url)).await {
            return;
        }
        assert!(Instant::now() < deadline, "{url} not ready within {START_TIMEOUT:?}\n{}", who.log_tail());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Gateway replica `i` on a free port: its base URL and process.
fn spawn_gateway(i: u32, nats: &NatsServer, redis: &Redis) -> (String, Proc) {
    let port = free_port();
    let gw = Proc::spawn(
        &format!("gateway-{i}"),
        &workspace_bin("gateway", "gateway"),
        &[
            ("JWT_SECRET", JWT_SECRET.into()),
            ("TABLE_TOKEN_SECRET", TABLE_SECRET.into()),
            ("NATS_URL", nats.url()),
            ("NATS_USER", NatsUser::Gateway.name().into()),
            ("NATS_PASSWORD", nats.auth().password(NatsUser::Gateway).into()),
            ("REDIS_URL", redis.url()),
            ("GATEWAY_LISTEN_ADDR", format!("127.0.0.1:{port}")),
            ("ENVIRONMENT", "development".into()),
        ],
    );
    (format!("ws://127.0.0.1:{port}"), gw)
}

struct Stack {
    nats: NatsServer,
    redis: Redis,
    gateways: Vec<(String, Proc)>,
    bridge: Proc,
}

impl Stack {
    async fn start() -> Stack {
        let nats = NatsServer::start().await;
        let redis = Redis::start().await;
        let bridge_port = free_port();
        let bridge = Proc::spawn(
            "bridge",
            &workspace_bin("publisher-bridge", "publisher-bridge"),
            &[
                ("NATS_URL", nats.url()),
                ("NATS_USER", NatsUser::Bridge.name().into()),
                ("NATS_PASSWORD", nats.auth().password(NatsUser::Bridge).into()),
                ("REDIS_URL", redis.url()),
                ("BRIDGE_LISTEN_ADDR", format!("127.0.0.1:{bridge_port}")),
            ],
        );
        let gateways = vec![spawn_gateway(1, &nats, &redis), spawn_gateway(2, &nats, &redis)];
        wait_http_ok(&format!("http://127.0.0.1:{bridge_port}/readyz"), &bridge).await;
        for (url, gw) in &gateways {
            wait_http_ok(&format!("{}/ws/health", url.replace("ws://", "http://")), gw).await;
        }
        Stack { nats, redis, gateways, bridge }
    }

    /// One more gateway replica on the same NATS and Redis, ready.
    async fn extra_gateway(&self, i: u32) -> (String, Proc) {
        let (url, gw) = spawn_gateway(i, &self.nats, &self.redis);
        wait_http_ok(&format!("{}/ws/health", url.replace("ws://", "http://")), &gw).await;
        (url, gw)
    }

    fn logs(&self) -> String {
        let mut all: Vec<String> = self.gateways.iter().map(|(_, p)| p.log_tail()).collect();
        all.push(self.bridge.log_tail());
        all.join("\n")
    }

    /// Runs `loadtest <args>` with `--expect-zero-loss`; asserts it passed with every owed
    /// delivery made exactly once, and returns its JSON report.
    async fn loadtest(&self, name: &str, args: &[&str]) -> Value {
        let (passed, json) = self.run_loadtest(name, args).await;
        assert!(passed, "loadtest {name} failed\n{}", self.logs());
        let d = &json["deliveries"];
        assert!(d["delivered"].as_u64().unwrap() > 0, "{name}: nothing delivered: {d}");
        for key in ["missing", "duplicates", "misrouted"] {
            assert_eq!(d[key].as_u64(), Some(0), "{name}: {key} in {d}");
        }
        assert_eq!(d["delivered"], d["expected"], "{name}: {d}");
        json
    }

    /// Runs `loadtest <args>` with `--expect-zero-loss`: whether it exited 0, and its report.
    async fn run_loadtest(&self, name: &str, args: &[&str]) -> (bool, Value) {
        let report = std::env::temp_dir().join(format!("loadtest-smoke-{}-{name}.json", std::process::id()));
        let svg = report.with_extension("svg");
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_loadtest"));
        cmd.args(args)
            .arg("--report-json")
            .arg(&report)
            .arg("--report-svg")
            .arg(&svg)
            .arg("--expect-zero-loss")
            .env("JWT_SECRET", JWT_SECRET)
            .env("TABLE_TOKEN_SECRET", TABLE_SECRET)
            .env("LOADTEST_NATS_USER", NatsUser::Loadtest.name())
            .env("LOADTEST_NATS_PASSWORD", self.nats.auth().password(NatsUser::Loadtest))
            .kill_on_drop(true);
        let started = Instant::now();
        let out = tokio::time::timeout(RUN_TIMEOUT, cmd.output())
            .await
            .unwrap_or_else(|_| panic!("loadtest {name} did not finish within {RUN_TIMEOUT:?}"))
            .expect("run loadtest");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("smoke: loadtest {name} took {:.1} s\n{stdout}", started.elapsed().as_secs_f64());
        if !out.status.success() {
            eprintln!("smoke: loadtest {name} exited with {}\nstderr:\n{stderr}", out.status);
        }
        assert!(matches!(out.status.code(), Some(0 | 1)), "loadtest {name} crashed: {}", out.status);
        let json: Value = serde_json::from_str(&std::fs::read_to_string(&report).expect("JSON report written"))
            .expect("JSON report parses");
        let svg_text = std::fs::read_to_string(&svg).expect("SVG report written");
        assert!(svg_text.starts_with("<svg") && svg_text.trim_end().ends_with("</svg>"));
        let _ = std::fs::remove_file(&report);
        let _ = std::fs::remove_file(&svg);
        (out.status.success(), json)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_delivers_exactly_once() {
    let stack = Stack::start().await;
    let urls: String = stack.gateways.iter().map(|(u, _)| u.clone()).collect::<Vec<_>>().join(",");
    let redis = stack.redis.url();
    let pids: Vec<String> = stack.gateways.iter().map(|(_, p)| p.pid().to_string()).collect();
    let common = |scenario: &'static str| -> Vec<String> {
        let mut v: Vec<String> = [
            scenario,
            "--url",
            &urls,
            "--redis-url",
            &redis,
            "--tenants",
            "3",
            "--branches",
            "2",
            "--settle",
            "2",
            "--per-worker",
            "200",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for pid in &pids {
            v.extend(["--gateway-pid".to_string(), pid.clone()]);
        }
        v
    };
    let run = |extra: &[&str], scenario: &'static str| {
        let mut v = common(scenario);
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };

    // idle: 300 connections over two workers (--per-worker 200), a 1 s hold, then the probe.
    let args = run(&["-n", "300", "--duration", "1"], "idle");
    let r = stack.loadtest("idle", &args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert_eq!(r["connections"]["connected"], 300);
    assert_eq!(r["connections"]["workers"], 2);
    assert!(r["connections"]["handshakes_per_s"].as_f64().unwrap() > 0.0);
    assert!(r["rss"]["after_kib"].as_u64().unwrap() > 0);

    // Fanout, with the bare-write floor measured before and after it at the run's own rate and
    // fan-out, and the gateway's CPU per delivery over the mean of both.
    let args = run(&["-n", "300", "--rate", "100", "--duration", "2", "--floor-seconds", "1"], "fanout");
    let r = stack.loadtest("fanout", &args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let fanout = r["deliveries"]["avg_fanout"].as_f64().unwrap();
    assert!(fanout > 5.0, "{}", r["deliveries"]);
    let x = &r["efficiency"];
    assert_eq!(x["deliveries"], r["deliveries"]["received"], "{x}");
    assert!(
        x["gateway_cpu_s"].as_f64().unwrap() > 0.0
            && x["server_cpu_us_per_delivery"].as_f64() >= x["gateway_cpu_us_per_delivery"].as_f64(),
        "{x}"
    );
    let bracket = &x["floor"];
    let us = |f: &Value| f["cpu_us_per_delivery"].as_f64().unwrap();
    for side in ["before", "after"] {
        let floor = &bracket[side];
        assert_eq!(floor["sockets"], 300, "one socket per connection of the run: {floor}");
        assert_eq!(floor["source_ips"], 16, "its reader takes the clients' source addresses (the default 16): {floor}");
        assert_eq!(floor["senders"], 1, "{floor}");
        assert_eq!(floor["run_recipients"], true, "written to the run's own recipients: {floor}");
        assert!(floor["deliveries"].as_u64().unwrap() > 0 && us(floor) > 0.0, "{floor}");
        // Planned before the traffic from the events it would publish: what the clients expected.
        let planned = floor["asked_per_s"].as_f64().unwrap() / 100.0;
        assert!((planned - fanout).abs() < 0.01 * fanout, "the run's rate times its fan-out ({fanout}): {x}");
        assert_eq!(floor["fanout"].as_f64(), Some(planned.round()), "{x}");
    }
    let mean = (us(&bracket["before"]) + us(&bracket["after"])) / 2.0;
    assert!((us(bracket) - mean).abs() < 1e-9 * mean, "{bracket}");
    let ratio = x["gateway_over_floor"].as_f64().unwrap();
    let expected = x["gateway_cpu_us_per_delivery"].as_f64().unwrap() / mean;
    assert!((ratio - expected).abs() < 1e-9 * expected.max(1.0), "{x}");
    // Two gateways: the floors again with one sender per gateway, each woken by every event.
    let replicas = &x["replicas_floor"];
    for side in ["before", "after"] {
        let floor = &replicas[side];
        assert_eq!((floor["senders"].as_u64(), floor["sockets"].as_u64()), (Some(2), Some(300)), "{x}");
        assert_eq!(floor["fanout"], bracket[side]["fanout"], "{x}");
    }
    let ratio = x["gateway_over_replicas_floor"].as_f64().unwrap();
    let expected = x["gateway_cpu_us_per_delivery"].as_f64().unwrap() / us(replicas);
    assert!((ratio - expected).abs() < 1e-9 * expected.max(1.0), "{x}");

    let args = run(&["-n", "300", "--rate", "200", "--duration", "2", "--floor-seconds", "0"], "steady");
    let r = stack.loadtest("steady", &args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert!(
        r["events"]["copies"].as_u64().unwrap() > r["events"]["published"].as_u64().unwrap(),
        "several channels per event"
    );
    assert!(r["efficiency"]["floor"].is_null(), "--floor-seconds 0: no floor");

    let args = run(
        &["-n", "300", "--rate", "200", "--duration", "3", "--churn-rate", "30", "--churn-grace-ms", "1500"],
        "churn",
    );
    let r = stack.loadtest("churn", &args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert!(r["connections"]["recycles"].as_u64().unwrap() > 0);

    // Churn with resume: every recycled client comes back with its cursor, and the events
    // published while it was away are owed (replayed), not tolerated.
    let args = run(&["-n", "300", "--rate", "200", "--duration", "2", "--churn-rate", "30", "--resume"], "churn");
    let r = stack.loadtest("churn-resume", &args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let c = &r["connections"];
    assert!(c["recycles"].as_u64().unwrap() > 0 && c["resumed"].as_u64().unwrap() > 0, "{c}");
    assert_eq!(c["resume_gaps"], 0);
    assert_eq!(r["settings"]["resume"], true);

    // Replay: 20 admins of 2 tenants miss 300 events each and come back with their cursors.
    let nats = stack.nats.url();
    let r = stack
        .loadtest(
            "replay",
            &[
                "replay",
                "--url",
                &urls,
                "--redis-url",
                &redis,
                "--nats-url",
                &nats,
                "-n",
                "20",
                "--tenants",
                "2",
                "--missed",
                "300",
                "--settle",
                "0.5",
            ],
        )
        .await;
    let p = &r["replay"];
    assert_eq!(
        (p["clients"].as_u64(), p["missed_per_client"].as_u64(), p["incomplete"].as_u64()),
        (Some(20), Some(300), Some(0)),
        "{p}"
    );
    assert_eq!(p["replay"]["count"], 20, "{p}");
    let (p50, max) = (p["replay"]["p50_us"].as_u64().unwrap(), p["replay"]["max_us"].as_u64().unwrap());
    assert!(p50 > 0 && p50 <= max && max < 30_000_000, "{p}");
    assert!(p["events_per_s"].as_f64().unwrap() > 0.0 && p["total_events_per_s"].as_f64().unwrap() > 0.0, "{p}");
    assert_eq!(r["deliveries"]["expected"], 20 * 301, "one event for the cursor, then the 300 missed");
    assert_eq!((r["connections"]["resumed"].as_u64(), r["connections"]["resume_gaps"].as_u64()), (Some(20), Some(0)));

    // Failover: a third gateway, found by its port, is SIGKILLed 1.5 s into the traffic; its
    // clients move to the next URL and resume, and nothing is lost or repeated.
    let (extra_url, mut extra) = stack.extra_gateway(3).await;
    let three = format!("{urls},{extra_url}");
    let args = [
        "failover",
        "--url",
        &three,
        "--redis-url",
        &redis,
        "--tenants",
        "3",
        "--branches",
        "2",
        "--settle",
        "2",
        "--per-worker",
        "200",
        "-n",
        "300",
        "--rate",
        "200",
        "--duration",
        "5",
        "--kill-after",
        "1.5",
        "--kill-url",
        &extra_url,
    ];
    let r = stack.loadtest("failover", &args).await;
    let status = extra.child.try_wait().expect("wait for the killed gateway").expect("the gateway was killed");
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9), "{status}");
    let f = &r["failover"];
    assert_eq!(f["killed_pid"].as_u64(), Some(extra.pid() as u64));
    assert_eq!(f["killed_connections"], 100, "slots 2, 5, 8, ... were on the third URL: {f}");
    assert_eq!((f["not_reconnected"].as_u64(), f["not_live_again"].as_u64()), (Some(0), Some(0)), "{f}");
    assert_eq!(f["live_again"]["count"], 100, "{f}");
    assert!(f["reconnected"]["min_us"].as_u64().unwrap() >= 500_000, "the first wait is 1 s ± 50 %: {f}");
    let live = &f["live_again"];
    assert!(
        live["min_us"].as_u64().unwrap() >= f["reconnected"]["min_us"].as_u64().unwrap()
            && live["p99_us"].as_u64().unwrap() < 5_000_000,
        "{f}"
    );
    assert!(!f["live_again_percentiles"].as_array().unwrap().is_empty());
    let c = &r["connections"];
    assert!(
        c["resumed"].as_u64().unwrap() + f["without_cursor"].as_u64().unwrap() >= 100 && c["resume_gaps"] == 0,
        "{c}"
    );

    // The gateway alone, fed straight from NATS.
    let args = run(&["-n", "200", "--rate", "200", "--duration", "1", "--direct-nats", &nats], "steady");
    stack.loadtest("steady-direct-nats", &args.iter().map(String::as_str).collect::<Vec<_>>()).await;

    // The bridge alone: Redis -> JetStream, every event re-published exactly once.
    let r = stack
        .loadtest(
            "bridge",
            &[
                "bridge",
                "--nats-url",
                &nats,
                "--redis-url",
                &redis,
                "--rate",
                "2000",
                "--duration",
                "1",
                "--settle",
                "3",
            ],
        )
        .await;
    assert_eq!(r["bridge"]["stored"], r["events"]["published"]);

    // The accounting notices loss: events published to a NATS server no gateway listens to are
    // all missing, and --expect-zero-loss fails the run.
    // (Its own loadtest password travels in the URL, which wins over the environment's.)
    let elsewhere = NatsServer::start().await;
    let elsewhere_url =
        format!("nats://loadtest:{}@127.0.0.1:{}", elsewhere.auth().password(NatsUser::Loadtest), elsewhere.port());
    let args = run(&["-n", "50", "--rate", "50", "--duration", "1", "--direct-nats", &elsewhere_url], "steady");
    let (passed, r) = stack.run_loadtest("lossy", &args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert!(!passed, "a run that delivered nothing must fail");
    let d = &r["deliveries"];
    assert!(d["expected"].as_u64().unwrap() > 0);
    assert_eq!(d["missing"], d["expected"], "{d}");
    assert!(r["problems"].as_array().unwrap().iter().any(|p| p.as_str().unwrap().contains("missing")));
}
