"""`tmde-finetune` commands that need nothing above shared/ (db, seed-demo, traces, start,
status), and how the other packages' commands are found (shared/commands.py)."""

from __future__ import annotations

import argparse
import json
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from shared import cli, commands
from shared.commands import GROUP
from shared.names import ExitCode
from shared.settings import Settings
from tests.helpers import run_cli

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("TRACES_DB_PATH", str(settings.traces_db_path))
    return settings


def test_db_upgrade_downgrade_current(env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["db", "upgrade"]) == 0
    assert "revision 0005 (head 0005)" in capsys.readouterr().out
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


def test_commands_return_exit_codes(env: Settings) -> None:
    code = cli.main(["db", "upgrade"])
    assert isinstance(code, ExitCode) and code is ExitCode.SUCCESS


def test_a_missing_package_hides_its_commands() -> None:
    ghost = EntryPoint("ghost", "ghost_package.cli:register", GROUP)
    assert commands._load(ghost) is None


def test_a_broken_package_is_not_mistaken_for_a_missing_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "half_installed.py").write_text("import not_a_real_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError):
        commands._load(EntryPoint("half", "half_installed:register", GROUP))


def test_a_passthrough_command_gets_every_argument() -> None:
    seen: list[list[str]] = []
    parser = argparse.ArgumentParser(prog="t")
    sub = parser.add_subparsers(dest="command")
    commands.add_passthrough(sub, "script", lambda argv: seen.append(argv), help="a script")
    argv = ["script", "--help", "--", "-x", "positional", "--flag=1"]
    assert commands.handover(sub, argv) is ExitCode.SUCCESS and seen == [argv[1:]]
    assert commands.handover(sub, ["other"]) is None and commands.handover(sub, []) is None


@pytest.mark.parametrize("command", [[], ["db"], ["traces"], ["start"], ["follow"], ["status"]])
def test_every_command_has_help(command: list[str]) -> None:
    result = run_cli(*command, "--help")
    assert result.returncode == 0 and "usage" in result.stdout.lower()
