"""The worker package's `tmde-finetune` commands (worker/cli.py), found through its entry point:
help for each, and the seed's scripts get their arguments whole."""

from __future__ import annotations

import pytest

from shared import cli
from shared.names import ExitCode
from tests.helpers import run_cli


@pytest.mark.parametrize(
    "command",
    [["worker"], ["beat"], ["flower"], ["adapters"], ["demo"], ["train"], ["export"]],
)
def test_every_command_has_help(command: list[str]) -> None:
    result = run_cli(*command, "--help")
    assert result.returncode == 0 and "usage" in result.stdout.lower()


def test_the_scripts_help_is_their_own() -> None:
    # the train script's flags, not an empty pass-through subparser's page
    result = run_cli("train", "--help")
    assert result.returncode == 0 and "--train-data" in result.stdout


@pytest.mark.parametrize(
    ("command", "module"), [("export", "worker.export"), ("train", "worker.training.cli")]
)
def test_the_seed_scripts_get_every_argument(
    command: str, module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[list[str]] = []

    def script(argv: list[str]) -> ExitCode:
        seen.append(argv)
        return ExitCode.INSUFFICIENT_DATA

    monkeypatch.setattr(f"{module}.main", script)
    rest = ["--db", "x.db", "--output-dir", "-o", "--", "--help"]
    assert cli.main([command, *rest]) is ExitCode.INSUFFICIENT_DATA
    assert seen == [rest]


def test_worker_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.celery_app import app

    calls: list[list[str]] = []
    monkeypatch.setattr(app, "worker_main", calls.append)
    assert cli.main(["worker", "--queues", "train", "--name", "gpu0@h"]) is ExitCode.SUCCESS
    assert calls == [
        ["worker", "-Q", "train", "-c", "1", "--pool", "prefork", "--loglevel", "INFO"]
        + ["-n", "gpu0@h", "--max-tasks-per-child", "1"]
    ]
