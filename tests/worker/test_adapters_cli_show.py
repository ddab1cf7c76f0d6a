"""`tmde-finetune adapters show ID`: the gate, the lineage and the samples side by side, for a
person; `--json` for a program. The promotion and samples follow /work/notes/gate_shape.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shared import cli
from shared.settings import Settings
from tests.adapters import make_adapter

FULL_PROMOTION: dict[str, Any] = {
    "decision": "rejected",
    "reason": "drift: drift 0.6200 nats/token on the general prompts exceeds the maximum",
    "decidedBy": "drift",
    "reference": "run_parent0001",
    "candidateValLoss": 0.29,
    "referenceValLoss": 1.494,
    "improvement": 1.204,
    "improvementCi": [1.05, 1.34],
    "confidence": 0.95,
    "resamples": 2000,
    "examples": 21,
    "examplesLeftOut": 3,
    "minDelta": 0.01,
    "autoActivate": True,
    "criteria": {
        "loss": {
            "verdict": "pass",
            "improvement": 1.204,
            "improvementCi": [1.05, 1.34],
            "minDelta": 0.01,
            "why": "validation loss improved by 1.2040, 95% interval [1.0500, 1.3400]",
        },
        "generation": {
            "verdict": "pass",
            "metric": "exactMatch",
            "candidate": 0.5,
            "reference": 0.25,
            "drop": -0.25,
            "maxDrop": 0.1,
            "examples": 16,
        },
        "preference": {"verdict": "not measured", "why": "no held-out preference pairs"},
        "drift": {
            "verdict": "fail",
            "drift": 0.62,
            "maxDrift": 0.5,
            "candidateLoss": 1.02,
            "baseLoss": 0.4,
            "prompts": 120,
        },
    },
}
# before the gate recorded intervals and criteria
OLD_PROMOTION: dict[str, Any] = {
    "decision": "promoted",
    "reason": "validation loss improved by 0.3000 over base model",
    "reference": "base model",
    "candidateValLoss": 1.2,
    "referenceValLoss": 1.5,
    "improvement": 0.3,
    "minDelta": 0.01,
}
SAMPLES: list[dict[str, Any]] = [
    {
        "instruction": "What is 6 * 7?",
        "reference": "42",
        "base": "It is 41.",
        "adapter": "42",
        "baseScore": {"exactMatch": False, "rougeL": 0.0},
        "adapterScore": {"exactMatch": True, "rougeL": 1.0},
        "active": "forty-two\nI think",
        "activeScore": {"exactMatch": None, "rougeL": 0.5},
    },
    {
        "instruction": "Say <b>hi</b>",
        "reference": "<script>window.pwned = 1</script>hi",
        "base": '<img src=x onerror="window.pwned = 1">',
        "adapter": "hi",
        "baseScore": {"exactMatch": None, "rougeL": 0.25},
        "adapterScore": {"exactMatch": None, "rougeL": 0.75},
        "active": None,
        "activeScore": None,
    },
]


def publish_with_gate(
    root: Path,
    adapter_id: str,
    *,
    promotion: dict[str, Any] | None,
    samples: list[dict[str, Any]] | None = None,
    parent: str | None = None,
    **kwargs: Any,
) -> Path:
    """A published adapter whose manifest carries a promotion and a parent, and its samples
    (written after sealing, as tests/app/test_adapters_api.py does: read, never verified)."""
    folder = make_adapter(root, adapter_id, **kwargs)
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest.update(promotion=promotion, parentAdapter=parent)
    manifest_path.write_text(json.dumps(manifest))
    if samples is not None:
        (folder / "samples.json").write_text(json.dumps(samples))
    return folder


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
