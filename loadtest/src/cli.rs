//! The command line: scenarios as subcommands sharing one set of options, the `token` helper and
//! the hidden `worker` subcommand. Defaults that depend on the scenario are resolved in
//! [`crate::scenarios`]; this module only parses.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

const ABOUT: &str = "Load generator for the gateway and the publisher-bridge: real WebSocket clients, backend-shaped Redis traffic, exact delivery accounting.";

const LONG_ABOUT: &str = "\
Load generator for the gateway and the publisher-bridge.

It opens real WebSocket connections (tokens minted from the backend's secrets, Origin header,
source addresses spread over 127.0.0.x), publishes events the way the backend does (Redis
PUBLISH on branch/sector/session/tenant channels, XADD to events:critical), and checks every
delivery against the routing rules of the wire contract: for each event × connection it knows
whether a delivery is owed, and reports missing, duplicate and misrouted deliveries exactly.
Each event carries its publish time, so every client measures end-to-end latency
(Redis publish -> client receive).

Scenarios:
  idle     connect and hold; gateway RSS per connection, handshake rate; a final probe round
           checks that every connection still receives
  fanout   events with large audiences (whole branches, tenant-wide admin events)
  steady   a realistic mix (cart, rounds, payments via the stream, admin and tenant-wide events),
           often the same text on several channels at once
  churn    steady traffic while connections disconnect and reconnect at a rate
  bridge   Redis -> JetStream throughput of the publisher-bridge, no WebSocket clients

More than --per-worker connections are spread over worker processes (each under the 20,000
open-files limit); their results are merged. A live progress line goes to stderr, a summary
table to stdout, and --report-json / --report-svg write the full report.";

const EXAMPLES: &str = "\
Examples (against deploy/stack.sh, whose secrets are in .stack/secrets.env):
  set -a; . .stack/secrets.env; set +a
  loadtest idle -n 15000 --url ws://127.0.0.1:8001 --duration 20
  loadtest steady -n 10000 --tenants 100 --branches 7 --rate 2000 --duration 60 \\
      --url ws://127.0.0.1:8001,ws://127.0.0.1:8002 \\
      --report-json steady.json --report-svg steady.svg --expect-zero-loss   # fan-out 10
  loadtest fanout -n 15000 --tenants 1 --branches 1 --rate 20 --duration 20   # ~8,400 per event
  loadtest churn -n 2000 --churn-rate 200 --rate 500 --duration 30
  loadtest steady -n 2000 --direct-nats nats://127.0.0.1:4222     # gateway alone, no bridge
  loadtest bridge --rate 0 --duration 10 --path mixed               # as fast as possible
  loadtest token staff --tenant 1 --branches 1 --roles WAITER --url ws://127.0.0.1:8001

Exit status: 0 on success; 1 on an error, or with --expect-zero-loss when any delivery is
missing, duplicated or misrouted, an event failed to publish, a connection never opened, or
nothing was delivered.";

#[derive(Debug, Parser)]
#[command(name = "loadtest", version, about = ABOUT, long_about = LONG_ABOUT, after_long_help = EXAMPLES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

const IDLE_HELP: &str = "\
Connect and hold: gateway RSS per connection and handshake rate.

Measures the gateways' VmRSS (pids from --gateway-pid, or discovered by executable name and
listen port), opens --connections connections through worker processes, measures RSS again
(the difference per connection is reported), holds for --duration seconds, then publishes one
probe round (one event per branch reaching its kitchen, waiters and admins, one session event per
table) so every connection shows it is still alive. Defaults: --duration 10, probe at --rate 1000.";

const IDLE_EXAMPLES: &str = "\
Examples:
  loadtest idle -n 15000 --duration 20 --report-json idle-15k.json
  loadtest idle -n 30000 --url ws://127.0.0.1:8001,ws://127.0.0.1:8002 --per-worker 8000";

const FANOUT_HELP: &str = "\
Events to large audiences: ROUND_SUBMITTED to whole branches (kitchen, waiters, admins),
ROUND_PENDING to every waiter of a branch, and tenant-wide admin events. Fewer tenants and
branches mean larger audiences; the report gives the average fan-out and deliveries per second.
Defaults: --rate 200, --duration 10.";

const FANOUT_EXAMPLES: &str = "\
Examples:
  loadtest fanout -n 15000 --tenants 1 --branches 1 --rate 20 --duration 20   # ~8,400 per event
  loadtest fanout -n 10000 --tenants 2 --branches 2 --rate 100 --direct-nats nats://127.0.0.1:4222";

const STEADY_HELP: &str = "\
Mixed realistic traffic, published as the backend does: cart events to session:{s} and
branch:{b}:admin, rounds to the kitchen, sector and admin channels (and the session), checks and
payments also XADDed to events:critical, waiter calls, admin-only entity events and tenant-wide
events on tenant:{t}:admin. The same text goes to several channels; the gateway must deliver it
once. Loadtest waiters have no sector assignments, so sector events reach admins only.
Defaults: --rate 500, --duration 10.";

