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
from shared.registry import MANIFEST, SEALED_EXCLUDES

# seed §5.1 metric names -> manifest §6.1 names
METRIC_NAMES = {
    "final_train_loss": "finalTrainLoss",
    "final_val_loss": "finalValLoss",
    "best_val_loss": "bestValLoss",
    "total_steps": "totalSteps",
    "training_time_seconds": "trainingTimeSeconds",
    "peak_vram_gb": "peakVramGb",
    "peak_ram_gb": "peakRamGb",
    "base_val_loss": "baseValLoss",
    "adapter_val_loss": "adapterValLoss",
    "base_perplexity": "basePerplexity",
    "adapter_perplexity": "adapterPerplexity",
    "tokens_per_second": "tokensPerSecond",
    "train_tokens": "trainTokens",
    "reference_val_loss": "referenceValLoss",
    "generation_examples": "generationExamples",
    "base_exact_match": "baseExactMatch",
    "adapter_exact_match": "adapterExactMatch",
    "exact_match_examples": "exactMatchExamples",
    "base_rouge_l": "baseRougeL",
    "adapter_rouge_l": "adapterRougeL",
    "rouge_l_examples": "rougeLExamples",
}


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


def camel_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    return {METRIC_NAMES[k]: v for k, v in metrics.items() if k in METRIC_NAMES}


def build_manifest(
    *,
    run_id: str,
    base_model: str,
    backend: str,
    config: dict[str, Any],
    metrics: dict[str, Any],
    traces_used: int,
    train_examples: int,
    val_examples: int,
    provenance: dict[str, Any],
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
        "isActive": False,
        "tags": [],
        "sizeBytes": 0,
        "sha256": "",
        "config": {
            "loraRank": config["loraRank"],
            "loraAlpha": config["loraAlpha"],
            "loraDropout": config["loraDropout"],
            "targetModules": config["targetModules"],
            "learningRate": config["learningRate"],
            "batchSize": config["batchSize"],
            "gradAccum": config["gradAccum"],
            "epochs": config["epochs"],
            "maxSteps": config["maxSteps"],
            "maxSeqLen": config["maxSeqLen"],
            "seed": config["seed"],
        },
        "metrics": camel_metrics(metrics),
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
