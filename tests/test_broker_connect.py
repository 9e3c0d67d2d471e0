"""A RabbitMQ consumer gives up on what cannot heal and rides out what can.

At start, a wrong password, virtual host or host ends ``flask bgq consume`` at once with
status 1 and one line naming the broker (password masked). A connection lost later is
retried with capped exponential backoff, each retry logged with the broker's address; a
TCP proxy in front of the real RabbitMQ cuts this consumer's connection alone.
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator

import pytest

from tests.conftest import AMQP_URL, ProcEnv
from tests.helpers import stop
from tests.test_workers import wait_for

pytestmark = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)

MASKED = "amqp://bgqueue:***@"


@pytest.fixture
def rabbit(procs: ProcEnv, amqp_queue: str) -> ProcEnv:
    procs.config = {"BGQUEUE_QUEUE": amqp_queue, "BGQUEUE_HEARTBEAT_INTERVAL_SECONDS": 0.3}
    return procs


@pytest.mark.parametrize(
    ("url", "why"),
    [
        (
            "amqp://bgqueue:wrong-secret@127.0.0.1:5672/%2F",
            "RabbitMQ refused the user name or password (ACCESS_REFUSED)",
        ),
        (
            "amqp://bgqueue:bgqueue@127.0.0.1:5672/no-such-vhost",
            "the virtual host does not exist, or the user may not use it (NOT_ALLOWED)",
        ),
        (
            "amqp://bgqueue:wrong-secret@127.0.0.1:1/%2F",
            "nothing answers there (Connection refused)",
        ),
        (
            "amqp://bgqueue:wrong-secret@no-such-host.invalid:5672/%2F",
            "the host name is not known (Name or service not known)",
        ),
    ],
    ids=["password", "vhost", "port", "host"],
)
def test_a_broker_that_cannot_be_reached_at_start_ends_the_consumer_with_one_line(
    rabbit: ProcEnv, url: str, why: str
) -> None:
    rabbit.config["BGQUEUE_BROKER_URL"] = url
    result = rabbit.run("bgq", "consume", timeout=60)
    assert result.returncode == 1, result.stderr
    masked = re.sub(r"^amqp://bgqueue:[^@]*@", MASKED, url)
    start, error = result.stderr.strip().splitlines()
    assert start.startswith("bgqueue consumer pid ") and f"RabbitMQ {masked}" in start
    assert error == f"Error: BrokerError: cannot connect to the broker at {masked}: {why}"
    password = url.split(":")[2].split("@")[0]
    assert f":{password}@" not in result.stderr + result.stdout


class Proxy:
    """A TCP proxy to RabbitMQ on 127.0.0.1 that can cut its connections and refuse more."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.listener = self._listen(0)
        self.port = self.listener.getsockname()[1]

    def _listen(self, port: int) -> socket.socket:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen()
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return listener

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed by cut()
                return
            server = socket.create_connection(self.target)
            with self.lock:
                self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        """Drop every connection and refuse new ones (as a broker that went away)."""
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        except OSError:
            pass
        self.listener.close()
        with self.lock:
            for s in self.sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self.sockets.clear()

    def resume(self) -> None:
        self.listener = self._listen(self.port)


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    host, port = re.match(r"amqp://[^@]*@([^:/]+):(\d+)", AMQP_URL).groups()  # type: ignore[union-attr]
    p = Proxy((host, int(port)))
    yield p
    p.cut()


def test_a_connection_lost_later_is_retried_with_backoff_each_retry_naming_the_broker(
    rabbit: ProcEnv, proxy: Proxy
) -> None:
    through_proxy = re.sub(r"@[^/]+/", f"@127.0.0.1:{proxy.port}/", AMQP_URL)
    rabbit.config["BGQUEUE_BROKER_URL"] = through_proxy
    app = rabbit.app()
    worker = rabbit.start("bgq", "consume")
    try:
        with app.app_context():
            app.bgq.publish("record", {"group": "g", "name": "before"})  # type: ignore[attr-defined]
        wait_for(lambda: len(rabbit.records()) == 1, what="the job before the cut")
        proxy.cut()
        # 0.25 s, then retries after 0.5, 1 and 2 s: three retries logged within 4 s
        threading.Event().wait(4)
        assert worker.poll() is None, "the consumer gave up on a connection lost later"
        proxy.resume()
        with app.app_context():
            app.bgq._state().broker.close()  # type: ignore[attr-defined]  # its link was cut
            app.bgq.publish("record", {"group": "g", "name": "after"})  # type: ignore[attr-defined]
        wait_for(lambda: len(rabbit.records()) == 2, timeout=30, what="the job after the cut")
    finally:
        _out, err = stop(worker)
    assert worker.returncode == 0, err
    where = f"the broker at {MASKED}127.0.0.1:{proxy.port}/%2F"
    assert err.count(f"bgqueue: lost {where}: ") == 1, err
    delays = [
        float(d)
        for d in re.findall(re.escape(where) + r" still unreachable: .*? in ([\d.]+) s", err)
    ]
    assert len(delays) >= 3, err
    assert delays[:3] == [0.5, 1.0, 2.0]  # doubling, from the 0.25 s wait after the loss
    assert f"bgqueue: {where} is back after {len(delays)} retries" in err
    assert "bgqueue:bgqueue@" not in err and "Traceback" not in err
