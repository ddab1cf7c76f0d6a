"""Test-only fault injection shared by every trainer callback: a real OOM, a wedged trainer.

The in-process callback (callbacks.PipelineCallback) and Axolotl's plugin (axolotl_plugin, in
Axolotl's own environment) both call `inject_faults` after each step, so the backend suite can
drive every backend down the same OOM and watchdog paths. It lives apart from callbacks.py so
that the plugin, and the SFT loop that callbacks imports, need neither transformers nor a cycle.
"""

from __future__ import annotations

import os
import time

# "STEP:MIN_BATCH" makes training raise the real torch.OutOfMemoryError at optimizer step STEP
# while the micro-batch is at least MIN_BATCH (so a halved retry can pass).
OOM_HOOK_ENV = "TMDE_TEST_RAISE_OOM"
# The trainer hangs (sleeps, no heartbeat) at this optimizer step.
HANG_HOOK_ENV = "TMDE_TEST_HANG_AT_STEP"


def oom_hook() -> tuple[int, int] | None:
    """(step, minimum micro-batch) from TMDE_TEST_RAISE_OOM, or None when it is unset."""
    raw = os.environ.get(OOM_HOOK_ENV)
    if not raw:
        return None
    step, min_batch = raw.split(":")
    return int(step), int(min_batch)


def inject_faults(step: int, batch_size: int, oom: tuple[int, int] | None) -> None:
    """Hang or raise OOM at `step` when a test asked for it (`oom`: see oom_hook)."""
    if os.environ.get(HANG_HOOK_ENV) == str(step):
        while True:  # a wedged kernel, a deadlocked collective: only the watchdog helps
            time.sleep(60)
    if oom and step == oom[0] and batch_size >= oom[1]:
        import torch

        raise torch.OutOfMemoryError("CUDA out of memory (injected by TMDE_TEST_RAISE_OOM)")
