"""The one interface every training backend implements: `train(job) -> TrainResult`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.errors import BackendUnavailableError
from shared.events import Emitter


@dataclass
class TrainJob:
    """Everything a backend needs; paths are prepared by the caller.

    run_id:         the run (events carry it)
    config:         the validated FineTuneConfig values (camelCase)
    model_path:     a local folder with the base model (already resolved)
    train_path:     Alpaca JSONL to train on
    val_path:       Alpaca JSONL for evaluation during training
    adapter_dir:    where the finished adapter is written (a staging folder, not the final path)
    checkpoint_dir: where `checkpoint-N` folders go
    emitter:        receives the seed §5.1 events
    should_cancel:  polled after every step; True stops training (CancelledError)
    torch_threads:  intra-op threads for torch on a CPU; 0 keeps torch's default
    resume_from:    a `checkpoint-N` folder to continue from (crash resume), or None
    """

    run_id: str
    config: dict[str, Any]
    model_path: Path
    train_path: Path
    val_path: Path
    adapter_dir: Path
    checkpoint_dir: Path
    emitter: Emitter
    should_cancel: Callable[[], bool] = lambda: False
    torch_threads: int = 0
    resume_from: Path | None = None


@dataclass
class TrainResult:
    backend: str
    metrics: dict[str, Any]  # seed §5.1 names: final_train_loss, best_val_loss, total_steps, ...
    hyperparameters: dict[str, Any] = field(default_factory=dict)  # -> training_args.json


def resolve_backend(name: str) -> str:
    """`auto` -> the backend actually used on this machine."""
    if name == "auto":
        return "trl"
    return name


def run_backend(job: TrainJob) -> TrainResult:
    backend = resolve_backend(job.config["backend"])
    if backend == "trl":
        from worker.training.backends import trl_backend

        return trl_backend.train(job)
    raise BackendUnavailableError(
        f"The {backend!r} backend is not available in this installation. "
        "Use backend 'trl' (FINETUNE_BACKEND=trl), which runs on CPU and GPU."
    )
