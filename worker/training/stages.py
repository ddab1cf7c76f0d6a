"""The stages of one training run, where each keeps its checkpoints, and where a resume starts.

`objective` sft trains one SFT stage, dpo one DPO stage, sft+dpo both: DPO continues the
adapter SFT trained. Under the run's checkpoint folder:

    checkpoint-N/          the SFT stage's checkpoints (N: SFT's optimizer step)
    sft-adapter/           the SFT stage's finished adapter and stage.json (its steps and
                           metrics): written atomically when SFT ends in an sft+dpo run, so
                           its presence means SFT is done and is never repeated
    dpo/checkpoint-N/      the DPO stage's checkpoints (N: DPO's own step)

Events count steps over the whole run: the DPO stage's step k is reported as SFT steps + k.
Nothing here imports torch; the loops (sft_loop, dpo_loop) do.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.errors import InsufficientDataError
from shared.fsutil import write_json_atomic
from shared.traces import PAIRS_HELP
from worker.training.data import count_lines
from worker.training.job import TrainJob

SFT_ADAPTER = "sft-adapter"
DPO_DIR = "dpo"
STAGE_FILE = "stage.json"
CHECKPOINT_PREFIX = "checkpoint-"


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete `checkpoint-N` folder (one with its trainer state saved)."""
    if not folder.is_dir():
        return None
    found = [
        (int(path.name.removeprefix(CHECKPOINT_PREFIX)), path)
        for path in folder.iterdir()
        if path.name.startswith(CHECKPOINT_PREFIX)
        and path.name.removeprefix(CHECKPOINT_PREFIX).isdigit()
        and (path / "trainer_state.json").is_file()
    ]
    return max(found)[1] if found else None


def checkpoint_step(checkpoint: Path) -> int:
    return int(checkpoint.name.removeprefix(CHECKPOINT_PREFIX))


@dataclass(frozen=True)
class SftOutcome:
    """What a finished SFT stage leaves for the DPO stage (read back after a restart)."""

    steps: int
    metrics: dict[str, Any] = field(default_factory=dict)
    hyperparameters: dict[str, Any] = field(default_factory=dict)


def sft_adapter_dir(checkpoint_dir: Path) -> Path:
    return checkpoint_dir / SFT_ADAPTER


def dpo_checkpoint_dir(checkpoint_dir: Path) -> Path:
    return checkpoint_dir / DPO_DIR


def read_sft_outcome(checkpoint_dir: Path) -> SftOutcome | None:
    path = sft_adapter_dir(checkpoint_dir) / STAGE_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return SftOutcome(data["steps"], data.get("metrics", {}), data.get("hyperparameters", {}))


def save_sft_outcome(checkpoint_dir: Path, save_adapter: Any, outcome: SftOutcome) -> Path:
    """Write the SFT adapter (`save_adapter(folder)`) and stage.json into sft-adapter/ through a
    temporary folder and a rename: a kill in between leaves no half-written stage."""
    final = sft_adapter_dir(checkpoint_dir)
    staging = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_adapter(staging)
    write_json_atomic(
        staging / STAGE_FILE,
        {
            "steps": outcome.steps,
            "metrics": outcome.metrics,
            "hyperparameters": outcome.hyperparameters,
        },
    )
    shutil.rmtree(final, ignore_errors=True)
    os.rename(staging, final)
    return final


def discard_for_retry(checkpoint_dir: Path) -> None:
    """Before an OOM retry: drop every checkpoint but a finished SFT stage, so an OOM in the
    DPO stage retries DPO alone (with the smaller batch) instead of training SFT again."""
    if not checkpoint_dir.is_dir():
        return
    for path in checkpoint_dir.iterdir():
        if path.name == SFT_ADAPTER:
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()


@dataclass(frozen=True)
class ResumePoint:
    """Where a re-queued run continues: `checkpoint` (None: the start of `stage`), and the
    steps the run had done there (its progress rows after that step are trained again)."""

    stage: str
    checkpoint: Path | None
    step: int


