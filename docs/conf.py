"""Sphinx configuration of the Flask-BgQueue documentation."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

import flask_bgqueue

project = "Flask-BgQueue"
author = "Flask-BgQueue contributors"
copyright = "Flask-BgQueue contributors"
version = release = flask_bgqueue.__version__

extensions = ["sphinx.ext.autodoc"]

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
nitpicky = False

exclude_patterns = ["_build"]
default_role = "code"
pygments_style = "sphinx"

html_theme = "alabaster"
html_theme_options = {
    "description": "Background jobs for Flask, stored in SQL on their own bind.",
    "fixed_sidebar": True,
}
html_static_path: list[str] = []
