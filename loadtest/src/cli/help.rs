//! The teaching text of `loadtest --help` and of each scenario's `--help`: what it measures,
//! its defaults and examples. Only text; [`super`] attaches it to the commands.

pub const ABOUT: &str = "Load generator for the gateway and the publisher-bridge: real WebSocket clients, backend-shaped Redis traffic, exact delivery accounting.";

pub const LONG_ABOUT: &str = "\
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
  failover steady traffic with resume on while one gateway is SIGKILLed: how long its clients
           take to receive live events again, with nothing lost or repeated
  replay   clients that missed events come back with their cursor: how fast they are replayed
  bridge   Redis -> JetStream throughput of the publisher-bridge, no WebSocket clients (or,
           with --backlog, of its drain alone; with --path direct, of nats-server alone)
  floor    the physical floor of fan-out, no gateway: sender CPU per bare write of one
           pre-encoded frame to loopback sockets; fanout and steady also measure it before and
           after their traffic and report the gateway's CPU per delivery against it

--resume makes the clients of idle, fanout, steady and churn resume-capable (protocol section
8): events published while a client was away are then owed, replayed by the gateway.

More than --per-worker connections are spread over worker processes (each under the 20,000
open-files limit); their results are merged. A live progress line goes to stderr, a summary
table to stdout, and --report-json / --report-svg write the full report.";

pub const EXAMPLES: &str = "\
Examples (against deploy/stack.sh, whose secrets are in .stack/secrets.env):
  set -a; . .stack/secrets.env; set +a
  loadtest idle -n 15000 --url ws://127.0.0.1:8001 --duration 20
  loadtest steady -n 10000 --tenants 100 --branches 7 --rate 2000 --duration 60 \\
      --url ws://127.0.0.1:8001,ws://127.0.0.1:8002 \\
      --report-json steady.json --report-svg steady.svg --expect-zero-loss   # fan-out 10
  loadtest fanout -n 15000 --tenants 1 --branches 1 --rate 20 --duration 20   # ~8,400 per event
  loadtest churn -n 2000 --churn-rate 200 --rate 500 --duration 30
  loadtest churn -n 2000 --churn-rate 200 --rate 500 --resume       # every gap replayed
  loadtest failover -n 5000 --url ws://127.0.0.1:8001,ws://127.0.0.1:8002 --kill-url ws://127.0.0.1:8002
  loadtest replay --missed 1000
  loadtest steady -n 2000 --direct-nats nats://127.0.0.1:4222     # gateway alone, no bridge
  loadtest bridge --rate 0 --duration 10 --path mixed               # as fast as possible
  loadtest bridge --rate 0 --duration 2 --path stream --backlog     # the bridge's drain alone
  loadtest bridge --rate 0 --duration 2 --path direct               # JetStream without the bridge
  loadtest token staff --tenant 1 --branches 1 --roles WAITER --url ws://127.0.0.1:8001

Exit status: 0 on success; 1 on an error, or with --expect-zero-loss when any delivery is
missing, duplicated or misrouted, an event failed to publish, a connection never opened, a
RESUME_GAP arrived, or nothing was delivered.";

pub const IDLE_HELP: &str = "\
Connect and hold: gateway RSS per connection and handshake rate.

Measures the gateways' VmRSS (pids from --gateway-pid, or discovered by executable name and
listen port), opens --connections connections through worker processes, measures RSS again
(the difference per connection is reported), holds for --duration seconds, then publishes one
probe round (one event per branch reaching its kitchen, waiters and admins, one session event per
table) so every connection shows it is still alive. Defaults: --duration 10, probe at --rate 1000.";

pub const IDLE_EXAMPLES: &str = "\
Examples:
  loadtest idle -n 15000 --duration 20 --report-json idle-15k.json
  loadtest idle -n 30000 --url ws://127.0.0.1:8001,ws://127.0.0.1:8002 --per-worker 8000";

pub const FANOUT_HELP: &str = "\
Events to large audiences: ROUND_SUBMITTED to whole branches (kitchen, waiters, admins),
ROUND_PENDING to every waiter of a branch, and tenant-wide admin events. Fewer tenants and
branches mean larger audiences; the report gives the average fan-out and deliveries per second.
Defaults: --rate 200, --duration 10.";

pub const FANOUT_EXAMPLES: &str = "\
Examples:
  loadtest fanout -n 15000 --tenants 1 --branches 1 --rate 20 --duration 20   # ~8,400 per event
  loadtest fanout -n 10000 --tenants 2 --branches 2 --rate 100 --direct-nats nats://127.0.0.1:4222";