def resume_point(checkpoint_dir: Path) -> ResumePoint | None:
    """The furthest point a run's checkpoint folder holds, or None: nothing to resume."""
    sft = read_sft_outcome(checkpoint_dir)
    dpo = latest_checkpoint(dpo_checkpoint_dir(checkpoint_dir))
    offset = sft.steps if sft else 0
    if dpo is not None:
        return ResumePoint("dpo", dpo, offset + checkpoint_step(dpo))
    if sft is not None:
        return ResumePoint("dpo", None, offset)
    checkpoint = latest_checkpoint(checkpoint_dir)
    if checkpoint is not None:
        return ResumePoint("sft", checkpoint, checkpoint_step(checkpoint))
    return None


@dataclass(frozen=True)
class StagePlan:
    """What this attempt trains: `stages` in order, from `resume_from` (a checkpoint of the
    first of them) or from its start; `sft` is the finished SFT stage where DPO comes first."""

    stages: tuple[str, ...]
    resume_from: Path | None
    sft: SftOutcome | None


def plan(job: TrainJob) -> StagePlan:
    """The stages left for this attempt of `job` (a crash resume skips a finished SFT stage)."""
    wanted = job.config.stages
    sft = read_sft_outcome(job.checkpoint_dir) if "sft" in wanted else None
    resume = job.resume_from
    in_dpo = resume is not None and resume.parent == dpo_checkpoint_dir(job.checkpoint_dir)
    if "dpo" not in wanted:
        return StagePlan(wanted, resume, None)
    require_pairs(job)
    if sft is not None or in_dpo or wanted == ("dpo",):
        return StagePlan(("dpo",), resume if in_dpo else None, sft)
    return StagePlan(wanted, resume, None)


def require_pairs(job: TrainJob) -> None:
    """INSUFFICIENT_DATA when the DPO stage has no pairs to train on."""
    pairs = count_lines(job.train_pairs_path)
    if pairs == 0:
        raise InsufficientDataError(
            f"objective {job.config.objective!r} needs preference pairs and the export has "
            f"{pairs} (train_pairs.jsonl; {count_lines(job.val_pairs_path)} held out). "
            + PAIRS_HELP,
            current=pairs,
            required=1,
        )


def dpo_steps(job: TrainJob, world_size: int = 1) -> int:
    """The DPO stage's optimizer steps, as the HF Trainer will count them (for the total of an
    sft+dpo run, announced while SFT still runs)."""
    c = job.config
    batches = math.ceil(count_lines(job.train_pairs_path) / (c.batch_size * world_size))
    steps = math.ceil(batches / c.grad_accum) * c.dpo_epochs
    return min(steps, c.dpo_max_steps) if c.dpo_max_steps else steps


def combine(sft: SftOutcome | None, dpo: dict[str, Any]) -> dict[str, Any]:
    """One run's metrics from its stages. final_train_loss and best_val_loss stay the SFT
    stage's answer-only losses (None without SFT: a DPO loss is not comparable with them); the
    DPO stage's are under dpo_* names; steps, time and tokens are totals over both stages."""
    renamed = {f"dpo_{key}": dpo.get(key) for key in ("final_train_loss", "best_val_loss")}
    dpo_own = {key: value for key, value in dpo.items() if key.startswith("dpo_")}
    if sft is None:
        merged = {**dpo, "final_train_loss": None, "best_val_loss": None}
        merged.update(renamed, sft_total_steps=0, dpo_total_steps=dpo.get("total_steps"))
        return merged
    merged = {**sft.metrics, **renamed, **dpo_own, "device": dpo.get("device")}
    merged["sft_total_steps"] = sft.steps
    merged["dpo_total_steps"] = dpo.get("total_steps")
    merged["total_steps"] = sft.steps + (dpo.get("total_steps") or 0)
    merged["sft_training_time_seconds"] = sft.metrics.get("training_time_seconds")
    merged["dpo_training_time_seconds"] = dpo.get("training_time_seconds")
    for key in ("training_time_seconds", "train_tokens"):
        merged[key] = round((sft.metrics.get(key) or 0) + (dpo.get(key) or 0), 2)
    elapsed, tokens = merged["training_time_seconds"], merged["train_tokens"]
    merged["tokens_per_second"] = round(tokens / elapsed, 2) if elapsed and tokens else None
    for key in ("peak_ram_gb", "peak_vram_gb"):
        values = [v for v in (sft.metrics.get(key), dpo.get(key)) if v is not None]
        merged[key] = max(values) if values else None
    return merged
