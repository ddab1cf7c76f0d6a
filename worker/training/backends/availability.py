"""Whether each training backend can run in this installation, and what to do when it cannot.

Checked before anything heavy loads (the pipeline calls it before it resolves the model), so a
missing extra is one clear BackendUnavailableError instead of a stack trace from deep inside an
import. Nothing here imports torch, TRL or Unsloth at module level: the checks look packages up
with importlib.util.find_spec, and only `cuda_available` imports torch, when called.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess


def unsloth_installed() -> bool:
    """True when Unsloth can be imported here (found without importing it: that is slow)."""
    return importlib.util.find_spec("unsloth") is not None


def cuda_available() -> bool:
    """A usable CUDA device. Called inside the training task only (never in a forking parent)."""
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def trl_problem(python_path: str | None = None) -> str | None:
    """Why the trl backend cannot run here; None when it can (`python_path` is not used)."""
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


def unsloth_problem(python_path: str | None = None) -> str | None:
    """Why the unsloth backend cannot run here; None when it can (`python_path` is not used)."""
    if unsloth_installed():
        return None
    return (
        "The 'unsloth' backend needs Unsloth, which is not installed in this environment. "
        "Install it in an environment of its own (`make venv-unsloth`, then run the worker "
        "from .venv-unsloth; the GPU image has it): the `unsloth` extra cannot share one "
        "with `train` (Unsloth needs datasets<5). Or set FINETUNE_BACKEND=trl (CPU and GPU)."
    )


def axolotl_problem(python_path: str | None = None) -> str | None:
    """Why Axolotl cannot run from `python_path` (default: the settings' PYTHON_PATH)."""
    python_path = python_path or _settings_python_path()
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


def _version(package: str) -> tuple[int, ...]:
    from importlib.metadata import version

    return tuple(int(p) for p in version(package).split(".")[:2] if p.isdigit())


def _settings_python_path() -> str:
    from shared.settings import Settings

    return Settings.from_env().python_path
