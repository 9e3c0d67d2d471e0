"""Structured logging: one JSON object per line, with a job's fields when a record has them.

Flask-BgQueue logs through the ``flask_bgqueue`` logger; each record about a job carries
``job_id``, ``callback``, ``queue``, ``attempt`` and (when known) ``state`` as attributes.
Apply ``LOGGING`` before the app is created::

    import logging.config
    from example_app.jsonlog import LOGGING

    logging.config.dictConfig(LOGGING)
"""

from __future__ import annotations

import json
import logging
from typing import Any

#: The attributes Flask-BgQueue puts on its records about a job.
JOB_FIELDS = ("job_id", "callback", "queue", "attempt", "state")


class JsonFormatter(logging.Formatter):
    """A record as one line of JSON: time, level, logger, message, the job's fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        doc.update({k: getattr(record, k) for k in JOB_FIELDS if hasattr(record, k)})
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": JsonFormatter}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json"}},
    # The queue's own level, apart from the app's: INFO adds a record per job outcome.
    "loggers": {"flask_bgqueue": {"level": "INFO"}},
    "root": {"level": "WARNING", "handlers": ["stderr"]},
}
