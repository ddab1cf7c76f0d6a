"""The backend registry (worker/training/backends): the names the API accepts are exactly the
registered backends plus `auto`, every backend trains SFT, and importing the registry loads no
training library (it is imported by the Celery parent, which must stay fork-safe and small)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from shared import fields
from shared.errors import BackendUnavailableError
from worker.training.backends import (
    AUTO,
    BACKENDS,
    SFT,
    backend_names,
    require_backend,
    unavailable_reason,
)

HEAVY = ("torch", "transformers", "trl", "peft", "datasets", "unsloth", "axolotl")


def test_the_api_accepts_exactly_the_registered_backends_and_auto() -> None:
    assert set(fields.BACKENDS) == {AUTO, *BACKENDS}
    assert backend_names() == (AUTO, *BACKENDS)


def test_every_backend_is_named_once_and_trains_sft() -> None:
    for name, backend in BACKENDS.items():
        assert backend.name == name
        assert SFT in backend.objectives, name
        assert callable(backend.train) and callable(backend.unavailable_reason)
    # FINETUNE_NPROC > 1 needs a distributed backend for `auto` to resolve to
    assert BACKENDS["trl"].distributed


def test_an_unknown_backend_lists_the_known_ones() -> None:
    reason = unavailable_reason("deepspeed") or ""
    assert all(name in reason for name in backend_names()), reason
    with pytest.raises(BackendUnavailableError, match="Unknown backend 'deepspeed'"):
        require_backend("deepspeed")


def test_importing_the_registry_loads_no_training_library() -> None:
    probe = (
        "import json, sys; import worker.training.backends, worker.training.job; "
        f"print(json.dumps(sorted(m for m in {list(HEAVY)!r} if m in sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    assert json.loads(done.stdout) == [], done.stdout
