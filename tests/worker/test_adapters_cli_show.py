"""`tmde-finetune adapters show ID`: the gate, the lineage and the samples side by side, for a
person; `--json` for a program."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared import cli
from shared.settings import Settings
from tests.gate_records import FULL_PROMOTION, OLD_PROMOTION, SAMPLES, publish_with_gate


@pytest.fixture
def root(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LORA_OUTPUT_DIR", str(settings.lora_output_dir))
    return settings.lora_output_dir


def show(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = cli.main(["adapters", "show", *argv])
    return code, capsys.readouterr().out


def test_show_summarises_the_gate_lineage_and_samples(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    publish_with_gate(
        root, "run_grand00001", promotion=OLD_PROMOTION, created="2026-11-01T00:00:00Z"
    )
    publish_with_gate(root, "run_parent0001", promotion=None, parent="run_grand00001")
    publish_with_gate(
        root,
        "run_child00001",
        promotion=FULL_PROMOTION,
        samples=SAMPLES,
        parent="run_parent0001",
        base_model="smollm2:135m",
    )
    code, out = show(capsys, "run_child00001")
    assert code == 0
    assert not out.lstrip().startswith("{")  # a summary, not the JSON
    lines = out.splitlines()
    assert "adapter      run_child00001" in lines and "base model   smollm2:135m" in lines
    assert "active       no" in lines
    assert "continues    run_parent0001 <- run_grand00001" in lines
    assert "gate         rejected (decided by drift)" in lines
    assert "delta loss 1.2040 [1.0500, 1.3400] at 95% (2000 resamples)" in out
    assert "21 scored, 3 left out" in out and "against     run_parent0001" in out
    rows = {line.split()[0]: line for line in lines if line.startswith("  ") and line.split()}
    assert "pass" in rows["loss"] and "min delta 0.01" in rows["loss"]
    assert "exactMatch 0.25 -> 0.50" in rows["generation"] and "16 examples" in rows["generation"]
    assert "not measured  no held-out preference pairs" in rows["preference"]
    assert "fail" in rows["drift"] and "drift 0.6200 (max 0.5)" in out and "120 prompts" in out
    assert "forgetting  drift 0.6200 nats/token from the base model (max 0.5)" in out
    # the samples side by side: each answer with its score, the active adapter's where it has one
    assert "question   What is 6 * 7?" in out and "reference  42" in out
    assert "base       It is 41. [no exact match]" in out
    assert "adapter    42 [exact match]" in out
    assert "active     forty-two" in out and "I think [ROUGE-L 0.50]" in out
    assert out.count("    active     ") == 1  # the second row had no active adapter
    assert "[ROUGE-L 0.25]" in out and "<script>" in out  # text as it is: a terminal is no HTML


def test_show_an_old_promotion_and_a_deleted_parent(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    publish_with_gate(root, "run_old0000001", promotion=OLD_PROMOTION, parent="run_gone000001")
    code, out = show(capsys, "run_old0000001")
    assert code == 0
    assert "gate         promoted" in out and "delta loss 0.3000" in out
    assert "[" not in out.split("delta loss")[1].splitlines()[0]  # no interval: none printed
    assert "continues    run_gone000001 (deleted)" in out
    assert "samples      0" in out


def test_show_json_parses_and_keeps_the_manifest(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    publish_with_gate(root, "run_parent0001", promotion=None)
    publish_with_gate(
        root, "run_child00001", promotion=FULL_PROMOTION, samples=SAMPLES, parent="run_parent0001"
    )
    code, out = show(capsys, "run_child00001", "--json")
    shown = json.loads(out)
    assert code == 0 and shown["id"] == "run_child00001" and shown["isActive"] is False
    assert shown["promotion"] == FULL_PROMOTION and shown["samples"] == SAMPLES
    assert [entry["id"] for entry in shown["lineage"]] == ["run_parent0001"]
    assert shown["lineage"][0]["missing"] is False
    # `show active` is still active.json as JSON
    code, out = show(capsys, "active")
    assert code == 0 and json.loads(out)["adapterId"] is None


def test_a_parent_cycle_ends_the_lineage(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    publish_with_gate(root, "run_a000000001", promotion=None, parent="run_b000000001")
    publish_with_gate(root, "run_b000000001", promotion=None, parent="run_a000000001")
    code, out = show(capsys, "run_a000000001", "--json")
    assert code == 0 and [e["id"] for e in json.loads(out)["lineage"]] == ["run_b000000001"]


def test_show_of_a_missing_adapter_exits_4(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["adapters", "show", "run_nothere001"]) == 4
    assert "Adapter not found" in capsys.readouterr().err
