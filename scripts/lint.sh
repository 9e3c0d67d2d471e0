#!/usr/bin/env bash
# Style and types, held on every submission (.ci/run runs this through scripts/test.sh):
# ruff check, ruff format --check, and mypy --strict on the package, its tests, the example
# app and the benchmarks.
#   scripts/lint.sh        (needs the virtualenv scripts/test.sh creates)
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy --strict flask_bgqueue tests example_app benchmarks scripts/screenshots.py
