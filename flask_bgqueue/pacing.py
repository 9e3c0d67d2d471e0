"""How quick jobs must be for a worker to take more of them at once.

The cron sweep and the broker-less consumer grow their claims, and a RabbitMQ consumer its
prefetch, while jobs are quick; slow jobs bring them back down, so slow work stays spread
over the workers.
"""

from __future__ import annotations

#: Jobs quicker than this on average (a full batch of them) double the next batch.
QUICK_JOB_SECONDS = 0.002
#: Jobs this slow or slower on average bring the batch back to its configured size.
SLOW_JOB_SECONDS = 0.02
