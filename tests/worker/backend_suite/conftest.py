"""The backend suite: the same tests for every training backend.

The base run (`pytest`) runs it for `trl`. Each heavy backend runs it from its own environment:

    .venv-unsloth/bin/python -m pytest tests/worker/backend_suite --backend unsloth
    .venv-axolotl/bin/python -m pytest tests/worker/backend_suite --backend axolotl

(`make test-backends` does both; `make test` depends on it.)
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from shared.events import ProgressEvent
from shared.settings import Settings
from tests.worker.conftest import tiny_job
from worker.training.backends import BACKENDS
from worker.training.job import TrainJob


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--backend",
        default="trl",
        choices=tuple(BACKENDS),
        help="training backend the backend suite runs against (default trl)",
    )


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--backend", default="trl") == "unsloth":
        # Unsloth patches transformers, TRL and PEFT when it is imported first, as a worker
        # process that trains with it does; the fixtures below import transformers.
        import unsloth  # noqa: F401


@pytest.fixture(scope="session")
def backend(request: pytest.FixtureRequest) -> str:
    # getoption's default covers a run from the repository root, where this conftest is not
    # one pytest reads before parsing the command line.
    return request.config.getoption("--backend", default="trl")


@pytest.fixture
def make_job(
    settings: Settings, tiny_model: Path, export_dir: Path, backend: str
) -> Callable[..., TrainJob]:
    """A TrainJob on the tiny model for the selected backend; events go to `events`."""

    def make(events: list[ProgressEvent], **overrides: object) -> TrainJob:
        job = tiny_job(
            settings, tiny_model, export_dir, events, "run_suite", backend=backend, **overrides
        )
        job.torch_threads = 2
        job.python_path = sys.executable  # Axolotl runs as a subprocess of this environment
        return job

    return make
