# shellcheck shell=bash disable=SC2154
# The `--cluster` mode of deploy/stack.sh (sourced, not run): the production topology on
# loopback, as the cluster tests run it (testkit/src/cluster.rs):
#   nats-server n1..n3 (JetStream, routed)  clients :4222 :4223 :4224   STACK_CLUSTER_NATS_PORTS
#                                           routes  :6222 :6223 :6224   STACK_CLUSTER_ROUTE_PORTS
#                                           monitor :8222 :8223 :8224   STACK_CLUSTER_MONITOR_PORTS
#   publisher-bridge bridge-1, bridge-2     :9100 :9101 (R3 streams)    STACK_CLUSTER_BRIDGE_PORTS
#   gateway gw-1..gw-3                      :8001 :8002 :8003           STACK_CLUSTER_GATEWAY_PORTS
#   HAProxy (deploy/haproxy/haproxy.cfg)    :8080, stats :8404          STACK_HAPROXY_PORT, STACK_HAPROXY_STATS_PORT
# Redis and PostgreSQL are started by stack.sh as in the default mode. Every name below is a
# process NAME of proc.sh: logs in $logs/NAME.log, pid in $pids/NAME.pid.
# Expects $root, $state, $logs, $pids, $nats_bin, $bridge_bin, $gateway_bin, $redis_url set and
# proc.sh sourced; the gateways get the environment in the array gw_env, the bridges their NATS
# login in bridge_nats_env, and nats-server the users' passwords in nats_env with the users of
# $nats_conf (all set by stack.sh). The route ports are loopback-only here; see README, "Trust
# boundary", for routes between machines.

read -r -a cl_nats_ports <<<"${STACK_CLUSTER_NATS_PORTS:-4222 4223 4224}"
read -r -a cl_route_ports <<<"${STACK_CLUSTER_ROUTE_PORTS:-6222 6223 6224}"
read -r -a cl_monitor_ports <<<"${STACK_CLUSTER_MONITOR_PORTS:-8222 8223 8224}"
read -r -a cl_bridge_ports <<<"${STACK_CLUSTER_BRIDGE_PORTS:-9100 9101}"
read -r -a cl_gw_ports <<<"${STACK_CLUSTER_GATEWAY_PORTS:-8001 8002 8003}"
cl_haproxy_port="${STACK_HAPROXY_PORT:-8080}"
cl_haproxy_stats_port="${STACK_HAPROXY_STATS_PORT:-8404}"
# The placeholders of deploy/haproxy/haproxy.cfg, in HAProxy's own environment syntax.
cl_haproxy_env=(FRONTEND_ADDR=127.0.0.1 FRONTEND_PORT="$cl_haproxy_port" STATS_ADDR=127.0.0.1 STATS_PORT="$cl_haproxy_stats_port")

# Every client URL of the NATS cluster, comma-separated (what NATS_URL gets).
cluster_nats_url() {
  local urls=() port
  for port in "${cl_nats_ports[@]}"; do urls+=("nats://127.0.0.1:$port"); done
  (IFS=,; echo "${urls[*]}")
}

# The ports this mode listens on, for the "already in use" check.
cluster_ports() {
  echo "${cl_nats_ports[@]}" "${cl_route_ports[@]}" "${cl_monitor_ports[@]}" "${cl_bridge_ports[@]}" \
    "${cl_gw_ports[@]}" "$cl_haproxy_port" "$cl_haproxy_stats_port"
}

# Names of the processes this mode runs (Redis and PostgreSQL are stack.sh's).
cluster_names() {
  local i names=(haproxy)
  for i in "${!cl_nats_ports[@]}"; do names+=("nats-$((i + 1))"); done
  for i in "${!cl_bridge_ports[@]}"; do names+=("publisher-bridge-$((i + 1))"); done
  for i in "${!cl_gw_ports[@]}"; do names+=("gateway-$((i + 1))"); done
  echo "${names[@]}"
}

# Stops HAProxy, the gateways (they drain) and the bridges in parallel, then the NATS nodes.
# Harmless when nothing of the cluster runs.
cluster_stop() {
  local waiters=() i
  stop_proc haproxy haproxy & waiters+=($!)
  for i in "${!cl_gw_ports[@]}"; do
    stop_proc "gateway-$((i + 1))" "$gateway_bin" 30 & waiters+=($!)
  done
  for i in "${!cl_bridge_ports[@]}"; do
    stop_proc "publisher-bridge-$((i + 1))" "$bridge_bin" 30 & waiters+=($!)
  done
  wait "${waiters[@]}" || true
  for i in "${!cl_nats_ports[@]}"; do
    stop_proc "nats-$((i + 1))" nats-server || true
  done
}

