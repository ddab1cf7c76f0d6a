"""Published adapter folders for registry tests: real files, sealed exactly as the worker does
(worker.training.artifacts.publish), without training a model."""

from __future__ import annotations

import json
import os
from pathlib import Path

from worker.training.artifacts import publish


def make_adapter(
    root: Path,
    adapter_id: str,
    *,
    created: str = "2026-11-29T00:00:00Z",
    base_model: str = "smollm2:135m",
    val_loss: float = 1.0,
    tags: list[str] | None = None,
    metrics: dict | None = None,
    config: dict | None = None,
) -> Path:
    staging = root / ".work" / adapter_id / "adapter"
    staging.mkdir(parents=True)
    (staging / "adapter_config.json").write_text(json.dumps({"r": 8, "peft_type": "LORA"}))
    (staging / "adapter_model.safetensors").write_bytes(os.urandom(256))
    manifest = {
        "id": adapter_id,
        "createdAt": created,
        "baseModel": base_model,
        "isActive": False,
        "tags": tags or [],
        "metrics": {"adapterValLoss": val_loss, **(metrics or {})},
        **({"config": config} if config is not None else {}),
    }
    return publish(staging, root / adapter_id, manifest)
