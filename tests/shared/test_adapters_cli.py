"""`tmde-finetune adapters ...`: the registry from a shell, with its exit codes."""

from __future__ import annotations

import json

import pytest

from shared import cli
from shared.settings import Settings
from tests.adapters import make_adapter

IDS = ["run_aaaaaa", "run_bbbbbb"]


@pytest.fixture
def env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("LORA_OUTPUT_DIR", str(settings.lora_output_dir))
    for day, adapter_id in enumerate(IDS, start=1):
        make_adapter(settings.lora_output_dir, adapter_id, created=f"2026-11-0{day}T00:00:00Z")
    return settings


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(["adapters", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_list_activate_rollback(env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "list")
    assert code == 0 and out.index(IDS[1]) < out.index(IDS[0]) and "*" not in out
    code, out, _ = run(capsys, "activate", IDS[0], "--reason", "from the shell")
    assert code == 0 and json.loads(out)["history"][-1]["reason"] == "from the shell"
    assert run(capsys, "list")[1].splitlines()[1].startswith(f"* {IDS[0]}")
    assert json.loads(run(capsys, "show", "active")[1])["adapterId"] == IDS[0]
    assert json.loads(run(capsys, "rollback")[1])["adapterId"] is None


def test_tag_verify_delete_prune(env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert json.loads(run(capsys, "tag", IDS[0], "stable")[1])["tags"] == ["stable"]
    code, out, _ = run(capsys, "verify", IDS[0])
    assert code == 0 and "ok" in out
    assert json.loads(run(capsys, "prune", "--keep", "1")[1]) == {"deleted": []}  # tagged
    code, out, _ = run(capsys, "delete", IDS[1])
    assert code == 0 and not (env.lora_output_dir / IDS[1]).exists()


def test_errors_exit_nonzero_with_a_message(
    env: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "activate", "run_ffffff")
    assert code == 4 and "ERROR: Adapter not found" in err
    (env.lora_output_dir / IDS[1] / "adapter_config.json").write_text("{}")
    code, _, err = run(capsys, "activate", IDS[1])
    assert code == 1 and "failed verification" in err
    run(capsys, "activate", IDS[0])
    code, _, err = run(capsys, "delete", IDS[0])
    assert code == 1 and "active adapter" in err
