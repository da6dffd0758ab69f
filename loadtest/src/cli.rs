//! The command line: scenarios as subcommands sharing one set of options, the `token` helper and
//! the hidden `worker` subcommand. Defaults that depend on the scenario are resolved in
//! [`crate::scenarios`]; this module only parses.

mod help;

use clap::{Args, Parser, Subcommand, ValueEnum};
use help::*;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(name = "loadtest", version, about = ABOUT, long_about = LONG_ABOUT, after_long_help = EXAMPLES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Connect and hold: gateway RSS per connection and handshake rate, then one probe round.
    #[command(long_about = IDLE_HELP, after_long_help = IDLE_EXAMPLES)]
    Idle(RunArgs),
    /// Events to large audiences (whole branches, tenant-wide admin events).
    #[command(long_about = FANOUT_HELP, after_long_help = FANOUT_EXAMPLES)]
    Fanout(RunArgs),
    /// Mixed realistic traffic, the same text often on several channels.
    #[command(long_about = STEADY_HELP, after_long_help = STEADY_EXAMPLES)]
    Steady(RunArgs),
    /// Connect/disconnect at --churn-rate while steady traffic flows.
    #[command(long_about = CHURN_HELP, after_long_help = CHURN_EXAMPLES)]
    Churn(RunArgs),
    /// SIGKILL one gateway under steady traffic: how soon its clients are live again, zero loss.
    #[command(long_about = FAILOVER_HELP, after_long_help = FAILOVER_EXAMPLES)]
    Failover(FailoverArgs),
    /// Resuming clients that missed events: how fast the gateway replays them.
    #[command(long_about = REPLAY_HELP, after_long_help = REPLAY_EXAMPLES)]
    Replay(ReplayArgs),
    /// Redis -> JetStream throughput of the publisher-bridge (no WebSocket clients).
    #[command(long_about = BRIDGE_HELP, after_long_help = BRIDGE_EXAMPLES)]
    Bridge(BridgeArgs),
    /// The physical floor: sender CPU per delivery of bare writes of one pre-encoded frame per
    /// recipient to loopback sockets read by another process (no gateway involved).
    #[command(long_about = FLOOR_HELP, after_long_help = FLOOR_EXAMPLES)]
    Floor(FloorArgs),
    /// Mint a staff or table token from the secrets (for demos and manual tests).
    #[command(subcommand, after_long_help = TOKEN_EXAMPLES)]
    Token(TokenCommand),
    /// Internal: one worker process holding a range of connections (spec on stdin).
    #[command(hide = true)]
    Worker,
    /// Internal: the floor's reading process.
    #[command(hide = true)]
    FloorReader {
        addr: std::net::SocketAddr,
        sockets: usize,
        #[arg(long, default_value_t = 0)]
        source_ips: u32,
        /// Size of the frames, whose time stamps it reads (0: none).
        #[arg(long, default_value_t = 0)]
        frame_bytes: usize,
    },
}

#[derive(Debug, Clone, Args)]
pub struct Secrets {
    /// HS256 key of staff tokens (the gateway's JWT_SECRET).
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: String,
    /// Key of table tokens (the gateway's TABLE_TOKEN_SECRET).
    #[arg(long, env = "TABLE_TOKEN_SECRET", hide_env_values = true)]
    pub table_secret: String,
}

/// What every handshake carries: tokens minted with the gateway's secrets, and the Origin.
#[derive(Debug, Clone, Args)]
pub struct Handshake {
    #[command(flatten)]
    pub secrets: Secrets,
    /// Origin header sent with every handshake.
    #[arg(long, default_value = "http://localhost:5173")]
    pub origin: String,
    /// Send no Origin header (accepted only by gateways with ENVIRONMENT=development).
    #[arg(long)]
    pub no_origin: bool,
}

impl Handshake {
    /// The Origin header to send, if any.
    pub fn origin(&self) -> Option<String> {
        (!self.no_origin).then(|| self.origin.clone())
    }
}

