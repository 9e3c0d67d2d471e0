#!/usr/bin/env bash
# A three-node RabbitMQ cluster on 127.0.0.1 for the cluster tests, beside (never instead
# of) the single node of scripts/services.sh: nodes bgq1@localhost, bgq2@localhost and
# bgq3@localhost, AMQP on 127.0.0.1:5681-5683, distribution on 127.0.0.1:25681-25683, each
# with its own data, logs and config under $BASE; management plugin off; user
# bgqueue/bgqueue. Idempotent. Must run as root (the nodes run as the rabbitmq user).
#
#   scripts/rabbitmq-cluster.sh start              start the three nodes, join them, add the user
#   scripts/rabbitmq-cluster.sh stop               stop the three nodes
#   scripts/rabbitmq-cluster.sh status             one line per node (exit 3 if one is down)
#   scripts/rabbitmq-cluster.sh env                print BGQUEUE_TEST_AMQP_CLUSTER_URLS
#   scripts/rabbitmq-cluster.sh stop-node N        stop node bgqN (the whole Erlang node)
#   scripts/rabbitmq-cluster.sh start-node N       start node bgqN again and wait for it
#
# BGQUEUE_SERVICES_TIMEOUT (seconds, default 120) bounds each wait.
set -euo pipefail

TIMEOUT="${BGQUEUE_SERVICES_TIMEOUT:-120}"
BASE=/var/lib/bgqueue-rabbitmq-cluster
NODES=(1 2 3)
RMQ_BIN=/usr/lib/rabbitmq/bin  # the real scripts, not the /usr/sbin wrappers (those log to
# /var/log/rabbitmq/startup_log, the shared node's file)

# epmd and the distribution on loopback, as for the shared node (scripts/services.sh).
export ERL_EPMD_ADDRESS=127.0.0.1

say() { echo "rabbitmq-cluster.sh: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

node_name() { echo "bgq$1@localhost"; }
amqp_port() { echo $((5680 + $1)); }
dist_port() { echo $((25680 + $1)); }
node_dir() { echo "$BASE/bgq$1"; }

print_env() {
  local urls=() n
  for n in "${NODES[@]}"; do urls+=("amqp://bgqueue:bgqueue@127.0.0.1:$(amqp_port "$n")/%2F"); done
  (IFS=,; echo "BGQUEUE_TEST_AMQP_CLUSTER_URLS=${urls[*]}")
}

# as_rabbitmq N COMMAND...: run a RabbitMQ script as the rabbitmq user, in node N's environment.
as_rabbitmq() {
  local n=$1 dir
  shift
  dir=$(node_dir "$n")
  runuser -u rabbitmq -- env \
    HOME=/var/lib/rabbitmq \
    ERL_EPMD_ADDRESS=127.0.0.1 \
    RABBITMQ_NODENAME="$(node_name "$n")" \
    RABBITMQ_USE_LONGNAME=false \
    RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
    RABBITMQ_NODE_PORT="$(amqp_port "$n")" \
    RABBITMQ_DIST_PORT="$(dist_port "$n")" \
    RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" \
    RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config" \
    RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
    RABBITMQ_MNESIA_BASE="$dir/mnesia" \
    RABBITMQ_LOG_BASE="$dir/log" \
    RABBITMQ_PID_FILE="$dir/pid" \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
    "$@"
}

ctl() {  # ctl N ARGS...: rabbitmqctl against node N, bounded
  local n=$1
  shift
  as_rabbitmq "$n" timeout "$TIMEOUT" "$RMQ_BIN/rabbitmqctl" -n "$(node_name "$n")" "$@" </dev/null
}

port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }
node_up() { port_open "$(amqp_port "$1")"; }
node_log() { echo "$(node_dir "$1")/log/$(node_name "$1").log"; }

show_log() {
  local n=$1 f
  for f in "$(node_log "$n")" "$(node_dir "$n")/start.log"; do
    if [ -f "$f" ]; then say "last lines of $f:"; tail -n 30 "$f" >&2; fi
  done
}

# wait_node N: until node N runs the rabbit app and listens on its AMQP port.
wait_node() {
  local n=$1 deadline=$((SECONDS + TIMEOUT))
  until ctl "$n" -q await_startup --timeout 5 >/dev/null 2>&1 && node_up "$n"; do
    if ((SECONDS >= deadline)); then
      say "node $(node_name "$n") did not answer within ${TIMEOUT}s."
      show_log "$n"
      exit 1
    fi
    sleep 1
  done
}

