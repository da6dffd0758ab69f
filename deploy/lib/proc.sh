# shellcheck shell=bash disable=SC2154
# Process helpers for deploy/stack.sh (sourced, not run). They expect $logs and $pids to be set:
# every process NAME logs to $logs/NAME.log and records its pid in $pids/NAME.pid.

say() { echo "stack: $*"; }

# fail MESSAGE [NAME]: prints the message (and the tail of NAME's log), then exits 1; the EXIT
# trap of stack.sh stops whatever was started.
fail() {
  echo "stack: ERROR: $1" >&2
  if [ -n "${2:-}" ] && [ -f "$logs/$2.log" ]; then
    echo "stack: --- last lines of $logs/$2.log ---" >&2
    tail -n 20 "$logs/$2.log" >&2
  fi
  exit 1
}

# start_bg NAME COMMAND...: runs COMMAND in the background, output to $logs/NAME.log.
start_bg() {
  local name="$1"
  shift
  local shown=() arg
  for arg in "$@"; do
    case "$arg" in *SECRET=* | *PASSWORD=*) shown+=("${arg%%=*}=***") ;; *) shown+=("$arg") ;; esac
  done
  # One log per run; the previous run's is kept as NAME.log.1.
  [ -f "$logs/$name.log" ] && mv -f "$logs/$name.log" "$logs/$name.log.1"
  echo "=== $(date -u +%FT%TZ) start: ${shown[*]}" >"$logs/$name.log"
  "$@" >>"$logs/$name.log" 2>&1 &
  echo $! >"$pids/$name.pid"
}

# pid_of NAME: the recorded pid if that process is still alive and still runs PROGRAM's binary
# (guards against pid reuse after a reboot); prints nothing otherwise.
pid_of() {
  local name="$1" program="$2" pid
  [ -f "$pids/$name.pid" ] || return 0
  pid="$(cat "$pids/$name.pid")"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null &&
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$program"; then
    echo "$pid"
  fi
}

# stop_proc NAME PROGRAM [GRACE_SECONDS]: SIGTERM, wait up to GRACE (default 10) s, then SIGKILL.
stop_proc() {
  local name="$1" program="$2" grace="${3:-10}" pid i
  pid="$(pid_of "$name" "$program")"
  if [ -n "$pid" ]; then
    say "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < grace * 10; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      say "$name did not stop in ${grace}s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    # Reap it if it is our child; harmless otherwise.
    wait "$pid" 2>/dev/null || true
  fi
  rm -f "$pids/$name.pid"
}

# http_ok URL: true when GET URL answers 200 within 2 s (python3: no curl needed).
http_ok() {
  python3 - "$1" <<'PY' 2>/dev/null
import sys, urllib.request
try:
    sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=2).status == 200 else 1)
except Exception:
    sys.exit(1)
PY
}

# wait_until NAME TIMEOUT_SECONDS COMMAND...: polls COMMAND until it succeeds. Fails early when
# NAME was started by start_bg and its process has exited, and after TIMEOUT otherwise.
wait_until() {
  local name="$1" timeout="$2" deadline pid=""
  shift 2
  [ -f "$pids/$name.pid" ] && pid="$(cat "$pids/$name.pid")"
  deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      fail "$name exited during start-up; see $logs/$name.log" "$name"
    fi
    if ((SECONDS >= deadline)); then
      fail "$name not ready after ${timeout}s; see $logs/$name.log" "$name"
    fi
    sleep 0.25
  done
  say "$name is ready"
}

# port_busy PORT: true when something already listens on 127.0.0.1:PORT.
port_busy() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}
