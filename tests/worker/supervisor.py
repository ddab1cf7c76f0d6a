"""A stand-in for the worker process that a test can SIGKILL, as the watchdog kills a hung
task: it runs one TrainJob (on N ranks when nproc > 1) with its trainer wedged at a step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from worker.training.distributed import job_to_dict
from worker.training.hooks import HANG_HOOK_ENV
from worker.training.job import TrainJob

SCRIPT = """
import json, sys
from shared.events import Emitter, stdout_sink
from worker.training.distributed import job_from_dict, run_distributed
from worker.training.backends import run_backend
job_file, nproc = sys.argv[1], int(sys.argv[2])
data = json.load(open(job_file))
job = job_from_dict(data, Emitter(data["run_id"], [stdout_sink()]))
job.python_path = sys.executable
run_distributed(job, nproc) if nproc > 1 else run_backend(job)
"""


def start_wedged(
    job: TrainJob, folder: Path, *, hang_at_step: int, nproc: int, until: str
) -> subprocess.Popen[bytes]:
    """Start the supervisor; return it once its stdout carried an `until` event."""
    job_file = folder / "supervised-job.json"
    job_file.write_text(json.dumps(job_to_dict(job)))
    supervisor = subprocess.Popen(
        [sys.executable, "-u", "-c", SCRIPT, str(job_file), str(nproc)],
        env={**os.environ, HANG_HOOK_ENV: str(hang_at_step)},
        stdout=subprocess.PIPE,
    )
    marker = f'"type": "{until}"'.encode()
    for line in supervisor.stdout:
        if marker in line:
            break
    return supervisor
