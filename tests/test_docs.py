"""The documentation builds without warnings and lists every configuration key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from flask_bgqueue.config import DEFAULTS

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_every_config_key_is_documented() -> None:
    text = (DOCS / "configuration.rst").read_text()
    missing = [key for key in DEFAULTS if f".. data:: {key}" not in text]
    assert missing == []


def test_sphinx_builds_without_warnings(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html", str(DOCS), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
