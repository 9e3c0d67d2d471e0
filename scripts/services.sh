#!/usr/bin/env bash
# Install (if missing), start, stop and check the servers the test suite uses:
# PostgreSQL 15, MariaDB and RabbitMQ, each listening on 127.0.0.1 only.
# Idempotent; works with or without systemd as PID 1. Must run as root.
#
#   scripts/services.sh start   [postgresql|mariadb|rabbitmq ...]   (default: all)
#   scripts/services.sh stop    [postgresql|mariadb|rabbitmq ...]
#   scripts/services.sh restart [postgresql|mariadb|rabbitmq ...]
#   scripts/services.sh status  [postgresql|mariadb|rabbitmq ...]   (exit 3 if one is down)
#   scripts/services.sh env     (print the BGQUEUE_TEST_* variables)
#
# BGQUEUE_SERVICES_TIMEOUT (seconds, default 120) bounds each wait.
set -euo pipefail

TIMEOUT="${BGQUEUE_SERVICES_TIMEOUT:-120}"
PG_VERSION=15
PG_CLUSTER=main
PG_BIN="/usr/lib/postgresql/$PG_VERSION/bin"  # not /usr/local/bin/pg_ctl
PG_DATA="/var/lib/postgresql/$PG_VERSION/$PG_CLUSTER"
PG_CONF="/etc/postgresql/$PG_VERSION/$PG_CLUSTER"
MARIADB_LOG=/var/log/mysql/error.log              # written by mariadbd (user mysql)
MARIADB_SAFE_LOG=/var/log/mysql/mysqld_safe.out    # mysqld_safe's own output
RABBITMQ_START_LOG=/var/log/rabbitmq/bgqueue-start.log
ALL_SERVICES=(postgresql mariadb rabbitmq)

# Keep RabbitMQ's Erlang port mapper and distribution port on loopback too
# (used when we start the broker ourselves, i.e. without systemd).
export ERL_EPMD_ADDRESS=127.0.0.1
export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"