const STEADY_EXAMPLES: &str = "\
Examples:
  loadtest steady -n 10000 --tenants 100 --branches 7 --dry-run      # average fan-out 10.0
  loadtest steady -n 10000 --tenants 100 --branches 7 --rate 2000 --duration 60 \\
      --expect-zero-loss --report-svg steady.svg
  loadtest steady -n 2000 --rate 1000 --direct-nats nats://127.0.0.1:4222   # without the bridge";

const CHURN_HELP: &str = "\
Steady traffic while connections disconnect and reconnect: every worker closes its slots round
robin at its share of --churn-rate and reconnects them at once with a fresh token. A connection
is owed the events published after its handshake completed and more than --churn-grace-ms
before it chose to close; events arriving outside that window are tolerated and counted. A
connection the server closes stays owed everything until it is back, so server-side drops show
up as missing. Defaults: --rate 200, --duration 10, --churn-rate 5% of the connections/s.";

const CHURN_EXAMPLES: &str = "\
Examples:
  loadtest churn -n 2000 --churn-rate 200 --rate 500 --duration 30";

const BRIDGE_HELP: &str = "\
Redis -> JetStream throughput of the publisher-bridge, without WebSocket clients. Publishes
rate × duration events to Redis (--path: pub/sub only, the stream only, or both as the backend
does), follows the last sequence of the EVENTS stream to time how fast they are stored, and
subscribes to live.> to check that each event is re-published exactly once (the same text on
several channels is stored once) and to measure Redis -> NATS latency. --rate 0 publishes
50,000 × duration events as fast as the pipeline allows. Defaults: --rate 50000, --duration 10.";

const BRIDGE_EXAMPLES: &str = "\
Examples:
  loadtest bridge --rate 0 --duration 10
  loadtest bridge --rate 20000 --duration 30 --path stream --report-svg bridge.svg";

const TOKEN_EXAMPLES: &str = "\
Examples:
  loadtest token staff --user 7 --tenant 1 --branches 1,2 --roles WAITER,MANAGER
  loadtest token staff --roles KITCHEN --url ws://127.0.0.1:8001     # a ready-to-use URL
  loadtest token table --tenant 1 --branch 1 --table 3 --session 42 --url ws://127.0.0.1:8001
  loadtest token table --legacy";

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
    /// Redis -> JetStream throughput of the publisher-bridge (no WebSocket clients).
    #[command(long_about = BRIDGE_HELP, after_long_help = BRIDGE_EXAMPLES)]
    Bridge(BridgeArgs),
    /// Mint a staff or table token from the secrets (for demos and manual tests).
    #[command(subcommand, after_long_help = TOKEN_EXAMPLES)]
    Token(TokenCommand),
    /// Internal: one worker process holding a range of connections (spec on stdin).
    #[command(hide = true)]
    Worker,
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
    /// Seconds of traffic (idle: seconds of holding before the probe). Default 10.
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
    /// Gateway base URLs, comma-separated or repeated; connections are spread round robin.
    #[arg(long = "url", value_delimiter = ',', default_value = "ws://127.0.0.1:8001")]
    pub urls: Vec<String>,
    #[command(flatten)]
    pub population: Population,
    #[command(flatten)]
    pub secrets: Secrets,
    /// Origin header sent with every handshake.
    #[arg(long, default_value = "http://localhost:5173")]
    pub origin: String,
    /// Send no Origin header (accepted only by gateways with ENVIRONMENT=development).
    #[arg(long)]
    pub no_origin: bool,
    #[command(flatten)]
    pub publish: Publish,
    /// Publish straight to NATS live.<tenant>.<branch>.<role> subjects at this URL instead of
    /// Redis: measures the gateway alone, without the bridge.
    #[arg(long, value_name = "NATS_URL")]
    pub direct_nats: Option<String>,
    /// Connections recycled per second in the churn scenario.
    #[arg(long)]
    pub churn_rate: Option<f64>,
    /// Events published within this many ms before a deliberate disconnect are not owed.
    #[arg(long, default_value_t = 1000)]
    pub churn_grace_ms: u64,
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
    #[command(flatten)]
    pub output: Output,
    /// Print the population, the events and the deliveries the routing model expects (average
    /// fan-out per event type), then exit without connecting.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BridgePath {
    /// Each event on its backend channels only (PUBLISH).
    Pubsub,
    /// Each event as one XADD to the stream only.
    Stream,
    /// As the backend does: channels, and the stream too for critical events.
    Mixed,
}

#[derive(Debug, Clone, Args)]
pub struct BridgeArgs {
    /// NATS server holding the bridge's EVENTS stream.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// JetStream stream the bridge stores events in.
    #[arg(long, default_value = "EVENTS")]
    pub stream: String,
    /// Which Redis path the events take.
    #[arg(long, value_enum, default_value_t = BridgePath::Mixed)]
    pub path: BridgePath,
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
            "loadtest", "steady", "-n", "300", "--url", "ws://a:1,ws://b:2", "--jwt-secret", "j", "--table-secret", "t", "--rate", "50", "--expect-zero-loss",
        ])
        .unwrap();
        let Command::Steady(args) = cli.command else { panic!("steady") };
        assert_eq!(args.urls, ["ws://a:1", "ws://b:2"]);
        assert_eq!(args.population.connections, 300);
        assert_eq!(args.publish.rate, Some(50.0));
        assert!(args.output.expect_zero_loss);
    }
}
