"""The one interface every training backend implements: `train(job) -> TrainResult`.

Backends (FINETUNE_BACKEND):
    trl      transformers + PEFT + TRL, in-process; CPU or GPU; always installed (`train` extra)
    unsloth  Unsloth's FastLanguageModel, 4-bit QLoRA on a GPU, in-process (`unsloth` extra)
    axolotl  Axolotl run as a subprocess with PYTHON_PATH (the `axolotl` extra's environment)
    auto     unsloth where CUDA and Unsloth are both present, else trl
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
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
    should_stop:    polled after every step; True saves a checkpoint there and stops training
                    (HandedOverError): the worker is shutting down and another will resume
    torch_threads:  intra-op threads for torch on a CPU; 0 keeps torch's default
    resume_from:    a `checkpoint-N` folder to continue from (crash resume), or None
    python_path:    the interpreter of Axolotl's environment (PYTHON_PATH); None reads it from
                    the environment's settings
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
    should_stop: Callable[[], bool] = lambda: False
    torch_threads: int = 0
    resume_from: Path | None = None
    python_path: str | None = None


@dataclass
class TrainResult:
    backend: str
    metrics: dict[str, Any]  # seed §5.1 names: final_train_loss, best_val_loss, total_steps, ...
    hyperparameters: dict[str, Any] = field(default_factory=dict)  # -> training_args.json


def unsloth_installed() -> bool:
    """True when Unsloth can be imported here (found without importing it: that is slow)."""
    return importlib.util.find_spec("unsloth") is not None


def cuda_available() -> bool:
    """A usable CUDA device. Called inside the training task only (never in a forking parent)."""
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def resolve_backend(
    name: str,
    *,
    nproc: int = 1,
    cuda: Callable[[], bool] = cuda_available,
    unsloth: Callable[[], bool] = unsloth_installed,
) -> str:
    """`auto` -> `unsloth` where CUDA and Unsloth are present, else `trl`; others unchanged.
    A run on several processes (`nproc` > 1) takes `trl`: the only distributed backend."""
    if name != "auto":
        return name
    return "unsloth" if nproc == 1 and unsloth() and cuda() else "trl"


def unavailable_reason(backend: str, python_path: str | None = None) -> str | None:
    """Why `backend` cannot run in this installation, with what to do; None when it can."""
    if backend == "trl":
        return _trl_problem()
    if backend == "unsloth":
        if unsloth_installed():
            return None
        return (
            "The 'unsloth' backend needs Unsloth, which is not installed in this environment. "
            "Install it in an environment of its own (`make venv-unsloth`, then run the worker "
            "from .venv-unsloth; the GPU image has it): the `unsloth` extra cannot share one "
            "with `train` (Unsloth needs datasets<5). Or set FINETUNE_BACKEND=trl (CPU and GPU)."
        )
    if backend == "axolotl":
        return _axolotl_problem(python_path or _settings_python_path())
    return f"Unknown backend {backend!r}: use one of auto, trl, unsloth, axolotl."


def _trl_problem() -> str | None:
    if importlib.util.find_spec("trl") is None:
        return "The 'trl' backend needs the `train` extra: pip install 'tmde-finetune[train]'."
    # Measured: TRL 1.15 (the newest Unsloth 2026.10 allows) runs SFTTrainer's fused LM head
    # through a Triton kernel whenever Triton is installed, and Triton has no CPU driver.
    if _version("trl") < (1, 16) and importlib.util.find_spec("triton") and not cuda_available():
        return (
            f"TRL {'.'.join(map(str, _version('trl')))} with Triton installed cannot train on a "
            "CPU (its fused LM head needs a GPU). On a machine without CUDA run the worker from "
            "the base environment (`make install`, TRL 1.16), not from Unsloth's or Axolotl's."
        )
    return None


def _version(package: str) -> tuple[int, ...]:
    from importlib.metadata import version

    return tuple(int(p) for p in version(package).split(".")[:2] if p.isdigit())


def _settings_python_path() -> str:
    from shared.settings import Settings

    return Settings.from_env().python_path


def _axolotl_problem(python_path: str) -> str | None:
    exe = shutil.which(python_path) or (python_path if os.path.isfile(python_path) else None)
    fix = (
        "Install the extra in its own environment (`make venv-axolotl`) and point PYTHON_PATH "
        "at its python (e.g. PYTHON_PATH=.venv-axolotl/bin/python), or set FINETUNE_BACKEND=trl."
    )
    if exe is None:
        return f"The 'axolotl' backend runs PYTHON_PATH={python_path!r}, which was not found. {fix}"
    probe = "import importlib.util as u, sys; sys.exit(0 if u.find_spec('axolotl') else 3)"
    try:
        done = subprocess.run([exe, "-c", probe], capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"The 'axolotl' backend could not start {exe}: {exc}. {fix}"
    if done.returncode != 0:
        return f"Axolotl is not installed for PYTHON_PATH={python_path!r} ({exe}). {fix}"
    return None


def require_backend(backend: str, python_path: str | None = None) -> None:
    """BackendUnavailableError, with the fix, when `backend` cannot run in this installation:
    before anything loads, instead of a stack trace from deep inside an import."""
    problem = unavailable_reason(backend, python_path)
    if problem:
        raise BackendUnavailableError(problem, suggestion="Set FINETUNE_BACKEND=trl")


def run_backend(job: TrainJob) -> TrainResult:
    """Train with the backend the job's config names (after `auto`)."""
    backend = resolve_backend(job.config["backend"])
    require_backend(backend, job.python_path)
    if backend == "trl":
        from worker.training.backends import trl_backend

        return trl_backend.train(job)
    if backend == "unsloth":
        from worker.training.backends import unsloth_backend

        return unsloth_backend.train(job)
    from worker.training.backends import axolotl_backend

    return axolotl_backend.train(job)
