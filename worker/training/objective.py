"""A run's objective on an in-process backend (trl, unsloth): SFT, DPO, or SFT then DPO.

The backend loads the model its own way and hands it here with its SFT arguments; this module
runs the stages that are left (worker/training/stages.py decides which, after a crash or a
hand-over) and reports one TrainResult for the run: what every in-process backend shares.
"""

from __future__ import annotations

from typing import Any

from worker.training import stages
from worker.training.dpo_loop import dpo_arguments, policy_with_adapter, run_dpo, world_size
from worker.training.job import TrainJob, TrainResult
from worker.training.sft_loop import run_sft, save_adapter


def train_objective(
    job: TrainJob,
    backend: str,
    model: Any,
    tokenizer: Any,
    sft_args: dict[str, Any],
    *,
    peft_config: Any = None,
    cuda: bool,
    bf16: bool,
    extra: dict[str, Any] | None = None,
    dpo_overrides: dict[str, Any] | None = None,
) -> TrainResult:
    """Train `model` (plain with `peft_config`, or already a PEFT model) for job.config's
    objective, from job.init_adapter's weights when set. `dpo_overrides` adjusts the DPO
    arguments as the backend adjusts SFT's."""
    plan = stages.plan(job)
    if job.init_adapter is not None:  # warm start: the first stage trains the parent's weights
        model, peft_config = policy_with_adapter(model, peft_config, job.init_adapter)
    sft = plan.sft
    dpo_resume = plan.resume_from if plan.stages == ("dpo",) else None
    if plan.stages[0] == "sft":
        then_dpo = "dpo" in plan.stages
        result, trainer = run_sft(
            job,
            backend,
            model,
            tokenizer,
            sft_args,
            peft_config=peft_config,
            cuda=cuda,
            extra=extra,
            steps_after=stages.dpo_steps(job, world_size()) if then_dpo else 0,
            resume_from=plan.resume_from,
            save=not then_dpo,
        )
        if not then_dpo:
            return _with_objective(result, job)
        sft = stages.SftOutcome(
            result.metrics["total_steps"], result.metrics, result.hyperparameters
        )
        if trainer.is_world_process_zero():
            stages.save_sft_outcome(
                job.checkpoint_dir,
                lambda folder: save_adapter(trainer.model, tokenizer, folder),
                sft,
            )
        policy, policy_peft = trainer.model, None
    else:
        adapter = stages.sft_adapter_dir(job.checkpoint_dir) if sft else None
        policy, policy_peft = policy_with_adapter(model, peft_config, adapter)
    dpo_args = {**dpo_arguments(job, cuda=cuda, bf16=bf16), **(dpo_overrides or {})}
    dpo = run_dpo(
        job,
        backend,
        policy,
        tokenizer,
        dpo_args,
        peft_config=policy_peft,
        cuda=cuda,
        step_offset=sft.steps if sft else 0,
        resume_from=dpo_resume,
        extra=extra,
    )
    hyper = dict(sft.hyperparameters) if sft else dict(dpo.hyperparameters)
    hyper["dpo"] = dpo_args
    if sft is None:
        hyper.pop("sft", None)
    return _with_objective(
        TrainResult(
            backend=backend, metrics=stages.combine(sft, dpo.metrics), hyperparameters=hyper
        ),
        job,
    )


def _with_objective(result: TrainResult, job: TrainJob) -> TrainResult:
    result.hyperparameters["objective"] = job.config.objective
    return result
