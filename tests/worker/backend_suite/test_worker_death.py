"""A trainer in a process of its own (Axolotl's helper) stops when the worker process that
supervises it is killed, as the watchdog kills a hung task (SIGKILL), instead of holding the
GPU as an orphan. trl and unsloth train in the worker's own process: nothing can outlive it."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.processes import pids_matching, wait_gone
from tests.worker.supervisor import start_wedged

HELPER = "worker.training.backends.axolotl_helper train"


def test_the_axolotl_helper_stops_when_its_worker_process_is_killed(
    make_job, backend: str, tmp_path: Path
) -> None:
    if backend != "axolotl":
        pytest.skip("trl and unsloth train inside the worker process")
    job = make_job([], maxSteps=40, evalSteps=100, saveSteps=100)
    # wedged at step 2, after step 1's event: only the watchdog helps
    supervisor = start_wedged(job, tmp_path, hang_at_step=2, nproc=1, until="progress")
    try:
        helpers = pids_matching(HELPER)
        assert helpers, "no Axolotl helper running"
        supervisor.kill()
        supervisor.wait()
        assert wait_gone(helpers, 30), "the helper outlived its killed worker"
    finally:
        supervisor.kill()
        for pid in pids_matching(HELPER):
            os.kill(pid, signal.SIGKILL)
