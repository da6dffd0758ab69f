# shellcheck shell=bash disable=SC2154
# PostgreSQL helpers for deploy/stack.sh (sourced, not run): the stack's own cluster under
# $pgdata, managed with pg_ctl, run as the `postgres` system user when we are root (PostgreSQL
# refuses to run as root). Expects $logs, $pg_port and $pgdata to be set, and proc.sh sourced.

# The bin dir of the highest PostgreSQL version installed.
pg_bin="$(printf '%s\n' /usr/lib/postgresql/*/bin/postgres | sort -t/ -k5 -V | tail -n 1)"
pg_bin="${pg_bin%/postgres}"
[ -x "$pg_bin/postgres" ] || pg_bin=""

# as_pg COMMAND...: runs COMMAND as the postgres user when root, else as ourselves.
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

# pg_own PATH...: hands PATHs to the postgres user when root.
pg_own() {
  if [ "$(id -u)" -eq 0 ]; then chown postgres:postgres "$@"; fi
}

# pg_running: true when the cluster in $pgdata has a live postmaster.
pg_running() {
  [ -f "$pgdata/PG_VERSION" ] && as_pg "$pg_bin/pg_ctl" -D "$pgdata" status >/dev/null 2>&1
}

# pg_start: initdb on first use, then start and wait until it accepts connections.
pg_start() {
  [ -n "$pg_bin" ] || fail "no PostgreSQL under /usr/lib/postgresql; run deploy/install-deps.sh"
  mkdir -p "$pgdata" "$pgdata.sock"
  chmod 700 "$pgdata"
  touch "$logs/postgres.log"
  pg_own "$pgdata" "$pgdata.sock" "$logs/postgres.log"
  if [ "$(id -u)" -eq 0 ] && ! runuser -u postgres -- test -w "$pgdata"; then
    fail "the postgres user cannot write $pgdata (a parent directory is not traversable?); use --no-postgres or move the checkout"
  fi
  if [ ! -f "$pgdata/PG_VERSION" ]; then
    say "initdb $pgdata"
    as_pg "$pg_bin/initdb" -D "$pgdata" -U postgres --auth=trust --no-locale --encoding=UTF8 \
      >>"$logs/postgres.log" 2>&1 || fail "initdb failed; see $logs/postgres.log" postgres
  fi
  say "starting postgres on 127.0.0.1:$pg_port"
  as_pg "$pg_bin/pg_ctl" -D "$pgdata" -l "$logs/postgres.log" -w -t 30 \
    -o "-c listen_addresses=127.0.0.1 -p $pg_port -k '$pgdata.sock'" start >/dev/null ||
    fail "postgres did not start; see $logs/postgres.log" postgres
  wait_until postgres 30 "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$pg_port"
}

# pg_seed: database `menu`, the backend's waiter_sector_assignment table, and one assignment:
# waiter 2 of tenant 1 (branch 1) in sector 5 today. Safe to run again.
pg_seed() {
  local psql=("$pg_bin/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$pg_port" -U postgres)
  if [ -z "$("${psql[@]}" -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'menu'")" ]; then
    "${psql[@]}" -d postgres -c "CREATE DATABASE menu" || fail "could not create database menu"
  fi
  "${psql[@]}" -d menu <<'SQL' || fail "could not seed database menu"
CREATE TABLE IF NOT EXISTS waiter_sector_assignment (
  id serial PRIMARY KEY,
  tenant_id integer NOT NULL,
  branch_id integer,
  sector_id integer NOT NULL,
  waiter_id integer NOT NULL,
  assignment_date date NOT NULL DEFAULT current_date,
  is_active boolean NOT NULL DEFAULT true
);
INSERT INTO waiter_sector_assignment (tenant_id, branch_id, sector_id, waiter_id)
SELECT 1, 1, 5, 2
WHERE NOT EXISTS (
  SELECT 1 FROM waiter_sector_assignment
  WHERE tenant_id = 1 AND waiter_id = 2 AND sector_id = 5 AND assignment_date = current_date
);
SQL
  say "database menu seeded (waiter 2 of tenant 1 in sector 5 today)"
}

# pg_stop: fast shutdown if running.
pg_stop() {
  if [ -n "$pg_bin" ] && pg_running; then
    say "stopping postgres"
    as_pg "$pg_bin/pg_ctl" -D "$pgdata" -m fast -w -t 30 stop >/dev/null 2>&1 || true
  fi
}
