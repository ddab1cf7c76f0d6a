"""The training backends, each named once: what it trains, how to tell it can run, how to run it.

Every backend implements `train(job: TrainJob) -> TrainResult`. This registry is the one place
that maps a name (the run config's `backend`, FINETUNE_BACKEND) to that function, so adding a
backend or an objective (the coming DPO stage adds "dpo" to trl) is one entry here, and the API's
list of names (shared.fields.BACKENDS) is checked against it by a test.

Importing this module is cheap and safe in a forking parent: the train functions import their
backend module (torch, transformers, TRL, Unsloth) only when called, and the availability
checks look packages up without importing them.

    trl      transformers + PEFT + TRL, in-process; CPU or GPU; always installed (`train` extra)
    unsloth  Unsloth's FastLanguageModel, 4-bit QLoRA on a GPU, in-process (`unsloth` extra)
    axolotl  Axolotl run as a subprocess with PYTHON_PATH (the `axolotl` extra's environment)
    auto     unsloth where CUDA and Unsloth are both present, else trl
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from shared.errors import BackendUnavailableError
from worker.training.backends import availability
from worker.training.job import TrainJob, TrainResult

AUTO = "auto"
SFT = "sft"
DPO = "dpo"


@dataclass(frozen=True)
class Backend:
    """One training backend.

    unavailable_reason: (python_path) -> why it cannot run here, with the fix; None when it can
    train:              the backend's train function (imports the backend module when called)
    objectives:         the training stages it implements ("sft", "dpo"): a run's objective
                        (sft, dpo, sft+dpo) needs each of its stages
    distributed:        whether it runs on several ranks under torchrun (FINETUNE_NPROC > 1)
    """

    name: str
    unavailable_reason: Callable[[str | None], str | None]
    train: Callable[[TrainJob], TrainResult]
    objectives: tuple[str, ...]
    distributed: bool = False


# The imports live inside the functions: importing the registry must not load torch or TRL.
def _train_trl(job: TrainJob) -> TrainResult:
    from worker.training.backends.trl_backend import train

    return train(job)


def _train_unsloth(job: TrainJob) -> TrainResult:
    from worker.training.backends.unsloth_backend import train

    return train(job)


def _train_axolotl(job: TrainJob) -> TrainResult:
    from worker.training.backends.axolotl_backend import train

    return train(job)


TRL = Backend("trl", availability.trl_problem, _train_trl, (SFT, DPO), distributed=True)
UNSLOTH = Backend("unsloth", availability.unsloth_problem, _train_unsloth, (SFT, DPO))
AXOLOTL = Backend("axolotl", availability.axolotl_problem, _train_axolotl, (SFT, DPO))
BACKENDS: dict[str, Backend] = {backend.name: backend for backend in (TRL, UNSLOTH, AXOLOTL)}


def backend_names() -> tuple[str, ...]:
    """Every name a run config may carry: `auto` and the registered backends."""
    return (AUTO, *BACKENDS)


def resolve_backend(
    name: str,
    *,
    nproc: int = 1,
    cuda: Callable[[], bool] = availability.cuda_available,
    unsloth: Callable[[], bool] = availability.unsloth_installed,
) -> str:
    """`auto` -> `unsloth` where CUDA and Unsloth are present, else `trl`; others unchanged.
    A run on several processes (`nproc` > 1) takes `trl`: the only distributed backend."""
    if name != AUTO:
        return name
    return UNSLOTH.name if nproc == 1 and unsloth() and cuda() else TRL.name


def unavailable_reason(backend: str, python_path: str | None = None) -> str | None:
    """Why `backend` cannot run in this installation, with what to do; None when it can."""
    found = BACKENDS.get(backend)
    if found is None:
        return f"Unknown backend {backend!r}: use one of {', '.join(backend_names())}."
    return found.unavailable_reason(python_path)


def objective_problem(backend: str, objective: str) -> str | None:
    """Why `backend` cannot train `objective` (a stage it does not implement); None if it can."""
    found = BACKENDS.get(backend)
    missing = [s for s in objective.split("+") if found and s not in found.objectives]
    if not missing:
        return None
    able = [
        b.name for b in BACKENDS.values() if all(s in b.objectives for s in objective.split("+"))
    ]
    return (
        f"Backend {backend!r} cannot train objective {objective!r}: it has no "
        f"{' or '.join(missing)} stage. Use objective 'sft' or backend {' or '.join(able)}."
    )


def require_backend(backend: str, python_path: str | None = None, objective: str = SFT) -> None:
    """BackendUnavailableError, with the fix, when `backend` cannot run in this installation
    or cannot train `objective`: before anything loads, instead of a stack trace from deep
    inside an import."""
    problem = unavailable_reason(backend, python_path) or objective_problem(backend, objective)
    if problem:
        raise BackendUnavailableError(problem, suggestion="Set FINETUNE_BACKEND=trl")


def run_backend(job: TrainJob) -> TrainResult:
    """Train with the backend the job's config names (after `auto`)."""
    backend = resolve_backend(job.config.backend)
    require_backend(backend, job.python_path, job.config.objective)
    return BACKENDS[backend].train(job)
