#!/usr/bin/env bash
# The single test command: Python venv + test servers, then pytest.
#   scripts/test.sh [pytest arguments...]   (none: the whole suite, see the end)
# Needs root on Debian 12 the first time (it apt-installs the servers).
set -euo pipefail
cd "$(dirname "$0")/.."

# Virtualenv with the package (editable) and the test dependencies.
if ! .venv/bin/python -c '' 2>/dev/null; then
  rm -rf .venv
  python3 -m venv .venv
fi
PIP_DISABLE_PIP_VERSION_CHECK=1 .venv/bin/python -m pip install -q -e '.[amqp]' -r requirements-dev.txt

# Headless Chromium for the dashboard's browser tests (Debian's package; Playwright's own
# browser download is never used).
if [ ! -x /usr/bin/chromium ]; then
  [ "$(id -u)" = 0 ] || { echo "test.sh: /usr/bin/chromium is missing; run as root to install it" >&2; exit 1; }
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -q
  apt-get -o DPkg::Lock::Timeout=600 install -y -q chromium
fi

# Network namespaces as hosts (tests/test_hosts.py): ip, unshare, socat, iptables.
scripts/hosts-setup.sh

# Style and types first: a full run (no pytest arguments) or CI fails on either.
if [ "$#" -eq 0 ] || [ "${CI:-}" = true ]; then
  scripts/lint.sh
fi

# PostgreSQL, MariaDB and RabbitMQ on 127.0.0.1 (installed if missing).
scripts/services.sh start
# PgBouncer in transaction mode in front of that PostgreSQL (tests/test_pooler.py).
scripts/pgbouncer.sh start
# Three more RabbitMQ nodes, clustered, for the cluster tests (tests/test_amqp_cluster.py).
scripts/rabbitmq-cluster.sh start
export BGQUEUE_TEST_AMQP_CLUSTER_URLS="${BGQUEUE_TEST_AMQP_CLUSTER_URLS:-$(scripts/rabbitmq-cluster.sh env | cut -d= -f2-)}"

export BGQUEUE_TEST_POSTGRES_URL="${BGQUEUE_TEST_POSTGRES_URL:-postgresql+psycopg://bgqueue:bgqueue@127.0.0.1:5432/bgqueue_test}"
export BGQUEUE_TEST_MYSQL_URL="${BGQUEUE_TEST_MYSQL_URL:-mysql+pymysql://bgqueue:bgqueue@127.0.0.1:3306/bgqueue_test}"
export BGQUEUE_TEST_PGBOUNCER_URL="${BGQUEUE_TEST_PGBOUNCER_URL:-postgresql+psycopg://bgqueue:bgqueue@127.0.0.1:6432/bgqueue_test}"
export BGQUEUE_TEST_AMQP_URL="${BGQUEUE_TEST_AMQP_URL:-amqp://bgqueue:bgqueue@127.0.0.1:5672/%2F}"

# With arguments: pytest with them, in this process. Without: the whole suite in
# BGQUEUE_TEST_PROCESSES processes (default 3: most tests wait on servers and workers, not
# on the processors), each test file in one of them (the tests of a file may share a
# server's state: PgBouncer's connections, the cluster's nodes, the hosts' subnets), then
# the tests that stop or restart a shared server (marked exclusive), alone.
if [ "$#" -gt 0 ]; then
  exec .venv/bin/python -m pytest "$@"
fi
status=0
.venv/bin/python -m pytest -n "${BGQUEUE_TEST_PROCESSES:-3}" --dist loadfile -m "not exclusive" || status=$?
.venv/bin/python -m pytest -m exclusive || status=$?
exit "$status"
