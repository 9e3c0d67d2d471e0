"""Signals sent while jobs are published and processed.

The sender is always the application object. Receivers of :data:`before_process`,
:data:`process_error` and :data:`after_process` take part in processing: an exception they
raise replaces the callback's outcome (that is how an application turns an error into a
:class:`~flask_bgqueue.DieException`). Receivers of the observation signals
(:data:`job_published`, :data:`job_finished`, :data:`job_failed`,
:data:`attempts_notification`) cannot change anything: what they raise is logged and ignored.
"""

from __future__ import annotations

from blinker import Namespace

_signals = Namespace()

#: Before a claimed job's callback runs. Kwargs: ``job``, ``parameters``.
before_process = _signals.signal("bgqueue.before-process")
#: A callback (or a ``before``/``after_process`` receiver) raised. Kwargs: ``job``,
#: ``parameters``, ``exception``. A receiver that raises replaces ``exception``.
process_error = _signals.signal("bgqueue.process-error")
#: After a callback returned. Kwargs: ``job``, ``parameters``. Raising fails the job.
after_process = _signals.signal("bgqueue.after-process")

#: A job row was written and committed. Kwargs: ``job_id``, ``callback_name``.
job_published = _signals.signal("bgqueue.job-published")
#: A job reached ``FINISHED``. Kwargs: ``job``.
job_finished = _signals.signal("bgqueue.job-finished")
#: A job reached ``TEMPORARILY_FAILED`` or ``PERMANENTLY_FAILED``. Kwargs: ``job``,
#: ``exception``.
job_failed = _signals.signal("bgqueue.job-failed")
#: A job's attempts reached exactly ``BGQUEUE_NOTIFY_ON_NUMBER_OF_ATTEMPTS``. Kwargs: ``job``.
attempts_notification = _signals.signal("bgqueue.attempts-notification")
