"""The trl backend on the tiny model: events, artifacts, cancel, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.errors import BackendUnavailableError, CancelledError, PipelineError
from shared.events import Emitter, ProgressEvent
from shared.settings import Settings
from tests.worker.conftest import tiny_job
from worker.training.job import TrainJob, resolve_backend, run_backend


def _job(
    settings: Settings, tiny_model: Path, export_dir: Path, events: list, **overrides
) -> TrainJob:
    return tiny_job(settings, tiny_model, export_dir, events, **overrides)


def test_training_emits_the_seed_events_and_saves_an_adapter(
    settings: Settings, tiny_model: Path, export_dir: Path
) -> None:
    events: list[ProgressEvent] = []
    job = _job(settings, tiny_model, export_dir, events)
    result = run_backend(job)
    types = [e.type for e in events if e.type != "heartbeat"]
    assert types[0] == "training_start" and events[0].total_steps == 4
    assert types.count("progress") == 4
    assert types.count("eval") == 2 and types.count("checkpoint") == 2
    progress = [e for e in events if e.type == "progress"]
    assert [e.step for e in progress] == [1, 2, 3, 4]
    assert all(e.loss > 0 and e.learning_rate is not None for e in progress), progress
    assert all(e.run_id == "run_test" for e in events)
    assert (job.checkpoint_dir / "checkpoint-2").is_dir()
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer_config.json"} <= {
        p.name for p in job.adapter_dir.iterdir()
    }
    m = result.metrics
    assert m["total_steps"] == 4 and m["final_train_loss"] == progress[-1].loss
    assert m["best_val_loss"] == min(e.eval_loss for e in events if e.type == "eval")
    assert m["train_tokens"] > 0 and m["tokens_per_second"] > 0 and m["peak_ram_gb"] > 0
    assert result.hyperparameters["lora"]["r"] == 16


def test_cancel_stops_at_the_next_step_without_an_adapter(
    settings: Settings, tiny_model: Path, export_dir: Path
) -> None:
    events: list[ProgressEvent] = []
    job = _job(settings, tiny_model, export_dir, events, maxSteps=50)
    job.should_cancel = lambda: any(e.type == "progress" and e.step >= 2 for e in events)
    with pytest.raises(CancelledError):
        run_backend(job)
    assert max(e.step for e in events if e.type == "progress") <= 3
    assert not job.adapter_dir.exists()


def test_unknown_target_modules_name_the_available_ones(
    settings: Settings, tiny_model: Path, export_dir: Path
) -> None:
    job = _job(settings, tiny_model, export_dir, [], targetModules=["c_attn"])
    with pytest.raises(PipelineError, match=r"c_attn.*q_proj"):
        run_backend(job)


def test_out_of_memory_becomes_the_oom_error(
    settings: Settings, tiny_model: Path, export_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    from transformers import Trainer

    def boom(*args: object, **kwargs: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Trainer, "train", boom)
    with pytest.raises(PipelineError) as info:
        run_backend(_job(settings, tiny_model, export_dir, []))
    assert info.value.code == "OOM" and info.value.exit_code == 3
    assert "Reduce batch_size" in info.value.suggestion


def test_backend_choice() -> None:
    assert resolve_backend("auto") == "trl"
    job = TrainJob(
        "r",
        {"backend": "axolotl"},
        Path("."),
        Path("."),
        Path("."),
        Path("."),
        Path("."),
        Emitter("r"),
    )
    with pytest.raises(BackendUnavailableError, match="FINETUNE_BACKEND=trl"):
        run_backend(job)
