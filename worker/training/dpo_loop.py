"""The DPO stage the in-process backends share (trl, unsloth): TRL's DPOTrainer on the pairs.

The policy is a PEFT model. Its reference is the policy as the stage starts, without a second
copy of the model: for `dpo` alone TRL runs the reference pass with the adapter disabled (the
base model); after SFT (`sft+dpo`) TRL keeps a frozen copy of the SFT adapter ("ref") beside
the trained one, a few MB of LoRA weights, so DPO moves away from the SFT model as DPO's
derivation assumes. The reference pass runs per step, not precomputed: the same compute for
one epoch, no start-up pass over every pair, and a resume needs nothing but the checkpoint.

Prompts are built as for SFT (worker/training/data.py: the chat template, else the Alpaca
prompt) and the loss covers the answer tokens only (DPOTrainer's completion mask). TRL 1.16
has no packing for DPO (its `padding_free` falls back to padding), so rows are padded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from worker.training.job import TrainJob, TrainResult
from worker.training.sft_loop import (
    hyperparameters,
    measurements,
    pipeline_callback,
    quiet,
    run_trainer,
    save_adapter,
    sft_arguments,
)
from worker.training.stages import dpo_checkpoint_dir

NOT_FOR_DPO = ("packing", "packing_strategy")


def world_size() -> int:
    """Ranks training together (torchrun sets WORLD_SIZE; 1 in a single process)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def dpo_arguments(job: TrainJob, *, cuda: bool, bf16: bool) -> dict[str, Any]:
    """DPOConfig keyword arguments: SFT's (precision, batch, schedule, checkpoints) with the
    DPO stage's epochs, cap, learning rate and beta, checkpointing under dpo/."""
    c = job.config
    arguments = sft_arguments(job, cuda=cuda, bf16=bf16)
    for key in NOT_FOR_DPO:
        arguments.pop(key)
    arguments.update(
        output_dir=str(dpo_checkpoint_dir(job.checkpoint_dir)),
        num_train_epochs=c.dpo_epochs,
        max_steps=c.dpo_max_steps or -1,
        learning_rate=c.dpo_learning_rate,
        beta=c.dpo_beta,
        max_length=c.max_seq_len,
        # DPOTrainer's default; said here because dropout would make the policy and reference
        # passes differ on the same weights (a margin from noise)
        disable_dropout=True,
    )
    return arguments


def load_trained_adapter(model: Any, folder: Path) -> None:
    """The adapter saved in `folder` (its top level) into the PEFT model's "default" adapter."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(str(folder / "adapter_model.safetensors"))
    loaded = set_peft_model_state_dict(model, weights, adapter_name="default")
    if loaded.unexpected_keys:  # another LoRA layout than this stage's: refuse, do not guess
        raise ValueError(f"{folder} does not fit the LoRA settings: {loaded.unexpected_keys[:3]}")


def policy_with_adapter(model: Any, peft_config: Any, adapter_dir: Path | None) -> Any:
    """The DPO stage's policy and the peft_config DPOTrainer still needs: a model that is
    already a PEFT model (Unsloth's, or after SFT) is used as it is, with `adapter_dir`'s
    weights (a finished SFT stage) loaded into its trained adapter."""
    from peft import PeftModel, get_peft_model

    if adapter_dir is None:
        return (model, None) if isinstance(model, PeftModel) else (model, peft_config)
    if not isinstance(model, PeftModel):
        model = get_peft_model(model, peft_config)
    load_trained_adapter(model, adapter_dir)
    return model, None


def run_dpo(
    job: TrainJob,
    backend: str,
    model: Any,
    tokenizer: Any,
    arguments: dict[str, Any],
    *,
    peft_config: Any = None,
    cuda: bool,
    step_offset: int = 0,
    resume_from: Path | None = None,
    extra: dict[str, Any] | None = None,
) -> TrainResult:
    """Train the DPO stage on job.train_pairs_path (eval on job.val_pairs_path, when it has
    pairs), save the adapter into job.adapter_dir, and measure."""
    import datasets
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from worker.training.data import count_lines, load_pair_records

    datasets.disable_progress_bars()
    callback = pipeline_callback(
        job, dpo_checkpoint_dir(job.checkpoint_dir), stage="dpo", step_offset=step_offset
    )
    has_eval = count_lines(job.val_pairs_path) > 0
    if not has_eval:  # nothing held out to evaluate on: train without eval steps
        arguments = {**arguments, "eval_strategy": "no"}
    trainer = quiet(
        DPOTrainer(
            model=model,
            ref_model=None,
            args=DPOConfig(**arguments),
            train_dataset=Dataset.from_list(load_pair_records(job.train_pairs_path, tokenizer)),
            eval_dataset=Dataset.from_list(load_pair_records(job.val_pairs_path, tokenizer))
            if has_eval
            else None,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=[callback],
        )
    )
    if resume_from is not None and "ref" in trainer.model.peft_config:
        # A checkpoint with the "ref" subfolder beside the trained adapter: transformers before
        # 5.24 (Unsloth's and Axolotl's pins) resumes the subfolders only, which would leave
        # the trained adapter at SFT's weights. Load it here; 5.24 loads the same weights again.
        load_trained_adapter(trainer.model, resume_from)
    elapsed = run_trainer(trainer, callback, resume_from, cuda=cuda)
    if trainer.is_world_process_zero():
        save_adapter(trainer.model, tokenizer, job.adapter_dir)
    metrics = measurements(trainer.state, callback, elapsed, cuda=cuda)
    for key, value in callback.last_eval.items():
        if key != "eval_loss":
            metrics[f"dpo_{key}"] = value
    return TrainResult(
        backend=backend,
        metrics=metrics,
        hyperparameters=hyperparameters(job, backend, arguments, extra),
    )