#[derive(Debug, Clone, Args)]
pub struct Population {
    /// Connections to open (spread over tenants, branches, kinds and table sessions).
    #[arg(short = 'n', long, default_value_t = 1000)]
    pub connections: u64,
    /// Tenants (ids from 1000).
    #[arg(long, default_value_t = 10)]
    pub tenants: u64,
    /// Branches per tenant.
    #[arg(long, default_value_t = 5)]
    pub branches: u64,
    /// Weights of connection kinds: waiter (pure waiter), manager (MANAGER on /ws/waiter),
    /// kitchen, admin (ADMIN on /ws/admin, all branches of its tenant), diner (table token).
    #[arg(long, default_value = "waiter=40,manager=5,kitchen=15,admin=5,diner=35")]
    pub mix: String,
    /// Diners per table session (at most 12, the gateway's default per-session limit).
    #[arg(long, default_value_t = 4)]
    pub diners_per_session: u64,
}

#[derive(Debug, Clone, Args)]
pub struct Output {
    /// Write the full report as JSON.
    #[arg(long, value_name = "PATH")]
    pub report_json: Option<PathBuf>,
    /// Write an SVG with latency distribution and throughput over time.
    #[arg(long, value_name = "PATH")]
    pub report_svg: Option<PathBuf>,
    /// Exit 1 if any delivery is missing, duplicated or misrouted (see the exit status above).
    #[arg(long)]
    pub expect_zero_loss: bool,
}

