"""Pipelined publishing to RabbitMQ: one publisher thread per broker (per process).

``publish()`` in broker mode commits the row first, then hands the id to this thread and
returns: it does not wait for RabbitMQ. The thread owns a ``pika.SelectConnection`` with
publisher confirms on; it sends what it is handed at once (many ids in flight) and keeps
the delivery tag → job id of every message not confirmed yet. Then:

- a confirm (``basic.ack``) ends the message's story: it is in RabbitMQ;
- a refusal (``basic.nack``) also renews the session: the thread sends nothing more on
  this connection, closes it once every message sent is confirmed or refused, and sends
  the next ids through a new one. A channel may keep refusing a quorum queue whose leader
  was on a node that stopped (RabbitMQ 3.10 caches the queue's members per channel), and a
  new connection asks afresh;
- a refusal (``basic.nack``, e.g. a full queue with ``x-overflow: reject-publish``), a
  returned (unroutable) message, a connection or channel that closes with messages not
  confirmed, or a connection that cannot be opened hand their job ids to ``on_failed``,
  which saves those rows as ``BROKER_FAILED`` (only rows still ``READY``: a job whose
  message did arrive and was claimed meanwhile is left alone). ``flask bgq process`` runs
  them;
- the process dying before the confirm leaves the rows ``READY``: ``flask bgq process``
  sends the ids of unclaimed ``READY`` rows again after
  ``BGQUEUE_BROKER_RESEND_AFTER_SECONDS``.

So no job is lost; a job may be announced twice, and the guarded claim runs it once.

With several nodes (a cluster) a session connects to the first that answers; a session
whose connection is lost ends as above, and the next submit opens one on the first node
that answers then.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import pika
import pika.exceptions
import pika.frame
import pika.spec

from .nodes import describe
from .settings import mask

log = logging.getLogger("flask_bgqueue.broker")

_PROPERTIES = pika.BasicProperties(delivery_mode=2)  # persistent

#: In a burst (see ``BURST_SECONDS``), ids handed over within this long of the last send
#: wait for the rest of it and go out together: one wake-up, one socket write and one
#: confirm for all of them instead of for each. Any other id goes out at once.
COALESCE_SECONDS = 0.01

#: Ids handed over less than this long apart on average are a burst, which waits as above.
#: Each send costs the publisher thread a wake-up and RabbitMQ a write and a confirm, about
#: 1 ms of processor time between them on a 2-core machine (``benchmarks/README.md``
#: §18): sent one by one, ids published as fast as rows commit (1,000-3,000 a second)
#: would take RabbitMQ's and the publisher's share of the processors from the publishing
#: itself. Under about 670 a second, each id goes out at once: a job published on a quiet
#: queue, or in a steady stream a few milliseconds apart, is announced without waiting,
#: and ``publish()`` waits for the hand-over (``HANDOVER_SECONDS``), so a caller busy
#: after it does not hold the send back (publish -> start about 12 ms at 200 jobs a second
#: from such a caller before this rule, 3-6 ms after: ``benchmarks/README.md`` §15).
BURST_SECONDS = 0.0015

#: The average above moves by this share of each new gap (an exponential moving average),
#: so that one slow commit in a loop does not end its burst, nor one quick pair in a
#: steady stream start one.
GAP_SMOOTHING = 0.125

#: A gap this long or longer is a pause: the average starts again from it, so the ids after
#: a pause go out at once until they show a burst again (about 15 of them at a loop's pace).
GAP_CAP_SECONDS = 0.01

#: How long ``publish()`` waits, when its id goes out at once, for the publisher thread
#: to take it (so that the caller's next computation does not hold the send back): a
#: thread's wake-up, which takes about 0.1 ms on an idle machine.
HANDOVER_SECONDS = 0.005

#: Queues to declare before sending: ((name, arguments as (key, value) pairs), ...)
Declarations = tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]
#: (queues to declare first, routing key, job id)
Item = tuple[Declarations, str, int]
OnFailed = Callable[[list[int], str], None]


class PipelinedPublisher:
    """Sends job ids from any thread through one connection, confirms tracked apart."""

    def __init__(self, urls: tuple[str, ...], on_failed: OnFailed) -> None:
        self.urls = urls
        self.on_failed = on_failed
        self.lock = threading.Condition()
        self.pending: deque[Item] = deque()  # handed over, not sent yet
        self.outstanding = 0  # handed over and neither confirmed nor failed
        self.handed_at = 0.0  # time.monotonic() of the last hand-over
        self.gap = GAP_CAP_SECONDS  # between hand-overs, on average (see smoothed_gap)
        self.session: _Session | None = None  # the current connection
        self.pid = os.getpid()  # a forked child makes its own (AmqpBroker.announce)

    def submit(self, items: list[Item]) -> None:
        now = time.monotonic()
        with self.lock:
            self.pending.extend(items)
            self.outstanding += len(items)
            self.gap, self.handed_at = smoothed_gap(self.gap, now - self.handed_at), now
            session = self.session
            if session is None:
                self.session = _Session(self)
                return
        if session.wake() and session.sends_at_once():
            # The thread needs the interpreter lock to send; a caller that computes after
            # ``publish()`` returns would keep it until Python switches threads (5 ms by
            # default). Waiting until the thread has taken the ids leaves it the lock.
            with self.lock:
                self.lock.wait_for(lambda: not self.pending, HANDOVER_SECONDS)

    def flush(self, timeout: float) -> bool:
        """Wait until every id handed over is confirmed or failed; ``False`` on timeout."""
        with self.lock:
            return self.lock.wait_for(lambda: not self.outstanding, timeout)

    def close(self, timeout: float = 10.0) -> None:
        if self.pid != os.getpid():
            return  # inherited through fork(): the thread and its connection are the parent's
        self.flush(timeout)
        with self.lock:
            session = self.session
        if session is not None:
            session.close(timeout)

    def take_pending(self) -> list[Item]:
        with self.lock:
            items = list(self.pending)
            self.pending.clear()
            self.lock.notify_all()  # a caller waiting for the hand-over (submit)
        return items

    def fail(self, job_ids: list[int], message: str) -> None:
        if not job_ids:
            return
        try:
            self.on_failed(job_ids, f"broker: {message}")
        except Exception:
            log.exception("bgqueue: could not save %d job(s) as BROKER_FAILED", len(job_ids))

    def done(self, count: int) -> None:
        if count:
            with self.lock:
                self.outstanding -= count
                self.lock.notify_all()


class _Session:
    """One connection and its thread; ended for good when the connection is gone."""

    def __init__(self, publisher: PipelinedPublisher) -> None:
        self.publisher = publisher
        self.connection: Any = None
        self.node = ""  # the URL of the node connected to
        self.open_error: BaseException | None = None  # the last node's, while connecting
        self.closing = False  # closed by us: no warning
        self.channel: Any = None  # set once confirms are on
        self.ended = False
        self.failed = 0  # job ids its end handed to on_failed
        self.renewing = False  # refused once: send no more here, then hand over
        self.wake_scheduled = False
        self.last_sent = 0.0  # time.monotonic() of the last send
        self.unconfirmed: dict[int, int] = {}  # delivery tag -> job id
        self.next_tag = 1
        self.declared: set[str] = set()
        self.heads: dict[tuple[str, int], bytes] = {}  # (routing key, body length) -> frames
        self.waiting: dict[str, list[Item]] = {}  # queue being declared -> items after it
        self.thread = threading.Thread(target=self._run, name="bgqueue-amqp-publisher", daemon=True)
        self.thread.start()

    # -- any thread -------------------------------------------------------------------

    def wake(self) -> bool:
        """Have the thread send what is pending (once its channel is ready); whether this
        call woke it (``False``: a wake-up is on its way already, or cannot come)."""
        with self.publisher.lock:
            if self.channel is None or self.wake_scheduled or self.ended:
                return False
            self.wake_scheduled = True
        try:
            self.connection.ioloop.add_callback_threadsafe(self._on_wake)
        except Exception:  # the loop just stopped: _end fails what is pending
            return False
        return True

    def close(self, timeout: float) -> None:
        connection = self.connection
        self.closing = True
        if connection is not None and not self.ended:
            try:
                connection.ioloop.add_callback_threadsafe(connection.close)
            except Exception:  # already closed
                pass
        if self.thread is not threading.current_thread():
            self.thread.join(timeout)

    def sends_at_once(self) -> bool:
        """Whether the wake-up just asked for takes what is pending at once: it does not
        coalesce (else it waits for ``COALESCE_SECONDS``) and the session is not ending
        (else it takes nothing)."""
        return not (self._coalesces() or self.ended or self.renewing)

    def _coalesces(self) -> bool:
        """Whether what is pending waits for what follows: the ids come in a burst
        (``BURST_SECONDS``)."""
        return self.publisher.gap < BURST_SECONDS

    # -- the session's thread ---------------------------------------------------------

    def _run(self) -> None:
        urls = self.publisher.urls
        errors: list[str] = []
        try:
            for url in urls:  # the first node that answers
                self.node, self.open_error = url, None
                self.connection = pika.SelectConnection(
                    pika.URLParameters(url),
                    on_open_callback=self._on_open,
                    on_open_error_callback=self._on_open_error,
                    on_close_callback=self._on_closed,
                )
                try:
                    self.connection.ioloop.start()
                finally:
                    try:
                        self.connection.ioloop.close()
                    except Exception:  # nothing left to release
                        pass
                if self.open_error is None or self.ended:
                    return  # it ran and closed (_on_closed ended the session), or was closed
                errors.append(f"{mask(url)}: {self.open_error!r}")
            where = "; ".join(errors) if len(urls) > 1 else repr(self.open_error)
            self._end(f"RabbitMQ could not be reached: {where}")
        except Exception as exc:  # pika raised instead of calling back
            self._end(f"RabbitMQ publisher stopped: {exc!r}")
        finally:
            self._end("the RabbitMQ publisher stopped")

    def _on_open(self, connection: Any) -> None:
        if len(self.publisher.urls) > 1:
            log.info("bgqueue: the publisher thread publishes to node %s", mask(self.node))
        connection.channel(on_open_callback=self._on_channel)

    def _on_open_error(self, connection: Any, error: BaseException) -> None:
        self.open_error = error  # _run tries the next node, or ends the session
        connection.ioloop.stop()

    def _on_closed(self, connection: Any, reason: BaseException) -> None:
        # The channel's close may have ended the session first (a broker that shuts down
        # closes both): the count is what the session's end failed, either way.
        self._end(f"the connection to RabbitMQ closed before confirming: {reason!r}")
        if not self.closing and not self.renewing:
            log.warning(
                "bgqueue: the publisher thread lost RabbitMQ %s: %r; %d job(s) not confirmed"
                " became BROKER_FAILED, the next ones go to the first node that answers (%s)",
                mask(self.node),
                reason,
                self.failed,
                describe(self.publisher.urls),
            )
        # stop once pika has closed the socket, after this callback
        connection.ioloop.add_callback_threadsafe(connection.ioloop.stop)

    def _on_channel(self, channel: Any) -> None:
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(
            ack_nack_callback=self._on_confirm, callback=lambda _frame: self._on_ready(channel)
        )

    def _on_ready(self, channel: Any) -> None:
        with self.publisher.lock:
            self.channel = channel
        self._send_pending()

    def _on_channel_closed(self, channel: Any, reason: BaseException) -> None:
        self._end(f"the channel to RabbitMQ closed before confirming: {reason!r}")
        if self.connection.is_open:  # else it is closing: _on_closed stops the loop
            self.connection.close()

    def _on_wake(self) -> None:
        """Send what is pending now, or with what follows it (see ``COALESCE_SECONDS``)."""
        wait = self.last_sent + COALESCE_SECONDS - time.monotonic() if self._coalesces() else 0
        if wait > 0 and not self.ended:
            self.connection.ioloop.call_later(wait, self._send_pending)
        else:
            self._send_pending()

    def _send_pending(self) -> None:
        with self.publisher.lock:
            self.wake_scheduled = False
        if self.ended or self.renewing:
            return
        self.last_sent = time.monotonic()
        for item in self.publisher.take_pending():
            self._send(item)
        _join_output(self.connection)

    def _send(self, item: Item) -> None:
        declarations, routing_key, job_id = item
        for name, arguments in declarations:
            if name in self.declared:
                continue
            if name in self.waiting:
                self.waiting[name].append(item)
                return
            self.waiting[name] = [item]
            self.channel.queue_declare(
                name,
                durable=True,
                arguments=dict(arguments),
                callback=lambda _frame, name=name: self._on_declared(name),
            )
            return
        tag = self.next_tag
        self.next_tag += 1
        self.unconfirmed[tag] = job_id
        body = str(job_id).encode()
        emit = getattr(self.connection, "_output_marshaled_frames", None)
        if emit is None or not self.channel.is_open:  # pika's own way (it raises if closed)
            self.channel.basic_publish(
                exchange="",
                routing_key=routing_key,
                body=body,
                properties=_PROPERTIES,
                mandatory=True,
            )
        else:
            emit([self._message(routing_key, body)])

    def _message(self, routing_key: str, body: bytes) -> bytes:
        """The three frames of one message (method, header, body), as ``basic_publish``
        marshals them.

        pika builds and marshals the method and the header anew for every message, about
        half of the publisher thread's time per job, and it holds the interpreter lock
        meanwhile: a batch of ids kept the publishing thread waiting. They differ between this
        session's messages only by the routing key and the body's length, so each pair is
        marshaled once (pika's own frame classes); the body frame is made per message.
        """
        number = self.channel.channel_number
        key = (routing_key, len(body))
        head = self.heads.get(key)
        if head is None:
            publish = pika.spec.Basic.Publish(exchange="", routing_key=routing_key, mandatory=True)
            head = (
                pika.frame.Method(number, publish).marshal()
                + pika.frame.Header(number, len(body), _PROPERTIES).marshal()
            )
            self.heads[key] = head
        frame: bytes = pika.frame.Body(number, body).marshal()
        return head + frame

    def _on_declared(self, name: str) -> None:
        self.declared.add(name)
        for item in self.waiting.pop(name, []):
            self._send(item)

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        tag, multiple = method.delivery_tag, method.multiple
        if multiple:  # every tag up to this one; tags are kept in the order sent
            tags = list(itertools.takewhile(lambda t: t <= tag, self.unconfirmed))
        else:
            tags = [tag]
        job_ids = [self.unconfirmed.pop(t) for t in tags if t in self.unconfirmed]
        if isinstance(method, pika.spec.Basic.Nack):
            self.publisher.fail(job_ids, "RabbitMQ refused the message (basic.nack)")
            if not self.renewing:
                self.renewing = True
                log.warning(
                    "bgqueue: RabbitMQ %s refused a message; the next ones go through a new"
                    " connection",
                    mask(self.node),
                )
        self.publisher.done(len(job_ids))
        if self.renewing and not self.unconfirmed and not self.waiting:
            self.connection.close()  # _on_closed -> _end hands what is pending over

    def _on_return(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        # its confirm (an ack) follows: fail the job now; the ack then finds no tag left
        for tag, job_id in list(self.unconfirmed.items()):
            if str(job_id).encode() == body:
                del self.unconfirmed[tag]
                self.publisher.fail(
                    [job_id], f"RabbitMQ returned the message ({method.reply_text})"
                )
                self.publisher.done(1)
                return

    def _end(self, message: str) -> None:
        """The connection is gone: fail everything not confirmed; the next submit opens
        another one. A session renewed after a refusal hands what is pending, never sent,
        to a new session at once."""
        publisher = self.publisher
        with publisher.lock:
            if self.ended:
                return
            self.ended = True
            left = []
            if publisher.session is self:
                publisher.session = None
                if self.renewing and not self.closing and publisher.pending:
                    publisher.session = _Session(publisher)
                else:
                    left = [job_id for _, _, job_id in publisher.pending]
                    publisher.pending.clear()
        left += list(self.unconfirmed.values())
        left += [job_id for items in self.waiting.values() for _, _, job_id in items]
        self.unconfirmed.clear()
        self.waiting.clear()
        self.failed = len(left)
        publisher.fail(left, message)
        publisher.done(len(left))


def smoothed_gap(average: float, gap: float) -> float:
    """The average time between hand-overs, after one more ``gap`` (seconds)."""
    if gap >= GAP_CAP_SECONDS:  # a pause
        return GAP_CAP_SECONDS
    return average + GAP_SMOOTHING * (gap - average)


def _join_output(connection: Any) -> None:
    """One buffer of what pika holds to send.

    pika writes each frame with a ``send()`` of its own: a message is three (method,
    header, body), so a batch of ids would go out as three small TCP segments per id.
    Joined, the batch takes one system call here and arrives in one read at RabbitMQ. The
    buffer is pika's (the same in 1.3 and 1.4); where it is not found, nothing changes.
    """
    buffers = getattr(getattr(connection, "_transport", None), "_tx_buffers", None)
    if buffers is not None and len(buffers) > 1:
        joined = b"".join(buffers)
        buffers.clear()
        buffers.append(joined)
