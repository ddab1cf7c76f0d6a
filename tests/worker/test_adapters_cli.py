"""`tmde-finetune adapters ...`: the registry from a shell, with its exit codes."""

from __future__ import annotations

import json
from pathlib import Path

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


def test_activation_with_ollama_export_writes_the_gguf_in_process(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:  # noqa: ANN001
    from tests.worker.test_gguf_export import write_adapter, write_base_config
    from worker.training.artifacts import publish

    monkeypatch.setenv("LORA_OUTPUT_DIR", str(settings.lora_output_dir))
    monkeypatch.setenv("OLLAMA_EXPORT", "true")
    base = write_base_config(tmp_path / "base")
    staging = tmp_path / "staging"
    write_adapter(staging)
    manifest = {"id": "run_gguf01", "baseModel": str(base), "isActive": False, "tags": []}
    publish(staging, settings.lora_output_dir / "run_gguf01", manifest)

    code, out, _ = run(capsys, "activate", "run_gguf01")
    printed = json.loads(out)
    assert code == 0 and printed["adapterId"] == "run_gguf01"
    assert Path(printed["export"]["path"]).is_file()
    shown = json.loads(run(capsys, "show", "run_gguf01", "--json")[1])
    assert shown["exports"]["gguf"]["path"] == printed["export"]["path"]


def test_a_failed_export_keeps_the_activation_and_says_how_to_retry(
    env: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OLLAMA_EXPORT", "true")
    monkeypatch.setenv("MODEL_CACHE_DIR", str(env.model_cache_dir))
    manifest = env.lora_output_dir / IDS[0] / "manifest.json"
    sealed = json.loads(manifest.read_text())
    # a base model that is not there: the export, not the activation, fails
    manifest.write_text(json.dumps({**sealed, "baseModel": str(env.lora_output_dir / "gone")}))
    code, out, err = run(capsys, "activate", IDS[0])
    assert code == 1 and json.loads(out)["adapterId"] == IDS[0]
    assert "is active, but GGUF export" in err and f"export-gguf {IDS[0]}" in err
    assert json.loads(run(capsys, "show", "active")[1])["adapterId"] == IDS[0]