pub const STEADY_HELP: &str = "\
Mixed realistic traffic, published as the backend does: cart events to session:{s} and
branch:{b}:admin, rounds to the kitchen, sector and admin channels (and the session), checks and
payments also XADDed to events:critical, waiter calls, admin-only entity events and tenant-wide
events on tenant:{t}:admin. The same text goes to several channels; the gateway must deliver it
once. Loadtest waiters have no sector assignments, so sector events reach admins only.
Defaults: --rate 500, --duration 10.";

pub const STEADY_EXAMPLES: &str = "\
Examples:
  loadtest steady -n 10000 --tenants 100 --branches 7 --dry-run      # average fan-out 10.0
  loadtest steady -n 10000 --tenants 100 --branches 7 --rate 2000 --duration 60 \\
      --expect-zero-loss --report-svg steady.svg
  loadtest steady -n 2000 --rate 1000 --direct-nats nats://127.0.0.1:4222   # without the bridge";

pub const CHURN_HELP: &str = "\
Steady traffic while connections disconnect and reconnect: every worker closes its slots round
robin at its share of --churn-rate and reconnects them at once with a fresh token. A connection
is owed the events published after its handshake completed and more than --churn-grace-ms
before it chose to close; events arriving outside that window are tolerated and counted. A
connection the server closes stays owed everything until it is back, so server-side drops show
up as missing. With --resume a slot comes back with resume=<last cursor>, and the events
published while it was away are owed too (the gateway replays them); only a slot that had no
cursor yet comes back live. Defaults: --rate 200, --duration 10, --churn-rate 5% of the
connections/s.";

pub const CHURN_EXAMPLES: &str = "\
Examples:
  loadtest churn -n 2000 --churn-rate 200 --rate 500 --duration 30
  loadtest churn -n 2000 --churn-rate 200 --rate 500 --duration 30 --resume   # gaps replayed";

pub const FAILOVER_HELP: &str = "\
Steady traffic (as the steady scenario) with resume on, while one gateway process is SIGKILLed
--kill-after seconds into the traffic: --kill-pid, or the process named --gateway-bin listening
on the port of --kill-url. The clients reconnect like the browser apps: a first wait of
--backoff-base (1 s), doubled after each failed attempt up to 30 s, each wait jittered by ±50 %,
with resume=<last cursor>; with several --url, a client whose connection the server ended moves
to the next URL, so the dead replica's clients reach a live one (or give one load-balancer URL,
e.g. HAProxy of deploy/stack.sh --cluster on 8080, and let it choose).

