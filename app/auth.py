"""Access control for the API: a bearer token (API_TOKEN) and CORS (off unless CORS_ORIGINS).

With API_TOKEN set, every /api/ request must carry `Authorization: Bearer <token>`. Browsers
cannot set headers on EventSource or WebSocket connections, so the live feeds (and only GET
requests) also accept `?access_token=<token>`. The comparison is constant-time. The dashboard
page itself, /healthz, /readyz, /metrics and /api/openapi.json stay open: they carry no run
data that needs the token, and probes and scrapers should not need it.

Without CORS_ORIGINS no CORS header is ever sent, so browsers refuse cross-origin calls.
"""

from __future__ import annotations

import hmac

from flask import Flask, Response, jsonify, request

PUBLIC_API_PATHS = frozenset({"/api/openapi.json"})
TOKEN_QUERY = "access_token"
CORS_METHODS = "GET, POST, PATCH, DELETE, OPTIONS"


def _presented_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value:
        return value.strip()
    if request.method == "GET":
        return request.args.get(TOKEN_QUERY)
    return None


def _unauthorized(message: str) -> Response:
    response = jsonify(
        error=message,
        hint="send the header 'Authorization: Bearer $API_TOKEN' (feeds: ?access_token=...)",
    )
    response.status_code = 401
    response.headers["WWW-Authenticate"] = 'Bearer realm="tmde-finetune"'
    return response


def init_app(app: Flask, *, token: str, cors_origins: tuple[str, ...]) -> None:
    @app.before_request
    def _require_token() -> Response | None:
        if request.method == "OPTIONS" and cors_origins:
            return _preflight(cors_origins)
        if not token or not request.path.startswith("/api/") or request.path in PUBLIC_API_PATHS:
            return None
        presented = _presented_token()
        if presented is None:
            return _unauthorized("Authentication required")
        if not hmac.compare_digest(presented.encode(), token.encode()):
            return _unauthorized("Invalid token")
        return None

    if cors_origins:

        @app.after_request
        def _cors(response: Response) -> Response:
            origin = request.headers.get("Origin", "").rstrip("/")
            if origin in cors_origins:
                response.headers["Access-Control-Allow-Origin"] = origin
                response.headers["Vary"] = "Origin"
            return response


def _preflight(cors_origins: tuple[str, ...]) -> Response:
    response = Response(status=204)
    origin = request.headers.get("Origin", "").rstrip("/")
    if origin in cors_origins:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Methods"] = CORS_METHODS
        response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
        response.headers["Access-Control-Max-Age"] = "600"
        response.headers["Vary"] = "Origin"
    return response