#[derive(Debug, Clone, Args)]
pub struct Publish {
    /// Events per second (0: as fast as possible). Default depends on the scenario.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seconds of traffic (idle: seconds of holding before the probe). Default 10 (failover 15).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Seconds to wait for deliveries after the last publish.
    #[arg(long, default_value_t = 2.0)]
    pub settle: f64,
    /// Backend Redis.
    #[arg(long, default_value = "redis://127.0.0.1:6380")]
    pub redis_url: String,
    /// Redis stream of critical events.
    #[arg(long, default_value = "events:critical")]
    pub stream_key: String,
    /// Most events per Redis pipeline (or NATS flush).
    #[arg(long, default_value_t = 256)]
    pub max_batch: u64,
    /// Pad each event to about this many bytes.
    #[arg(long, default_value_t = 400)]
    pub payload_bytes: usize,
    /// Seed of the event mix (same seed, same events).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Gateway base URLs, comma-separated or repeated; connections are spread round robin, and a
    /// slot whose connection the server ended (or whose attempt failed) tries the next one.
    #[arg(long = "url", value_delimiter = ',', default_value = "ws://127.0.0.1:8001")]
    pub urls: Vec<String>,
    #[command(flatten)]
    pub population: Population,
    #[command(flatten)]
    pub handshake: Handshake,
    #[command(flatten)]
    pub publish: Publish,
    /// Publish straight to NATS live.<tenant>.<branch>.<role> subjects at this URL instead of
    /// Redis: measures the gateway alone, without the bridge. Logs in with LOADTEST_NATS_USER /
    /// LOADTEST_NATS_PASSWORD (or nats://user:password@host).
    #[arg(long, value_name = "NATS_URL")]
    pub direct_nats: Option<String>,
    /// Connections recycled per second in the churn scenario.
    #[arg(long)]
    pub churn_rate: Option<f64>,
    /// Events published within this many ms before a deliberate disconnect are not owed.
    #[arg(long, default_value_t = 1000)]
    pub churn_grace_ms: u64,
    /// Resume-capable clients (protocol section 8): connect with resume=live, keep the last
    /// `_cursor` received, reconnect with resume=<cursor>. Events published while a client was
    /// away are then owed (replayed), not tolerated. Needs the bridge: not with --direct-nats.
    /// Always on in failover.
    #[arg(long)]
    pub resume: bool,
    /// Connections per worker process (each process stays under its open-files limit).
    #[arg(long, default_value_t = 8000)]
    pub per_worker: u64,
    /// Spread client sockets over source addresses 127.0.0.1..=127.0.0.N (loopback targets
    /// only; 0: let the kernel choose). Each address has its own ~28k ephemeral ports.
    #[arg(long, default_value_t = 16)]
    pub source_ips: u32,
    /// Handshakes in flight per worker. More is not faster: beyond ~128 in flight in all, the
    /// gateway's accept queue overflows on loopback and some handshakes wait for a SYN retry (1 s).
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Seconds before a connection attempt counts as failed.
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Seconds between client `ping` messages (the gateway closes silent clients after 60 s).
    #[arg(long, default_value_t = 20.0)]
    pub ping_interval: f64,
    /// Gateway pids whose RSS to measure (repeatable). Default: processes named --gateway-bin
    /// listening on one of the --url ports.
    #[arg(long = "gateway-pid")]
    pub gateway_pids: Vec<i32>,
    /// Executable name used to discover gateway processes.
    #[arg(long, default_value = "gateway")]
    pub gateway_bin: String,
    /// Seconds of the bare-write floor (as `loadtest floor` measures it), taken once before and
    /// once after the traffic at the run's planned deliveries per second, fan-out, frame size and
    /// connections, to report the gateway's CPU per delivery as a multiple of their mean (fanout,
    /// steady; 0: no floor). With several --url, each is measured again with one sender per
    /// gateway (`loadtest floor --senders`).
    #[arg(long, default_value_t = 5.0)]
    pub floor_seconds: f64,
    #[command(flatten)]
    pub output: Output,
    /// Print the population, the events and the deliveries the routing model expects (average
    /// fan-out per event type), then exit without connecting.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Args)]
pub struct FailoverArgs {
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub kill: Kill,
}

#[derive(Debug, Clone, Args)]
pub struct Kill {
    /// Seconds after the traffic starts when the gateway is SIGKILLed (less than --duration).
    #[arg(long, default_value_t = 5.0)]
    pub kill_after: f64,
    /// Pid of the gateway process to kill.
    #[arg(long, required_unless_present = "kill_url", conflicts_with = "kill_url")]
    pub kill_pid: Option<i32>,
    /// Kill the process named --gateway-bin that listens on this URL's port (one of --url, or a
    /// replica behind the load balancer given as --url).
    #[arg(long, value_name = "URL")]
    pub kill_url: Option<String>,
    /// Seconds of the clients' first reconnect wait, doubled after each failed attempt up to
    /// 30 s, each wait ±50 % (the browser apps wait from 1 s).
    #[arg(long, default_value_t = 1.0)]
    pub backoff_base: f64,
}

#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// Gateway base URLs, comma-separated or repeated; clients are spread round robin (their
    /// reconnect goes to the same URL).
    #[arg(long = "url", value_delimiter = ',', default_value = "ws://127.0.0.1:8001")]
    pub urls: Vec<String>,
    /// Resuming clients (tenant admins).
    #[arg(short = 'n', long, default_value_t = 20)]
    pub clients: u64,
    /// Tenants the clients are spread over (ids from 1000, one branch each).
    #[arg(long, default_value_t = 1)]
    pub tenants: u64,
    /// Events each client misses while it is away (published per tenant).
    #[arg(long, default_value_t = 1000)]
    pub missed: u64,
    /// Events per second while the clients are away (0: as fast as possible).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    #[command(flatten)]
    pub handshake: Handshake,
    /// Backend Redis.
    #[arg(long, default_value = "redis://127.0.0.1:6380")]
    pub redis_url: String,
    /// NATS server holding the bridge's EVENTS stream; logs in with LOADTEST_NATS_USER /
    /// LOADTEST_NATS_PASSWORD (or nats://user:password@host).
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// JetStream stream the bridge stores events in.
    #[arg(long, default_value = "EVENTS")]
    pub stream: String,
    /// Most events per Redis pipeline.
    #[arg(long, default_value_t = 256)]
    pub max_batch: u64,
    /// Pad each event to about this many bytes.
    #[arg(long, default_value_t = 400)]
    pub payload_bytes: usize,
    /// Seconds each step may take: connecting, the first event, storing, each replay.
    #[arg(long, default_value_t = 30.0)]
    pub timeout: f64,
    /// Seconds each client keeps reading after its replay is complete (a late extra copy is a
    /// duplicate).
    #[arg(long, default_value_t = 1.0)]
    pub settle: f64,
    #[command(flatten)]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BridgePath {
    /// Each event on its backend channels only (PUBLISH).
    Pubsub,
    /// Each event as one XADD to the stream only.
    Stream,
    /// As the backend does: channels, and the stream too for critical events.
    Mixed,
    /// Neither Redis nor the bridge: each event stored straight into the EVENTS stream with the
    /// bridge's subject and headers (nats-server's own ceiling).
    Direct,
}