Measured for every connection the kill closed, from the kill: the time until its slot was
connected again, and until it was \"receiving live events again\": the time to the new
connection plus how late the first event published after the kill reached it (replayed or live),
counted from its publication or from the new connection, whichever came later. A waiter or a cook
gets an event every few seconds only; the seconds in which nothing was published for it are so
left out (the raw time to that first event is reported too). After the traffic the run waits for
every slot to be connected again, then settles; every event published while a client was away is
owed (the gateway replays it), so --expect-zero-loss demands that the failover lost and repeated
nothing. Latency percentiles include the replayed events' delay. A slot that had received no
cursor before the kill can only come back with resume=live: its gap cannot be replayed and is not
owed (counted as \"without a cursor\"). The kill closing no connection, or a slot never back,
fails the run. Defaults: --rate 500, --duration 15, --kill-after 5.";

pub const FAILOVER_EXAMPLES: &str = "\
Examples:
  loadtest failover -n 5000 --url ws://127.0.0.1:8001,ws://127.0.0.1:8002 \\
      --kill-url ws://127.0.0.1:8002 --expect-zero-loss --report-svg failover.svg
  ./deploy/stack.sh --cluster    # three gateways behind HAProxy on 8080
  loadtest failover -n 5000 --url ws://127.0.0.1:8080 --kill-url ws://127.0.0.1:8003";

pub const REPLAY_HELP: &str = "\
How fast the gateway replays what resuming clients missed. --clients tenant admins (each
receives every event of its tenant) connect with resume=live, receive one event each for a
cursor and disconnect; then --missed events per tenant are published to Redis the normal way
(--rate 0: as fast as possible), and the run follows the EVENTS stream's last sequence until the
bridge stored them all. Then every client reconnects at once with resume=<its cursor>: the time
from its WebSocket open (the 101) to the last replayed event is the replay time. Each client
must receive exactly the events it missed (--expect-zero-loss), and no RESUME_GAP (the gateway
sends one instead of replaying more than GATEWAY_RESUME_MAX_EVENTS, 10,000 by default, counted
over the tenant's events).";

pub const REPLAY_EXAMPLES: &str = "\
Examples:
  loadtest replay --missed 1000 --expect-zero-loss
  loadtest replay -n 200 --tenants 10 --missed 5000 --url ws://127.0.0.1:8001,ws://127.0.0.1:8002";

pub const BRIDGE_HELP: &str = "\
Redis -> JetStream throughput of the publisher-bridge, without WebSocket clients. Publishes
rate × duration events to Redis (--path: pub/sub only, the stream only, or both as the backend
does), follows the last sequence of the EVENTS stream to time how fast they are stored, and
subscribes to live.> to check that each event is re-published exactly once (the same text on
several channels is stored once) and to measure Redis -> NATS latency. --rate 0 publishes
50,000 × duration events as fast as the pipeline allows. Defaults: --rate 50000, --duration 10.

On a small machine the generator competes with the bridge, nats-server and Redis for the same
cores, so a --rate 0 run understates what the bridge can store. Two variants take it out:

--backlog (with --path stream) stops every process named publisher-bridge (or --bridge-pid)
with SIGSTOP, XADDs all the events while it is stopped, then continues it (SIGCONT) and times
the drain of that backlog alone: stored/s and CPU count from the SIGCONT. The bridge is continued
on every way out (errors, Ctrl-C, SIGTERM); only a SIGKILL of loadtest leaves it stopped (then
`kill -CONT <pid>`). The bridge's own latency histogram is not reported, and the live.>
latency includes the wait in Redis. At most 1,000,000 events (the Redis stream's trim length);
keep the stop short (the bridge's Redis and NATS connections may time out and reconnect).

--path direct bypasses Redis and the bridge: loadtest stores the same events straight into the
EVENTS stream as the bridge would (subject events.<tenant>.<branch>.<role>, headers
Nats-Msg-Id = SHA-256 of the payload, Bridge-Source, Bridge-Received-Us; asynchronous
acknowledgements, 1,024 in flight). It measures nats-server's own ceiling for storing
bridge-shaped messages on this machine, the number the bridge is compared to. The bridge need not
run (the EVENTS stream must exist); CPU is reported for nats-server and loadtest.";

pub const BRIDGE_EXAMPLES: &str = "\
Examples:
  loadtest bridge --rate 0 --duration 10
  loadtest bridge --rate 20000 --duration 30 --path stream --report-svg bridge.svg
  loadtest bridge --path stream --backlog --rate 0 --duration 2 --expect-zero-loss   # drain only
  loadtest bridge --path direct --rate 0 --duration 2 --expect-zero-loss   # nats-server's ceiling";

pub const FLOOR_HELP: &str = "\
The physical floor of fan-out on this machine, without the gateway: a sender thread writes one
pre-encoded WebSocket text frame per recipient (server frames are unmasked, so every recipient
gets the same bytes) to --sockets loopback TCP sockets with TCP_NODELAY, --fanout consecutive
sockets per event, events paced to each --rate (deliveries per second) for --duration seconds.
A second process reads and discards everything. The floor is the sender thread's CPU time
(user and system, so the kernel's loopback work done on its behalf counts) per frame written.
Each event's frame carries the time its writes began (16 hex digits at the start of its JSON
string), and the reader reports how long after that it read each frame (\"write to read\"): the
latency the host alone adds to a fan-out, measured at the same moment as a run's.

With --senders N it is the floor of N replicas that all hold the tenant: N sender threads, each
holding an even share of the sockets and woken by every event, write an even share of its
recipients each. Every event then costs N wake-ups instead of one. --source-ips N connects the
reading sockets from 127.0.0.1..=127.0.0.N in turn, as the scenarios' clients do.

The fanout and steady scenarios measure it right before and right after their traffic, at
their own planned rate, frame size and connections (--floor-seconds), and report the gateway's
CPU per delivery as a multiple of the mean of both (its reader on the run's --source-ips). There
each event is written to the sockets of its own recipients, the reader's sockets connected in
the clients' slot order, rather than to consecutive sockets: a branch's waiters are every tenth
connection, and that costs more than consecutive sockets here (compare --stride 10 and
--stride 1: a median 3% more at 4.6k deliveries/s, 13% at 20k/s). With several --url they
also measure it with one sender per gateway, sender g writing the recipients replica g holds
(slot g modulo the gateways). The report shows both measurements: how far they differ is how
far the host moved during the run.";

pub const FLOOR_EXAMPLES: &str = "\
Examples:
  loadtest floor                                   # 1,000 sockets, fan-out 100, 5k and 20k/s
  loadtest floor --rate 5000,20000,65000 --duration 30 --report-json floor.json
  loadtest floor --fanout 91 --rate 4550 --senders 2  # two replicas holding the tenant";

pub const TOKEN_EXAMPLES: &str = "\
Examples:
  loadtest token staff --user 7 --tenant 1 --branches 1,2 --roles WAITER,MANAGER
  loadtest token staff --roles KITCHEN --url ws://127.0.0.1:8001     # a ready-to-use URL
  loadtest token table --tenant 1 --branch 1 --table 3 --session 42 --url ws://127.0.0.1:8001
  loadtest token table --legacy";
