"""The dashboard: a blueprint, off by default, behind the app's authorization hook.

``init_app`` mounts it at ``BGQUEUE_DASHBOARD_URL_PREFIX`` when that is set; every request
passes :func:`.security.guard` first (authorization, then CSRF for POST).
"""

from __future__ import annotations

from flask import Blueprint, Flask

blueprint = Blueprint(
    "bgqueue",
    __name__,
    template_folder="templates",  # the files sit in templates/bgqueue/: no accidental clash
    static_folder="static",
    static_url_path="/static",
)

from . import api as api  # noqa: E402  (registers the JSON API and /metrics)
from . import security as security  # noqa: E402  (registers the guard)
from . import views as views  # noqa: E402  (registers the routes)


def register(app: Flask, url_prefix: str) -> None:
    """Mount the dashboard on ``app`` at ``url_prefix``."""
    app.register_blueprint(blueprint, url_prefix=url_prefix)
