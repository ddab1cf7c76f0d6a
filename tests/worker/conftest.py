"""Fixtures for worker tests: an exported dataset on disk."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from shared.settings import Settings
from worker.training.job import TrainJob

if TYPE_CHECKING:
    from shared.run_config import FineTuneConfig


@pytest.fixture
def export_dir(trace_store, settings: Settings) -> Path:
    from worker.export import export_traces

    out = settings.temp_dir / "run_test"
    export_traces(trace_store, min_quality=8.0, output_dir=out, val_split=0.2, seed=1)
    return out


def tiny_run_config(settings: Settings, model: Path, **overrides: object) -> FineTuneConfig:
    """A FineTuneConfig for 4 quick steps on the tiny model; `overrides` are camelCase."""
    from shared.run_config import build_config

    values = {
        "baseModel": str(model),
        "backend": "trl",
        "maxSteps": 4,
        "evalSteps": 2,
        "saveSteps": 2,
        "batchSize": 2,
        "gradAccum": 1,
        "maxSeqLen": 256,
        "evalSamples": 1,
        "objective": "sft",  # the DPO tests ask for theirs
        **overrides,
    }
    return build_config(settings, values)


def tiny_config(settings: Settings, model: Path, **overrides: object) -> dict[str, Any]:
    """tiny_run_config in its stored (camelCase JSON) form, as a run row carries it."""
    return tiny_run_config(settings, model, **overrides).to_dict()


def tiny_job(
    settings: Settings,
    model: Path,
    export_dir: Path,
    events: list,
    run_id: str = "run_test",
    **overrides: object,
) -> TrainJob:
    """A TrainJob on the tiny model and the exported dataset; events go to `events`."""
    from shared.events import Emitter

    work = settings.lora_output_dir / ".work" / run_id
    return TrainJob(
        run_id=run_id,
        config=tiny_run_config(settings, model, **overrides),
        model_path=model,
        train_path=export_dir / "train.jsonl",
        val_path=export_dir / "val.jsonl",
        train_pairs_path=export_dir / "train_pairs.jsonl",
        val_pairs_path=export_dir / "val_pairs.jsonl",
        adapter_dir=work / "adapter",
        checkpoint_dir=work / "checkpoints",
        emitter=Emitter(run_id, [events.append]),
    )
