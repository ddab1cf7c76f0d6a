"""Fixtures for worker tests: an exported dataset on disk."""

from __future__ import annotations

import json
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


@pytest.fixture(scope="module")
def adapters(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two random LoRA adapters on the tiny model (the evaluation tests' candidate, reference)."""
    from tests.eval_data import random_adapter

    root = tmp_path_factory.mktemp("adapters")
    return random_adapter(tiny_model, root / "a", 1), random_adapter(tiny_model, root / "b", 2)


@pytest.fixture(scope="module")
def val_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.eval_data import VAL_ROWS

    path = tmp_path_factory.mktemp("val") / "val.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in VAL_ROWS), encoding="utf-8")
    return path


@pytest.fixture
def rt(settings: Settings, migrated_url: str, trace_store, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A worker Runtime on the test's database and fakeredis, used by the pipeline's steps."""
    # imported here: the backend suite loads this file in Axolotl's environment, without them
    import fakeredis

    from shared.db import Database
    from shared.runs import RunStore
    from worker import pipeline
    from worker.runtime import Runtime

    settings = settings.replace(database_url=migrated_url)
    db = Database(migrated_url)
    runtime = Runtime(settings, db, fakeredis.FakeRedis(), RunStore(db))
    monkeypatch.setattr(pipeline, "runtime", lambda: runtime)
    return runtime
