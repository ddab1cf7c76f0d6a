"""Every backend can start a run from a published adapter's weights (initFrom "active"): the
job's init_adapter is the LoRA it trains further, not a fresh one."""

from __future__ import annotations

import shutil
from pathlib import Path

from worker.training.backends import run_backend

from .test_preference_training import _lora_tensors


def test_a_warm_start_trains_the_parents_weights(make_job, tmp_path: Path) -> None:
    parent_job = make_job([], maxSteps=2, learningRate=0.01)
    run_backend(parent_job)
    parent = tmp_path / "parent"
    shutil.copytree(parent_job.adapter_dir, parent)
    shutil.rmtree(parent_job.checkpoint_dir.parent)  # the next run starts in a clean folder

    child_job = make_job([], maxSteps=1, learningRate=1e-12)
    child_job.init_adapter = parent
    run_backend(child_job)
    before, after = _lora_tensors(parent), _lora_tensors(child_job.adapter_dir)
    assert before.keys() == after.keys() and before
    # at a learning rate of 1e-12 the child is its parent: trained B matrices, not zeros
    assert all((before[k] - after[k]).abs().max() < 1e-5 for k in before)
    assert max(float(v.abs().max()) for k, v in before.items() if "lora_B" in k) > 1e-4
