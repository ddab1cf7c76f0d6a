"""`tmde-finetune api` (app/cli.py), found through the app package's entry point."""

from __future__ import annotations

import pytest

from shared import cli
from shared.names import ExitCode
from tests.helpers import run_cli


def test_api_has_help() -> None:
    result = run_cli("api", "--help")
    assert result.returncode == 0 and "--port" in result.stdout


def test_api_serves_on_the_given_address(monkeypatch: pytest.MonkeyPatch) -> None:
    from app import cli as app_cli

    served: list[dict[str, object]] = []

    class Served:
        def run(self, **options: object) -> None:
            served.append(options)

    monkeypatch.setattr(app_cli, "create_app", lambda settings: Served())
    monkeypatch.setattr(app_cli, "configure", lambda log_format: None)  # keep pytest's logging
    assert cli.main(["api", "--host", "0.0.0.0", "--port", "8123"]) is ExitCode.SUCCESS
    assert served == [{"host": "0.0.0.0", "port": 8123, "threaded": True}]
