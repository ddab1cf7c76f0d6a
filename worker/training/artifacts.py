"""Adapter artifacts (seed §6): where a run's files live and how they are published.

    <LORA_OUTPUT_DIR>/.work/<run_id>/checkpoints/   checkpoint-N folders while training
    <LORA_OUTPUT_DIR>/.work/<run_id>/adapter/       the adapter being assembled (staging)
    <LORA_OUTPUT_DIR>/<run_id>/                     the published adapter (one rename)

A failed or killed run never leaves a half adapter at its final path: everything is written in
the staging folder, which is renamed into place only once manifest.json is complete.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.events import utc_timestamp
from shared.fsutil import folder_digest, write_json_atomic
from shared.manifest import manifest_config, manifest_metrics
from shared.registry import MANIFEST, SEALED_EXCLUDES
from shared.run_config import FineTuneConfig


@dataclass(frozen=True)
class RunPaths:
    lora_output_dir: Path
    run_id: str

    @property
    def work_dir(self) -> Path:
        return self.lora_output_dir / ".work" / self.run_id

    @property
    def checkpoint_dir(self) -> Path:
        return self.work_dir / "checkpoints"

    @property
    def staging_dir(self) -> Path:
        return self.work_dir / "adapter"

    @property
    def final_dir(self) -> Path:
        return self.lora_output_dir / self.run_id

    def discard(self) -> None:
        shutil.rmtree(self.work_dir, ignore_errors=True)


def build_manifest(
    *,
    run_id: str,
    base_model: str,
    backend: str,
    config: FineTuneConfig,
    metrics: dict[str, Any],
    traces_used: int,
    train_examples: int,
    val_examples: int,
    provenance: dict[str, Any],
    train_pairs: int = 0,
    val_pairs: int = 0,
    parent_adapter: str | None = None,
) -> dict[str, Any]:
    """manifest.json of seed §6.1 (sha256 and sizeBytes are filled in by `publish`)."""
    return {
        "id": run_id,
        "createdAt": utc_timestamp(),
        "baseModel": base_model,
        "backend": backend,
        "tracesUsed": traces_used,
        "trainExamples": train_examples,
        "valExamples": val_examples,
        "objective": config.objective,
        "trainPairs": train_pairs,
        "valPairs": val_pairs,
        # the adapter it continued (warm start); GET /api/adapters/<id> follows the chain
        "parentAdapter": parent_adapter,
        "isActive": False,
        "tags": [],
        "sizeBytes": 0,
        "sha256": "",
        "config": manifest_config(config),
        "metrics": manifest_metrics(metrics),
        "provenance": provenance,
    }


def write_training_files(
    staging: Path, hyperparameters: dict[str, Any], metrics: dict[str, Any]
) -> None:
    write_json_atomic(staging / "training_args.json", hyperparameters)
    write_json_atomic(staging / "metrics.json", metrics)


def publish(staging: Path, final: Path, manifest: dict[str, Any]) -> Path:
    """Seal the staging folder (sha256 over every other file) and rename it into place."""
    sha256, size = folder_digest(staging, exclude=SEALED_EXCLUDES)
    write_json_atomic(staging / MANIFEST, {**manifest, "sha256": sha256, "sizeBytes": size})
    if final.exists():
        raise FileExistsError(f"{final} already exists; refusing to overwrite a published adapter")
    final.parent.mkdir(parents=True, exist_ok=True)
    os.rename(staging, final)
    return final
