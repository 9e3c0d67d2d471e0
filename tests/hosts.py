"""Several hosts on one machine: network namespaces the tests create.

Each :class:`Host` is a network namespace with its own hostname (a UTS namespace), its own
``BGQUEUE_LOCKS_DIR`` and a veth pair to the root namespace: ``10.199.X.1`` on the root
side, ``10.199.X.2`` inside. The test servers listen on 127.0.0.1 only, which a namespace
cannot reach, so each host gets forwarders of its own (socat, on ``10.199.X.1``) to them.
:meth:`Host.cut` drops every packet to the root side with a firewall rule *inside* the
host's namespace (a silent partition: DROP, not REJECT); :meth:`Host.heal` deletes it.

Needs root, ``ip`` (iproute2), ``unshare`` (util-linux), ``socat`` and ``iptables``
(``scripts/hosts-setup.sh`` installs them on Debian). Names carry the pytest process's pid:
what a killed run left behind is removed by the next one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from .conftest import IN_CI

NS_PREFIX = "bgqh"
LINK_PREFIX = "bq"
SUBNET = "10.199"


def _sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=check, timeout=60)


def require_hosts() -> None:
    """Skip (fail under CI=true) unless this process may build namespaces."""
    missing = [tool for tool in ("ip", "unshare", "socat", "iptables") if not shutil.which(tool)]
    why = None
    if os.geteuid() != 0:
        why = "network namespaces need root"
    elif missing:
        why = f"missing {', '.join(missing)} (run scripts/hosts-setup.sh as root)"
    if why is not None:
        if IN_CI:
            pytest.fail(f"{why} (CI=true: a missing tool is a failure)")
        pytest.skip(why)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale() -> None:
    """Delete namespaces, veths and forwarders a killed run left behind."""
    for line in _sh("ip", "netns", "list").stdout.splitlines():
        match = re.match(rf"({NS_PREFIX}(\d+)x\d+)\b", line)
        if match and not _alive(int(match.group(2))):
            _sh("ip", "netns", "del", match.group(1), check=False)
    for line in _sh("ip", "-o", "link", "show").stdout.splitlines():
        match = re.match(rf"\d+: ({LINK_PREFIX}(\d+)r\d+)@", line)
        if match and not _alive(int(match.group(2))):
            _sh("ip", "link", "del", match.group(1), check=False)
    # Orphaned forwarders of a killed run (their parent, pytest, is gone: ppid 1).
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if (
            argv[0].endswith(b"socat")
            and ppid == 1
            and f"bind={SUBNET}.".encode() in b" ".join(argv)
        ):
            try:
                os.kill(int(entry.name), 9)
            except ProcessLookupError:
                pass


def _free_octet() -> int:
    used = set(
        re.findall(rf"inet {re.escape(SUBNET)}\.(\d+)\.", _sh("ip", "-4", "-o", "addr").stdout)
    )
    for octet in range(1, 255):
        if str(octet) not in used:
            return octet
    raise RuntimeError(f"no free {SUBNET}.X.0/30 subnet")


class Host:
    """One host: a namespace, a hostname, a locks folder, forwarders to the servers."""

    def __init__(self, name: str, index: int, directory: Path, env: dict[str, str]) -> None:
        self.name = name
        self.ns = f"{NS_PREFIX}{os.getpid()}x{index}"
        self.link = f"{LINK_PREFIX}{os.getpid()}r{index}"
        self.peer = f"{LINK_PREFIX}{os.getpid()}h{index}"
        octet = _free_octet()
        self.outside, self.inside = f"{SUBNET}.{octet}.1", f"{SUBNET}.{octet}.2"
        self.dir = directory / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.base_env = env
        self.config: dict[str, Any] = {"BGQUEUE_LOCKS_DIR": str(self.dir)}
        self.forwarders: list[subprocess.Popen[bytes]] = []
        self.procs: list[tuple[subprocess.Popen[str], Path]] = []
        self.is_cut = False
        self.ports: set[int] = set()
        _sh("ip", "netns", "add", self.ns)
        _sh("ip", "link", "add", self.link, "type", "veth", "peer", "name", self.peer)
        _sh("ip", "link", "set", self.peer, "netns", self.ns)
        _sh("ip", "addr", "add", f"{self.outside}/30", "dev", self.link)
        _sh("ip", "link", "set", self.link, "up")
        self.exec("ip", "addr", "add", f"{self.inside}/30", "dev", self.peer)
        self.exec("ip", "link", "set", self.peer, "up")
        self.exec("ip", "link", "set", "lo", "up")

    def exec(self, *args: str) -> subprocess.CompletedProcess[str]:
        return _sh("ip", "netns", "exec", self.ns, *args)

    def forward(self, port: int) -> None:
        """Forward ``outside:port`` to ``127.0.0.1:port`` (a server of the root namespace)."""
        proc = subprocess.Popen(
            [
                "socat",
                f"TCP-LISTEN:{port},bind={self.outside},reuseaddr,fork",
                f"TCP:127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its children (one per connection) die with it
        )
        self.forwarders.append(proc)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection((self.outside, port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"forwarder {self.outside}:{port} did not start") from None
                time.sleep(0.05)

    def url(self, url: str) -> str:
        """``url`` (a server on 127.0.0.1) as this host reaches it, through its forwarder."""
        parts = urlsplit(url)
        netloc = parts.netloc.replace("127.0.0.1", self.outside).replace("localhost", self.outside)
        if parts.port is not None and parts.port not in self.ports:
            self.forward(parts.port)
            self.ports.add(parts.port)
        return urlunsplit(parts._replace(netloc=netloc))

    def start(self, *args: str) -> subprocess.Popen[str]:
        """Run ``flask <args>`` (the tests' procapp) on this host; output to a log file."""
        env = {**self.base_env, "PROCAPP_CONFIG": json.dumps(self.config)}
        env["PROCAPP_DB_URL"] = self.url(env["PROCAPP_DB_URL"])
        log = self.dir / f"{args[-1] if args else 'flask'}-{len(self.procs)}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    self.ns,
                    "unshare",
                    "--uts",
                    "sh",
                    "-c",
                    'hostname "$0" && exec "$@"',
                    self.name,
                    sys.executable,
                    "-m",
                    "flask",
                    *args,
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
            )
        self.procs.append((proc, log))
        return proc

    def log(self, proc: subprocess.Popen[str] | None = None) -> str:
        """The output of ``proc`` (default: every process started here) so far."""
        return "".join(path.read_text() for p, path in self.procs if proc is None or p is proc)

    def wait_for_log(self, pattern: str, timeout: float = 90) -> str:
        """Wait until a line of this host's output matches ``pattern``; that line."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log().splitlines():
                if re.search(pattern, line):
                    return line
            time.sleep(0.1)
        raise AssertionError(f"{self.name}: no line matching {pattern!r} in:\n{self.log()}")

    def _rules(self, action: str) -> None:
        for chain, way in (("OUTPUT", "-d"), ("INPUT", "-s")):
            self.exec("iptables", action, chain, way, self.outside, "-j", "DROP")

    def cut(self) -> None:
        """Drop every packet between this host and the servers, silently."""
        self._rules("-A")
        self.is_cut = True

    def heal(self) -> None:
        """Delete the cut's rules: the host reaches the servers again."""
        self._rules("-D")
        self.is_cut = False
        left = self.exec("iptables", "-S").stdout
        assert "-j DROP" not in left, left

    def stop(self, proc: subprocess.Popen[str], timeout: float = 60) -> int:
        """SIGTERM ``proc`` (it finishes its job first); its exit status."""
        if proc.poll() is None:
            proc.terminate()
        return proc.wait(timeout)

    def close(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
        for fwd in self.forwarders:
            try:
                os.killpg(fwd.pid, signal.SIGKILL)  # the group this forwarder leads
            except ProcessLookupError:
                pass
            fwd.wait(30)
        _sh("ip", "netns", "del", self.ns, check=False)
        _sh("ip", "link", "del", self.link, check=False)


class Hosts:
    """Hosts named ``names``, made on entry and removed on exit (also when a test fails)."""

    def __init__(self, names: list[str], directory: Path, env: dict[str, str]) -> None:
        require_hosts()
        remove_stale()
        self.hosts: dict[str, Host] = {}
        try:
            for index, name in enumerate(names):
                self.hosts[name] = Host(name, index, directory, env)
        except BaseException:
            self.close()
            raise

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def __iter__(self) -> Any:
        return iter(self.hosts.values())

    def close(self) -> None:
        for host in self.hosts.values():
            host.close()