#[derive(Debug, Clone, Args)]
pub struct BridgeArgs {
    /// NATS server holding the bridge's EVENTS stream; logs in with LOADTEST_NATS_USER /
    /// LOADTEST_NATS_PASSWORD (or nats://user:password@host).
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// JetStream stream the bridge stores events in.
    #[arg(long, default_value = "EVENTS")]
    pub stream: String,
    /// Which Redis path the events take (direct: none, straight into the stream).
    #[arg(long, value_enum, default_value_t = BridgePath::Mixed)]
    pub path: BridgePath,
    /// Stop the bridge (SIGSTOP) while every event is XADDed, then continue it (SIGCONT) and time
    /// how fast it drains the backlog into the stream. Needs --path stream and the bridge's
    /// processes on this machine.
    #[arg(long)]
    pub backlog: bool,
    /// Bridge pids to stop with --backlog (repeatable). Default: every process named
    /// publisher-bridge.
    #[arg(long = "bridge-pid", requires = "backlog")]
    pub bridge_pids: Vec<i32>,
    /// The bridge's metrics endpoint: its publish-latency histogram (receipt from Redis to
    /// JetStream's acknowledgement) is read before and after the run to report the latency the
    /// bridge itself adds. Left out of the report when unreachable.
    #[arg(long, default_value = "http://127.0.0.1:9100/metrics")]
    pub bridge_metrics: String,
    /// Shapes of the events (connections are not opened in this scenario).
    #[command(flatten)]
    pub population: Population,
    #[command(flatten)]
    pub publish: Publish,
    #[command(flatten)]
    pub output: Output,
}

