"""The OpenAPI contract against a live API (werkzeug, real sockets, real Redis, real database):
schemathesis sends generated requests to every operation; no 5xx and no response that
disagrees with /api/openapi.json is allowed."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.adapters import make_adapter
from tests.helpers import make_settings

pytestmark = pytest.mark.integration

ST = Path(sys.executable).with_name("st")
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"  # noqa: E501


TOKEN = "contract-test-token-0123456789"


@pytest.fixture(params=["open", "token", "no-bearer"])
def auth(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(the API's API_TOKEN, the bearer schemathesis sends): an open API, a protected one with
    the token, and a protected one without it (every answer a documented 401)."""
    return {"open": ("", ""), "token": (TOKEN, TOKEN), "no-bearer": (TOKEN, "")}[request.param]


@pytest.fixture
def live_api(
    tmp_path: Path,
    redis_url: str,
    migrated_url: str,
    trace_store,  # noqa: ANN001
    auth: tuple[str, str],
) -> Iterator[str]:
    from werkzeug.serving import make_server

    from app import create_app

    settings = make_settings(
        tmp_path, redis_url=redis_url, database_url=migrated_url, api_token=auth[0]
    )
    redis.Redis.from_url(redis_url).flushdb()
    for adapter_id in ("run_aaaaaa", "run_bbbbbb"):
        make_adapter(settings.lora_output_dir, adapter_id)
    server = make_server("127.0.0.1", 0, create_app(settings), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    redis.Redis.from_url(redis_url).flushdb()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_schemathesis_finds_no_server_errors_or_schema_violations(
    live_api: str, auth: tuple[str, str], tmp_path: Path
) -> None:
    bearer = ["--header", f"Authorization: Bearer {auth[1]}"] if auth[1] else []
    result = subprocess.run(
        [
            str(ST),
            "run",
            f"{live_api}/api/openapi.json",
            *bearer,
            "--checks",
            CHECKS,
            "--max-examples",
            "25",
            "--seed",
            "1",
            "--request-timeout",
            "10",
            # streams: an open SSE response or a websocket upgrade is not a request/response;
            # /readyz answers 503 here by design (no worker runs): tests/app/test_health.py
            "--exclude-path-regex",
            "/(progress|ws|readyz)$",
            "--report",
            "junit",
            "--report-dir",
            str(tmp_path / "report"),
        ],
        capture_output=True,
        text=True,
        timeout=400,
    )
    print(result.stdout[-6000:])
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
