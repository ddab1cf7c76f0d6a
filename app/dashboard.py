"""GET /: the dashboard, plain HTML/JS/CSS from app/static (Flask serves /static/...).

No build step and nothing from a CDN: the page must work on a machine with no internet and
be deployable as the API image alone. It talks only to this API: the runs list, the default
config, start and cancel, the stored history (/events) and the live websocket feed.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app

from app.apidoc import doc

bp = Blueprint("dashboard", __name__)


@bp.get("/")
@doc("The dashboard", {200: "text/html"}, public=True)
def index() -> Response:
    response = current_app.send_static_file("index.html")
    response.headers["Cache-Control"] = "no-cache"
    return response
