"""End-to-end demo: a real HTTP server takes orders, `flask bgq process` runs their jobs.

python -m example_app.demo
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any, cast

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "FLASK_APP": "example_app:create_app", "PYTHONPATH": ROOT}


def call(method: str, url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as response:
        return cast(dict[str, Any], json.loads(response.read()))


def flask(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "flask", *args],
        env=ENV,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


def main() -> int:
    shutil.rmtree(os.path.join(ROOT, "instance"), ignore_errors=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "flask", "run", "--port", str(port)],
        env=ENV,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{base}/orders/0", timeout=1)
            except urllib.error.HTTPError:
                break  # 404: the server answers
            except OSError:
                time.sleep(0.1)
        orders = [
            call("POST", f"{base}/orders", {"email": f"c{n}@example.com", "item": item})
            for n, item in enumerate(["teapot", "kettle", "mug"])
        ]
        print("placed:   ", [(o["id"], o["status"]) for o in orders])
        print("flask bgq process ->", flask("bgq", "process"))
        final = [call("GET", f"{base}/orders/{o['id']}") for o in orders]
        print("after:    ", [(o["id"], o["status"]) for o in final])
        ok = all(o["status"] == "shipped" and o["confirmed"] for o in final)
        print("demo OK: every order was confirmed, then shipped" if ok else "demo FAILED")
        return 0 if ok else 1
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    sys.exit(main())
