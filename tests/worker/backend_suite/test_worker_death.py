"""A trainer in a process of its own (Axolotl's helper) stops when the worker process that
supervises it is killed, as the watchdog kills a hung task (SIGKILL), instead of holding the
GPU as an orphan. trl and unsloth train in the worker's own process: nothing can outlive it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import pids_matching, wait_gone
from worker.training.callbacks import HANG_HOOK_ENV
from worker.training.distributed import job_to_dict

SUPERVISOR = """
import json, sys
from shared.events import Emitter, stdout_sink
from worker.training.distributed import job_from_dict
from worker.training.job import run_backend
job = job_from_dict(json.load(open(sys.argv[1])), Emitter("run_suite", [stdout_sink()]))
job.python_path = sys.executable
run_backend(job)
"""
HELPER = "worker.training.backends.axolotl_helper train"


def test_the_axolotl_helper_stops_when_its_worker_process_is_killed(
    make_job, backend: str, tmp_path: Path
) -> None:
    if backend != "axolotl":
        pytest.skip("trl and unsloth train inside the worker process")
    job = make_job([], maxSteps=40, evalSteps=100, saveSteps=100)
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(job_to_dict(job)))
    hung = {**os.environ, HANG_HOOK_ENV: "2"}  # wedged at step 2: only the watchdog helps
    supervisor = subprocess.Popen(
        [sys.executable, "-u", "-c", SUPERVISOR, str(job_file)], env=hung, stdout=subprocess.PIPE
    )
    try:
        for line in supervisor.stdout:
            if b'"progress"' in line:
                break
        helpers = pids_matching(HELPER)
        assert helpers, "no Axolotl helper running"
        supervisor.kill()
        supervisor.wait()
        assert wait_gone(helpers, 30), "the helper outlived its killed worker"
    finally:
        supervisor.kill()
        for pid in pids_matching(HELPER):
            os.kill(pid, signal.SIGKILL)