# nats_meta_leader PORT: true when the node monitored on PORT sees a JetStream meta leader.
nats_meta_leader() {
  python3 - "http://127.0.0.1:$1/jsz" <<'PY' 2>/dev/null
import json, sys, urllib.request
try:
    jsz = json.load(urllib.request.urlopen(sys.argv[1], timeout=2))
    sys.exit(0 if (jsz.get("meta_cluster") or {}).get("leader") else 1)
except Exception:
    sys.exit(1)
PY
}

# cluster_meta_leader: true when every node sees a JetStream meta leader.
cluster_meta_leader() {
  local port
  for port in "${cl_monitor_ports[@]}"; do nats_meta_leader "$port" || return 1; done
}

# cluster_spawn_nats I: starts node I (0-based) without waiting; its store is .stack/nats-cluster/nI+1.
cluster_spawn_nats() {
  local i="$1" j routes=()
  for j in "${!cl_route_ports[@]}"; do
    ((i == j)) || routes+=("nats://127.0.0.1:${cl_route_ports[j]}")
  done
  mkdir -p "$state/nats-cluster/n$((i + 1))"
  say "starting nats-server n$((i + 1)) on 127.0.0.1:${cl_nats_ports[i]} (routes :${cl_route_ports[i]}, monitoring :${cl_monitor_ports[i]})"
  start_bg "nats-$((i + 1))" env "${nats_env[@]}" setsid "$nats_bin" -c "$nats_conf" -n "n$((i + 1))" \
    -a 127.0.0.1 -p "${cl_nats_ports[i]}" \
    -m "${cl_monitor_ports[i]}" -js -sd "$state/nats-cluster/n$((i + 1))" --cluster_name stack \
    --cluster "nats://127.0.0.1:${cl_route_ports[i]}" --routes "$(IFS=,; echo "${routes[*]}")"
}

# cluster_spawn_bridge I: starts bridge I (0-based) without waiting.
cluster_spawn_bridge() {
  local i="$1"
  say "starting publisher-bridge bridge-$((i + 1)) on 127.0.0.1:${cl_bridge_ports[i]}"
  start_bg "publisher-bridge-$((i + 1))" env REDIS_URL="$redis_url" NATS_URL="$(cluster_nats_url)" "${bridge_nats_env[@]}" \
    BRIDGE_LISTEN_ADDR="127.0.0.1:${cl_bridge_ports[i]}" BRIDGE_INSTANCE_ID="bridge-$((i + 1))" \
    BRIDGE_EVENTS_REPLICAS=3 BRIDGE_STARTUP_TIMEOUT=30s BRIDGE_WORKER_THREADS=1 setsid "$bridge_bin"
}

# cluster_spawn_gateway I: starts gateway I (0-based) without waiting.
cluster_spawn_gateway() {
  local i="$1"
  say "starting gateway gw-$((i + 1)) on 127.0.0.1:${cl_gw_ports[i]}"
  start_bg "gateway-$((i + 1))" env "${gw_env[@]}" NATS_URL="$(cluster_nats_url)" \
    GATEWAY_LISTEN_ADDR="127.0.0.1:${cl_gw_ports[i]}" GATEWAY_INSTANCE_ID="gw-$((i + 1))" setsid "$gateway_bin"
}

cluster_spawn_haproxy() {
  say "starting HAProxy on 127.0.0.1:$cl_haproxy_port (stats :$cl_haproxy_stats_port) in front of the gateways"
  start_bg haproxy env "${cl_haproxy_env[@]}" setsid haproxy -f "$state/haproxy.cfg" -db
}

# deploy/haproxy/haproxy.cfg with the gateways of this mode between its @backends markers (the
# first `server` line there is the template: only the name and the address change, as in the
# test fixture); the other placeholders are HAProxy's own environment syntax, set at start.
cluster_haproxy_config() {
  local servers=() i
  for i in "${!cl_gw_ports[@]}"; do servers+=("gw$((i + 1)) 127.0.0.1:${cl_gw_ports[i]}"); done
  awk -v servers="$(printf '%s\n' "${servers[@]}")" '
    /^[[:space:]]*# @backends-begin[[:space:]]*$/ { print; inside = 1; next }
    /^[[:space:]]*# @backends-end[[:space:]]*$/ {
      n = split(servers, list, "\n")
      for (i = 1; i <= n; i++) {
        if (list[i] == "") continue
        split(list[i], sv, " ")
        line = template
        sub(/server[[:space:]]+[^[:space:]]+[[:space:]]+[^[:space:]]+/, "server " sv[1] " " sv[2], line)
        print line
      }
      inside = 0; print; next
    }
    inside { if (template == "" && $1 == "server") template = $0; next }
    { print }
  ' "$root/deploy/haproxy/haproxy.cfg"
}

