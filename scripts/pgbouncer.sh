#!/usr/bin/env bash
# A PgBouncer in transaction-pooling mode in front of the test PostgreSQL, for the tests
# that check Flask-BgQueue through a pooler (tests/test_pooler.py).
#
#   scripts/pgbouncer.sh start    install (if missing) and start it; wait until it answers
#   scripts/pgbouncer.sh stop
#   scripts/pgbouncer.sh status   (exit 3 if it is down)
#   scripts/pgbouncer.sh env      (print BGQUEUE_TEST_PGBOUNCER_URL)
#
# It listens on 127.0.0.1:6432 and forwards the database bgqueue_test (user bgqueue,
# password bgqueue) to PostgreSQL on 127.0.0.1:5432 (scripts/services.sh start), with a
# pool of 3 server connections: clients really share server connections. Its own
# configuration lives in $PGB_DIR; the Debian package's instance (/etc/pgbouncer) is kept
# stopped, since it would take the same port. PostgreSQL itself is not reconfigured.
# Idempotent. Must run as root. BGQUEUE_SERVICES_TIMEOUT (seconds, default 120) bounds waits.
set -euo pipefail

TIMEOUT="${BGQUEUE_SERVICES_TIMEOUT:-120}"
PORT=6432
POOL_SIZE=3
PGB_DIR=/var/lib/bgqueue-pgbouncer
PGB_RUN=/run/bgqueue-pgbouncer
PGB_INI="$PGB_DIR/pgbouncer.ini"
PGB_LOG="$PGB_DIR/pgbouncer.log"
PGB_OUT="$PGB_DIR/pgbouncer.out"  # what it prints before its log file is open
PGB_PID="$PGB_RUN/pgbouncer.pid"
URL="postgresql+psycopg://bgqueue:bgqueue@127.0.0.1:$PORT/bgqueue_test"

say() { echo "pgbouncer.sh: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

# Does a query through PgBouncer reach PostgreSQL?
answers() {
  PGPASSWORD=bgqueue PGCONNECT_TIMEOUT=3 psql -X -q -t -A -h 127.0.0.1 -p "$PORT" -U bgqueue \
    -d bgqueue_test -c 'SELECT 1' 2>/dev/null | grep -qx 1
}

running_pid() {
  local pid
  [ -f "$PGB_PID" ] || return 1
  pid=$(head -n 1 "$PGB_PID" 2>/dev/null) || return 1
  [ -n "$pid" ] && grep -q '^Name:[[:space:]]*pgbouncer$' "/proc/$pid/status" 2>/dev/null || return 1
  echo "$pid"
}

install_pgbouncer() {
  command -v pgbouncer >/dev/null && return 0
  [ "$(id -u)" = 0 ] || die "must run as root to install pgbouncer"
  say "installing pgbouncer"
  export DEBIAN_FRONTEND=noninteractive
  local apt=(apt-get -o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confold)
  if ! compgen -G '/var/lib/apt/lists/*_Packages' >/dev/null; then "${apt[@]}" update; fi
  # Keep the package from starting its own instance with the default settings (on the
  # same port): we start ours below.
  local policy=/usr/sbin/policy-rc.d added_policy=
  if [ ! -e $policy ]; then
    printf '#!/bin/sh\nexit 101\n' >$policy && chmod +x $policy && added_policy=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  "${apt[@]}" install -y --no-install-recommends pgbouncer postgresql-client \
    || { "${apt[@]}" update && "${apt[@]}" install -y --no-install-recommends pgbouncer postgresql-client; }
  if [ -n "$added_policy" ]; then rm -f $policy; trap - EXIT; fi
}

# The Debian package's own instance would listen on the same port.
stop_packaged_instance() {
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    systemctl disable --now pgbouncer.service >/dev/null 2>&1 || true
  elif [ -x /etc/init.d/pgbouncer ] && [ -f /var/run/postgresql/pgbouncer.pid ]; then
    /etc/init.d/pgbouncer stop >/dev/null 2>&1 || true
  fi
}

write_config() {
  install -d -m 750 -o postgres -g postgres "$PGB_DIR"
  install -d -m 750 -o postgres -g postgres "$PGB_RUN"
  # PgBouncer answers the client's SCRAM itself from the plain password, and logs in to
  # PostgreSQL with it.
  printf '"bgqueue" "bgqueue"\n' >"$PGB_DIR/userlist.txt"
  cat >"$PGB_INI" <<EOF
; written by scripts/pgbouncer.sh
[databases]
bgqueue_test = host=127.0.0.1 port=5432 dbname=bgqueue_test

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $PGB_DIR/userlist.txt
pool_mode = transaction
default_pool_size = $POOL_SIZE
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = 500
server_reset_query =
ignore_startup_parameters = extra_float_digits,options
logfile = $PGB_LOG
pidfile = $PGB_PID
admin_users = bgqueue
log_connections = 0
log_disconnections = 0
EOF
  touch "$PGB_LOG" "$PGB_OUT"
  chown postgres:postgres "$PGB_INI" "$PGB_DIR/userlist.txt" "$PGB_LOG" "$PGB_OUT"
  chmod 640 "$PGB_INI" "$PGB_DIR/userlist.txt"
}

wait_answers() {
  local deadline=$((SECONDS + TIMEOUT))
  until answers; do
    if ((SECONDS >= deadline)); then
      say "ERROR: PgBouncer on 127.0.0.1:$PORT did not answer within ${TIMEOUT}s."
      say "last lines of its output and log:"; tail -n 30 "$PGB_OUT" "$PGB_LOG" >&2 || true
      exit 1
    fi
    sleep 1
  done
}

start() {
  install_pgbouncer
  stop_packaged_instance
  write_config
  if pid=$(running_pid); then
    kill -HUP "$pid"  # reload the configuration written above
  else
    rm -f "$PGB_PID"
    say "starting PgBouncer on 127.0.0.1:$PORT (pool_mode=transaction, pool size $POOL_SIZE)"
    runuser -u postgres -- pgbouncer -d "$PGB_INI" </dev/null >>"$PGB_OUT" 2>&1 \
      || { tail -n 30 "$PGB_OUT" "$PGB_LOG" >&2; die "pgbouncer did not start"; }
  fi
  wait_answers
}

stop() {
  local pid deadline=$((SECONDS + TIMEOUT))
  pid=$(running_pid) || return 0
  say "stopping PgBouncer"
  kill -INT "$pid"
  while running_pid >/dev/null; do
    ((SECONDS < deadline)) || die "PgBouncer (pid $pid) still runs ${TIMEOUT}s after SIGINT"
    sleep 1
  done
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status)
    if answers; then echo "pgbouncer: up on 127.0.0.1:$PORT"; else echo "pgbouncer: down"; exit 3; fi ;;
  env) echo "BGQUEUE_TEST_PGBOUNCER_URL=$URL" ;;
  *) echo "usage: $0 {start|stop|status|env}" >&2; exit 2 ;;
esac
