"""The README's demo command runs the example app end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_demo_places_orders_over_http_and_processes_their_jobs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "example_app.demo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "processed 6 job(s): 6 finished" in result.stdout
    assert "demo OK" in result.stdout