say() { echo "services.sh: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

print_env() {
  cat <<'EOF'
BGQUEUE_TEST_POSTGRES_URL=postgresql+psycopg://bgqueue:bgqueue@127.0.0.1:5432/bgqueue_test
BGQUEUE_TEST_MYSQL_URL=mysql+pymysql://bgqueue:bgqueue@127.0.0.1:3306/bgqueue_test
BGQUEUE_TEST_AMQP_URL=amqp://bgqueue:bgqueue@127.0.0.1:5672/%2F
EOF
}

have_systemd() { [ -d /run/systemd/system ] && command -v systemctl >/dev/null; }

port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# wait_for DESCRIPTION LOGFILE COMMAND...: retry COMMAND every second until it
# succeeds, or fail after $TIMEOUT seconds showing the end of LOGFILE.
wait_for() {
  local what=$1 log=$2 deadline=$((SECONDS + TIMEOUT))
  shift 2
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      say "ERROR: $what did not answer within ${TIMEOUT}s."
      if [ -f "$log" ]; then say "last lines of $log:"; tail -n 30 "$log" >&2; fi
      exit 1
    fi
    sleep 1
  done
}

# wait_gone DESCRIPTION COMMAND...: wait until COMMAND stops succeeding.
wait_gone() {
  local what=$1 deadline=$((SECONDS + TIMEOUT))
  shift
  while "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "$what still answers ${TIMEOUT}s after being stopped."
    sleep 1
  done
}

# True if PID is a live (not zombie) process named NAME.
pid_alive() {
  local pid=$1 name=$2 stat
  stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  [[ $stat == "$pid ($name) "* && ${stat#*) } != Z* ]]
}

# Remove a pid file left by a server killed with its machine or by SIGKILL:
# its pid may be a zombie not yet reaped, or reused by an unrelated process,
# either of which makes the server refuse to start.
drop_stale_pidfile() {
  local file=$1 name=$2 pid
  [ -f "$file" ] || return 0
  pid=$(head -n 1 "$file" 2>/dev/null || true)
  if [[ $pid =~ ^[0-9]+$ ]] && pid_alive "$pid" "$name"; then return 0; fi
  say "removing stale $file"
  rm -f "$file"
}

install_missing() {
  local pkgs=() s
  for s in "$@"; do
    case $s in
      postgresql) [ -x "$PG_BIN/postgres" ] || pkgs+=(postgresql) ;;
      mariadb) [ -x /usr/sbin/mariadbd ] || pkgs+=(mariadb-server) ;;
      rabbitmq) [ -x /usr/sbin/rabbitmq-server ] || pkgs+=(rabbitmq-server) ;;
    esac
  done
  ((${#pkgs[@]})) || return 0
  [ "$(id -u)" = 0 ] || die "must run as root to install ${pkgs[*]}"
  say "installing ${pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  local apt=(apt-get -o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confold)
  # 'apt-get update' only when there are no package lists yet, or they are stale.
  if ! compgen -G '/var/lib/apt/lists/*_Packages' >/dev/null; then "${apt[@]}" update; fi
  # Keep the packages' scripts from starting the servers with their default
  # settings (RabbitMQ would listen on all interfaces): we start them below.
  local policy=/usr/sbin/policy-rc.d added_policy=
  if [ ! -e $policy ]; then
    printf '#!/bin/sh\nexit 101\n' >$policy && chmod +x $policy && added_policy=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  "${apt[@]}" install -y "${pkgs[@]}" || { "${apt[@]}" update && "${apt[@]}" install -y "${pkgs[@]}"; }
  if [ -n "$added_policy" ]; then rm -f $policy; trap - EXIT; fi
}

# ---------------------------------------------------------------- PostgreSQL
postgresql_up() { "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p 5432; }
pg_psql() { runuser -u postgres -- "$PG_BIN/psql" -X -q -p 5432 -v ON_ERROR_STOP=1; }  # SQL on stdin

postgresql_launch() {
  if [ ! -f "$PG_CONF/postgresql.conf" ]; then
    say "creating PostgreSQL cluster $PG_VERSION/$PG_CLUSTER"
    pg_createcluster "$PG_VERSION" "$PG_CLUSTER"
  fi
  mkdir -p "$PG_CONF/conf.d"
  printf '%s\n' "# written by scripts/services.sh" "listen_addresses = '127.0.0.1'" "port = 5432" \
    >"$PG_CONF/conf.d/bgqueue.conf"
  postgresql_up >/dev/null 2>&1 && return 0
  drop_stale_pidfile "$PG_DATA/postmaster.pid" postgres
  drop_stale_pidfile /var/run/postgresql/.s.PGSQL.5432.lock postgres
  say "starting PostgreSQL $PG_VERSION"
  # pg_ctlcluster hands over to systemctl when systemd runs, else starts postgres itself.
  # (Output to a file, not a pipe: postgres inherits it and outlives us.)
  local out=/var/log/postgresql/bgqueue-pg_ctlcluster.out
  if ! pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" start </dev/null >"$out" 2>&1 && ! postgresql_up; then
    cat "$out" >&2
    die "PostgreSQL did not start (pg_ctlcluster $PG_VERSION $PG_CLUSTER start, above)"
  fi
}

postgresql_ready() {
  wait_for "PostgreSQL on 127.0.0.1:5432" "/var/log/postgresql/postgresql-$PG_VERSION-$PG_CLUSTER.log" postgresql_up
  pg_psql <<'SQL'
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'bgqueue') THEN
    CREATE ROLE bgqueue LOGIN SUPERUSER CREATEDB PASSWORD 'bgqueue';
  ELSE
    ALTER ROLE bgqueue LOGIN SUPERUSER CREATEDB PASSWORD 'bgqueue';
  END IF;
END
$$;
SELECT 'CREATE DATABASE bgqueue_test OWNER bgqueue'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'bgqueue_test') \gexec
SELECT 'CREATE DATABASE bgqueue_bench OWNER bgqueue'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'bgqueue_bench') \gexec
SQL
  PGPASSWORD=bgqueue "$PG_BIN/psql" -X -q -h 127.0.0.1 -p 5432 -U bgqueue -d bgqueue_test -c 'SELECT 1' >/dev/null \
    || die "PostgreSQL is up but user bgqueue cannot log in to bgqueue_test over TCP"
}

postgresql_stop() {
  postgresql_up || { [ -f "$PG_DATA/postmaster.pid" ] || return 0; }
  say "stopping PostgreSQL"
  pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" stop -m fast </dev/null >/dev/null 2>&1 || true
  wait_gone "PostgreSQL" postgresql_up
}

# ------------------------------------------------------------------- MariaDB
mariadb_up() { MYSQL_PWD=bgqueue mariadb-admin --protocol=tcp -h127.0.0.1 -P3306 -ubgqueue ping; }
mariadb_root() { mariadb --protocol=socket -uroot; }  # SQL on stdin; root@localhost: unix_socket auth

mariadb_launch() {
  printf '%s\n' "# written by scripts/services.sh" "[mysqld]" "bind-address = 127.0.0.1" "port = 3306" \
    >/etc/mysql/mariadb.conf.d/99-bgqueue.cnf
  mariadb_up >/dev/null 2>&1 && return 0
  install -d -m 755 -o mysql -g root /run/mysqld
  install -d -m 2750 -o mysql -g adm /var/log/mysql
  touch "$MARIADB_LOG" && chown mysql:adm "$MARIADB_LOG"
  if [ ! -d /var/lib/mysql/mysql ]; then
    say "initialising the MariaDB data directory"
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
  fi
  say "starting MariaDB"
  if have_systemd; then
    systemctl start mariadb
  else
    drop_stale_pidfile /run/mysqld/mysqld.pid mariadbd
    # Own session, no inherited stdout/stderr: a caller reading our output
    # through a pipe must not wait for the server to exit.
    setsid /usr/bin/mysqld_safe --skip-syslog --log-error="$MARIADB_LOG" </dev/null >>"$MARIADB_SAFE_LOG" 2>&1 &
  fi
}

mariadb_ready() {
  wait_for "MariaDB on 127.0.0.1:3306" "$MARIADB_LOG" mariadb-admin --protocol=socket -uroot ping
  mariadb_root <<'SQL'
CREATE USER IF NOT EXISTS 'bgqueue'@'%' IDENTIFIED BY 'bgqueue';
CREATE USER IF NOT EXISTS 'bgqueue'@'localhost' IDENTIFIED BY 'bgqueue';
CREATE USER IF NOT EXISTS 'bgqueue'@'127.0.0.1' IDENTIFIED BY 'bgqueue';
ALTER USER 'bgqueue'@'%' IDENTIFIED BY 'bgqueue';
ALTER USER 'bgqueue'@'localhost' IDENTIFIED BY 'bgqueue';
ALTER USER 'bgqueue'@'127.0.0.1' IDENTIFIED BY 'bgqueue';
GRANT ALL PRIVILEGES ON *.* TO 'bgqueue'@'%';
GRANT ALL PRIVILEGES ON *.* TO 'bgqueue'@'localhost';
GRANT ALL PRIVILEGES ON *.* TO 'bgqueue'@'127.0.0.1';
CREATE DATABASE IF NOT EXISTS bgqueue_test CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
CREATE DATABASE IF NOT EXISTS bgqueue_bench CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
SQL
  wait_for "MariaDB on 127.0.0.1:3306 as user bgqueue" "$MARIADB_LOG" \
    env MYSQL_PWD=bgqueue mariadb --protocol=tcp -h127.0.0.1 -P3306 -ubgqueue bgqueue_test -e 'SELECT 1'
}

mariadb_stop() {
  mariadb-admin --protocol=socket -uroot ping >/dev/null 2>&1 || mariadb_up >/dev/null 2>&1 || return 0
  say "stopping MariaDB"
  if have_systemd; then
    systemctl stop mariadb
  else
    mariadb-admin --protocol=socket -uroot shutdown
  fi
  wait_gone "MariaDB" port_open 3306
  wait_gone "mariadbd process" pgrep -x mariadbd
}

# ------------------------------------------------------------------ RabbitMQ
rabbitmq_up() { port_open 5672; }
rabbitmqctl_t() { timeout "$TIMEOUT" rabbitmqctl "$@" </dev/null; }

rabbitmq_launch() {
  mkdir -p /etc/rabbitmq
  printf '%s\n' "# written by scripts/services.sh" "listeners.tcp.default = 127.0.0.1:5672" \
    >/etc/rabbitmq/rabbitmq.conf
  rabbitmq_up >/dev/null 2>&1 && return 0
  say "starting RabbitMQ"
  if have_systemd; then
    systemctl start rabbitmq-server
  else
    install -d -o rabbitmq -g rabbitmq /var/log/rabbitmq
    # As root, rabbitmq-server re-runs itself as the rabbitmq user (su keeps our env).
    setsid rabbitmq-server -detached </dev/null >>"$RABBITMQ_START_LOG" 2>&1 || true
  fi
}

rabbitmq_ready() {
  local log
  log=/var/log/rabbitmq/rabbit@$(hostname -s).log
  # await_startup fails at once while the node is not yet registered: retry it.
  wait_for "RabbitMQ node (rabbitmqctl await_startup)" "$log" rabbitmqctl_t -q await_startup --timeout 10
  wait_for "RabbitMQ on 127.0.0.1:5672" "$log" rabbitmq_up
  if ! rabbitmqctl_t -q list_users | grep -q '^bgqueue[[:space:]]'; then
    rabbitmqctl_t -q add_user bgqueue bgqueue >/dev/null
  fi
  rabbitmqctl_t -q change_password bgqueue bgqueue >/dev/null
  rabbitmqctl_t -q set_user_tags bgqueue administrator >/dev/null
  rabbitmqctl_t -q set_permissions -p / bgqueue '.*' '.*' '.*' >/dev/null
}

# True while a beam process of this node runs: the nodes of scripts/rabbitmq-cluster.sh
# (RABBITMQ_NODENAME=bgq...) are someone else's.
rabbitmq_beam_running() {
  local pid
  for pid in $(pgrep -u rabbitmq -f 'beam.*-s rabbit'); do
    tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -q '^RABBITMQ_NODENAME=bgq' || return 0
  done
  return 1
}

rabbitmq_stop() {
  rabbitmq_up || rabbitmq_beam_running || return 0
  say "stopping RabbitMQ"
  if have_systemd; then
    systemctl stop rabbitmq-server
  else
    rabbitmqctl_t -q shutdown >/dev/null 2>&1 || rabbitmqctl_t -q stop >/dev/null 2>&1 || true
  fi
  wait_gone "RabbitMQ" rabbitmq_up
  wait_gone "RabbitMQ (beam) process" rabbitmq_beam_running
}

# ---------------------------------------------------------------------- main
svc=()  # the services named on the command line, normalised; default: all
pick_services() {
  (($#)) || set -- "${ALL_SERVICES[@]}"
  local s
  for s in "$@"; do
    case $s in
      postgresql | postgres | pg) svc+=(postgresql) ;;
      mariadb | mysql) svc+=(mariadb) ;;
      rabbitmq | rabbit | amqp) svc+=(rabbitmq) ;;
      *) die "unknown service '$s' (expected: ${ALL_SERVICES[*]})" ;;
    esac
  done
}

start() {
  [ "$(id -u)" = 0 ] || die "start must run as root"
  install_missing "$@"
  local s
  for s in "$@"; do "${s}_launch"; done  # launch all first, they boot in parallel
  for s in "$@"; do "${s}_ready"; say "$s is up"; done
}

status() {
  local s rc=0 port
  for s in "$@"; do
    case $s in postgresql) port=5432 ;; mariadb) port=3306 ;; rabbitmq) port=5672 ;; esac
    if "${s}_up" >/dev/null 2>&1; then echo "$s: up (127.0.0.1:$port)"; else echo "$s: DOWN (127.0.0.1:$port)"; rc=3; fi
  done
  return $rc
}

cmd=${1:-}
(($#)) && shift
pick_services "$@"
case $cmd in
  start) start "${svc[@]}"; print_env ;;
  stop) for s in "${svc[@]}"; do "${s}_stop"; done ;;
  restart) for s in "${svc[@]}"; do "${s}_stop"; done; start "${svc[@]}" ;;
  status) status "${svc[@]}" ;;
  env) print_env ;;
  *) echo "usage: $0 {start|stop|restart|status} [postgresql|mariadb|rabbitmq ...] | $0 env" >&2; exit 2 ;;
esac