prepare() {
  local n=$1 dir
  dir=$(node_dir "$n")
  install -d -o rabbitmq -g rabbitmq "$BASE" "$dir" "$dir/mnesia" "$dir/log"
  printf '%s\n' "# written by scripts/rabbitmq-cluster.sh" \
    "listeners.tcp.default = 127.0.0.1:$(amqp_port "$n")" \
    "loopback_users = none" \
    >"$dir/rabbitmq.conf"
  echo "[]." >"$dir/advanced.config"
  : >"$dir/rabbitmq-env.conf"  # not /etc/rabbitmq/rabbitmq-env.conf: the shared node's
  echo "[]." >"$dir/enabled_plugins"  # no management plugin (its port would clash)
  chown rabbitmq:rabbitmq "$dir"/*.conf "$dir/advanced.config" "$dir/enabled_plugins"
}

launch() {
  local n=$1 dir pid
  dir=$(node_dir "$n")
  node_up "$n" && return 0
  if [ -f "$dir/pid" ]; then
    pid=$(head -n 1 "$dir/pid" 2>/dev/null || true)
    if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
      return 0  # booting already
    fi
    rm -f "$dir/pid"
  fi
  say "starting $(node_name "$n") on 127.0.0.1:$(amqp_port "$n")"
  # Own session, no inherited stdout/stderr: a caller reading a pipe must not wait for it.
  setsid bash -c "$(declare -f as_rabbitmq node_dir node_name amqp_port dist_port); BASE=$BASE;
    as_rabbitmq $n $RMQ_BIN/rabbitmq-server -detached" </dev/null >>"$dir/start.log" 2>&1 || true
}

clustered_with_1() {  # node N lists bgq1 among its running nodes
  ctl "$1" -q cluster_status --formatter json 2>/dev/null | grep -q "\"$(node_name 1)\""
}

join() {
  local n=$1
  clustered_with_1 "$n" && return 0
  local out
  out="$(node_dir "$n")/join.log"
  say "joining $(node_name "$n") to $(node_name 1)"
  # a fresh node (reset: nothing of its own to lose); the CLI's chatter goes to join.log
  if ! { ctl "$n" -q stop_app && ctl "$n" -q reset && ctl "$n" -q join_cluster "$(node_name 1)" &&
    ctl "$n" -q start_app; } >"$out" 2>&1; then
    cat "$out" >&2
    show_log "$n"
    die "$(node_name "$n") could not join $(node_name 1)"
  fi
  wait_node "$n"
}

add_user() {
  if ! ctl 1 -q list_users | grep -q '^bgqueue[[:space:]]'; then
    ctl 1 -q add_user bgqueue bgqueue >/dev/null
  fi
  ctl 1 -q change_password bgqueue bgqueue >/dev/null
  ctl 1 -q set_user_tags bgqueue administrator >/dev/null
  ctl 1 -q set_permissions -p / bgqueue '.*' '.*' '.*' >/dev/null
}

start() {
  [ "$(id -u)" = 0 ] || die "start must run as root"
  [ -x "$RMQ_BIN/rabbitmq-server" ] || die "RabbitMQ is not installed (scripts/services.sh start installs it)"
  local n
  for n in "${NODES[@]}"; do prepare "$n"; launch "$n"; done  # they boot in parallel
  for n in "${NODES[@]}"; do wait_node "$n"; done
  for n in "${NODES[@]:1}"; do join "$n"; done
  add_user
  say "cluster up: $(for n in "${NODES[@]}"; do printf '%s ' "$(node_name "$n")"; done)"
}

stop_node() {
  local n=$1 deadline
  node_up "$n" || ctl "$n" -q ping >/dev/null 2>&1 || return 0
  say "stopping $(node_name "$n")"
  ctl "$n" -q stop >/dev/null 2>&1 || true
  deadline=$((SECONDS + TIMEOUT))
  while node_up "$n" || ctl "$n" -q ping >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "$(node_name "$n") still answers ${TIMEOUT}s after being stopped."
    sleep 1
  done
}

start_node() {
  local n=$1
  launch "$n"
  wait_node "$n"
}

status() {
  local n rc=0
  for n in "${NODES[@]}"; do
    if node_up "$n"; then
      echo "$(node_name "$n"): up (127.0.0.1:$(amqp_port "$n"))"
    else
      echo "$(node_name "$n"): DOWN (127.0.0.1:$(amqp_port "$n"))"
      rc=3
    fi
  done
  return $rc
}

check_node() {
  [[ ${1:-} =~ ^[123]$ ]] || die "name a node: 1, 2 or 3 (bgq1@localhost ...), not '${1:-}'"
}

cmd=${1:-}
(($#)) && shift
case $cmd in
  start) start; print_env ;;
  stop) for n in "${NODES[@]}"; do stop_node "$n"; done ;;
  status) status ;;
  env) print_env ;;
  stop-node) check_node "${1:-}"; stop_node "$1" ;;
  start-node) check_node "${1:-}"; start_node "$1" ;;
  *) echo "usage: $0 {start|stop|status|env|stop-node N|start-node N}" >&2; exit 2 ;;
esac