#[derive(Debug, Clone, Args)]
pub struct FloorArgs {
    /// Loopback sockets written to.
    #[arg(long, default_value_t = 1000)]
    pub sockets: usize,
    /// Recipients per event.
    #[arg(long, default_value_t = 100)]
    pub fanout: usize,
    /// Deliveries per second; each is measured in turn (comma-separated or repeated).
    #[arg(long = "rate", value_delimiter = ',', default_value = "5000,20000")]
    pub rates: Vec<f64>,
    /// Seconds of writing per rate.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Bytes of each frame, WebSocket header included.
    #[arg(long, default_value_t = 332)]
    pub frame_bytes: usize,
    /// Sender threads, each woken by every event and writing an even share of its recipients to
    /// an even share of the sockets: the floor of that many replicas holding the same tenant.
    #[arg(long, default_value_t = 1)]
    pub senders: usize,
    /// The reading sockets come from 127.0.0.1..=127.0.0.N in turn, as the scenarios' clients
    /// do (0: the kernel chooses). Peers spread over more addresses cost the sender a little more.
    #[arg(long, default_value_t = 0)]
    pub source_ips: u32,
    /// An event's sockets are this far apart: 1 writes consecutive sockets; 10 writes sockets
    /// k, k+10, k+20, ... for event k, as the waiters of one of ten branches are in the fanout
    /// scenario (their kernel objects are not adjacent, which costs a little more).
    #[arg(long, default_value_t = 1)]
    pub stride: usize,
    /// Write the measurements as JSON.
    #[arg(long, value_name = "PATH")]
    pub report_json: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// A staff access token (HS256, iss menu-ops, aud menu-ops-users).
    Staff {
        #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
        jwt_secret: String,
        /// The `sub` claim.
        #[arg(long, default_value_t = 7)]
        user: u64,
        #[arg(long, default_value_t = 1)]
        tenant: u64,
        #[arg(long, value_delimiter = ',', default_value = "1")]
        branches: Vec<u64>,
        /// WAITER, KITCHEN, MANAGER, ADMIN (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "WAITER")]
        roles: Vec<String>,
        #[arg(long, default_value_t = 3600)]
        ttl: i64,
        /// Print a ready-to-use WebSocket URL on this gateway instead of the bare token.
        #[arg(long)]
        url: Option<String>,
        /// Endpoint for --url: waiter, kitchen or admin (default from the first role).
        #[arg(long)]
        endpoint: Option<String>,
    },
    /// A diner table token (JWT form, or --legacy `t:b:tbl:s:exp:sig`).
    Table {
        #[arg(long = "table-secret", env = "TABLE_TOKEN_SECRET", hide_env_values = true)]
        table_secret: String,
        #[arg(long, default_value_t = 1)]
        tenant: u64,
        #[arg(long, default_value_t = 1)]
        branch: u64,
        #[arg(long, default_value_t = 1)]
        table: u64,
        #[arg(long, default_value_t = 1)]
        session: u64,
        #[arg(long, default_value_t = 10_800)]
        ttl: i64,
        #[arg(long)]
        legacy: bool,
        /// Print a ready-to-use /ws/diner URL on this gateway instead of the bare token.
        #[arg(long)]
        url: Option<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_is_consistent_and_parses_a_full_run() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "loadtest",
            "steady",
            "-n",
            "300",
            "--url",
            "ws://a:1,ws://b:2",
            "--jwt-secret",
            "j",
            "--table-secret",
            "t",
            "--rate",
            "50",
            "--expect-zero-loss",
        ])
        .unwrap();
        let Command::Steady(args) = cli.command else { panic!("steady") };
        assert_eq!(args.urls, ["ws://a:1", "ws://b:2"]);
        assert_eq!(args.population.connections, 300);
        assert_eq!(args.publish.rate, Some(50.0));
        assert!(args.output.expect_zero_loss);
        assert!(!args.resume);
    }

    #[test]
    fn failover_needs_exactly_one_gateway_to_kill() {
        let base = ["loadtest", "failover", "--jwt-secret", "j", "--table-secret", "t", "--url", "ws://a:1,ws://b:2"];
        let parse = |extra: &[&str]| Cli::try_parse_from(base.iter().chain(extra)).map(|cli| cli.command);
        let Ok(Command::Failover(f)) = parse(&["--kill-url", "ws://b:2", "--kill-after", "3"]) else {
            panic!("failover")
        };
        assert_eq!(
            (f.kill.kill_url.as_deref(), f.kill.kill_pid, f.kill.kill_after, f.kill.backoff_base),
            (Some("ws://b:2"), None, 3.0, 1.0)
        );
        assert_eq!(f.run.urls.len(), 2);
        let Ok(Command::Failover(f)) = parse(&["--kill-pid", "42", "--backoff-base", "0.5"]) else {
            panic!("failover")
        };
        assert_eq!((f.kill.kill_pid, f.kill.backoff_base), (Some(42), 0.5));
        assert!(parse(&[]).is_err(), "which gateway?");
        assert!(parse(&["--kill-pid", "42", "--kill-url", "ws://b:2"]).is_err(), "one or the other");
        let Ok(Command::Replay(r)) =
            Cli::try_parse_from(["loadtest", "replay", "--jwt-secret", "j", "--table-secret", "t"]).map(|c| c.command)
        else {
            panic!("replay")
        };
        assert_eq!((r.clients, r.missed, r.tenants, r.rate), (20, 1000, 1, 0.0));
    }

    #[test]
    fn bridge_paths_and_backlog_parse() {
        let parse =
            |extra: &[&str]| Cli::try_parse_from(["loadtest", "bridge"].iter().chain(extra)).map(|cli| cli.command);
        let Ok(Command::Bridge(b)) = parse(&[]) else { panic!("bridge") };
        assert_eq!((b.path, b.backlog), (BridgePath::Mixed, false));
        let Ok(Command::Bridge(b)) =
            parse(&["--path", "stream", "--backlog", "--bridge-pid", "7", "--bridge-pid", "9"])
        else {
            panic!("backlog")
        };
        assert_eq!((b.path, b.backlog, b.bridge_pids), (BridgePath::Stream, true, vec![7, 9]));
        let Ok(Command::Bridge(b)) = parse(&["--path", "direct"]) else { panic!("direct") };
        assert_eq!(b.path, BridgePath::Direct);
        assert!(parse(&["--bridge-pid", "7"]).is_err(), "--bridge-pid only with --backlog");
    }
}
