"""A training child exits when the worker process that started it is killed (the watchdog's
SIGKILL), instead of running on orphaned."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.processes import alive, wait_gone

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG")

PARENT = """
import subprocess, sys
from worker.training.lifeline import child_env
child = subprocess.Popen(
    [sys.executable, "-m", "worker.training.lifeline", *sys.argv[1:]],
    env=child_env(), start_new_session=True,
)
print(child.pid, flush=True)
child.wait()
"""
SLEEPER = ["timeit", "-n", "1", "-r", "1", "import time; time.sleep(300)"]


def test_a_bound_child_exits_when_its_parent_is_killed() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, *SLEEPER], stdout=subprocess.PIPE)
    child = int(parent.stdout.readline())
    time.sleep(1)  # the child is past its prctl and sleeping
    assert alive(child)
    parent.kill()
    parent.wait()
    assert wait_gone([child], 10), "the child outlived its killed parent"


def test_without_the_lifeline_a_new_session_child_is_orphaned() -> None:
    # The control: what the watchdog's SIGKILL left behind before.
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT.replace("env=child_env(), ", ""), *SLEEPER],
        stdout=subprocess.PIPE,
    )
    child = int(parent.stdout.readline())
    try:
        parent.kill()
        parent.wait()
        assert not wait_gone([child], 3)
    finally:
        os.kill(child, signal.SIGKILL)
