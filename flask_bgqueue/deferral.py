"""``BGQUEUE_PUBLISH_AFTER_APP_COMMIT``: hold jobs until the app's session commits.

A job published while the app's Flask-SQLAlchemy session has a transaction open is kept on
that session (``session.info``) with the transaction it was published in. A rolled-back
transaction or savepoint drops the jobs published inside it; when the outermost
transaction commits, the rest is written on the queue's own connection. So a worker never
sees a job for data that was rolled back, or that is not committed yet.

The queue's write happens just after the app's commit, on another connection: if the
process dies between the two, those jobs are lost. Publish without this option (and
tolerate jobs whose data may be missing) where that window matters more.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from flask import current_app
from sqlalchemy.orm import Session, SessionTransaction

from .exceptions import ConfigurationError

if TYPE_CHECKING:
    from .extension import _AppState

_PENDING = "bgqueue_pending"


def defer(state: _AppState, rows: list[dict[str, Any]]) -> bool:
    """Hold ``rows`` on the app session's open transaction; ``False`` when none is open."""
    db = current_app.extensions.get("sqlalchemy")
    if db is None:
        raise ConfigurationError(
            "BGQUEUE_PUBLISH_AFTER_APP_COMMIT waits for the app's Flask-SQLAlchemy session,"
            " but Flask-SQLAlchemy is not initialised on this app: call db.init_app(app) or"
            " turn the option off.",
            "BGQUEUE_PUBLISH_AFTER_APP_COMMIT",
        )
    session: Session = db.session()
    if not session.in_transaction():
        return False
    transaction = session.get_nested_transaction() or session.get_transaction()
    if "bgqueue_listening" not in session.info:
        session.info["bgqueue_listening"] = True
        _listen(session, state)
    session.info.setdefault(_PENDING, []).extend((transaction, row) for row in rows)
    return True


def _listen(session: Session, state: _AppState) -> None:
    def after_commit(sess: Session) -> None:
        if sess.get_nested_transaction() is not None:
            return  # a savepoint was released: its jobs now belong to the outer transaction
        pending = sess.info.pop(_PENDING, [])
        if pending:
            from .extension import write_rows

            write_rows(state, [row for _, row in pending])

    def after_soft_rollback(sess: Session, rolled_back: SessionTransaction) -> None:
        pending = sess.info.get(_PENDING)
        if pending:
            pending[:] = [(t, row) for t, row in pending if not _inside(t, rolled_back)]

    def after_transaction_end(sess: Session, transaction: SessionTransaction) -> None:
        if transaction.parent is None:  # the outermost transaction ended without a commit
            sess.info.pop(_PENDING, None)

    sa.event.listen(session, "after_commit", after_commit)
    sa.event.listen(session, "after_soft_rollback", after_soft_rollback)
    sa.event.listen(session, "after_transaction_end", after_transaction_end)


def _inside(transaction: SessionTransaction | None, ancestor: SessionTransaction) -> bool:
    while transaction is not None:
        if transaction is ancestor:
            return True
        transaction = transaction.parent
    return False