# haproxy_all_up: true when the stats page reports every server of backend `gateways` UP.
haproxy_all_up() {
  python3 - "http://127.0.0.1:$cl_haproxy_stats_port/stats;csv" "${#cl_gw_ports[@]}" <<'PY' 2>/dev/null
import csv, io, sys, urllib.request
try:
    text = urllib.request.urlopen(sys.argv[1], timeout=2).read().decode()
    rows = list(csv.DictReader(io.StringIO(text.lstrip("# "))))
    up = [r for r in rows if r["pxname"] == "gateways" and r["svname"] not in ("FRONTEND", "BACKEND") and r["status"] == "UP"]
    sys.exit(0 if len(up) == int(sys.argv[2]) else 1)
except Exception:
    sys.exit(1)
PY
}

# The whole cluster after Redis (and PostgreSQL) are up, each part waited for: the NATS nodes
# and a JetStream meta leader, the bridges one after the other (the first creates the R3
# streams), the gateways, HAProxy with every gateway UP.
cluster_start() {
  local i
  for i in "${!cl_nats_ports[@]}"; do cluster_spawn_nats "$i"; done
  for i in "${!cl_nats_ports[@]}"; do
    wait_until "nats-$((i + 1))" 30 http_ok "http://127.0.0.1:${cl_monitor_ports[i]}/healthz?js-enabled-only=true"
  done
  wait_until "JetStream meta leader" 30 cluster_meta_leader
  for i in "${!cl_bridge_ports[@]}"; do
    cluster_spawn_bridge "$i"
    wait_until "publisher-bridge-$((i + 1))" 60 http_ok "http://127.0.0.1:${cl_bridge_ports[i]}/readyz"
  done
  for i in "${!cl_gw_ports[@]}"; do cluster_spawn_gateway "$i"; done
  for i in "${!cl_gw_ports[@]}"; do
    wait_until "gateway-$((i + 1))" 60 http_ok "http://127.0.0.1:${cl_gw_ports[i]}/readyz"
  done
  command -v haproxy >/dev/null 2>&1 || fail "haproxy not found; run deploy/install-deps.sh"
  cluster_haproxy_config >"$state/haproxy.cfg"
  env "${cl_haproxy_env[@]}" haproxy -c -q -f "$state/haproxy.cfg" || fail "HAProxy refuses $state/haproxy.cfg (see above)"
  cluster_spawn_haproxy
  wait_until haproxy 30 haproxy_all_up
}

# cluster_revive NAME: restarts a member of the cluster that exited (as Kubernetes would), so
# that killing one shows the others carrying on and the member rejoining. False for names that
# are not the cluster's.
cluster_revive() {
  local name="$1" n
  case "$name" in
    nats-*) n="${name#nats-}" ;;
    publisher-bridge-*) n="${name#publisher-bridge-}" ;;
    gateway-*) n="${name#gateway-}" ;;
    haproxy) n=0 ;;
    *) return 1 ;;
  esac
  say "$name exited (last lines of $logs/$name.log below); restarting it"
  tail -n 5 "$logs/$name.log" 2>/dev/null | sed 's/^/    /'
  case "$name" in
    nats-*) cluster_spawn_nats $((n - 1)) ;;
    publisher-bridge-*) cluster_spawn_bridge $((n - 1)) ;;
    gateway-*) cluster_spawn_gateway $((n - 1)) ;;
    haproxy) cluster_spawn_haproxy ;;
  esac
}

# What runs where, for the summary stack.sh prints.
cluster_summary() {
  local i
  echo
  echo "The cluster is up. Clients connect through HAProxy:"
  echo "  entry      ws://127.0.0.1:$cl_haproxy_port/ws/{waiter,kitchen,admin,diner}   http://127.0.0.1:$cl_haproxy_port/ws/health"
  echo "             (HAProxy stats http://127.0.0.1:$cl_haproxy_stats_port/stats)"
  for i in "${!cl_gw_ports[@]}"; do
    echo "  gw-$((i + 1))       http://127.0.0.1:${cl_gw_ports[i]}/readyz   /ws/metrics   (logs $logs/gateway-$((i + 1)).log)"
  done
  for i in "${!cl_bridge_ports[@]}"; do
    echo "  bridge-$((i + 1))   http://127.0.0.1:${cl_bridge_ports[i]}/readyz"
  done
  for i in "${!cl_nats_ports[@]}"; do
    echo "  nats n$((i + 1))    nats://127.0.0.1:${cl_nats_ports[i]}   monitoring http://127.0.0.1:${cl_monitor_ports[i]}"
  done
  echo "  redis      $redis_url"
  echo "  try        kill -9 \$(cat $pids/gateway-2.pid)   (its clients reconnect through HAProxy; a member"
  echo "             that exits is restarted within about 2 s: kill a bridge or a NATS node the same way)"
}
