#!/usr/bin/env bash
# The demo on the embedded default (SQLite, no broker): venv, install, run end to end.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! .venv/bin/python -c '' 2>/dev/null; then
  rm -rf .venv
  python3 -m venv .venv
fi
PIP_DISABLE_PIP_VERSION_CHECK=1 .venv/bin/python -m pip install -q -e .
exec .venv/bin/python -m example_app.demo
