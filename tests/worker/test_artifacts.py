"""Adapter publication: sealed manifest, atomic rename, no overwrite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.fsutil import folder_digest
from shared.manifest import MANIFEST_CONFIG_FIELDS, ManifestMetrics
from shared.run_config import FIELDS, build_config
from shared.settings import Settings
from worker.training import artifacts

CONFIG = {
    "loraRank": 8,
    "loraAlpha": 16,
    "loraDropout": 0.0,
    "targetModules": ["q_proj"],
    "learningRate": 1e-4,
    "batchSize": 2,
    "gradAccum": 1,
    "epochs": 1,
    "maxSteps": 3,
    "maxSeqLen": 64,
    "seed": 1,
    "objective": "sft",
    "dpoBeta": 0.1,
    "dpoEpochs": 1,
    "dpoMaxSteps": None,
    "dpoLearningRate": 5e-5,
}


def _manifest() -> dict:
    return artifacts.build_manifest(
        run_id="run_1",
        base_model="smollm2:135m",
        backend="trl",
        config=build_config(Settings(), CONFIG),
        metrics={"final_train_loss": 1.0, "total_steps": 3, "peak_vram_gb": None, "extra": 5},
        traces_used=10,
        train_examples=9,
        val_examples=1,
        provenance={"exportDir": "x"},
    )


def test_publish_seals_and_renames(tmp_path: Path) -> None:
    paths = artifacts.RunPaths(tmp_path, "run_1")
    paths.staging_dir.mkdir(parents=True)
    (paths.staging_dir / "adapter_model.safetensors").write_bytes(b"weights")
    artifacts.write_training_files(paths.staging_dir, {"lr": 1}, {"total_steps": 3})
    final = artifacts.publish(paths.staging_dir, paths.final_dir, _manifest())
    assert final == tmp_path / "run_1" and not paths.staging_dir.exists()
    manifest = json.loads((final / "manifest.json").read_text())
    assert (manifest["sha256"], manifest["sizeBytes"]) == folder_digest(
        final, exclude=("manifest.json",)
    )
    assert manifest["metrics"] == {"finalTrainLoss": 1.0, "totalSteps": 3, "peakVramGb": None}
    assert manifest["isActive"] is False and manifest["tags"] == []
    assert manifest["config"] == CONFIG  # exactly the training fields, camelCase
    assert manifest["metrics"] == {"finalTrainLoss": 1.0, "totalSteps": 3, "peakVramGb": None}


def test_publish_never_overwrites(tmp_path: Path) -> None:
    (tmp_path / "run_1").mkdir()
    staging = tmp_path / "stage"
    staging.mkdir()
    with pytest.raises(FileExistsError):
        artifacts.publish(staging, tmp_path / "run_1", _manifest())
    assert staging.exists()


def test_digest_changes_with_any_byte(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"1")
    first = folder_digest(tmp_path)
    (tmp_path / "a").write_bytes(b"2")
    assert folder_digest(tmp_path) != first


def test_manifest_names_are_the_models_aliases() -> None:
    assert set(CONFIG) == {FIELDS[name].alias for name in MANIFEST_CONFIG_FIELDS}
    aliases = {info.alias for info in ManifestMetrics.model_fields.values()}
    assert {"finalValLoss", "peakVramGb", "baseRougeL", "rougeLExamples"} <= aliases
