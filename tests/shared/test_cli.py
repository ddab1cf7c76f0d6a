"""`tmde-finetune` commands that need no worker: db, seed-demo, traces stats, start, status."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shared import cli
from shared.settings import Settings

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("TRACES_DB_PATH", str(settings.traces_db_path))
    return settings


def test_db_upgrade_downgrade_current(env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["db", "upgrade"]) == 0
    assert "revision 0003 (head 0003)" in capsys.readouterr().out
    assert cli.main(["db", "downgrade"]) == 0
    assert "revision None" in capsys.readouterr().out


def test_seed_demo_and_stats(env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["seed-demo", "--count", "40"]) == 0
    assert "40 new traces" in capsys.readouterr().out
    assert cli.main(["seed-demo", "--count", "40"]) == 0  # idempotent on ids
    assert "0 new traces" in capsys.readouterr().out
    assert cli.main(["traces", "stats"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["totalTraces"] == 40 and 0 < stats["fineTuneCandidates"] < 40


def test_bad_setting_stops_with_the_variable_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LORA_RANK", "sixteen")
    with pytest.raises(SystemExit) as info:
        cli.main(["traces", "stats"])
    assert info.value.code == 1
    assert "LORA_RANK='sixteen' is invalid" in capsys.readouterr().err


def test_status_of_unknown_run(env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    cli.main(["db", "upgrade"])
    assert cli.main(["status", "run_000000000000"]) == 1
    assert "Run not found" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["db"],
        ["api"],
        ["worker"],
        ["beat"],
        ["train"],
        ["export"],
        ["demo"],
        ["traces"],
        ["start"],
        ["follow"],
        ["flower"],
    ],
)
def test_every_command_has_help(command: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "shared.cli", *command, "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and "usage" in result.stdout.lower()
