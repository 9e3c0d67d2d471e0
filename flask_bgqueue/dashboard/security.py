"""Who may use the dashboard, and CSRF protection of its actions.

Authorization is the app's: ``BGQUEUE_DASHBOARD_AUTHORIZE`` is called on every request and
nobody gets in while it is unset. Actions are POST requests carrying a per-session token
(kept in Flask's signed session) that is checked on every POST.
"""

from __future__ import annotations

import hmac
import secrets

from flask import abort, request, session
from werkzeug.wrappers import Response

from ..runtime import current_runtime
from . import blueprint

CSRF_SESSION_KEY = "_bgqueue_csrf"
CSRF_FIELD = "csrf_token"


@blueprint.before_request
def guard() -> Response | None:
    authorize = current_runtime().settings.dashboard_authorize
    if authorize is None:
        abort(403, "The job dashboard is closed until BGQUEUE_DASHBOARD_AUTHORIZE is set.")
    verdict = authorize()
    if isinstance(verdict, Response):
        return verdict
    if not verdict:
        abort(403)
    if request.method == "POST":
        expected = session.get(CSRF_SESSION_KEY)
        given = request.form.get(CSRF_FIELD) or request.headers.get("X-CSRF-Token") or ""
        if not expected or not hmac.compare_digest(str(expected), given):
            abort(400, "The form's CSRF token is missing or out of date: reload the page.")
    return None


@blueprint.context_processor
def csrf() -> dict[str, object]:
    return {"csrf_token": csrf_token, "csrf_field": CSRF_FIELD}


def csrf_token() -> str:
    """This session's token, created on first use."""
    token = session.get(CSRF_SESSION_KEY)
    if not token:
        token = session[CSRF_SESSION_KEY] = secrets.token_urlsafe(32)
    return str(token)
