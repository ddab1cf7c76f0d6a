"""Every backend trains the objectives with a DPO stage the same way: SFT, then DPO continuing
SFT's adapter, one run over both stages; a resume in the DPO stage; a cancel in the DPO stage.

Runs against the backend chosen with `--backend` (see conftest.py), on the tiny local model:
4 SFT steps, then 2 DPO steps (4 preference pairs, batch 2, one epoch: the epochs decide, so
the total announced while SFT runs is the one DPO trains); an evaluation every 2 steps of each
stage and a checkpoint at every step.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from shared.errors import CancelledError
from shared.events import ProgressEvent
from worker.training.artifacts import write_training_files
from worker.training.backends import run_backend
from worker.training.job import TrainJob, TrainResult
from worker.training.stages import DPO_DIR, SFT_ADAPTER, resume_point

from .test_backend_contract import ADAPTER_FILES, _assert_loads_on_the_base_model

SFT_STEPS, DPO_STEPS = 4, 2
TOTAL = SFT_STEPS + DPO_STEPS
DPO_FIGURES = ("rewards_margins", "rewards_accuracies", "logps_chosen", "logps_rejected")


def _write_pairs(source: Path, target: Path, count: int) -> Path:
    """The first `count` preference pairs of the export's file: a short DPO stage."""
    lines = [line for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(lines) >= count, f"the export has {len(lines)} pairs in {source}"
    target.write_text("\n".join(lines[:count]) + "\n", encoding="utf-8")
    return target


def _with_pairs(job: TrainJob, export_dir: Path, folder: Path) -> TrainJob:
    job.train_pairs_path = _write_pairs(export_dir / "train_pairs.jsonl", folder / "t.jsonl", 4)
    job.val_pairs_path = _write_pairs(export_dir / "val_pairs.jsonl", folder / "v.jsonl", 2)
    return job


def _lora_tensors(adapter: Path, kind: str = "lora_") -> dict[str, Any]:
    from safetensors.torch import load_file

    weights = load_file(str(adapter / "adapter_model.safetensors"))
    return {name: value for name, value in weights.items() if kind in name}


def _assert_dpo_continued_sft(final: Path, sft: Path) -> None:
    """DPO trained the SFT adapter further: its lora_A (random at a fresh start) stayed close
    to SFT's and something moved."""
    final_a, sft_a = _lora_tensors(final, "lora_A"), _lora_tensors(sft, "lora_A")
    assert final_a.keys() == sft_a.keys() and final_a
    for name, weight in final_a.items():
        moved = (weight - sft_a[name]).norm() / sft_a[name].norm()
        assert moved < 0.1, f"{name} moved {moved:.2f} from SFT's: DPO started afresh"
    final_b, sft_b = _lora_tensors(final, "lora_B"), _lora_tensors(sft, "lora_B")
    assert any(not weight.equal(sft_b[name]) for name, weight in final_b.items())


def _assert_events_over_both_stages(events: list[ProgressEvent], job: TrainJob) -> None:
    seen = [e for e in events if e.type != "heartbeat"]
    starts = [(e.stage, e.step, e.total_steps) for e in seen if e.type == "training_start"]
    assert starts == [("sft", 0, TOTAL), ("dpo", SFT_STEPS, TOTAL)]
    progress = [e for e in seen if e.type == "progress"]
    assert [(e.step, e.stage) for e in progress] == [
        *((step, "sft") for step in range(1, SFT_STEPS + 1)),
        *((step, "dpo") for step in range(SFT_STEPS + 1, TOTAL + 1)),
    ]
    assert all(e.total_steps == TOTAL and e.loss is not None for e in progress)
    for event in progress:  # the DPO figures in DPO's progress only
        present = [getattr(event, name) is not None for name in DPO_FIGURES]
        assert all(present) if event.stage == "dpo" else not any(present), event
    evals = [e for e in seen if e.type == "eval"]
    assert [(e.step, e.stage) for e in evals] == [(2, "sft"), (4, "sft"), (6, "dpo")]
    assert evals[-1].rewards_accuracies is not None and evals[-1].logps_chosen is not None
    checkpoints = [(e.step, e.stage, Path(e.path)) for e in seen if e.type == "checkpoint"]
    assert [(step, stage) for step, stage, _ in checkpoints] == [
        *((step, "sft") for step in range(1, SFT_STEPS + 1)),
        (5, "dpo"),
        (6, "dpo"),
    ]
    assert checkpoints[-1][2] == job.checkpoint_dir / DPO_DIR / "checkpoint-2"


def _assert_metrics_and_record(
    result: TrainResult, events: list[ProgressEvent], job: TrainJob, backend: str
) -> None:
    m = result.metrics
    assert result.backend == backend
    assert (m["sft_total_steps"], m["dpo_total_steps"], m["total_steps"]) == (4, 2, TOTAL)
    losses = {e.stage: e.loss for e in events if e.type == "progress"}  # each stage's last
    assert m["final_train_loss"] == losses["sft"]  # the answer-only SFT loss, comparable
    assert m["dpo_final_train_loss"] == losses["dpo"]
    last_eval = [e for e in events if e.type == "eval"][-1]
    assert m["dpo_rewards_accuracies"] == last_eval.rewards_accuracies
    assert m["train_tokens"] > 0 and m["training_time_seconds"] > 0
    write_training_files(job.adapter_dir, result.hyperparameters, result.metrics)
    written = json.loads((job.adapter_dir / "training_args.json").read_text())
    assert written["objective"] == "sft+dpo" and written["backend"] == backend
    assert written["dpo"], written  # the DPO stage's settings


def test_sft_then_dpo_is_one_run_over_both_stages_and_resumes_in_dpo(
    make_job, backend: str, export_dir: Path, tmp_path: Path, tiny_model: Path
) -> None:
    events: list[ProgressEvent] = []
    job = make_job(events, objective="sft+dpo", dpoEpochs=1, dpoMaxSteps=None, saveSteps=1)
    result = run_backend(_with_pairs(job, export_dir, tmp_path))
    _assert_events_over_both_stages(events, job)

    sft_adapter = job.checkpoint_dir / SFT_ADAPTER
    assert json.loads((sft_adapter / "stage.json").read_text())["steps"] == SFT_STEPS
    names = {p.name for p in job.adapter_dir.iterdir()}
    assert names >= ADAPTER_FILES, names
    # only the trained adapter: not DPO's frozen reference copy ("ref/"), not the model
    assert not {"ref", "config.json", "model.safetensors"} & names, names
    assert not any(p.is_dir() for p in job.adapter_dir.iterdir()), names
    _assert_dpo_continued_sft(job.adapter_dir, sft_adapter)
    _assert_metrics_and_record(result, events, job, backend)
    _assert_loads_on_the_base_model(job.adapter_dir, tiny_model)
    _assert_a_resume_in_dpo_trains_on_from_its_checkpoint(job, events)


def _assert_a_resume_in_dpo_trains_on_from_its_checkpoint(
    job: TrainJob, events: list[ProgressEvent]
) -> None:
    """As a re-queued run whose worker was lost after DPO's first checkpoint: SFT is not
    trained again, and DPO continues the checkpoint's adapter (not SFT's) to the same one."""
    uninterrupted = _lora_tensors(job.adapter_dir)
    shutil.rmtree(job.checkpoint_dir / DPO_DIR / "checkpoint-2")
    shutil.rmtree(job.adapter_dir)
    point = resume_point(job.checkpoint_dir)
    assert point is not None and (point.stage, point.step) == ("dpo", SFT_STEPS + 1)
    job.resume_from = point.checkpoint
    events.clear()
    result = run_backend(job)
    trained = [
        (e.type, e.stage, e.step) for e in events if e.type in ("training_start", "progress")
    ]
    assert trained == [("training_start", "dpo", 5), ("progress", "dpo", 6)]
    assert (result.metrics["sft_total_steps"], result.metrics["total_steps"]) == (4, TOTAL)
    resumed = _lora_tensors(job.adapter_dir)
    assert resumed.keys() == uninterrupted.keys()
    for name, weight in resumed.items():
        gap = (weight - uninterrupted[name]).abs().max().item()
        assert gap < 1e-6, f"{name}: {gap:.2e} from the uninterrupted run's"


def test_a_dpo_run_cancels_at_the_next_step_without_an_adapter(
    make_job, export_dir: Path, tmp_path: Path
) -> None:
    events: list[ProgressEvent] = []
    job = make_job(events, objective="dpo", dpoMaxSteps=40, evalSteps=100, saveSteps=100)
    job.should_cancel = lambda: any(e.type == "progress" and e.step >= 1 for e in events)
    with pytest.raises(CancelledError):
        run_backend(_with_pairs(job, export_dir, tmp_path))
    starts = [(e.stage, e.step) for e in events if e.type == "training_start"]
    assert starts == [("dpo", 0)]  # no SFT stage in a dpo run
    steps = [e.step for e in events if e.type == "progress"]
    assert steps and max(steps) < 40 and all(e.stage == "dpo" for e in events if e.stage)
    assert not job.adapter_dir.exists()
