"""The objectives on the trl backend: SFT then DPO on one adapter, DPO alone, and a run that
stops or is cancelled in the DPO stage and resumes there without repeating SFT."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from shared.errors import CancelledError, HandedOverError, InsufficientDataError
from shared.events import ProgressEvent
from shared.settings import Settings
from tests.worker.conftest import tiny_job
from worker.training import stages
from worker.training.backends import objective_problem, run_backend

DPO = {"loggingSteps": 1, "dpoMaxSteps": 3, "evalSteps": 2}


def _job(settings: Settings, tiny_model: Path, export_dir: Path, events: list, **overrides):
    job = tiny_job(settings, tiny_model, export_dir, events, **{**DPO, **overrides})
    job.torch_threads = 2
    return job


def _of(events: list[ProgressEvent], kind: str, stage: str | None = None) -> list[ProgressEvent]:
    return [e for e in events if e.type == kind and (stage is None or e.stage == stage)]


def test_sft_then_dpo_continues_one_adapter(
    settings: Settings, tiny_model: Path, export_dir: Path
) -> None:
    events: list[ProgressEvent] = []
    job = _job(settings, tiny_model, export_dir, events, objective="sft+dpo")
    result = run_backend(job)

    starts = _of(events, "training_start")
    assert [e.stage for e in starts] == ["sft", "dpo"]
    sft, dpo = _of(events, "progress", "sft"), _of(events, "progress", "dpo")
    assert [e.step for e in sft] == [1, 2, 3, 4]
    assert [e.step for e in dpo] == [5, 6, 7]  # DPO's steps continue after SFT's
    # the total covers both stages from the first event on
    assert {e.total_steps for e in sft + dpo} == {7}
    assert all(e.rewards_margins is not None and e.logps_chosen is not None for e in dpo)
    assert all(e.rewards_margins is None for e in sft)
    assert {e.stage for e in _of(events, "eval", "dpo")} == {"dpo"}
    assert _of(events, "eval", "dpo")[0].rewards_accuracies is not None

    metrics = result.metrics
    assert (metrics["sft_total_steps"], metrics["dpo_total_steps"]) == (4, 3)
    assert metrics["total_steps"] == 7
    assert metrics["final_train_loss"] == sft[-1].loss  # the SFT answer-only loss stays
    assert metrics["dpo_final_train_loss"] == dpo[-1].loss
    assert result.hyperparameters["objective"] == "sft+dpo"
    assert result.hyperparameters["dpo"]["beta"] == job.config.dpo_beta
    # the adapter holds the trained LoRA only, not DPO's frozen reference copy
    assert not (job.adapter_dir / "ref").exists()
    assert (job.adapter_dir / "adapter_model.safetensors").is_file()
    assert stages.read_sft_outcome(job.checkpoint_dir).steps == 4


def test_dpo_alone_starts_from_the_base_model_as_reference(
    settings: Settings, tiny_model: Path, export_dir: Path
) -> None:
    events: list[ProgressEvent] = []
    result = run_backend(_job(settings, tiny_model, export_dir, events, objective="dpo"))
    first = _of(events, "progress", "dpo")[0]
    # the policy equals its reference before the first update: DPO's loss is ln 2
    assert first.step == 1
    assert first.loss == pytest.approx(math.log(2), abs=0.02)
    assert _of(events, "progress", "sft") == []
    assert result.metrics["final_train_loss"] is None  # no SFT stage, no answer-only loss
    assert result.metrics["sft_total_steps"] == 0


def test_a_stop_in_the_dpo_stage_resumes_there_without_repeating_sft(
    settings: Settings, tiny_model: Path, export_dir: Path
) -> None:
    events: list[ProgressEvent] = []
    job = _job(settings, tiny_model, export_dir, events, objective="sft+dpo", saveSteps=1)
    job.should_stop = lambda: bool(_of(events, "progress", "dpo"))
    with pytest.raises(HandedOverError):
        run_backend(job)
    point = stages.resume_point(job.checkpoint_dir)
    assert point is not None and point.stage == "dpo"
    # the stop is seen after DPO's step 2 (the first DPO progress event comes after step 1)
    assert point.checkpoint == job.checkpoint_dir / "dpo" / "checkpoint-2"
    assert point.step == 6  # 4 SFT steps + 2 DPO steps: progress after it is trained again

    resumed: list[ProgressEvent] = []
    again = _job(settings, tiny_model, export_dir, resumed, objective="sft+dpo", saveSteps=1)
    again.resume_from = point.checkpoint
    result = run_backend(again)
    assert _of(resumed, "progress", "sft") == []
    assert [e.step for e in _of(resumed, "progress", "dpo")] == [7]
    assert result.metrics["sft_total_steps"] == 4  # read back from sft-adapter/stage.json
    assert result.metrics["total_steps"] == 7


def test_cancel_in_the_dpo_stage(settings: Settings, tiny_model: Path, export_dir: Path) -> None:
    events: list[ProgressEvent] = []
    job = _job(settings, tiny_model, export_dir, events, objective="sft+dpo")
    job.should_cancel = lambda: bool(_of(events, "progress", "dpo"))
    with pytest.raises(CancelledError):
        run_backend(job)
    # seen after DPO's step 2, as the stop above; the cap (3) was not reached
    assert [e.step for e in _of(events, "progress", "dpo")] == [5, 6]
    assert not job.adapter_dir.exists()


def test_an_objective_with_dpo_and_no_pairs_fails_with_insufficient_data(
    settings: Settings, tiny_model: Path, export_dir: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "no_pairs.jsonl"
    empty.write_text("")
    job = _job(settings, tiny_model, export_dir, [], objective="sft+dpo")
    job.train_pairs_path = empty
    with pytest.raises(InsufficientDataError) as caught:
        run_backend(job)
    assert "0 (train_pairs.jsonl" in caught.value.message
    assert "verdict" in caught.value.message


def test_backends_name_the_objectives_they_cannot_train() -> None:
    assert objective_problem("trl", "sft+dpo") is None
    assert objective_problem("unsloth", "dpo") is None


def test_training_args_record_the_dpo_stage(
    settings: Settings, tiny_model: Path, export_dir: Path
) -> None:
    job = _job(settings, tiny_model, export_dir, [], objective="dpo", dpoBeta=0.3)
    result = run_backend(job)
    recorded = json.loads(json.dumps(result.hyperparameters))
    assert recorded["dpo"]["beta"] == 0.3
    assert recorded["dpo"]["output_dir"].endswith("/dpo")
    assert "sft" not in recorded
