#!/usr/bin/env bash
# Runs the whole local stack in the foreground, from nothing: installs dependencies, builds the
# release binaries, then starts on 127.0.0.1
#   nats-server (JetStream)   :4222, monitoring :8222   STACK_NATS_PORT, STACK_NATS_MONITOR_PORT
#   redis-server              :6380                     STACK_REDIS_PORT
#   PostgreSQL, db `menu`     :5433                     STACK_PG_PORT
#   publisher-bridge          :9100                     STACK_BRIDGE_PORT
#   gateway gw-1 and gw-2     :8001, :8002              STACK_GATEWAY1_PORT, STACK_GATEWAY2_PORT
# and prints demo tokens and ready-to-paste client commands. Ctrl-C stops everything it started.
# With --cluster it runs the production topology instead (deploy/lib/cluster.sh): three routed
# JetStream nodes (:4222-4224), two bridges (:9100, :9101), three gateways (:8001-8003) and
# HAProxy on :8080 in front of them, the clients' entry point.
# NATS runs with the users of deploy/nats/auth.conf (operator, bridge, gateway, loadtest), each
# allowed only what it needs; anonymous clients are refused. Their passwords are generated once
# into .stack/secrets.env (NATS_*_PASSWORD; LOADTEST_NATS_* for the loadtest).
# State, pid files and logs live in .stack/ (logs: .stack/logs/<name>.log). Safe to run again:
# processes left by an earlier run are stopped first.
set -euo pipefail

usage() {
  cat <<EOF
usage: deploy/stack.sh [--cluster] [--no-postgres] [--no-bridge] [--help]
  --cluster      3 NATS nodes, 2 bridges, 3 gateways and HAProxy on :8080 (deploy/lib/cluster.sh)
  --no-postgres  no PostgreSQL; the gateways run without DATABASE_URL
  --no-bridge    do not build or start the publisher-bridge
Ports can be changed with the STACK_*_PORT variables listed at the top of this script.
EOF
}

with_pg=1
with_bridge=1
with_cluster=0
for arg in "$@"; do
  case "$arg" in
    --cluster) with_cluster=1 ;;
    --no-postgres) with_pg=0 ;;
    --no-bridge) with_bridge=0 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "stack: unknown argument: $arg" >&2; usage >&2; exit 64 ;;
  esac
done

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
state="$root/.stack"
logs="$state/logs"
pids="$state/pids"
pgdata="$state/pg"
nats_port="${STACK_NATS_PORT:-4222}"
nats_http_port="${STACK_NATS_MONITOR_PORT:-8222}"
redis_port="${STACK_REDIS_PORT:-6380}"
pg_port="${STACK_PG_PORT:-5433}"
bridge_port="${STACK_BRIDGE_PORT:-9100}"
gw_ports=("${STACK_GATEWAY1_PORT:-8001}" "${STACK_GATEWAY2_PORT:-8002}")
nats_bin="$root/.tools/bin/nats-server"
gateway_bin="$root/target/release/gateway"
bridge_bin="$root/target/release/publisher-bridge"
mkdir -p "$logs" "$pids" "$state/nats" "$state/redis"

# shellcheck source=deploy/lib/proc.sh
. "$root/deploy/lib/proc.sh"
# shellcheck source=deploy/lib/pg.sh
. "$root/deploy/lib/pg.sh"
# shellcheck source=deploy/lib/cluster.sh
. "$root/deploy/lib/cluster.sh"
((with_cluster && !with_bridge)) && fail "--cluster runs two bridges: drop --no-bridge"

# Stops everything this script (or an earlier run) started: gateways and bridge first, in
# parallel (they drain their clients), then their dependencies.
stop_all() {
  local waiters=()
  stop_proc gateway-1 "$gateway_bin" 30 & waiters+=($!)
  stop_proc gateway-2 "$gateway_bin" 30 & waiters+=($!)
  stop_proc publisher-bridge "$bridge_bin" 30 & waiters+=($!)
  wait "${waiters[@]}" || true
  cluster_stop
  stop_proc nats nats-server || true
  stop_proc redis redis-server || true
  pg_stop || true
}

# An earlier stack.sh still running stops its own processes on SIGTERM; anything left by one
# that was killed outright is stopped through its pid files.
stop_proc stack stack.sh 60
say "stopping whatever an earlier run left behind"
stop_all
echo $$ >"$pids/stack.pid"

# --- dependencies and binaries -------------------------------------------------------------
say "installing dependencies (deploy/install-deps.sh)"
./deploy/install-deps.sh
if ! PYTHONPATH="$root/.tools/py" python3 -c 'import websockets' 2>/dev/null; then
  say "pip install websockets into .tools/py (for the demo WebSocket client)"
  python3 -m pip install --quiet --disable-pip-version-check --target "$root/.tools/py" websockets ||
    say "warning: could not install websockets; the client command below will not work"
fi

