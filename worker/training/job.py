"""The job a training backend receives and the result it returns: the types only.

They live apart from the backends and their registry (worker/training/backends) so that every
backend can import them without importing the code that dispatches to it: no import cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.events import Emitter
from shared.run_config import FineTuneConfig


@dataclass
class TrainJob:
    """Everything a backend needs; paths are prepared by the caller.

    run_id:         the run (events carry it)
    config:         the validated run configuration
    model_path:     a local folder with the base model (already resolved)
    train_path:     Alpaca JSONL to train on
    val_path:       Alpaca JSONL for evaluation during training
    train_pairs_path, val_pairs_path:
                    preference pairs (worker/pairs.py) for the DPO stage; None: no pairs
    adapter_dir:    where the finished adapter is written (a staging folder, not the final path)
    checkpoint_dir: where `checkpoint-N` folders go
    emitter:        receives the seed §5.1 events
    should_cancel:  polled after every step; True stops training (CancelledError)
    should_stop:    polled after every step; True saves a checkpoint there and stops training
                    (HandedOverError): the worker is shutting down and another will resume
    torch_threads:  intra-op threads for torch on a CPU; 0 keeps torch's default
    resume_from:    a `checkpoint-N` folder to continue from (crash resume), or None; under
                    `dpo/` it is the DPO stage's (worker/training/stages.py)
    python_path:    the interpreter of Axolotl's environment (PYTHON_PATH); None reads it from
                    the environment's settings
    init_adapter:   a published adapter folder whose weights the run starts from (warm start,
                    initFrom "active"); None starts a fresh LoRA
    """

    run_id: str
    config: FineTuneConfig
    model_path: Path
    train_path: Path
    val_path: Path
    adapter_dir: Path
    checkpoint_dir: Path
    emitter: Emitter
    should_cancel: Callable[[], bool] = lambda: False
    should_stop: Callable[[], bool] = lambda: False
    torch_threads: int = 0
    resume_from: Path | None = None
    python_path: str | None = None
    train_pairs_path: Path | None = None
    val_pairs_path: Path | None = None
    init_adapter: Path | None = None


@dataclass
class TrainResult:
    """What a backend reports: its name, the seed §5.1 metrics and training_args.json."""

    backend: str
    metrics: dict[str, Any]  # seed §5.1 names: final_train_loss, best_val_loss, total_steps, ...
    hyperparameters: dict[str, Any] = field(default_factory=dict)  # -> training_args.json
