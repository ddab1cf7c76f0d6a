"""Promotion records and samples as the gate writes them (shared/promotion.py, worker/evaluate.py),
published in adapter folders for the CLI and dashboard tests, without training a model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