# The loadtest too: README's demo and performance commands use it, and building the three
# together keeps one feature set (building a subset later would rebuild the shared crates).
packages=(-p gateway -p loadtest)
((with_bridge)) && packages+=(-p publisher-bridge)
say "cargo build --release ${packages[*]} (slow the first time)"
cargo build --release "${packages[@]}" || fail "cargo build failed (use --no-bridge to leave the bridge out)"
[ -x "$gateway_bin" ] || fail "the build produced no $gateway_bin"
if ((with_bridge)) && [ ! -x "$bridge_bin" ]; then
  say "note: the build produced no $bridge_bin: running without the bridge"
  with_bridge=0
fi

# Demo secrets, generated once and reused so that tokens minted earlier stay valid. NATS
# passwords are added to a secrets.env written before NATS had users.
if [ ! -s "$state/secrets.env" ]; then
  say "generating demo secrets into .stack/secrets.env"
  (umask 077 && python3 -c 'import secrets
print("JWT_SECRET=" + secrets.token_hex(32))
print("TABLE_TOKEN_SECRET=" + secrets.token_hex(32))' >"$state/secrets.env")
fi
if ! grep -q '^NATS_OPERATOR_PASSWORD=' "$state/secrets.env"; then
  say "generating NATS user passwords into .stack/secrets.env"
  (umask 077 && python3 -c 'import secrets
passwords = {user: secrets.token_hex(24) for user in ("OPERATOR", "BRIDGE", "GATEWAY", "LOADTEST")}
for user, password in passwords.items():
    print(f"NATS_{user}_PASSWORD={password}")
# What loadtest reads: the user "loadtest" of deploy/nats/auth.conf.
print("LOADTEST_NATS_USER=loadtest")
print("LOADTEST_NATS_PASSWORD=" + passwords["LOADTEST"])' >>"$state/secrets.env")
fi
# shellcheck disable=SC1091
. "$state/secrets.env"
# nats-server reads each user's password from its environment (deploy/nats/auth.conf).
nats_conf="$root/deploy/nats/auth.conf"
nats_env=(NATS_OPERATOR_PASSWORD="$NATS_OPERATOR_PASSWORD" NATS_BRIDGE_PASSWORD="$NATS_BRIDGE_PASSWORD"
  NATS_GATEWAY_PASSWORD="$NATS_GATEWAY_PASSWORD" NATS_LOADTEST_PASSWORD="$NATS_LOADTEST_PASSWORD")
bridge_nats_env=(NATS_USER=bridge NATS_PASSWORD="$NATS_BRIDGE_PASSWORD")

ports=("$nats_port" "$nats_http_port" "$redis_port" "${gw_ports[@]}")
((with_pg)) && ports+=("$pg_port")
((with_bridge)) && ports+=("$bridge_port")
# shellcheck disable=SC2207
((with_cluster)) && ports=("$redis_port" $(cluster_ports))
((with_cluster && with_pg)) && ports+=("$pg_port")
for port in "${ports[@]}"; do
  port_busy "$port" && fail "127.0.0.1:$port is already in use by a process this script did not start"
done

# From here on, any exit (failure, Ctrl-C, SIGTERM) stops what was started.
trap 'trap - EXIT; say "shutting down"; stop_all; rm -f "$pids/stack.pid"; say "stopped"' EXIT
trap 'exit 0' INT TERM HUP

# --- servers ---------------------------------------------------------------------------------
# Each runs under `setsid` so that Ctrl-C reaches only this script, which then stops them in
# order (gateways before the NATS and Redis they depend on).
if ((!with_cluster)); then
  say "starting nats-server on 127.0.0.1:$nats_port (monitoring :$nats_http_port)"
  start_bg nats env "${nats_env[@]}" setsid "$nats_bin" -c "$nats_conf" -n stack -a 127.0.0.1 \
    -p "$nats_port" -m "$nats_http_port" -js -sd "$state/nats"
  wait_until nats 20 http_ok "http://127.0.0.1:$nats_http_port/healthz"
fi

say "starting redis-server on 127.0.0.1:$redis_port (no persistence)"
# notify-keyspace-events K$: the gateways' push revocation (README, "Revocation and sectors").
start_bg redis setsid redis-server --bind 127.0.0.1 --port "$redis_port" --save "" \
  --appendonly no --dir "$state/redis" --daemonize no --notify-keyspace-events 'K$'
redis_ping() { [ "$(redis-cli -h 127.0.0.1 -p "$redis_port" ping 2>/dev/null)" = PONG ]; }
wait_until redis 20 redis_ping

if ((with_pg)); then
  pg_start
  pg_seed
fi

nats_url="nats://127.0.0.1:$nats_port"
((with_cluster)) && nats_url="$(cluster_nats_url)"
redis_url="redis://127.0.0.1:$redis_port"
if ((with_bridge && !with_cluster)); then
  say "starting publisher-bridge on 127.0.0.1:$bridge_port"
  start_bg publisher-bridge env REDIS_URL="$redis_url" NATS_URL="$nats_url" "${bridge_nats_env[@]}" \
    BRIDGE_WORKER_THREADS=1 BRIDGE_LISTEN_ADDR="127.0.0.1:$bridge_port" setsid "$bridge_bin"
  wait_until publisher-bridge 60 http_ok "http://127.0.0.1:$bridge_port/readyz"
fi

# One runtime thread per gateway and bridge: everything shares this machine's cores, and on a
# small machine (2 cores) fewer threads waking each other cut the latency tail (README,
# "Performance").
gw_env=(JWT_SECRET="$JWT_SECRET" TABLE_TOKEN_SECRET="$TABLE_TOKEN_SECRET" ENVIRONMENT=development
  REDIS_URL="$redis_url" NATS_URL="$nats_url" NATS_USER=gateway NATS_PASSWORD="$NATS_GATEWAY_PASSWORD"
  GATEWAY_WORKER_THREADS=1)
if ((with_pg)); then
  gw_env+=(DATABASE_URL="postgresql+psycopg://postgres@127.0.0.1:$pg_port/menu")
else
  gw_env=(-u DATABASE_URL "${gw_env[@]}")
fi
if ((with_cluster)); then
  cluster_start
else
  for i in 1 2; do
    port="${gw_ports[i - 1]}"
    say "starting gateway gw-$i on 127.0.0.1:$port"
    start_bg "gateway-$i" env "${gw_env[@]}" GATEWAY_LISTEN_ADDR="127.0.0.1:$port" \
      GATEWAY_INSTANCE_ID="gw-$i" setsid "$gateway_bin"
  done
  for i in 1 2; do
    wait_until "gateway-$i" 60 http_ok "http://127.0.0.1:${gw_ports[i - 1]}/readyz"
  done
fi

# --- what to do with it ----------------------------------------------------------------------
mint() { JWT_SECRET="$JWT_SECRET" TABLE_TOKEN_SECRET="$TABLE_TOKEN_SECRET" python3 "$root/deploy/mint-token.py" "$@"; }
waiter_token="$(mint staff --sub 2 --roles WAITER)"
manager_token="$(mint staff --sub 1 --roles MANAGER)"
table_token="$(mint table --tenant 1 --branch 1 --table 3 --session 42)"
ts="$(date -u +%Y-%m-%dT%H:%M:%S.%6NZ)"
event='{"type":"ROUND_PENDING","tenant_id":1,"branch_id":1,"table_id":3,"session_id":42,"sector_id":null,"entity":{},"actor":{},"ts":"'"$ts"'","v":1}'
ws="PYTHONPATH=$root/.tools/py python3 -m websockets"
gw1="127.0.0.1:${gw_ports[0]}"
gw2="127.0.0.1:${gw_ports[1]}"

if ((with_cluster)); then
  # Every client command below goes through HAProxy.
  gw1="127.0.0.1:$cl_haproxy_port"
  gw2="$gw1"
  cluster_summary
else
  cat <<EOF

The stack is up.
  gateways   ws://$gw1/ws/{waiter,kitchen,admin,diner}   ws://$gw2/ws/...
             readiness http://$gw1/readyz   http://$gw2/readyz
  nats       $nats_url   monitoring http://127.0.0.1:$nats_http_port
  redis      $redis_url
EOF
  ((with_bridge)) && echo "  bridge     http://127.0.0.1:$bridge_port/readyz"
fi
((with_pg)) && echo "  postgres   postgres://postgres@127.0.0.1:$pg_port/menu"
cat <<EOF
  logs       $logs/
  secrets    $state/secrets.env
  nats users operator, bridge, gateway, loadtest (deploy/nats/auth.conf; passwords NATS_*_PASSWORD in
             secrets.env); anonymous clients are refused

Tokens (staff: 12 h, table: 3 h):
  waiter  (sub 2, WAITER, tenant 1, branch 1)  $waiter_token
  manager (sub 1, MANAGER, tenant 1, branch 1) $manager_token
  diner   (table 3, session 42, branch 1)      $table_token
  more:   (set -a; . $state/secrets.env; python3 deploy/mint-token.py staff --sub 7 --roles KITCHEN)

Connect (each in its own terminal):
  $ws 'ws://$gw1/ws/waiter?token=$waiter_token'
  $ws 'ws://$gw2/ws/admin?token=$manager_token'
  $ws 'ws://$gw1/ws/diner?table_token=$table_token'
Publish an event as the backend does:
  redis-cli -p $redis_port PUBLISH branch:1:waiters '$event'

Ctrl-C stops everything.
EOF

# Wait, and notice if something dies on its own (which stops the rest through the EXIT trap).
running=(nats redis gateway-1 gateway-2)
((with_bridge)) && running+=(publisher-bridge)
# shellcheck disable=SC2207
((with_cluster)) && running=(redis $(cluster_names))
while true; do
  for name in "${running[@]}"; do
    kill -0 "$(cat "$pids/$name.pid")" 2>/dev/null && continue
    # --cluster: a member that dies is restarted; the others carry on meanwhile.
    ((with_cluster)) && cluster_revive "$name" && continue
    fail "$name exited; see $logs/$name.log" "$name"
  done
  if ((with_pg)) && ! pg_running; then fail "postgres stopped; see $logs/postgres.log" postgres; fi
  # `wait` returns at once when a trapped signal arrives, unlike a foreground sleep.
  sleep 2 &
  wait $! || true
done
