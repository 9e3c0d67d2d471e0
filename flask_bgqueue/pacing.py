"""How many jobs a worker takes at once: more while jobs are quick, fewer when slow.

The cron sweep and the broker-less consumer grow their claims, and a RabbitMQ consumer its
prefetch, while jobs are quick; slow jobs bring them back down, so slow work stays spread
over the workers. Each of them keeps a :class:`Pacer`, with its own start and cap.
"""

from __future__ import annotations

#: Jobs quicker than this on average (a full batch of them) double the next batch.
QUICK_JOB_SECONDS = 0.002
#: Jobs this slow or slower on average bring the batch back to its start value.
SLOW_JOB_SECONDS = 0.02
#: At most this many jobs are claimed in one transaction by a consumer, or held
#: unacknowledged per queue by a RabbitMQ consumer.
MAX_BATCH = 128


class Pacer:
    """The size of the next batch, from how long the last one took.

    A full batch of jobs quicker than :data:`QUICK_JOB_SECONDS` each doubles the size, up
    to ``cap``; a batch of :data:`SLOW_JOB_SECONDS` or more per job brings it back to
    ``start``. A batch that is not full (the queue is draining) leaves it as it is.
    """

    def __init__(self, start: int, cap: int) -> None:
        self.start = max(1, min(start, cap))
        self.cap = cap
        self.size = self.start

    def record(self, taken: int, seconds: float) -> int:
        """Note that ``taken`` jobs ran in ``seconds``; return the next size."""
        per_job = seconds / max(1, taken)
        if per_job >= SLOW_JOB_SECONDS:
            self.size = self.start
        elif per_job < QUICK_JOB_SECONDS and taken >= self.size:
            self.size = min(self.size * 2, self.cap)
        return self.size
